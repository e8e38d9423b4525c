"""The output directory: every file of an output, and the build's folders beside it.

This module lays out what goes inside them: the data, manifest.json (the typed
`core.records.Manifest`, written here, read through core/manifest.py, which names the manifest
and card files), the card's plots, the chunks of the embedding's work folder and the Hub layout's
shards. Where those two folders lie beside the output (`OUTPUT.embed-work`, `OUTPUT.hub`) the
pipeline decides and hands in. It decides which folders the build may replace or delete: only
ones it wrote.

The output directory is written whole or not at all: everything goes to a temporary directory
beside it, which is then swapped in, so a failed or interrupted run never leaves a half-written
output and never damages an earlier one.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from datasets import DatasetDict, load_from_disk
from filelock import FileLock, Timeout

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.locations import is_local
from elm_wikitext.core.manifest import (CARD_FILE, ELSEWHERE, MANIFEST_FILE, is_our_manifest, is_sealed,
                                        load_manifest_json, manifest_checksum, manifest_problem, rebuild_in_place)
from elm_wikitext.core.ownership import WORK_MARKER, make_work_folder
from elm_wikitext.core.schema import SPLIT_NAMES, TEXT_COLUMNS, TOKEN_IDS
from elm_wikitext.core.records import Manifest, SplitEntry

log = logging.getLogger(__name__)

HISTOGRAM_FILE = "token_lengths.png"
EMBEDDING_MAP_FILE = "embedding_map.png"  # the vectors' PCA map, coloured by article
# The work folders beside OUTPUT: the embedding's chunks, and the Hub layout being uploaded.
HUB_DATA = "data"  # the Hub layout's folder of parquet shards


# What a build writes at the top of an output; anything else there belongs to someone else.
OUTPUT_ENTRIES = {"dataset_dict.json", MANIFEST_FILE, CARD_FILE, HISTOGRAM_FILE, EMBEDDING_MAP_FILE, *SPLIT_NAMES}
# core/ownership.py's WORK_MARKER marks the folders a build makes beside its output: only a marked
# folder is ever deleted, and only if it holds nothing but what its layout below allows.

# What each folder the build owns may hold, as regular expressions of a path inside it (`/`
# between names). A folder is replaced or deleted only when every path in it, at any depth, is
# one of these; else the build stops and names the first other one.
_SPLIT = "(" + "|".join(SPLIT_NAMES) + ")"
_KEY = "[0-9a-f]{16}"  # chunks.work_key
# The files a build records: an output's files are listed in its manifest (OUTPUT_LAYOUT is the
# list's shape, for a manifest that cannot be trusted); a chunk's
# name carries its SHA-256; the Hub layout is what stage_hub_folder writes.
OUTPUT_LAYOUT = [*(re.escape(name) for name in OUTPUT_ENTRIES - set(SPLIT_NAMES)), _SPLIT,
                 rf"{_SPLIT}/(state|dataset_info)\.json", rf"{_SPLIT}/data-\d{{5}}-of-\d{{5}}\.arrow"]
WORK_LAYOUT = [_KEY, rf"{_KEY}/chunk-\d{{5}}-[0-9a-f]{{16}}\.npz"]
HUB_LAYOUT_FILES = [re.escape(name) for name in (CARD_FILE, HISTOGRAM_FILE, EMBEDDING_MAP_FILE, HUB_DATA)] + [
    rf"{HUB_DATA}/{_SPLIT}-\d{{5}}-of-\d{{5}}\.parquet"]
# What the build's own machinery leaves in those folders by design, in one place: in an output,
# datasets' cache of a user's `.map()` or `.filter()` on a loaded split, and the temporary file of
# one that was stopped; in the work folder, a chunk being written when a run stopped, and the
# column being assembled (its vectors, their Arrow files and datasets' temporary file), and each
# split's vectors that the neighbours' search shares with the other processes of a launched run.
BY_DESIGN = {"output": [rf"{_SPLIT}/cache-[^/]+\.arrow", rf"{_SPLIT}/tmp[^/]+"],
             "work": [rf"{_KEY}/\.chunk-\d{{5}}\.\d+\.tmp", rf"{_KEY}/vectors\.npy", rf"{_KEY}/{_SPLIT}\.arrow",
                      rf"{_KEY}/tmp[^/]+", rf"neighbors-{_SPLIT}\.npy"],
             "hub": []}


def first_foreign(folder: Path, allowed: list[str]) -> str | None:
    """The first path in `folder`, at any depth, that none of `allowed` matches (a symlink, or
    an entry that is neither file nor folder, always counts); None if there is none."""
    pattern = re.compile("|".join(f"(?:{one})" for one in allowed))
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()) or not pattern.fullmatch(relative):
            return relative
    return None


def output_path(output: str) -> Path:
    """The directory `--output` names, as the build writes it: a symlink followed to its target
    (which is replaced, the link kept), no trailing slash or `..`, so the work files beside it are
    beside it, never inside an earlier output."""
    if not output.strip():
        raise BuildError("--output is empty: pass a directory path, e.g. --output data/elm-wikitext2")
    try:
        return Path(output).expanduser().resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise BuildError(f"--output {output} cannot be resolved ({err}): pass a directory path") from None


def hub_shard(folder: Path, split: str, index: int, shards: int) -> Path:
    """A parquet shard of the Hub layout, as the card's `hub_data_files` patterns find it."""
    return folder / HUB_DATA / f"{split}-{index:05d}-of-{shards:05d}.parquet"


