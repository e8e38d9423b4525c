"""The embed stage's bookkeeping at WikiText-103 size: every step but the model, timed alone.

WikiText-2 keeps about 10.5k paragraphs (1.79M tokens); WikiText-103 about 50 times as many. For
each scale, a child process builds splits of that many rows (ids, text and token ids with
WikiText's length profile) on disk, and a second child runs, on the memory-mapped splits as the
build reads them, the steps of `embed.embed_splits` that do not involve the model:

  plan        token counts from the Arrow column, then `plan_chunks`
  work key    `work_key` (it hashes every text_id)
  chunks      `compute_chunks`, with the model's forward pass (`embed_rows`) replaced by fake
              vectors: the resume scan of an empty store, each chunk's token ids, its batches,
              and `ChunkStore.save` (row r's vector is r, r+1, ...: checked at the end)
  resume scan `compute_chunks` again, as a rerun: every chunk is found finished and checked
  assemble    `assemble`: the chunks into one (rows, dim) array on disk
  attach      `add_embedding_column`: the vectors as a column of each split, in the work dir

For each step: seconds, the peak of anonymous memory (RssAnon, sampled every 10 ms: what the
process holds) and the peak resident set (VmHWM, reset before each step: it also counts pages of
memory-mapped files, which the kernel can drop at will). Each scale's files are deleted after it.

    python benchmarks/embed_bookkeeping.py [--scales 1 10 50] [--dim 2560] [--workdir /tmp]

Disk: about rows x dim x 4 bytes three times over (chunks, assembled array, column): at dim 2560
and scale 50, 16 GB; pass a smaller --dim to fit.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PARAGRAPHS = 10_533  # WikiText-2's, kept by the default filter
SPLIT = (0.8, 0.1, 0.1)


def token_lengths(rng: np.random.Generator, rows: int) -> np.ndarray:
    # WikiText-2's kept paragraphs: 100 to 2000 tokens, about 170 on average, a long tail.
    return np.clip(rng.lognormal(mean=np.log(150), sigma=0.45, size=rows), 100, 2000).astype(np.int64)


def prepare(scale: int, directory: Path) -> None:
    """Splits with WikiText's columns and profile, saved as the text stage saves them."""
    import pyarrow as pa
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(scale)
    rows = PARAGRAPHS * scale
    lengths = token_lengths(rng, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = rng.integers(0, 151_000, offsets[-1], dtype=np.int32)
    tokens[offsets[:-1]] = np.arange(rows)  # the fake model reads the row from the first token
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(tokens))
    table = pa.table({"text_id": [f"{i:016x}" for i in range(rows)],
                      "text": ["w " * int(2.2 * n) for n in lengths],  # ~4.4 characters a token
                      "token_count": pa.array(lengths.astype(np.int32)), "input_ids": ids})
    everything = Dataset(table)
    bounds = np.cumsum([0, *(int(share * rows) for share in SPLIT[:-1]), rows])
    bounds[-1] = rows
    DatasetDict({name: everything.select(range(start, end)) for name, start, end in
                 zip(("train", "validation", "test"), bounds, bounds[1:])}).save_to_disk(str(directory))


class Peaks:
    """Peak RssAnon (sampled) and VmHWM (reset at `start`) of this process, in MiB."""

    def __init__(self):
        self.anon, self.running = 0, True
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
        return 0

    def _sample(self):
        while self.running:
            self.anon = max(self.anon, self.status("RssAnon"))
            time.sleep(0.01)

    def start(self):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.anon = self.status("RssAnon")

    def read(self) -> dict:
        return {"anon_mib": max(self.anon, self.status("RssAnon")), "hwm_mib": self.status("VmHWM")}


def fake_vectors(rows: np.ndarray, dim: int) -> np.ndarray:
    return (rows[:, None] + np.arange(dim)).astype(np.float32)


