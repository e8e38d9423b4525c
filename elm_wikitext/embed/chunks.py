"""Embed stage: add an embedding column (`--column`, default `embedding`), List(float32, length=dim),
to every split, beside any the output already holds.

The paragraphs are sorted by length and cut into chunks of about `--chunk-tokens` tokens. The chunks
do not depend on how many processes run; each process embeds every n-th unfinished chunk and
writes it atomically to a work directory beside the output, named by a checksum of its bytes. A
rerun of the same command finds the finished chunks and computes only the rest. The main process
then streams the chunks into one memory-mapped array and adds it as a column with `map`.
"""

import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, List, Value, concatenate_datasets
from datasets.fingerprint import Hasher
from tqdm.auto import tqdm

from elm_wikitext.embed.encode import (EMBED_VERSION, Encoder, check_budget, compile_layers, compiles, embed_rows,
                                       load_encoder, model_identity, token_batches)
from elm_wikitext.core.recipe import Recipe
from elm_wikitext.core.spec import ModelSpec
from elm_wikitext.core.tokens import token_ids
from elm_wikitext.core.errors import BuildError, writing
from elm_wikitext.core.keys import step_fingerprint
from elm_wikitext.core.schema import SPLIT_NAMES, TEXT_COLUMNS
from elm_wikitext.core.ownership import make_work_folder
from elm_wikitext.core.processes import Processes
from elm_wikitext.core.records import EmbedStats, Manifest

log = logging.getLogger(__name__)

# Part of the resume key beside encode.EMBED_VERSION: bump it when the chunks' layout changes
# (plan_chunks, the chunk files' format), so that no chunk of the old layout is read.
CHUNKS_VERSION = "embed/1"


@dataclass(frozen=True)
class EmbedParams:
    """What the embed stage reads, and nothing else (pipeline.stage_params fills it from the command line)."""
    model: str
    model_revision: str | None
    column: str
    dtype: str
    compile: str
    chunk_tokens: int
    max_batch_tokens: int
    max_tokens: int  # the text stage's longest paragraph: part of the work key
    output: str  # named in the one line a refusal gets; the pipeline decides where the work goes


def plan_chunks(lengths: np.ndarray, chunk_tokens: int) -> list[np.ndarray]:
    """Row positions, longest first, cut where the running token sum passes a `chunk_tokens` step.
    (The default, 131,072 tokens, is about two seconds of one H100.)"""
    order = np.argsort(-lengths, kind="stable")
    chunk_of = (np.cumsum(lengths[order]) - 1) // chunk_tokens
    return np.split(order, np.flatnonzero(np.diff(chunk_of)) + 1) if len(order) else []


class ChunkStore:
    """Finished chunks as `chunk-00012-<sha256 prefix>.npz` (the vectors, and how many of their
    rows needed float32): written aside, renamed into place, and loaded only when their bytes
    match the name and their shape the plan."""

    def __init__(self, directory: Path, dim: int):
        self.directory, self.dim = directory, dim
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BuildError(f"cannot write the embedding's work files in {directory} ({err}): make "
                             "--output's folder writable") from None

    def load(self, index: int, rows: int) -> tuple[np.ndarray, int] | None:
        """The chunk's vectors and its count of float32 recomputations, or None to compute it."""
        for path in self.directory.glob(f"chunk-{index:05d}-*.npz"):
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # another process found it damaged and removed it
                continue
            if path.stem.endswith(hashlib.sha256(data).hexdigest()[:16]):
                with np.load(io.BytesIO(data)) as chunk:
                    vectors, recomputed = chunk["vectors"], int(chunk["recomputed"])
                if vectors.shape == (rows, self.dim) and np.isfinite(vectors).all():
                    return vectors, recomputed
            log.warning("chunk file %s is damaged: computing it again", path.name)
            path.unlink(missing_ok=True)
        return None

    def save(self, index: int, vectors: np.ndarray, recomputed: int) -> None:
        temporary = self.directory / f".chunk-{index:05d}.{os.getpid()}.tmp"
        try:
            with writing(f"chunk {index} of the embedding to {self.directory}"):
                with open(temporary, "wb") as handle:
                    np.savez(handle, vectors=vectors, recomputed=np.int64(recomputed))
                    handle.flush()
                    os.fsync(handle.fileno())
                digest = hashlib.sha256(temporary.read_bytes()).hexdigest()[:16]
                os.replace(temporary, self.directory / f"chunk-{index:05d}-{digest}.npz")
        finally:  # a full disk or a stop leaves no partial chunk behind
            temporary.unlink(missing_ok=True)


