"""The output directory: every path and file of an output, and the folders beside it.

Only this module names them: the data, manifest.json (the typed `manifest.Manifest`, read and
written here), the card's files, and the work folders beside the output (the embedding's chunks
in `OUTPUT.embed-work`, the Hub layout in `OUTPUT.hub`). It decides which folders the build may
replace or delete: only ones it wrote.

The output directory is written whole or not at all: everything goes to a temporary directory
beside it, which is then swapped in, so a failed or interrupted run never leaves a half-written
output and never damages an earlier one.
"""

import hashlib
import json
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from datasets import DatasetDict, Features, List, Value, load_from_disk
from filelock import FileLock, Timeout

from elm_wikitext.errors import BuildError
from elm_wikitext.locations import is_local
from elm_wikitext.options import SPLIT_NAMES, neighbor_columns
from elm_wikitext.publish.manifest import OUTPUT_MARKER, Manifest, SplitEntry

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
HISTOGRAM_FILE = "token_lengths.png"
EMBEDDING_MAP_FILE = "embedding_map.png"  # the vectors' PCA map, coloured by article
# The work folders beside OUTPUT: the embedding's chunks, and the Hub layout being uploaded.
EMBED_WORK = ".embed-work"
HUB_LAYOUT = ".hub"
HUB_DATA = "data"  # the Hub layout's folder of parquet shards


TEXT_FEATURES = {"text_id": Value("string"), "text": Value("string"), "article_id": Value("int32"),
                 "article": Value("string"), "section": Value("string"), "token_count": Value("int32"),
                 "char_count": Value("int32")}
TEXT_COLUMNS = list(TEXT_FEATURES)


def expected_features(dims: dict[str, int] | None = None, neighbors: dict[str, int] | None = None) -> Features:
    """The published schema: the text columns, then each embedding column (name: its dim) and,
    where `neighbors` gives it a K, its neighbours' text_ids and cosines."""
    features = dict(TEXT_FEATURES)
    for column, dim in (dims or {}).items():
        features[column] = List(Value("float32"), length=dim)
        features.update(neighbor_features(column, neighbors[column]) if column in (neighbors or {}) else {})
    return Features(features)


def neighbor_features(column: str, k: int) -> dict:
    """An embedding column's neighbour columns: K text_ids of the same split, and their cosines."""
    ids, cosines = neighbor_columns(column)
    return {ids: List(Value("string"), length=k), cosines: List(Value("float32"), length=k)}


# What a build writes at the top of an output; anything else there belongs to someone else.
OUTPUT_ENTRIES = {"dataset_dict.json", MANIFEST_FILE, CARD_FILE, HISTOGRAM_FILE, EMBEDDING_MAP_FILE, *SPLIT_NAMES}
# A file that marks the work folders a build makes (the embedding's chunks, a staging output).
WORK_MARKER = ".elm-wikitext-work"
HUB_ENTRIES = {HUB_DATA, CARD_FILE, HISTOGRAM_FILE, EMBEDDING_MAP_FILE}


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


def _work_path(output: str, suffix: str) -> Path:
    """A work folder beside the output, e.g. `OUTPUT.embed-work`."""
    target = output_path(output)
    return target.parent / f"{target.name}{suffix}"


def embed_work_folder(output: str) -> Path:
    """Where the embedding's finished chunks wait, one folder per work key, until the output is
    written (a rerun resumes from them)."""
    return _work_path(output, EMBED_WORK)


def hub_folder(output: str) -> Path:
    """Where the output is staged in the Hub's layout for an upload."""
    return _work_path(output, HUB_LAYOUT)


def hub_shard(folder: Path, split: str, index: int, shards: int) -> Path:
    """A parquet shard of the Hub layout, as the card's `hub_data_files` patterns find it."""
    return folder / HUB_DATA / f"{split}-{index:05d}-of-{shards:05d}.parquet"


def hub_data_files(split: str) -> str:
    """The pattern, relative to the Hub layout, of a split's shards."""
    return f"{HUB_DATA}/{split}-*"


def check_output_location(output: str, **inputs: str) -> None:
    """Refuse, before any work, an --output the build may not replace: a file, a folder of the
    user's, one that holds or sits inside an input (`inputs`: option name to local path), or
    work folders beside it that are not the build's."""
    target = output_path(output)
    if target.exists() and not target.is_dir():
        raise BuildError(f"--output {output} is a file: pass a directory path")
    for option, path in inputs.items():
        if is_local(path):
            _check_apart(output, target, option, path)
    check_replaceable(target, output)
    for folder, owned in ((embed_work_folder(output), _is_work_folder), (hub_folder(output), _is_hub_folder)):
        if folder.exists() and not owned(folder):
            raise BuildError(f"{folder} exists and was not made by this build (the build would delete it): "
                             "move it away, or pass another --output")


def check_hub_folder_location(folder: str, output: str) -> None:
    """Refuse, before any work, a --hub-folder the build may not fill: one inside --output or
    holding it (the build replaces its output whole), or a folder of the user's (it is emptied)."""
    target, staged = output_path(output), Path(folder).expanduser().resolve()
    if staged == target or target in staged.parents or staged in target.parents:
        raise BuildError(f"--hub-folder {folder} and --output {output} overlap: pass a --hub-folder "
                         "outside --output, e.g. --hub-folder data/hub-upload")
    if staged.exists() and not _is_hub_folder(staged):
        raise BuildError(f"--hub-folder {folder} exists and holds what this build did not stage (it would "
                         "be emptied): pass a new or empty folder")


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
    entries = sorted(path.name for path in directory.iterdir())
    if not entries:
        return None
    foreign = [name for name in entries if name not in OUTPUT_ENTRIES]
    if foreign:
        return f"it holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}"
    manifest = _load_manifest(directory)
    if not isinstance(manifest, dict) or not _is_our_manifest(manifest):
        return f"it has no {MANIFEST_FILE} written by this build"
    if not (directory / "dataset_dict.json").is_file():
        return "it has no dataset_dict.json"
    return None