def hub_data_files(split: str) -> str:
    """The pattern, relative to the Hub layout, of a split's shards."""
    return f"{HUB_DATA}/{split}-*"


def check_output_location(output: str, work: Path, hub: Path, **inputs: str) -> None:
    """Refuse, before any work, an --output the build may not replace: a file, a folder of the
    user's, one that holds or sits inside an input (`inputs`: option name to local path), or
    work folders beside it (`work`, `hub`: the pipeline names them) that are not the build's."""
    target = output_path(output)
    if target.exists() and not target.is_dir():
        raise BuildError(f"--output {output} is a file: pass a directory path")
    for option, path in inputs.items():
        if is_local(path):
            _check_apart(output, target, option, path)
    check_replaceable(target, output)
    for folder, kind in ((work, "work"), (hub, "hub")):
        reason = not_our_folder(folder, kind) if folder.exists() else None
        if reason:
            raise BuildError(f"{folder} exists and was not made by this build ({reason}), and the build "
                             "deletes its work folders: move it away, or pass another --output")


def check_writable_beside(output: str) -> None:
    """The build writes its output, and folders beside it, into --output's folder (made if missing):
    tried now with a folder made and removed there, before any text or model work."""
    folder = output_path(output).parent
    while not folder.exists():  # the build makes the missing folders: the first that exists must take them
        folder = folder.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".elm-wikitext-check-", dir=folder))
    except OSError as err:
        raise BuildError(f"cannot write beside --output {output}: {folder} is not a folder this build can "
                         f"write in ({err.strerror or err}): make it writable, or pass an --output elsewhere") from None


def columns_on_disk(output: str) -> list[str] | None:
    """The columns beside the text's that an output holds, as its train split's own schema file
    says (not its manifest); [] where there is no output, None where it cannot be told."""
    target = output_path(output)
    if not target.is_dir() or not any(target.iterdir()):
        return []
    try:
        features = json.loads((target / "train" / "dataset_info.json").read_text())["features"]
        return [name for name in features if name not in TEXT_COLUMNS]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_hub_folder_location(folder: str, output: str) -> None:
    """Refuse, before any work, a --hub-folder the build may not fill: one inside --output or
    holding it (the build replaces its output whole), or a folder of the user's (it is emptied)."""
    target, staged = output_path(output), Path(folder).expanduser().resolve()
    if staged == target or target in staged.parents or staged in target.parents:
        raise BuildError(f"--hub-folder {folder} and --output {output} overlap: pass a --hub-folder "
                         "outside --output, e.g. --hub-folder data/hub-upload")
    reason = not_our_folder(staged, "hub") if _holds_anything(staged) else None
    if reason:
        raise BuildError(f"--hub-folder {folder} exists and holds what this build did not stage ({reason}; it "
                         "would be emptied): pass a new or empty folder")