def work_key(params: EmbedParams, weights: str, dim: int, effective_dtype: str, recipe: Recipe, text_ids: pa.ChunkedArray) -> str:
    """What the vectors depend on: other weights (another model or revision, or new files under
    the same name: `weights` is their `model_identity`, the content of the weights, tokenizer and
    recipe files), dtype, dim, pooling recipe, text, chunking or embedding code never reuse them.
    Where the model lies is not part of it: the same files moved elsewhere resume and reuse."""
    texts = joined_digest(text_ids)
    pooling = [recipe.pooling, recipe.normalize, recipe.prompt]
    return Hasher.hash([CHUNKS_VERSION, EMBED_VERSION, weights, effective_dtype, dim, pooling,
                        params.max_tokens, params.chunk_tokens, texts])[:16]


def joined_digest(strings: pa.ChunkedArray, slice_rows: int = 65536) -> str:
    """SHA-256 of the strings joined by newlines, fed a slice at a time: the digest of one big
    join, without holding every string as a Python object (600k of them at WikiText-103 size)."""
    digest = hashlib.sha256()
    for start in range(0, len(strings), slice_rows):
        joined = "\n".join(strings.slice(start, slice_rows).to_pylist())
        digest.update((joined if start == 0 else "\n" + joined).encode())
    return digest.hexdigest()


def embed_chunk(encoder: Encoder, ids: list[list[int]], budget: int, counts: dict, bar) -> np.ndarray:
    """Vectors of one chunk's rows, in their order; `counts` gathers tokens, padding and
    float32 recomputations."""
    lengths = np.array([len(row) for row in ids])
    vectors = np.empty((len(ids), encoder.dim), dtype=np.float32)
    for batch in token_batches(lengths, budget):
        rows, recomputed = embed_rows(encoder, [ids[i] for i in batch])
        vectors[batch] = rows.numpy()
        tokens = int(lengths[batch].sum())
        counts["tokens"] += tokens
        counts["padded_tokens"] += len(batch) * int(lengths[batch].max()) - tokens
        counts["recomputed_float32"] += recomputed
        bar.update(tokens)
        bar.set_postfix(paragraphs=counts["paragraphs"] + len(batch), refresh=False)
        counts["paragraphs"] += len(batch)
    return vectors


def tokenize(batch: dict, tokenizer, prompt: str) -> dict:
    return {"input_ids": token_ids(batch["text"], tokenizer, prompt)}


def with_token_ids(paragraphs: Dataset, tokenizer, params: EmbedParams, prompt: str) -> Dataset:
    """The text stage's token ids when it ran in this process (its model, no prompt); else
    tokenize once, here, with the model's document prompt."""
    if "input_ids" in paragraphs.column_names and not prompt:
        return paragraphs
    paragraphs = paragraphs.select_columns(TEXT_COLUMNS)
    return paragraphs.map(
        tokenize, batched=True, fn_kwargs={"tokenizer": tokenizer, "prompt": prompt}, desc="Tokenizing",
        features=Features({**paragraphs.features, "input_ids": List(Value("int32"))}),
        keep_in_memory=True,  # no cache files inside an earlier output that is being read
        new_fingerprint=step_fingerprint(paragraphs, tokenize, EMBED_VERSION, params.model,
                                         params.model_revision, prompt))


def check_lengths(paragraphs: Dataset, lengths: np.ndarray, recipe: Recipe, model: str) -> None:
    """The model reads every kept paragraph whole (a truncated one would get another text's
    vector); the length filter stays the text stage's, in its tokenizer's counts."""
    longest = int(lengths.max(initial=0))
    counts = paragraphs.data.column("token_count").to_numpy()  # the text stage's, which --max-tokens counts
    if recipe.max_length is not None and longest > recipe.max_length:
        too_long = lengths > recipe.max_length
        # The filter keeps a paragraph by its text-stage count: the largest --max-tokens that keeps
        # only paragraphs this model reads whole stops just below the shortest one it cannot.
        fits = int(counts[too_long].min()) - 1
        remedy = (f"rebuild the text stage with --max-tokens {fits} (in the text stage's tokens, the largest that "
                  "keeps only paragraphs it reads whole), or pick a model that reads longer texts"
                  if fits >= counts.min() else "no --max-tokens keeps a paragraph it reads whole: pick a model that "
                  "reads longer texts")
        raise BuildError(f"--model {model} reads at most {recipe.max_length} tokens, and {int(too_long.sum())} kept "
                         f"paragraphs are longer in its tokens (the longest {longest}): {remedy}")
    differ = int((counts != lengths).sum())
    if differ:
        log.info("--model %s counts otherwise than the text stage's tokenizer in %d of %d paragraphs: "
                 "the length filter stays the text stage's", model, differ, len(lengths))


