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
import shutil
import sys
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
ROWS_PER_SHARD = 50_000  # about 0.5 GB of parquet with 2560-float vectors


def expected_features(dim: int | None) -> Features:
    features = {"text_id": Value("string"), "text": Value("string"), "article": Value("string"),
                "section": Value("string"), "token_count": Value("int32"), "char_count": Value("int32")}
    if dim is not None:
        features["embedding"] = List(Value("float32"), length=dim)
    return Features(features)


def check_output_location(output: str) -> None:
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise BuildError(f"--output {output} is a file: pass a directory path")


@contextmanager
def output_lock(output: str):
    """Refuse a second build into the same output while one runs. The OS drops the lock when its
    process ends, so a killed build never leaves a stale one."""
    # The lock file lives in the user's cache, so that a refused run leaves nothing beside --output.
    key = hashlib.sha256(str(Path(output).resolve()).encode()).hexdigest()[:16]
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
    return {"config": dataclasses.asdict(options), "versions": package_versions(), "stats": stats,
            "command": " ".join(["python", "build.py", *sys.argv[1:]]),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def publishable(splits: DatasetDict) -> DatasetDict:
    """The published columns, in their order (the token ids stay behind)."""
    columns = list(expected_features(None)) + (["embedding"] if "embedding" in splits["train"].column_names else [])
    return splits.select_columns(columns)


def split_checksum(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.arrow")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_output(splits: DatasetDict, manifest: dict, output: str) -> Path:
    """Save the DatasetDict, manifest, card and histogram to `output`, whole or not at all."""
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.writing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        splits = publishable(splits)
        splits.save_to_disk(str(staging))
        manifest["splits"] = {name: {"rows": len(split), "sha256": split_checksum(staging / name)}
                              for name, split in splits.items()}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if "embedding" in splits["train"].column_names:
            write_card(splits, manifest, staging)
        _swap_into_place(staging, target)
    except OSError as err:  # a read-only or full location: the earlier output is still whole
        raise BuildError(f"cannot write {output} ({err}): make its folder writable or free some "
                         "space, then rerun; any earlier output there is unchanged") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", target)
    return target


def recover_output(output: str) -> None:
    """Clean up after a build killed while writing (call under the output lock): put back an
    output caught between the two renames, and delete half-written staging directories."""
    target = Path(output)
    if not target.parent.is_dir():
        return
    previous = sorted(target.parent.glob(f".{target.name}.previous-*"))
    if previous and not target.exists():
        log.warning("restoring %s from %s, left by a build killed while writing", target, previous[-1])
        os.replace(previous[-1], target)
    for leftover in [*target.parent.glob(f".{target.name}.writing-*"), *target.parent.glob(f".{target.name}.previous-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _swap_into_place(staging: Path, target: Path) -> None:
    # Two renames: at every moment either the old or the new output is complete on disk.
    previous = target.parent / f".{target.name}.previous-{os.getpid()}"
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def read_output(output: str) -> tuple[DatasetDict, dict]:
    """An output written earlier and its manifest."""
    manifest_path = Path(output) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BuildError(f"--output {output} holds no build output: run "
                         "`python build.py --stage text` first, or --stage all")
    return load_from_disk(output), json.loads(manifest_path.read_text())


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


def card_metadata(splits: DatasetDict, dim: int, source: str, pretty_name: str) -> DatasetCardData:
    """Hub YAML: license, language, categories, and the configs/dataset_info blocks that
    `load_dataset` reads, made by datasets' own helpers so they match the data."""
    rows = sum(len(split) for split in splits.values())
    card_data = DatasetCardData(
        license=["cc-by-sa-3.0", "gfdl"], language=["en"], pretty_name=pretty_name,
        task_categories=["feature-extraction", "text-generation"],
        size_categories=["n<1K" if rows < 1000 else "1K<n<10K" if rows < 10_000 else
                         "10K<n<100K" if rows < 100_000 else "100K<n<1M"],
        source_datasets=[source] if _on_hub(source) else None,  # a local copy: unknown
        tags=["embeddings", "elm", "wikitext"])
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
    config = text["source_config"] if _on_hub(text["source"]) else ""
    corpus = "WikiText-" + config.split("-")[1] if config.startswith("wikitext-") else "WikiText"
    pretty_name = f"ELM {corpus}: paragraphs and their {Path(embed['model']).name} vectors"
    return DatasetCard.from_template(
        card_metadata(splits, embed["dim"], text["source"], pretty_name), template_path=str(CARD_TEMPLATE),
        pretty_name=pretty_name, corpus=corpus, repo_id=repo_id, version=version,
        model=embed["model"],
        model_revision=(embed["model_revision"] or "main") if _on_hub(embed["model"]) else None,
        dim=embed["dim"], dim_cut=manifest["config"]["dim"] is not None, dtype=embed["dtype"],
        recomputed=embed["recomputed_float32"], max_tokens=text["max_tokens"], source=text["source"],
        source_config=config or None, text=text,
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


def stage_hub_folder(output: str, folder: Path, repo_id: str, version: str) -> Path:
    """The Hub layout of `output`: data/{split}-NNNNN-of-NNNNN.parquet, README.md, histogram."""
    splits, manifest = read_output(output)
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "data").mkdir(parents=True)
    for name, split in splits.items():
        shards = max(1, -(-len(split) // ROWS_PER_SHARD))
        for index in range(shards):
            split.shard(shards, index, contiguous=True).to_parquet(
                folder / "data" / f"{name}-{index:05d}-of-{shards:05d}.parquet")
    write_card(splits, manifest, folder, repo_id=repo_id, version=version)
    return folder