def _load_manifest(directory: Path):
    try:
        return json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):  # missing, unreadable, or not JSON
        return None


def _is_our_manifest(manifest: dict) -> bool:
    # Outputs from before the marker carry the package's version under "versions".
    versions = manifest.get("versions")
    return OUTPUT_MARKER in manifest or (isinstance(versions, dict) and "elm-wikitext" in versions)


def _is_work_folder(folder: Path) -> bool:
    return (folder / WORK_MARKER).is_file()


def _is_hub_folder(folder: Path) -> bool:
    # The Hub layout holds only what stage_hub_folder writes: parquet shards, the card, its plots.
    return (folder.is_dir() and {path.name for path in folder.iterdir()} <= HUB_ENTRIES
            and all(path.suffix == ".parquet" for path in (folder / HUB_DATA).glob("*")))


def make_hub_folder(folder: Path) -> None:
    """An empty Hub layout at `folder`, replacing one an earlier upload left (and nothing else)."""
    if folder.exists() and not _is_hub_folder(folder):
        raise BuildError(f"{folder} exists and was not made by this build (the build would delete it): "
                         "move it away, then rerun")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / HUB_DATA).mkdir(parents=True)


def make_work_folder(folder: Path) -> Path:
    """Create a work folder and mark it as the build's, so that only such a folder is deleted."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WORK_MARKER).touch()
    return folder


def remove_work_folder(folder: Path) -> None:
    """Delete a work folder the build made (marked, or in the Hub layout); leave anything else."""
    if folder.is_dir() and (_is_work_folder(folder) or _is_hub_folder(folder)):
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists():
        log.warning("left %s in place: it is not a work folder of this build", folder)


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
                              if name not in TEXT_FEATURES and name != "input_ids"]  # the embeddings
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
        manifest.manifest_sha256 = manifest_checksum(manifest.to_json())
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        if card is not None:
            card(splits, manifest, staging)
        (staging / WORK_MARKER).unlink()
        _swap_into_place(staging, target, output)
    except OSError as err:  # a read-only or full location: the earlier output is still whole
        raise BuildError(f"cannot write {output} ({err}): make its folder writable or free some "
                         "space, then rerun; any earlier output there is unchanged") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)  # made above by this process
    log.info("wrote %s", target)
    return target


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's content but this checksum itself, so --verify sees an edit."""
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def manifest_intact(manifest: Manifest) -> bool:
    """Whether the manifest matches its own checksum (one from before it was recorded does)."""
    return not manifest.recorded("manifest_sha256") or manifest.manifest_sha256 == manifest_checksum(manifest.to_json())


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
        if leftover.exists() and (_is_work_folder(leftover) or _not_ours(leftover) is None):
            shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(staging: Path, target: Path, output: str) -> None:
    # Two renames: at every moment either the old or the new output is complete on disk.
    previous = target.parent / f".{target.name}.previous-{os.getpid()}"
    if target.exists():
        check_replaceable(target, output)  # proven again now, under the lock, just before
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


REQUIRED_MANIFEST = {"config": dict, "stats": dict, "splits": dict}


def read_output(output: str, option: str = "--output") -> tuple[DatasetDict, Manifest]:
    """An output written earlier by this build, and its manifest, each part checked before use:
    `option` names where the path came from in the one line a problem gets."""
    directory = Path(output)
    if not (directory / MANIFEST_FILE).is_file():
        if option == "--verify":
            raise BuildError(f"--verify {output} holds no build output: pass the --output of an earlier build")
        raise BuildError(f"--output {output} holds no build output: run "
                         "`python build.py --stage text` first, or --stage all")
    manifest = _load_manifest(directory)
    problem = _manifest_problem(manifest) or _not_ours(directory)
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
        raise BuildError(f"{option} {output} is not a whole output of this build ({problem}): rebuild "
                         "it with python build.py --stage all, or pass another directory")
    return splits, Manifest.from_json(manifest)


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an output this build wrote, or one line saying why it cannot be read."""
    manifest = _load_manifest(directory)
    problem = _manifest_problem(manifest)
    if problem:
        raise BuildError(f"{directory} is not a whole output of this build ({problem}): rebuild it "
                         "with python build.py --stage all, or pass another directory")
    return Manifest.from_json(manifest)


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict):
        return f"its {MANIFEST_FILE} is not a JSON object"
    if not _is_our_manifest(manifest):
        return f"its {MANIFEST_FILE} was not written by this build"
    wrong = [key for key, kind in REQUIRED_MANIFEST.items() if not isinstance(manifest.get(key), kind)]
    if not wrong:  # the records inside, which Manifest.from_json reads as objects
        wrong = ["stats.text"] if not isinstance(manifest["stats"].get("text"), dict) else [
            f"splits.{name}" for name, entry in manifest["splits"].items() if not isinstance(entry, dict)]
    return f"its {MANIFEST_FILE} lacks {wrong}" if wrong else None


def _columns_problem(splits: DatasetDict) -> str | None:
    if list(splits) != list(SPLIT_NAMES):
        return f"its splits are {list(splits)}, not {list(SPLIT_NAMES)}"
    missing = [name for name in TEXT_COLUMNS if name not in splits["train"].column_names]
    return f"it lacks the columns {missing}" if missing else None