def compute_chunks(encoder: Encoder, paragraphs: Dataset, lengths: np.ndarray,
                   chunks: list[np.ndarray], store: ChunkStore, budget: int, processes: Processes) -> dict:
    """Embed this process's share of the unfinished chunks; return what it counted."""
    # Each process checks a share of the finished chunks (reading and hashing them: gigabytes at
    # WikiText-103 size) and all learn the same list of unfinished ones.
    checked = processes.my_share(list(range(len(chunks))))
    todo = sorted(sum(processes.gather([i for i in checked if store.load(i, len(chunks[i])) is None]), []))
    mine = processes.my_share(todo)
    counts = dict.fromkeys(["paragraphs", "tokens", "padded_tokens", "recomputed_float32"], 0)
    total = int(sum(lengths[chunks[i]].sum() for i in mine))
    token_ids = paragraphs.select_columns(["input_ids"])  # 1.6x faster per chunk than every column
    with tqdm(total=total, unit="tok", unit_scale=True, desc="Embedding",
              disable=not log.isEnabledFor(logging.INFO)) as bar:
        for i in mine:
            ids, before = token_ids[chunks[i]]["input_ids"], counts["recomputed_float32"]
            vectors = embed_chunk(encoder, ids, budget, counts, bar)
            store.save(i, vectors, counts["recomputed_float32"] - before)
    log.info("embedded %d chunks here; %d of %d were done before", len(mine),
             len(chunks) - len(todo), len(chunks))
    return counts


def assemble(store: ChunkStore, chunks: list[np.ndarray], rows: int) -> tuple[Path, int]:
    """Stream the chunks into one (rows, dim) array on disk, in dataset order; also return how
    many rows needed float32, over every run that made the chunks."""
    path, recomputed = store.directory / "vectors.npy", 0
    np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, store.dim))  # the file, unmapped at once
    for index, positions in enumerate(chunks):
        chunk = store.load(index, len(positions))
        if chunk is None:  # another machine wrote it where this one cannot see it
            raise BuildError(f"chunk {index} is missing from {store.directory} after every process "
                             "finished: with several machines, --output must be on storage they all share")
        # Mapped for one chunk at a time: one mapping of the whole array kept every page it wrote
        # in this process's memory (6 GB at WikiText-103 size); the OS writes them out unmapped.
        vectors = np.load(path, mmap_mode="r+")
        vectors[positions], recomputed = chunk[0], recomputed + chunk[1]
        del vectors
    return path, recomputed


def attach_vectors(table: pa.Table, indices: list[int], vectors_path: str, offset: int, column: str) -> pa.Table:
    vectors = np.load(vectors_path, mmap_mode="r")[np.asarray(indices) + offset]
    return table.append_column(column, pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]))


def add_embedding_column(splits: DatasetDict, vectors_path: Path, dim: int, key: str, column: str) -> DatasetDict:
    out, offset = {}, 0
    for name in SPLIT_NAMES:
        split = splits[name]
        out[name] = split.with_format("arrow").map(
            attach_vectors, batched=True, with_indices=True, desc=f"Adding vectors to {name}",
            fn_kwargs={"vectors_path": str(vectors_path), "offset": offset, "column": column},
            features=Features({**split.features, column: List(Value("float32"), length=dim)}),
            cache_file_name=str(vectors_path.parent / f"{name}.arrow"),  # in the work dir, not the output
            new_fingerprint=step_fingerprint(split, attach_vectors, EMBED_VERSION, key, column)).with_format(None)
        offset += len(split)
    return DatasetDict(out)


def reuse_vectors(splits: DatasetDict, earlier: tuple[DatasetDict, Manifest] | None, key: str, column: str,
                  started: float, model: str) -> tuple[DatasetDict, EmbedStats] | None:
    """`splits` with the earlier output's `column`, where that output embedded it under `key`
    (same weights, dtype, dim, recipe, and every text_id in the same order) and its splits have
    as many rows as these: the key's texts then fix which rows each split holds."""
    if earlier is None:
        return None
    vectors, manifest = earlier
    stats = manifest.stats.embed.get(column)
    if (stats is None or stats.key != key
            or any(column not in vectors[name].column_names or len(vectors[name]) != len(splits[name])
                   for name in SPLIT_NAMES)):
        return None
    log.info("the output already holds %r made by this model, recipe and text (key %s): reusing it", column, key)
    # The same files may lie elsewhere now: the record names where they are.
    stats = replace(stats, reused=True, seconds=round(time.perf_counter() - started, 2), model=model)
    if all(column in splits[name].column_names for name in SPLIT_NAMES):  # --stage embed: the output's own
        return splits, stats
    out = DatasetDict({name: concatenate_datasets(
        [splits[name].flatten_indices(), vectors[name].select_columns([column])], axis=1) for name in SPLIT_NAMES})
    return out, stats


