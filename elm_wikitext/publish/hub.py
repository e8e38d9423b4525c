"""Publishing to the Hugging Face Hub: a preflight before any model work, then one commit and a tag.

The data and the card go up as ONE commit of a folder staged in the Hub's layout (parquet shards
and README.md). `DatasetDict.push_to_hub` would split a large upload over several commits and
write its own README; one commit keeps a version whole, and the staged folder is the same one
the offline tests load with `load_dataset(folder)`. Only that commit is not retried (a retry could
make a second commit); reads, the repo creation and the tag are idempotent and retried, bounded.
"""

import logging
import re
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path

from datasets import Features
from datasets.info import DatasetInfosDict
from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.schema import NEIGHBOR_SUFFIXES
from elm_wikitext.core.ownership import WORK_MARKER

log = logging.getLogger(__name__)

REPO_NAME = "elm-wikitext2"
RETRIES = 3
VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
WITHOUT_THE_HUB = ("--hub-folder DIR --repo-id OWNER/NAME stages the upload here and prints the commands "
                   "that publish it from a machine with the Hub")


@dataclass(frozen=True)
class HubParams:
    """Where and as what a version goes on the Hub, and nothing else (the pipeline builds it from
    --repo-id, --version and --private)."""
    repo_id: str | None  # None until --push's preflight names the token's user's REPO_NAME
    version: str  # the tag
    private: bool  # a new repo is created private


def _status(err: HfHubHTTPError) -> int | None:
    return getattr(err.response, "status_code", None)


def retried(call, *args, **kwargs):
    """Call an idempotent Hub request, retrying 429 and 5xx answers a few times.

    huggingface_hub's own `http_backoff` retries one raw HTTP request; HfApi's methods (whoami,
    create_repo, create_tag...) make theirs inside, without it, so the retry wraps the method."""
    for attempt in range(RETRIES):
        try:
            return call(*args, **kwargs)
        except HfHubHTTPError as err:
            status = _status(err)
            if attempt == RETRIES - 1 or not (status == 429 or (status or 0) >= 500):
                raise
            log.warning("the Hub answered %s; retrying in %d s", status, 2 ** attempt)
            time.sleep(2 ** attempt)


def check_features(card_data, features: Features, repo_id: str) -> None:
    """An existing repo's published columns must all be in this build, of the same types (a new
    --dim, say, belongs in a new repo: readers of the old versions expect their vector size); a
    new column (another model's `--column`) may join them."""
    published = DatasetInfosDict.from_dataset_card_data(card_data or {}).get("default")
    differ = [name for name, kind in (published.features if published and published.features else {}).items()
              if features.get(name) != kind]
    if differ and all(name.endswith(NEIGHBOR_SUFFIXES) for name in differ):  # the vectors agree, the neighbours not
        ks = sorted({str(published.features[name].length) for name in differ})
        raise BuildError(f"{repo_id} holds the neighbour columns {', '.join(differ)} of {'/'.join(ks)} neighbours, "
                         f"which this build does not make as they are: pass --neighbors {ks[0]}, or another --repo-id")
    if differ:
        raise BuildError(f"{repo_id} holds other columns ({dict(published.features)}) than this build "
                         "makes: pass another --repo-id, or the options the repo was built with")


def preflight(hub: HubParams, api: HfApi, features: Features) -> HubParams:
    """Everything that can refuse a push, checked before the build spends time. Returns `hub` with
    its repo id."""
    check_can_push()
    check_version(hub.version)
    try:
        user = retried(api.whoami)["name"]
    except HfHubHTTPError as err:
        raise BuildError(f"the Hub refused the token ({_status(err)}): run `hf auth login` again") from None
    except Exception as err:  # the HTTP client's own error types vary by version; all mean "unreachable"
        raise BuildError(f"cannot reach the Hub ({type(err).__name__}: {err}): check the network, "
                         f"or build without --push ({WITHOUT_THE_HUB})") from None
    repo_id = hub.repo_id or f"{user}/{REPO_NAME}"
    check_repo_id(repo_id, user)
    try:
        exists = retried(api.repo_exists, repo_id, repo_type="dataset")
        tags = {tag.name for tag in retried(api.list_repo_refs, repo_id, repo_type="dataset").tags} if exists else set()
        card_data = retried(api.dataset_info, repo_id).card_data if exists else None
    except Exception as err:
        raise BuildError(f"checking {repo_id} on the Hub failed ({type(err).__name__}: {err}): "
                         "try again later") from None
    if hub.version in tags:
        raise BuildError(f"{repo_id} already has the tag {hub.version}: pass a new --version")
    check_features(card_data, features, repo_id)
    return replace(hub, repo_id=repo_id)


