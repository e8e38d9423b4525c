"""The build, composed in one place: source -> text -> split -> embed -> publish."""

import logging
import shutil
import time
from pathlib import Path

from . import processes
from .embed import embed_splits
from .encode import load_tokenizer
from .options import BuildOptions
from .publish import check_output_location, read_output, write_output
from .source import load_lines
from .split import make_splits
from .text import build_paragraphs

log = logging.getLogger(__name__)


def text_stage(options: BuildOptions, tokenizer):
    started = time.perf_counter()
    lines = load_lines(options.source, options.source_config, options.source_revision)
    paragraphs, stats = build_paragraphs(lines, tokenizer, options)
    splits = make_splits(paragraphs, options).flatten_indices()
    stats.update(source=options.source, source_config=options.source_config,
                 source_revision=options.source_revision, split_by=options.split_by,
                 split=options.split, seed=options.seed, min_tokens=options.min_tokens,
                 max_tokens=options.max_tokens, tokenizer=options.model,
                 splits={name: len(ds) for name, ds in splits.items()},
                 seconds=round(time.perf_counter() - started, 2))
    return splits, stats


def build(options: BuildOptions) -> dict | None:
    """Run the stages that `options.stage` asks for; return the statistics (main process)."""
    check_output_location(options.output)
    tokenizer = load_tokenizer(options.model, options.model_revision)
    if options.stage == "embed":
        splits, stats = read_output(options.output)
    else:
        with processes.main_first():  # the others reuse the main process's cached maps
            splits, stats = text_stage(options, tokenizer)
        stats = {"text": stats}
    if options.stage in ("embed", "all"):
        splits, stats["embed"] = embed_splits(splits, tokenizer, options)
    if not processes.is_main():
        return None
    write_output(splits, stats, options.output)
    if options.stage != "text":
        shutil.rmtree(Path(f"{options.output}.embed-work"), ignore_errors=True)
    return stats