def check_column_free(splits: DatasetDict, column: str, output: str) -> None:
    """A column another recipe made is never replaced: its vectors may be what a user compares against."""
    if column in splits["train"].column_names:
        raise BuildError(f"--output {output} already has a column {column!r}, made with another model, "
                         "recipe or text: pass another --column to add these vectors beside it, or "
                         "rebuild with --stage all")


def embed_splits(splits: DatasetDict, tokenizer, params: EmbedParams, spec: ModelSpec, work_folder: Path,
                 processes: Processes, earlier: tuple[DatasetDict, Manifest] | None = None
                 ) -> tuple[DatasetDict | None, EmbedStats | None]:
    """Every process computes its share; the main process returns the splits with the
    `params.column` column added and the stage's statistics (the others None, None). `spec` is
    the model as the build resolved it (spec.resolve_model); `work_folder` where its chunks wait
    (beside --output: the pipeline knows where); `processes` this run's, as the pipeline hands
    them over. `earlier` is the output already at --output, with its manifest: where its column
    was made under this run's key, it is taken as it is and no model is loaded. Other columns
    are kept as they are."""
    started = time.perf_counter()
    recipe = spec.recipe
    log.info("embedding %r with %s: %s pooling%s, prompt %r (%s)", params.column, params.model, recipe.pooling,
             ", normalized" if recipe.normalize else ", not normalized", recipe.prompt,
             "its sentence-transformers files" if recipe.origin == "sentence-transformers"
             else "as SentenceTransformer(folder) builds it: the folder has no sentence-transformers files")
    everything = with_token_ids(concatenate_datasets([splits[name] for name in SPLIT_NAMES]), tokenizer,
                                params, recipe.prompt)
    lengths = pc.list_value_length(everything.data.column("input_ids")).to_numpy()
    check_lengths(everything, lengths, recipe, params.model)
    check_budget(lengths, params.max_batch_tokens)  # before minutes of model loading
    # What the vectors depend on, known before any weight is loaded: dim from the config, dtype
    # from the device (load_encoder: --dtype on a GPU, float32 on a CPU).
    dim = spec.dim
    effective_dtype = params.dtype if processes.device.type == "cuda" else "float32"
    weights = model_identity(params.model, params.model_revision)  # recorded: the Embedder checks it
    key = work_key(params, weights, dim, effective_dtype, recipe, everything.data.column("text_id"))
    reused = reuse_vectors(splits, earlier, key, params.column, started, params.model)
    if reused is not None:  # an up-to-date output: its vectors are the ones this run would compute
        return reused if processes.is_main else (None, None)
    check_column_free(splits, params.column, params.output)
    encoder = load_encoder(params.model, params.model_revision, params.dtype, dim,
                           tokenizer.pad_token_id, processes.device, recipe)
    compiled = compiles(params.compile, encoder.device)
    if compiled:
        compiled = compile_layers(encoder, required=params.compile == "yes")
    with writing(f"the embedding's work folder beside --output {params.output}"):
        work = make_work_folder(work_folder)
    store = ChunkStore(work / key, encoder.dim)
    chunks = plan_chunks(lengths, params.chunk_tokens)
    embedding_started = time.perf_counter()
    counts = compute_chunks(encoder, everything, lengths, chunks, store, params.max_batch_tokens, processes)
    all_counts = processes.gather(counts)  # waits for the slowest process
    embedding_seconds = time.perf_counter() - embedding_started
    if not processes.is_main:  # gathering above was the last step together
        return None, None
    with writing(f"the embedding column in {store.directory}"):
        vectors_path, recomputed = assemble(store, chunks, len(everything))
    totals = {name: sum(c[name] for c in all_counts) for name in counts}  # what this run computed
    computed = totals["tokens"] + totals["padded_tokens"]
    stats = EmbedStats(
        paragraphs=totals["paragraphs"], tokens=totals["tokens"], padded_tokens=totals["padded_tokens"],
        recomputed_float32=recomputed,  # of every row, whichever run computed it
        key=key, model=params.model, model_revision=params.model_revision, model_weights=weights,
        dtype=effective_dtype, dim=encoder.dim, device=str(encoder.device), compiled=compiled,
        processes=processes.count, chunks=len(chunks),
        embedding_seconds=round(embedding_seconds, 2),  # the batches alone, no loading
        tokens_per_second=round(totals["tokens"] / embedding_seconds),
        seconds=round(time.perf_counter() - started, 2),
        padding_share=round(totals["padded_tokens"] / computed, 4) if computed else 0.0,
        pooling=recipe, model_id=spec.hub_id, model_commit=spec.commit,
        weights_sha256=spec.weights_sha256 or None)
    with writing(f"the embedding column in {store.directory}"):
        return add_embedding_column(splits, vectors_path, encoder.dim, key, params.column), stats