def _holds_anything(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _check_apart(output: str, target: Path, option: str, path: str) -> None:
    other = Path(path).expanduser().resolve()
    if target == other or other in target.parents:
        raise BuildError(f"--output {output} is inside {option} {path}: the build replaces its output "
                         f"whole, so pass an --output outside {option}")
    if target in other.parents:
        raise BuildError(f"{option} {path} is inside --output {output}: the build replaces its output "
                         f"whole, so pass an --output that does not hold {option}")


def check_replaceable(target: Path, output: str) -> None:
    """A build replaces only an earlier output of its own, or an empty directory."""
    if not target.exists():
        return
    reason = _not_ours(target)
    if reason:
        raise BuildError(f"--output {output} is not an earlier output of this build ({reason}), and a "
                         "build replaces its output whole: pass a new or empty directory as --output")


def _not_ours(directory: Path) -> str | None:
    """Why `directory` is not an output this project wrote (None: it is one, or empty)."""
    if not any(directory.iterdir()):
        return None
    manifest = load_manifest_json(directory)
    foreign = first_foreign(directory, owned_paths(manifest))
    if foreign:
        return f"it holds {foreign}, which this build did not write"
    if not (directory / MANIFEST_FILE).is_file() or (isinstance(manifest, dict) and not is_our_manifest(manifest)):
        return f"it has no {MANIFEST_FILE} written by this build"
    if not isinstance(manifest, dict) and not (directory / "dataset_dict.json").is_file():
        return f"its {MANIFEST_FILE} is not JSON and it has no dataset_dict.json"  # too little to call it ours
    return None  # ours, even with a damaged manifest (only the layout's names, then): a rebuild replaces it


def owned_paths(manifest) -> list[str]:
    """What an output may hold: the files its manifest lists, where that manifest is sealed (an
    edited one could list a user's file); else only the layout's names. Both with BY_DESIGN's."""
    files = manifest.get("files") if is_our_manifest(manifest) else None
    if isinstance(files, list) and is_sealed(manifest):
        listed = [re.escape(name) for name in files if isinstance(name, str)]
        return [re.escape(MANIFEST_FILE), _SPLIT, *listed, *BY_DESIGN["output"]]
    return OUTPUT_LAYOUT + BY_DESIGN["output"]


def not_our_folder(folder: Path, kind: str) -> str | None:
    """Why `folder` is not a folder the build made beside its output (`kind`: "work" for the
    embedding's chunks, "hub" for the Hub layout, "writing" for an output being written), or None:
    it carries the marker, and every path in it is one its layout or BY_DESIGN allows."""
    if not folder.is_dir() or folder.is_symlink():
        return "it is not a folder"
    if not (folder / WORK_MARKER).is_file():
        return f"it has no {WORK_MARKER} marker"
    layout = {"work": WORK_LAYOUT + BY_DESIGN["work"], "hub": HUB_LAYOUT_FILES + BY_DESIGN["hub"],
              "writing": OUTPUT_LAYOUT + BY_DESIGN["output"]}[kind]
    foreign = first_foreign(folder, [re.escape(WORK_MARKER), *layout])
    return f"it holds {foreign}, which this build did not write" if foreign else None


def make_hub_folder(folder: Path) -> None:
    """An empty Hub layout at `folder`, marked as the build's, replacing one an earlier upload
    left (and nothing else)."""
    reason = not_our_folder(folder, "hub") if _holds_anything(folder) else None
    if reason:
        raise BuildError(f"{folder} exists and was not made by this build ({reason}), and the build would "
                         "delete it: move it away, then rerun")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / HUB_DATA).mkdir(parents=True)
    (folder / WORK_MARKER).touch()


