"""Read speed of a shuffled epoch of a saved elm-wikitext split: the plain way against ours.

A split of WikiText-2's size and shape (15,000 paragraphs of about 1,200 characters with the
published columns and 2560-float unit vectors) is written with save_to_disk, read back with
load_from_disk as users do, and read in batches of 64 of `text` and `embedding`:

  (i)   DataLoader(split.with_format("torch", columns=...), batch_size=64, shuffle=True);
  (ii)  elm_wikitext.training.loading.shuffled_batches: one Arrow gather and one copy per batch;
  (iii) contiguous slices with (ii)'s conversion: no gather, a bound for (ii);
  (iv)  contiguous slices of the torch format: datasets' torch formatter without (i)'s per-row
        split and restack;
  (v)   (ii)'s sampler over the torch format: one read per batch, datasets' conversion. (i) reads
        one batch at a time too (`Dataset.__getitems__`), so the conversion is what (ii) saves.

The methods take turns for --repeats epochs each; the table gives each one's median.

    python benchmarks/load_speed.py [--rows 15000] [--dim 2560] [--output DIR]
"""

import argparse
import os
import statistics
import tempfile
import time

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, DatasetDict, Features, List, Value, load_from_disk
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from elm_wikitext.training.loading import arrow_batch_to_torch, shuffled_batches

COLUMNS = ["text", "embedding"]
WORDS = ("the of and in to a was is for on as with by he at from his an were are which this also river "
         "album season army game team ship storm church war government series film , . ( ) ;").split()


def published_split(rows: int, dim: int, seed: int = 0) -> Dataset:
    """Random words and random unit vectors in the published columns and types."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=7.0, sigma=0.5, size=rows), 300, 9000).astype(int)
    # One long run of words, cut into paragraphs: no Python loop over words.
    words = " ".join(rng.choice(WORDS, size=int(lengths.sum()) // 4 + 1000))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    texts = [words[start:start + length].strip() for start, length in zip(starts, lengths)]
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    features = Features({
        "text_id": Value("string"), "text": Value("string"), "article": Value("string"),
        "section": Value("string"), "token_count": Value("int32"), "char_count": Value("int32"),
        "embedding": List(Value("float32"), length=dim)})
    return Dataset.from_dict({
        "text_id": [f"{i:016x}" for i in range(rows)], "text": texts,
        "article": [f"Article {i // 20}" for i in range(rows)], "section": [""] * rows,
        "token_count": (lengths // 5).astype(np.int32), "char_count": lengths.astype(np.int32),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    }, features=features)


def contiguous(split: Dataset, batch_size: int):
    return (split[start:start + batch_size] for start in range(0, len(split), batch_size))


def methods(split: Dataset, batch_size: int) -> dict:
    """Each method as a function that returns one epoch's batches."""
    torch_format = split.with_format("torch", columns=COLUMNS)
    plain = DataLoader(torch_format, batch_size=batch_size, shuffle=True)
    fast = shuffled_batches(split, batch_size, seed=0, columns=COLUMNS)
    arrow_format = split.select_columns(COLUMNS).with_format("arrow")
    converted = lambda: (arrow_batch_to_torch(table) for table in contiguous(arrow_format, batch_size))
    order = RandomSampler(torch_format, generator=torch.Generator().manual_seed(0))
    sampled = DataLoader(torch_format, sampler=BatchSampler(order, batch_size, False), batch_size=None)
    return {
        f"(i)   DataLoader(torch format, batch_size={batch_size}, shuffle=True)": lambda: plain,
        "(ii)  shuffled_batches: one Arrow gather per batch": lambda: fast,
        "(iii) contiguous slices, (ii)'s conversion": converted,
        "(iv)  contiguous slices of the torch format": lambda: contiguous(torch_format, batch_size),
        "(v)   (ii)'s sampler over the torch format": lambda: sampled,
    }


def rows_per_second(batches, rows: int, batch_size: int, dim: int) -> float:
    started, seen = time.perf_counter(), 0
    for batch in batches:
        assert batch["embedding"].shape[1:] == (dim,) and len(batch["text"]) <= batch_size
        seen += len(batch["text"])
    assert seen == rows, f"an epoch read {seen} of {rows} rows"
    return rows / (time.perf_counter() - started)


def run(split: Dataset, batch_size: int, repeats: int) -> dict[str, float]:
    timed = methods(split, batch_size)
    speeds = {name: [] for name in timed}
    dim = split.features["embedding"].length
    for _ in range(repeats):
        for name, epoch in timed.items():  # taking turns spreads any background load evenly
            speeds[name].append(rows_per_second(epoch(), len(split), batch_size, dim))
    return {name: statistics.median(values) for name, values in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=15000)
    parser.add_argument("--dim", type=int, default=2560)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="keep the saved dataset here (default: a temporary directory)")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as scratch:
        output = args.output or os.path.join(scratch, "elm-wikitext2")
        DatasetDict({"train": published_split(args.rows, args.dim)}).save_to_disk(output)
        split = load_from_disk(output)["train"]
        chars = pc.mean(split.data.column("char_count")).as_py()
        load = os.getloadavg()[0]
        speeds = run(split, args.batch_size, args.repeats)
    baseline = next(iter(speeds.values()))
    print(f"{args.rows:,} rows of {chars:,.0f} characters on average and dim {args.dim}, batch "
          f"{args.batch_size}, median of {args.repeats} epochs; {os.cpu_count()} CPUs, load average "
          f"{load:.1f} at the start")
    print(f"{'method':<62} {'rows/s':>9} {'vs (i)':>7}")
    for name, speed in speeds.items():
        print(f"{name:<62} {speed:>9,.0f} {speed / baseline:>6.2f}x")


if __name__ == "__main__":
    main()