def measure(directory: Path, dim: int) -> list[dict]:
    import pyarrow.compute as pc
    import torch
    from datasets import concatenate_datasets, load_from_disk

    from elm_wikitext.embed import chunks as embed
    from elm_wikitext.embed.chunks import (ChunkStore, add_embedding_column, assemble, compute_chunks, plan_chunks,
                                           work_key)
    from elm_wikitext.core.processes import Processes
    from elm_wikitext.core.recipe import Recipe
    from elm_wikitext.embed.encode import Encoder

    def fake_embed_rows(encoder, ids):  # the vectors of a batch, and no float32 recomputation
        return torch.from_numpy(fake_vectors(np.array([row[0] for row in ids]), encoder.dim)), 0

    embed.embed_rows = fake_embed_rows
    encoder = Encoder(model=None, pad_id=0, dim=dim, device=torch.device("cpu"))
    alone = Processes(0, 1, encoder.device)  # one process: the bookkeeping, not the sharing

    peaks, results = Peaks(), []

    def step(name, work):
        peaks.start()
        started = time.perf_counter()
        value = work()
        results.append({"step": name, "seconds": round(time.perf_counter() - started, 2), **peaks.read()})
        return value

    splits = load_from_disk(str(directory / "splits"))
    everything = concatenate_datasets([splits[name] for name in ("train", "validation", "test")])
    options = SimpleNamespace(model="no-such/model", model_revision=None, max_tokens=2000, chunk_tokens=131072)
    lengths, chunks = step("plan", lambda: plan(everything, options.chunk_tokens, pc, plan_chunks))
    key = step("work key", lambda: work_key(options, "fake-weights", dim, "float16", Recipe(),
                                             everything.data.column("text_id")))
    store = ChunkStore(directory / "work" / key, dim)
    computed = step("chunks", lambda: compute_chunks(encoder, everything, lengths, chunks, store, 65536, alone))
    again = step("resume scan", lambda: compute_chunks(encoder, everything, lengths, chunks, store, 65536, alone))
    assert computed["paragraphs"] == len(everything) and again["paragraphs"] == 0
    path, _ = step("assemble", lambda: assemble(store, chunks, len(everything)))
    embedded = step("attach", lambda: add_embedding_column(splits, path, dim, key, "embedding"))
    check(embedded, dim)
    results.append({"step": "rows", "rows": len(everything), "chunks": len(chunks),
                    "tokens": int(lengths.sum())})
    return results


def plan(everything, chunk_tokens, pc, plan_chunks):
    lengths = pc.list_value_length(everything.data.column("input_ids")).to_numpy()
    return lengths, plan_chunks(lengths, chunk_tokens)


def check(embedded, dim):
    """Every split's vectors are its rows' own, in dataset order (a sample of rows)."""
    offset = 0
    for name in ("train", "validation", "test"):
        split = embedded[name]
        rows = np.random.default_rng(0).choice(len(split), size=min(200, len(split)), replace=False)
        got = np.asarray(split.with_format("numpy")[rows]["embedding"])
        np.testing.assert_array_equal(got, fake_vectors(rows + offset, dim))
        offset += len(split)


def run_scale(scale: int, dim: int, workdir: Path) -> list[dict]:
    directory = Path(tempfile.mkdtemp(prefix=f"embed-bookkeeping-{scale}x-", dir=workdir))
    try:
        child = [sys.executable, __file__, "--dim", str(dim), "--child"]
        subprocess.run([*child, "prepare", str(scale), str(directory / "splits")], check=True, cwd=ROOT)
        done = subprocess.run([*child, "measure", str(scale), str(directory)], check=True, cwd=ROOT,
                              capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--dim", type=int, default=2560)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, scale, directory = args.child
        if what == "prepare":
            return prepare(int(scale), Path(directory))
        return print(json.dumps(measure(Path(directory), args.dim)))
    print(f"dim {args.dim}; seconds / peak anonymous MiB / peak resident MiB (VmHWM) per step")
    for scale in args.scales:
        results = run_scale(scale, args.dim, Path(args.workdir))
        size = results.pop()
        print(f"\nscale {scale}x: {size['rows']:,} rows, {size['tokens']:,} tokens, {size['chunks']:,} chunks")
        for result in results:
            print(f"  {result['step']:<12}{result['seconds']:>9.2f} s{result['anon_mib']:>8,} MiB"
                  f"{result['hwm_mib']:>8,} MiB")
        total = sum(result["seconds"] for result in results)
        print(f"  {'total':<12}{total:>9.2f} s{max(r['anon_mib'] for r in results):>8,} MiB"
              f"{max(r['hwm_mib'] for r in results):>8,} MiB")


if __name__ == "__main__":
    main()
