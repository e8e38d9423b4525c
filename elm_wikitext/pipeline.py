"""The build, composed in one place: source -> text -> split -> embed -> publish."""

import contextlib
import logging
import shutil
import time
from pathlib import Path

from huggingface_hub import HfApi

from . import processes
from .embed import embed_splits, plan_chunks
from .encode import check_model_config, estimate_embedding, gpu_peak, load_tokenizer, row_flops
from .options import BuildOptions
from .hub import preflight, push
from .publish import (build_manifest, check_output_location, expected_features, output_lock, read_output,
                      recover_output, stage_hub_folder, token_counts, write_output)
from .source import load_lines
from .split import make_splits
from .text import build_paragraphs
from .verify import verify

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
                 tokens={name: int(ds.data.column("token_count").to_numpy().sum()) for name, ds in splits.items()},
                 seconds=round(time.perf_counter() - started, 2))
    return splits, stats


def build(options: BuildOptions, api=None) -> dict | None:
    """Run the stages that `options.stage` asks for, then publish if asked; return the
    statistics (main process). `api` is the Hub client (a stand-in in tests)."""
    check_output_location(options.output)
    if options.dry_run:  # one plan, from the main process
        return plan(options) if processes.is_main() else None
    # One build per output at a time; the lock goes with the process, even after kill -9.
    with output_lock(options.output) if processes.is_main() else contextlib.nullcontext():
        return _build(options, api or HfApi())


def _build(options: BuildOptions, api) -> dict | None:
    if processes.is_main():
        recover_output(options.output)
    processes.wait_for_everyone()  # the others read the output only once it is whole again
    tokenizer = load_tokenizer(options.model, options.model_revision)  # checks a Hub id first
    if options.stage != "text":  # a model the pooling does not fit is refused before the text stage
        dim = check_model_config(options.model, options.model_revision, options.dim)
    repo_id = preflight(options, api, expected_features(dim)) if options.push and processes.is_main() else None
    if options.stage == "embed":
        splits, manifest = read_output(options.output)
        if "embedding" in splits["train"].column_names:  # embedding again, with other settings
            splits = splits.remove_columns("embedding")
        stats = {"text": manifest["stats"]["text"]}
    else:
        with processes.main_first():  # the others reuse the main process's cached maps
            splits, stats = text_stage(options, tokenizer)
        stats = {"text": stats}
    if options.stage in ("embed", "all"):
        splits, stats["embed"] = embed_splits(splits, tokenizer, options)
    if not processes.is_main():
        return None
    write_output(splits, build_manifest(options, stats), options.output)
    if options.push:
        stats["published"] = publish(options, repo_id, api)
    if options.stage != "text":  # only now: a rerun after a failed upload finds every vector done
        shutil.rmtree(Path(f"{options.output}.embed-work"), ignore_errors=True)
    return stats


def plan(options: BuildOptions) -> dict:
    """What a build would do, from the text stage and the model's config (no weights)."""
    gpu_peak(options.plan_gpu)  # a name it does not know is refused before the text stage
    tokenizer = load_tokenizer(options.model, options.model_revision)
    splits, text = text_stage(options, tokenizer)
    lengths = token_counts(splits)
    estimate = estimate_embedding(row_flops(options.model, options.model_revision, lengths),
                                  plan_chunks(lengths, options.chunk_tokens), options.compile,
                                  options.plan_gpus, options.plan_gpu)
    return {"plan": {"source": f"{options.source} ({options.source_config})", "model": options.model,
                     "paragraphs": text["splits"], "dropped": text["dropped"], "tokens": int(lengths.sum()),
                     **estimate}}


def publish(options: BuildOptions, repo_id: str, api) -> str:
    """Gate, stage the Hub layout beside the output, upload it as one commit, tag it."""
    verify(options.output, options.model)
    folder = stage_hub_folder(options.output, Path(f"{options.output}.hub"), repo_id, options.version)
    line = push(folder, repo_id, options.version, options.private, api)
    shutil.rmtree(folder, ignore_errors=True)
    return line
