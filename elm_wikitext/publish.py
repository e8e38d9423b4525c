"""Publish stage: write the output directory whole, or not at all.

The DatasetDict and its statistics are written to a temporary directory beside the output and
then swapped in, so a failed or interrupted run never leaves a half-written output and never
damages an earlier one.
"""

import json
import logging
import os
import shutil
from pathlib import Path

from datasets import DatasetDict, load_from_disk

from .errors import BuildError

log = logging.getLogger(__name__)

COLUMNS = ["text_id", "text", "article", "section", "token_count", "char_count"]
STATS_FILE = "stats.json"


def check_output_location(output: str) -> None:
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise BuildError(f"--output {output} is a file: pass a directory path")


def publishable(splits: DatasetDict) -> DatasetDict:
    """The published columns, in their order (the token ids stay behind)."""
    columns = COLUMNS + (["embedding"] if "embedding" in splits["train"].column_names else [])
    return splits.select_columns(columns)


def write_output(splits: DatasetDict, stats: dict, output: str) -> Path:
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.writing-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        publishable(splits).save_to_disk(str(staging))
        (staging / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        _swap_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s", target)
    return target


def _swap_into_place(staging: Path, target: Path) -> None:
    # Two renames: at every moment either the old or the new output is complete on disk.
    previous = target.parent / f".{target.name}.previous-{os.getpid()}"
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)


def read_output(output: str) -> tuple[DatasetDict, dict]:
    """A text-stage output written earlier, for `--stage embed`."""
    stats_path = Path(output) / STATS_FILE
    if not stats_path.is_file():
        raise BuildError(f"--output {output} holds no text-stage output: run "
                         "`python build.py --stage text` first, or --stage all")
    splits = load_from_disk(output)
    if "embedding" in splits["train"].column_names:
        splits = splits.remove_columns("embedding")
    return splits, json.loads(stats_path.read_text())