def check_can_push() -> None:
    """What refuses a push without asking the Hub: offline mode, no token. Cheap: the pipeline asks
    it before the tokenizer or the model is read."""
    if constants.HF_HUB_OFFLINE:
        raise BuildError("--push needs the Hub but HF_HUB_OFFLINE=1 is set: unset it, or build without --push "
                         f"({WITHOUT_THE_HUB})")
    if not get_token():
        raise BuildError("--push needs a Hugging Face token: run `hf auth login` or set HF_TOKEN")


def check_version(version: str) -> None:
    if not VERSION.match(version):
        raise BuildError(f"--version {version!r} is not a tag like v1.0.0: pass --version vMAJOR.MINOR.PATCH")


def check_repo_id(repo_id: str, user: str = "your-name") -> None:
    if "/" not in repo_id or not _valid_repo_id(repo_id):
        raise BuildError(f"--repo-id {repo_id!r} is not of the form owner/name: pass e.g. --repo-id {user}/{REPO_NAME}")


def offline_preflight(hub: HubParams) -> HubParams:
    """What --hub-folder can check without the Hub (the form of --repo-id and --version); whether
    the repo already has the tag, or other columns, only the Hub knows. Returns `hub`, checked."""
    check_version(hub.version)
    check_repo_id(hub.repo_id)
    return hub


def upload_commands(folder: Path, hub: HubParams) -> list[str]:
    """The `hf` commands that publish a staged folder as --push does: one upload replacing every
    shard of an earlier version, then the tag."""
    message = shlex.quote(f"elm-wikitext {hub.version}")
    upload = (f"hf upload {hub.repo_id} {shlex.quote(str(folder))} . --repo-type dataset --commit-message {message} "
              f"--delete 'data/*' --exclude {WORK_MARKER}" + (" --private" if hub.private else ""))  # not its mark
    return [upload, f"hf repos tag create {hub.repo_id} {hub.version} --repo-type dataset -m {message}"]


def _valid_repo_id(repo_id: str) -> bool:
    try:
        validate_repo_id(repo_id)  # the Hub's rules of characters and length
    except HFValidationError:
        return False
    return True


def _tagged(api: HfApi, repo_id: str, tag: str, commit: str) -> bool:
    """Whether `tag` already names `commit` (a retried tag request then answers 409)."""
    try:
        tags = retried(api.list_repo_refs, repo_id, repo_type="dataset").tags
    except Exception:  # the tag's own failure is the one to report
        return False
    return any(ref.name == tag and ref.target_commit == commit for ref in tags)


def push(folder: Path, hub: HubParams, api: HfApi) -> str:
    """Upload the staged folder as one commit, tag it, and return the line that loads it."""
    repo_id, version = hub.repo_id, hub.version
    # Each step's failure, an HTTP answer or the client's own network error (its types vary by
    # version), ends the build with what was done and what to do.
    try:
        retried(api.create_repo, repo_id, repo_type="dataset", private=hub.private, exist_ok=True)
    except Exception as err:
        raise BuildError(f"creating {repo_id} failed ({type(err).__name__}: {err}); nothing was "
                         "uploaded: rerun the same command") from None
    try:
        commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                                   commit_message=f"elm-wikitext {version}",
                                   delete_patterns=["data/*"],  # a new version replaces every shard
                                   ignore_patterns=[WORK_MARKER])  # the staging folder's mark, not data
    except Exception as err:
        raise BuildError(f"uploading to {repo_id} failed ({err}); no tag was created and "
                         f"{version} is not published: rerun the same command") from None
    try:
        retried(api.create_tag, repo_id, repo_type="dataset", tag=version, revision=commit.oid,
                tag_message=f"elm-wikitext {version}")
    except Exception as err:
        if not _tagged(api, repo_id, version, commit.oid):  # else the answer was lost, not the tag
            raise BuildError(f"the data is in {repo_id} at commit {commit.oid}, but creating the tag "
                             f"{version} failed ({err}): run `hf repos tag create {repo_id} {version} "
                             f"--revision {commit.oid} --repo-type dataset`") from None
    return f'load_dataset("{repo_id}", revision="{version}")'
