"""Publish stage: the output directory, its card and manifest, and the versioned Hub upload.

The output directory is written whole or not at all: everything goes to a temporary directory
beside it, which is then swapped in, so a failed or interrupted run never leaves a half-written
output and never damages an earlier one. The Hub upload is one commit of a folder staged in the
Hub's layout (parquet shards under data/ and the card as README.md), then a tag on that commit.
"""

import dataclasses
from contextlib import contextmanager
import hashlib
import json
import logging
import os
import shlex
import shutil
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from datasets import DatasetDict, Features, List, Value, load_from_disk
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from .errors import BuildError
from .options import SPLIT_NAMES

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
HISTOGRAM_FILE = "token_lengths.png"
CARD_TEMPLATE = Path(__file__).with_name("dataset_card.md")  # package data: ships in the wheel
HISTOGRAM_EDGES = [100, 150, 200, 300, 400, 600, 800, 1200, 2001]
# The Hub's advice for parquet files: at most about 500 MB each (the viewer and readers fetch
# whole files). Parquet of these rows is no larger than their Arrow form, which sizes the shards.
MAX_SHARD_BYTES = 500_000_000
POOLING = "last_token_l2"  # encode.py's: the appended end-of-text token's state, L2-normalized


def expected_features(dim: int | None) -> Features:
    features = {"text_id": Value("string"), "text": Value("string"), "article_id": Value("int32"),
                "article": Value("string"),
                "section": Value("string"), "token_count": Value("int32"), "char_count": Value("int32")}
    if dim is not None:
        features["embedding"] = List(Value("float32"), length=dim)
    return Features(features)


# Only a build writes a manifest with this key: it is what makes a directory ours to replace.
OUTPUT_MARKER = "elm_wikitext_output"
OUTPUT_FORMAT = 1
# What a build writes at the top of an output; anything else there belongs to someone else.
OUTPUT_ENTRIES = {"dataset_dict.json", MANIFEST_FILE, "README.md", HISTOGRAM_FILE, *SPLIT_NAMES}
# A file that marks the work folders a build makes (the embedding's chunks, a staging output).
WORK_MARKER = ".elm-wikitext-work"
HUB_ENTRIES = {"data", "README.md", HISTOGRAM_FILE}


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


def work_path(output: str, suffix: str) -> Path:
    """A work folder beside the output, e.g. `OUTPUT.embed-work`."""
    target = output_path(output)
    return target.parent / f"{target.name}{suffix}"


def check_output_location(output: str, **inputs: str) -> None:
    """Refuse, before any work, an --output the build may not replace: a file, a folder of the
    user's, one that holds or sits inside an input (`inputs`: option name to local path), or
    work folders beside it that are not the build's."""
    target = output_path(output)
    if target.exists() and not target.is_dir():
        raise BuildError(f"--output {output} is a file: pass a directory path")
    for option, path in inputs.items():
        if path and Path(path).expanduser().exists():
            _check_apart(output, target, option, path)
    check_replaceable(target, output)
    for suffix, owned in ((".embed-work", _is_work_folder), (".hub", _is_hub_folder)):
        folder = work_path(output, suffix)
        if folder.exists() and not owned(folder):
            raise BuildError(f"{folder} exists and was not made by this build (the build would delete it): "
                             "move it away, or pass another --output")


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
    # The Hub layout holds only what stage_hub_folder writes: parquet shards, the card, the plot.
    return (folder.is_dir() and {path.name for path in folder.iterdir()} <= HUB_ENTRIES
            and all(path.suffix == ".parquet" for path in (folder / "data").glob("*")))


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