def remove_work_folder(folder: Path, kind: str = "hub") -> None:
    """Delete a work folder the build made (`kind` as not_our_folder); leave anything else."""
    reason = not_our_folder(folder, kind) if folder.exists() else None
    if reason:
        log.warning("left %s in place: %s", folder, reason)
    elif folder.exists():
        shutil.rmtree(folder, ignore_errors=True)


def remove_finished_work(folder: Path, key: str | None) -> None:
    """Delete the chunks of one finished column (work key `key`) from the work folder; the folder
    itself goes only when no other run's chunks, unfinished, are left in it."""
    reason = not_our_folder(folder, "work") if folder.exists() else None
    if reason:
        log.warning("left %s in place: %s", folder, reason)
        return
    if key:
        shutil.rmtree(folder / key, ignore_errors=True)
    for shared in folder.glob("neighbors-*.npy"):  # the neighbours' search is over: no one reads them
        shared.unlink(missing_ok=True)
    left = sorted(path.name for path in folder.iterdir() if path.name != WORK_MARKER) if folder.exists() else None
    if left == []:
        shutil.rmtree(folder, ignore_errors=True)
    elif left:
        log.info("kept %s: it holds the unfinished work of other runs (%s); rerun them to finish "
                 "it, or delete the folder if they are abandoned", folder, ", ".join(left))


@contextmanager
def output_lock(output: str):
    """Refuse a second build into the same output while one runs. The OS drops the lock when its
    process ends, so a killed build never leaves a stale one."""
    # The lock file lives in the user's cache, so that a refused run leaves nothing beside --output.
    key = hashlib.sha256(str(output_path(output)).encode()).hexdigest()[:16]
    path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "elm-wikitext" / "locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BuildError(f"another build is writing {output} (it holds the lock {path}): wait for "
                         "it to finish, or pass another --output") from None
    try:
        yield
    finally:
        # Removed while still held, so that lock files do not pile up, one per output ever built;
        # filelock takes a lock on an unlinked file for no lock, so a build starting now is safe.
        path.unlink(missing_ok=True)
        lock.release()


def publishable(splits: DatasetDict) -> DatasetDict:
    """The published columns, in their order (the token ids stay behind)."""
    columns = TEXT_COLUMNS + [name for name in splits["train"].column_names
                              if name not in TEXT_COLUMNS and name != TOKEN_IDS]  # the embeddings
    return splits.select_columns(columns)


def split_checksum(directory: Path, files: list[str] | None = None) -> str:
    """SHA-256 of a split's Arrow files: `files`, the ones the build wrote (what datasets adds
    later, such as a user's map's cache-*.arrow, is not the build's), by default all of them."""
    digest = hashlib.sha256()
    for name in sorted(files) if files is not None else sorted(p.name for p in directory.glob("*.arrow")):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def write_output(splits: DatasetDict, manifest: Manifest, output: str, card=None) -> Path:
    """Save the DatasetDict, manifest and, where `card` is given, the card to `output`, whole or
    not at all. `card(splits, manifest, folder)` writes the card's files into `folder`."""
    target = output_path(output)
    staging = target.parent / f".{target.name}.writing-{os.getpid()}"
    try:
        make_work_folder(staging)  # marked first, so that only this build's staging is ever removed
        splits = publishable(splits)
        splits.save_to_disk(str(staging))
        manifest.splits = {name: _split_entry(staging / name, len(split)) for name, split in splits.items()}
        if card is not None:
            card(splits, manifest, staging)
        # Every file, the card's too, so that a later build replaces only these (and BY_DESIGN's).
        manifest.files = sorted(path.relative_to(staging).as_posix() for path in staging.rglob("*")
                                if path.is_file() and path.name != WORK_MARKER)
        manifest.manifest_sha256 = manifest_checksum(manifest.to_json())
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        (staging / WORK_MARKER).unlink()  # last: a staging folder killed before is still marked
        _swap_into_place(staging, target, output)
    except OSError as err:  # a read-only or full location: the earlier output is still whole
        raise BuildError(f"cannot write {output} ({err}): make its folder writable or free some "
                         "space, then rerun; any earlier output there is unchanged") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)  # made above by this process
    log.info("wrote %s", target)
    return target


