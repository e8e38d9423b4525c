"""Source stage: WikiText's lines, from the Hub or a local directory, as one `text` column.

The three source splits are pooled in the order train, validation, test: the build makes its own
splits later, by article.
"""

import logging
import re
from pathlib import Path

import datasets
from datasets import Dataset, concatenate_datasets, load_dataset

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.locations import HubId, check_on_hub, looks_like_path

log = logging.getLogger(__name__)

# WikiText's own archive files, in the order they are pooled: the raw configs' archives hold
# `wiki.*.raw`, the tokenized ones' (rare words as `<unk>`) `wiki.*.tokens`.
RAW_FILES = ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw")
TOKEN_FILES = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")
HUB_SPLITS = ("train", "validation", "test")
# The Hub repo's folder of each config's parquet files.
CONFIG_FOLDER = re.compile(r"wikitext-(?:2|103)(?:-raw)?-v1")


def is_raw(config: str) -> bool:
    """`wikitext-2-raw-v1` and `wikitext-103-raw-v1` hold the real words; the others `<unk>`."""
    return "raw" in config.split("-")


def archive_files(config: str) -> tuple[str, ...]:
    return RAW_FILES if is_raw(config) else TOKEN_FILES


def load_lines(source: str, config: str, revision: str | None = None) -> Dataset:
    """All WikiText lines of `source`, one row per line, blank lines included."""
    path = Path(source).expanduser()
    if path.is_dir():
        lines = _load_local(path, config)
    elif path.exists():
        raise BuildError(f"--source {source} is a file: pass the directory that holds it")
    elif looks_like_path(source, file_like=True):
        raise BuildError(f"--source {source} does not exist: pass a directory holding "
                         f"{', '.join(archive_files(config))} or parquet files, or a Hub dataset id")
    else:
        lines = _load_hub(source, config, revision)
    if len(lines) == 0 or _all_blank(lines):
        raise BuildError(f"--source {source} holds no text: point it at a non-empty WikiText copy")
    log.info("source %s: %d lines", source, len(lines))
    return lines


def _all_blank(lines: Dataset) -> bool:
    return not any(text.strip() for batch in lines.iter(batch_size=10_000) for text in batch["text"])


def existing_files(candidates: list[Path]) -> list[Path]:
    """The candidate archive files that exist; one that is there but cannot be read as a file (a
    directory, a dangling symlink, a symlink loop) is refused by name rather than skipped, which
    would build from the other files alone."""
    found = []
    for file in candidates:
        if file.is_file():
            found.append(file)
        elif file.is_symlink():
            raise BuildError(f"{file} is a symlink to nothing readable ({file.readlink()}): fix or "
                             "remove the link, or point --source at the folder that holds the file")
        elif file.exists():
            raise BuildError(f"{file} is a directory, not a WikiText file: remove it, or point --source "
                             "at the folder that holds the file")
    return found


def _load_local(path: Path, config: str) -> Dataset:
    token_files = existing_files([path / name for name in archive_files(config)])
    _check_archive_kind(path, config, token_files)
    parquet = sorted(path.rglob("*.parquet"))
    if token_files and parquet:  # one would be ignored: which one the user meant is not ours to guess
        raise BuildError(f"--source {path} holds both WikiText archive files ({token_files[0].name}) and "
                         f"parquet files ({parquet[0].relative_to(path)}): pass a folder holding only one of them")
    if token_files:
        for file in token_files:
            _check_utf8(file)
        # datasets fails on an empty file
        parts = [_load_file("text", file) for file in token_files if file.stat().st_size > 0]
        return concatenate_datasets(parts) if parts else Dataset.from_dict({"text": []})
    if (path / config).is_dir():  # a download of the whole Hub repo: one folder per config
        path = path / config
    parquet = sorted(path.rglob("*.parquet"), key=_parquet_order)
    if parquet:
        return _load_parquet(path, parquet, config)
    raise BuildError(f"--source {path} holds no WikiText files: it needs {', '.join(archive_files(config))} "
                     "or the Hub's parquet files (e.g. train-00000-of-00001.parquet)")


def _load_file(kind: str, file: Path) -> Dataset:
    """One file as a dataset, under the name of the split it holds (`wiki.valid.raw`: valid), so
    that datasets' progress bar names that split, not "train" for each file."""
    split = re.match(r"(?:wiki\.)?([A-Za-z]+)", file.name)
    name = split.group(1).lower() if split else "train"
    return load_dataset(kind, data_files={name: str(file)}, split=name)


