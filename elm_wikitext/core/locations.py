"""Where a source, a model or a dataset lives: a local path, or an id on the Hugging Face Hub.

Every stage that takes such a name asks here, so that the rule is written once: a name that
exists on disk is a local path; a name that cannot be a Hub id (`name` or `owner/name`) is a
missing local path; anything else is a Hub id, checked with one quick request before a download.
"""

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from elm_wikitext.core.errors import BuildError

log = logging.getLogger(__name__)

# Where `hf download --local-dir DIR` records each file it fetched: DIR/.cache/huggingface/download/
# <file>.metadata, the commit on its first line and the file's ETag on its second.
DOWNLOAD_METADATA = Path(".cache") / "huggingface" / "download"
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_local(name: str) -> bool:
    """Whether `name` is a file or directory on this machine (`~` expanded)."""
    return bool(name) and Path(name).expanduser().exists()


def on_hub(name: str) -> bool:
    """Whether `name` is a Hub id: it has a config and a revision to report, a local path neither."""
    return not is_local(name)


def looks_like_path(name: str, file_like: bool = False) -> bool:
    """Whether `name`, not found on disk, can only be a missing local path: it starts with `.`,
    `/` or `~`, or holds more than one `/`. With `file_like`, a name with a file extension
    (`wiki.train.raw`) counts as a path too: a dataset id has none, where a model's may
    (`Qwen/Qwen3-Embedding-0.6B`)."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1
            or (file_like and Path(name).suffix != ""))


def resolved(name: str) -> str:
    """A local path as an absolute one (a record of it then holds from any working directory);
    a Hub id as it is."""
    return str(Path(name).expanduser().resolve()) if is_local(name) else name


# Where a user without the Hub can start instead.
OFFLINE_TRIAL = "or try the README's offline trial first (no Hub, no GPU)"


@dataclass(frozen=True)
class HubId:
    """A source or model named by its Hub id, and what a user without the Hub can pass instead."""
    option: str
    repo_id: str
    revision: str | None
    repo_type: str
    remedy: str


@functools.lru_cache(maxsize=None)
def _ask_hub(repo_id: str, revision: str | None, repo_type: str) -> None:
    """One quick request; an answer is kept, so that a build that asked up front asks once."""
    HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type, timeout=10)


def _hub_problem(hub_id: HubId) -> tuple[str, bool] | None:
    """What the Hub says is wrong with `hub_id`, and whether it is that the Hub is out of reach."""
    try:
        _ask_hub(hub_id.repo_id, hub_id.revision, hub_id.repo_type)
    except GatedRepoError:
        return None  # it exists; the download says what access it needs
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        option = hub_id.option
        return (f"{option} {hub_id.repo_id} (revision {hub_id.revision or 'main'}) is not a {hub_id.repo_type} "
                f"on the Hub that you can see ({type(err).__name__}): check the id and {option}-revision, log "
                "in for a private one, or pass a local directory"), False
    except Exception as err:  # the HTTP client's own error types vary by version; all mean "unreachable"
        return f"{type(err).__name__}: {err}", True
    return None


def check_on_hub(*hub_ids: HubId) -> None:
    """Ask the Hub about every source and model a run names by id before any work, so that an
    unreachable Hub or a wrong id stops it at once (not after the download client's retries),
    with every problem in one line rather than one per rerun."""
    found = [(hub_id, *problem) for hub_id in hub_ids if (problem := _hub_problem(hub_id))]
    unreachable = [hub_id for hub_id, _, out_of_reach in found if out_of_reach]
    problems = [message for _, message, out_of_reach in found if not out_of_reach]
    if unreachable:
        reason = next(message for _, message, out_of_reach in found if out_of_reach)
        names = " and ".join(f"{hub_id.option} {hub_id.repo_id}" for hub_id in unreachable)
        remedies = "; ".join((f"for {hub_id.option}, " if len(unreachable) > 1 else "") + hub_id.remedy
                             for hub_id in unreachable)
        problems.append(f"cannot reach {names} on the Hub ({reason}): {remedies}; {OFFLINE_TRIAL}")
    if problems:
        raise BuildError("; ".join(problems))


def download_record(folder: Path) -> tuple[str | None, dict[str, str]]:
    """The Hub commit that `hf download --local-dir` fetched `folder`'s files from (None: no record,
    or files of several commits), and each recorded file's ETag (for a weights file, its SHA-256).
    The repo id is not recorded: the user names it (--model-id, --source-id)."""
    commits, etags = set(), {}
    root = Path(folder) / DOWNLOAD_METADATA
    for metadata in sorted(root.glob("**/*.metadata")):
        lines = metadata.read_text(errors="replace").splitlines()
        if len(lines) >= 2 and COMMIT.match(lines[0].strip()):
            commits.add(lines[0].strip())
            etags[metadata.relative_to(root).as_posix()[:-len(".metadata")]] = lines[1].strip().strip('"')
    if len(commits) > 1:
        log.warning("the files of %s come from %d Hub commits: no commit is recorded for it", folder, len(commits))
    return (commits.pop() if len(commits) == 1 else None), etags