def package_versions() -> dict:
    versions = {}
    for name in ("elm-wikitext", "datasets", "transformers", "torch", "accelerate", "huggingface-hub", "pyarrow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_manifest(options, stats: dict) -> dict:
    """Everything needed to know how the output was made (never the Hub token)."""
    return {OUTPUT_MARKER: OUTPUT_FORMAT, "config": dataclasses.asdict(options),
            "versions": package_versions(), "stats": stats, "command": rebuild_command(options),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# Options that say where or whether to publish, or how fast to work: not what the data is.
NOT_REBUILDING = {"stage", "push", "repo_id", "version", "private", "verify", "dry_run", "num_proc"}


def rebuild_command(options) -> str:
    """One command that builds this output again from scratch: every option that differs from
    its default (a `--stage embed` run's options include the text stage's, from its manifest)."""
    defaults = type(options)()
    words = ["python", "build.py"]
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        if field.name not in NOT_REBUILDING and value != getattr(defaults, field.name):
            words += [f"--{field.name.replace('_', '-')}", shlex.quote(str(value))]
    return " ".join(words)


def publishable(splits: DatasetDict) -> DatasetDict:
    """The published columns, in their order (the token ids stay behind)."""
    columns = list(expected_features(None)) + (["embedding"] if "embedding" in splits["train"].column_names else [])
    return splits.select_columns(columns)


def split_checksum(directory: Path, files: list[str] | None = None) -> str:
    """SHA-256 of a split's Arrow files: `files`, the ones the build wrote (what datasets adds
    later, such as a user's map's cache-*.arrow, is not the build's), by default all of them."""
    digest = hashlib.sha256()
    for name in sorted(files) if files is not None else sorted(p.name for p in directory.glob("*.arrow")):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def write_output(splits: DatasetDict, manifest: dict, output: str) -> Path:
    """Save the DatasetDict, manifest, card and histogram to `output`, whole or not at all."""
    target = output_path(output)
    staging = target.parent / f".{target.name}.writing-{os.getpid()}"
    try:
        make_work_folder(staging)  # marked first, so that only this build's staging is ever removed
        splits = publishable(splits)
        splits.save_to_disk(str(staging))
        manifest["splits"] = {name: _split_entry(staging / name, len(split)) for name, split in splits.items()}
        manifest["manifest_sha256"] = manifest_checksum(manifest)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if "embedding" in splits["train"].column_names:
            write_card(splits, manifest, staging)
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


def _split_entry(directory: Path, rows: int) -> dict:
    files = sorted(path.name for path in directory.glob("*.arrow"))
    return {"rows": rows, "files": files, "sha256": split_checksum(directory, files)}


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


def read_output(output: str, option: str = "--output") -> tuple[DatasetDict, dict]:
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
    return splits, manifest


def _manifest_problem(manifest) -> str | None:
    if not isinstance(manifest, dict):
        return f"its {MANIFEST_FILE} is not a JSON object"
    if not _is_our_manifest(manifest):
        return f"its {MANIFEST_FILE} was not written by this build"
    wrong = [key for key, kind in REQUIRED_MANIFEST.items() if not isinstance(manifest.get(key), kind)]
    if wrong or not isinstance(manifest["stats"].get("text"), dict):
        return f"its {MANIFEST_FILE} lacks {wrong or ['stats.text']}"
    return None


def _columns_problem(splits: DatasetDict) -> str | None:
    if list(splits) != list(SPLIT_NAMES):
        return f"its splits are {list(splits)}, not {list(SPLIT_NAMES)}"
    missing = [name for name in expected_features(None) if name not in splits["train"].column_names]
    return f"it lacks the columns {missing}" if missing else None


def token_counts(splits: DatasetDict) -> np.ndarray:
    return np.concatenate([split.data.column("token_count").to_numpy() for split in splits.values()])


def token_histogram(splits: DatasetDict, min_tokens: int, max_tokens: int) -> list[dict]:
    """Rows per token-length bucket, the buckets spanning the run's --min-tokens..--max-tokens."""
    edges = sorted({min_tokens, max_tokens + 1, *(e for e in HISTOGRAM_EDGES if min_tokens < e <= max_tokens)})
    counts, _ = np.histogram(token_counts(splits), edges)
    return [{"range": f"{low}-{high - 1}", "count": int(count)}
            for low, high, count in zip(edges, edges[1:], counts)]


def save_histogram(splits: DatasetDict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 3.2), dpi=100)
    axes.hist(token_counts(splits), bins=60, color="#4a7ab5")
    axes.set(xlabel="tokens per paragraph", ylabel="paragraphs", title="Token lengths (all splits)")
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def embedding_recipe(embed: dict) -> dict:
    """How the vectors were made, as `elm_wikitext.embedder.Embedder.from_dataset` reads it back
    from the manifest or from the card: model, its weights' identity (a Hub commit, or the SHA-256
    of a local directory's files), dtype, dim and pooling."""
    return {"model": embed["model"], "model_revision": embed["model_revision"],
            "model_weights": embed.get("model_weights"),  # absent from builds before it was recorded
            "dtype": embed["dtype"], "dim": embed["dim"], "pooling": POOLING}


def card_metadata(splits: DatasetDict, dim: int, source: str, pretty_name: str,
                  recipe: dict | None = None) -> DatasetCardData:
    """Hub YAML: license, language, categories, and the configs/dataset_info blocks that
    `load_dataset` reads, made by datasets' own helpers so they match the data; and the
    embedding's recipe, so that a copy of the Hub folder alone can embed new text the same way."""
    rows = sum(len(split) for split in splits.values())
    card_data = DatasetCardData(
        license=["cc-by-sa-3.0", "gfdl"], language=["en"], pretty_name=pretty_name,
        task_categories=["feature-extraction", "text-generation"],
        size_categories=["n<1K" if rows < 1000 else "1K<n<10K" if rows < 10_000 else
                         "10K<n<100K" if rows < 100_000 else "100K<n<1M"],
        source_datasets=[source] if _on_hub(source) else None,  # a local copy: unknown
        tags=["embeddings", "elm", "wikitext"], embedding=recipe)
    # num_bytes: each split's size in Arrow, as datasets records it when it writes a split.
    sizes = {name: split.data.nbytes for name, split in splits.items()}
    info = DatasetInfo(features=expected_features(dim), dataset_size=sum(sizes.values()), splits=SplitDict(
        {name: SplitInfo(name=name, num_examples=len(split), num_bytes=sizes[name])
         for name, split in splits.items()}))
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    MetadataConfigs({"default": {"data_files": [
        {"split": name, "path": f"data/{name}-*"} for name in SPLIT_NAMES]}}).to_dataset_card_data(card_data)
    return card_data


def render_card(splits: DatasetDict, manifest: dict, repo_id: str = "<your-name>/elm-wikitext2",
                version: str = "v1.0.0") -> DatasetCard:
    # The text stage's facts come from its own statistics: a later `--stage embed` run's options
    # say nothing of the source or the length limits the text was made with.
    text, embed = manifest["stats"]["text"], manifest["stats"]["embed"]
    config = text["source_config"]  # for a local folder too: it chose the .raw or .tokens files
    on_hub = _on_hub(text["source"]) and config.startswith("wikitext-")
    corpus = "WikiText-" + config.split("-")[1] if on_hub else "WikiText"
    pretty_name = f"ELM {corpus}: paragraphs and their {Path(embed['model']).name} vectors"
    return DatasetCard.from_template(
        card_metadata(splits, embed["dim"], text["source"], pretty_name, embedding_recipe(embed)),
        template_path=str(CARD_TEMPLATE),
        pretty_name=pretty_name, corpus=corpus, repo_id=repo_id, version=version,
        model=embed["model"],
        model_revision=(embed["model_revision"] or "main") if _on_hub(embed["model"]) else None,
        dim=embed["dim"], dim_cut=manifest["config"]["dim"] is not None, dtype=embed["dtype"],
        recomputed=embed["recomputed_float32"], max_tokens=text["max_tokens"], source=text["source"],
        source_config=config, raw=text["raw"], text=text,
        histogram=token_histogram(splits, text["min_tokens"], text["max_tokens"]),
        command=manifest["command"], versions=manifest["versions"], created=manifest["created"],
        splits=[{"name": name, "rows": len(split), "tokens": text["tokens"][name]}
                for name, split in splits.items()])


def _on_hub(repo: str) -> bool:
    # A Hub id has a config and a revision to report; a local directory has neither.
    return not Path(repo).exists()


def write_card(splits: DatasetDict, manifest: dict, directory: Path, **hub) -> None:
    render_card(splits, manifest, **hub).save(directory / "README.md")
    save_histogram(splits, directory / HISTOGRAM_FILE)


def stage_hub_folder(output: str, folder: Path, repo_id: str, version: str,
                     max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """The Hub layout of `output`: data/{split}-NNNNN-of-NNNNN.parquet, README.md, histogram.
    Each split is cut into contiguous shards of equal rows, as many as its Arrow bytes over
    `max_shard_bytes` (rows differ little in size: the vector dominates); the card's
    `data/{split}-*` patterns find them all."""
    splits, manifest = read_output(output)
    if folder.exists() and not _is_hub_folder(folder):
        raise BuildError(f"{folder} exists and was not made by this build (the build would delete it): "
                         "move it away, then rerun")
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    for name, split in splits.items():
        shards = max(1, -(-split.data.nbytes // max_shard_bytes))
        for index in range(shards):
            split.shard(shards, index, contiguous=True).to_parquet(
                folder / "data" / f"{name}-{index:05d}-of-{shards:05d}.parquet")
    write_card(splits, manifest, folder, repo_id=repo_id, version=version)
    return folder