def _check_archive_kind(path: Path, config: str, found: list[Path]) -> None:
    """Refuse a folder holding only the other config's archive files: building the tokenized
    text (with `<unk>`) where the raw one was asked for, or the reverse, would go unnoticed."""
    other = TOKEN_FILES if is_raw(config) else RAW_FILES
    if found or not any((path / name).is_file() for name in other):
        return
    kind, fix = ("tokenized", config.replace("-raw-v1", "-v1")) if is_raw(config) else (
        "raw", config.replace("-v1", "-raw-v1"))
    raise BuildError(f"--source {path} holds the {kind} archive files (wiki.*.{other[0].split('.')[-1]}), "
                     f"not those of --source-config {config}: pass --source-config {fix} to build "
                     f"from them, or a folder holding {', '.join(archive_files(config))}")


def _load_parquet(path: Path, files: list[Path], config: str) -> Dataset:
    folders = sorted({str(file.parent.relative_to(path)) for file in files})
    if len(folders) > 1:  # several configs would be pooled, e.g. raw and tokenized copies
        raise BuildError(f"--source {path} holds parquet files in {len(folders)} folders ({', '.join(folders)}): "
                         "pass one of them as --source, or name it with --source-config")
    other = CONFIG_FOLDER.fullmatch((path / folders[0]).resolve().name)  # the files' folder, or --source's own
    if other and other.group(0) != config:  # a download of another config: <unk> text, or another corpus
        raise BuildError(f"--source {path} holds the parquet files of {other.group(0)}, not of --source-config "
                         f"{config}: pass --source-config {other.group(0)} to build from them, or download "
                         f"{config} (hf download ... --include \"{config}/*\")")
    parts = [_load_file("parquet", file) for file in files]
    for file, part in zip(files, parts):
        if "text" not in part.column_names:
            raise BuildError(f"{file} has no 'text' column (it has {part.column_names}): pass "
                             "WikiText's parquet files, whose one column is 'text'")
        _check_text_column(file, part)
    return concatenate_datasets(parts).select_columns(["text"])


def _check_text_column(file: Path, part: Dataset) -> None:
    """WikiText's `text` is a column of strings, one line each, none of them null."""
    kind = part.features["text"]
    if getattr(kind, "dtype", None) not in ("string", "large_string"):
        raise BuildError(f"{file} has a 'text' column of {getattr(kind, 'dtype', kind)}, not of strings: "
                         "pass WikiText's parquet files, whose 'text' column holds its lines")
    nulls = part.data.column("text").null_count
    if nulls:
        raise BuildError(f"{file} has {nulls} null values in its 'text' column: pass WikiText's parquet "
                         "files, where a blank line is an empty string")


def _parquet_order(file: Path) -> tuple[int, str]:
    # The Hub names shards `{split}-00000-of-00001.parquet`; pool them as train, validation, test.
    rank = next((i for i, split in enumerate(HUB_SPLITS) if file.name.startswith(split)), len(HUB_SPLITS))
    return rank, file.name


def _check_utf8(file: Path) -> None:
    """Name the file and line of the first bytes that are not UTF-8 (datasets would not)."""
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BuildError(f"{file} line {number} is not UTF-8 ({err.reason} at byte "
                                 f"{err.start}): re-encode the file as UTF-8") from None


HUB_REMEDY = ("pass a local --source directory, or run once online and then set HF_DATASETS_OFFLINE=1 to use "
              "the cached copy")


def source_on_hub(source: str, revision: str | None) -> HubId | None:
    """`source` as a Hub id to ask about before loading it; None for a local one, or offline."""
    if Path(source).expanduser().exists() or looks_like_path(source, file_like=True) or datasets.config.HF_HUB_OFFLINE:
        return None
    return HubId("--source", source, revision, "dataset", HUB_REMEDY)


def _load_hub(source: str, config: str, revision: str | None) -> Dataset:
    if hub_id := source_on_hub(source, revision):
        check_on_hub(hub_id)
    try:
        splits = load_dataset(source, config, revision=revision)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise BuildError(f"cannot load {source} ({config}) from the Hub ({err}): {HUB_REMEDY}") from None
    except ValueError as err:  # an unknown config name
        raise BuildError(f"cannot load {source} with config {config!r} ({err}): "
                         "pass a valid --source-config") from None
    missing = [name for name in HUB_SPLITS if name not in splits]
    if missing:
        raise BuildError(f"{source} ({config}) lacks the splits {missing}: pass a WikiText config")
    return concatenate_datasets([splits[name] for name in HUB_SPLITS]).select_columns(["text"])