def manifest_intact(manifest: Manifest) -> bool:
    """Whether the manifest still matches its checksum (an edit of the output since it was read)."""
    return is_sealed(manifest.to_json())


def _split_entry(directory: Path, rows: int) -> SplitEntry:
    files = sorted(path.name for path in directory.glob("*.arrow"))
    return SplitEntry(rows=rows, files=files, sha256=split_checksum(directory, files))


def recover_output(output: str) -> None:
    """Clean up after a build killed while writing (call under the output lock): put back an
    output caught between the two renames, and delete half-written staging directories. Only
    folders this build wrote are touched: a staging folder carries the work marker, an earlier
    output its manifest."""
    target = output_path(output)
    if not target.parent.is_dir():
        return
    previous = sorted(p for p in target.parent.glob(f".{target.name}.previous-*") if _not_ours(p) is None)
    if previous and not target.exists():
        log.warning("restoring %s from %s, left by a build killed while writing", target, previous[-1])
        os.replace(previous[-1], target)
    for leftover in [*target.parent.glob(f".{target.name}.writing-*"), *previous]:
        if leftover.exists() and (not_our_folder(leftover, "writing") is None or _not_ours(leftover) is None):
            shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(staging: Path, target: Path, output: str) -> None:
    # Two renames: at every moment either the old or the new output is complete on disk.
    previous = target.parent / f".{target.name}.previous-{os.getpid()}"
    if target.exists():
        check_replaceable(target, output)  # proven again now, under the lock, just before
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def read_output(output: str, option: str = "--output") -> tuple[DatasetDict, Manifest]:
    """An output written earlier by this build, and its manifest, each part checked before use:
    `option` names where the path came from in the one line a problem gets."""
    directory = Path(output)
    if not (directory / MANIFEST_FILE).is_file():
        if option == "--verify":
            raise BuildError(f"--verify {output} holds no build output: pass the --output of an earlier build")
        raise BuildError(f"--output {output} holds no build output: run "
                         "`python build.py --stage text` first, or --stage all")
    manifest = load_manifest_json(directory)
    problem = manifest_problem(manifest) or _not_ours(directory)
    if problem is None:
        missing = [name for name in SPLIT_NAMES if not (directory / name / "state.json").is_file()]
        problem = f"it lacks the split folders {missing}" if missing else None
    if problem is None:
        try:
            splits = load_from_disk(str(directory))
        except (OSError, ValueError, KeyError, TypeError) as err:  # datasets' errors for damaged files
            problem = f"datasets cannot load it: {type(err).__name__}: {err}"
        else:
            problem = _columns_problem(splits)
    if problem:
        raise NotWhole(problem, f"{option} {output} is not a whole output of this build ({problem}): "
                       + rebuild_advice(output, directory))
    return splits, Manifest.from_json(manifest)


class NotWhole(BuildError):
    """An output of this build that cannot be read whole; `problem` says why."""

    def __init__(self, problem: str, message: str):
        super().__init__(message)
        self.problem = problem


def rebuild_advice(output: str, directory: Path) -> str:
    """What to do with an output that cannot be read whole: rebuild it in place where it is ours
    (the command works on it: a damaged output of the build is replaced), else go elsewhere."""
    return ELSEWHERE if _not_ours(directory) is not None else rebuild_in_place(output)


def _columns_problem(splits: DatasetDict) -> str | None:
    if list(splits) != list(SPLIT_NAMES):
        return f"its splits are {list(splits)}, not {list(SPLIT_NAMES)}"
    missing = [name for name in TEXT_COLUMNS if name not in splits["train"].column_names]
    return f"it lacks the columns {missing}" if missing else None
