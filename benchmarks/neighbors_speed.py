"""Speed of the neighbours stage's exact search against exact FAISS, in the same run.

Each row's 8 nearest other rows by cosine, in a set of WikiText-2's size (11,000 rows of 2,560
floats) and 10x, three ways:

  (i)   elm_wikitext.neighbors.search.nearest: float32 blocks over the symmetric half, float64
        re-ranking (what the build runs, on the CPU here);
  (ii)  faiss-cpu IndexFlatIP (exact inner-product search) over the unit vectors, k + 1 results
        a row, the row itself dropped;
  (iii) datasets' Dataset.add_faiss_index(metric_type=METRIC_INNER_PRODUCT) +
        get_nearest_examples_batch, as a user of datasets would do it. It returns the examples
        as Python lists (9 x 2,560 floats a query), so it runs on --datasets-queries rows (1,000)
        and the search's time is scaled to all rows (the index's build is counted once).

The vectors are synthetic but shaped like paragraph embeddings: clusters of rows around shared
directions (articles), unit length. The neighbour sets are compared: (i) against (ii), the same
ids except where FAISS's k-th and (k+1)-th cosines tie within 1e-6 (FAISS breaks ties by row
number, (i) by text_id). At 10x, IndexFlatIP searches 11,000 query rows (--faiss-queries) against
all 110,000 and its time is scaled to all rows (marked in the table): its cost per query does not
depend on which rows ask, and the whole would take 15 minutes more on 2 cores.

    python benchmarks/neighbors_speed.py [--rows 11000 110000] [--dim 2560] [--datasets-queries 1000]
"""

import argparse
import os
import time

import numpy as np
import torch

from elm_wikitext.neighbors.search import nearest

K = 8


def paragraph_like(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in clusters of about 20 rows (an article's paragraphs) around a few shared
    directions (topics), as real paragraph embeddings crowd."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((50, dim)).astype(np.float32)
    articles = rows // 20 + 1
    centres = topics[rng.integers(0, 50, articles)] + 0.8 * rng.standard_normal((articles, dim)).astype(np.float32)
    vectors = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 10_000):
        part = slice(start, min(rows, start + 10_000))
        count = part.stop - part.start
        vectors[part] = centres[rng.integers(0, articles, count)] + rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def ours(vectors: np.ndarray, text_ids: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    started = time.perf_counter()
    index, cosines, searched = nearest(vectors, text_ids, K, torch.device("cpu"))
    return time.perf_counter() - started, index, cosines


def flat_ip(vectors: np.ndarray, queries: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    import faiss

    started = time.perf_counter()
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # FAISS's cosine: inner products of unit vectors
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    scores, found = index.search(unit[queries], K + 1)
    seconds = time.perf_counter() - started
    return seconds, *drop_self(found, scores, queries)


def with_datasets(vectors: np.ndarray, queries: np.ndarray) -> float:
    """The index's build, and the search of `queries` scaled to every row."""
    import datasets
    import faiss

    split = datasets.Dataset.from_dict({"embedding": vectors})  # what a user holds: the vectors in Arrow
    started = time.perf_counter()
    split.add_faiss_index(column="embedding", metric_type=faiss.METRIC_INNER_PRODUCT)
    built = time.perf_counter()
    split.get_nearest_examples_batch("embedding", vectors[queries], k=K + 1)
    return built - started + (time.perf_counter() - built) * len(vectors) / len(queries)


def drop_self(found: np.ndarray, scores: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's results without the query row itself (first, or anywhere among exact ties)."""
    keep = found != queries[:, None]
    first = np.argsort(~keep, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(found, first, 1), np.take_along_axis(scores, first, 1)


def agreement(index: np.ndarray, cosines: np.ndarray, faiss_index: np.ndarray, faiss_scores: np.ndarray,
              vectors: np.ndarray, queries: np.ndarray) -> tuple[int, int, float]:
    """Rows whose neighbour sets differ from FAISS's, of those how many only at a near-tie at
    the k-th place, and the largest cosine difference."""
    differ = near_tie = 0
    for row, query in enumerate(queries):
        only_theirs = sorted(set(faiss_index[row]) - set(index[query]))
        if only_theirs:
            differ += 1  # a near-tie: each row only FAISS names is as near as our k-th, within 1e-6
            theirs = vectors[only_theirs].astype(np.float64) @ vectors[query].astype(np.float64)
            near_tie += bool(np.all(np.abs(theirs - cosines[query, -1]) < 1e-6))
    return differ, near_tie, float(np.abs(cosines[queries] - faiss_scores).max())


def run(rows: int, dim: int, faiss_queries: int | None, datasets_queries: int | None) -> dict:
    vectors = paragraph_like(rows, dim)
    text_ids = np.array([f"{i:016x}" for i in range(rows)])
    every = np.arange(rows)
    few = np.random.default_rng(1).choice(rows, size=faiss_queries, replace=False) if faiss_queries else every
    few.sort()
    ours_seconds, index, cosines = ours(vectors, text_ids)
    faiss_seconds, faiss_index, faiss_scores = flat_ip(vectors, few)
    faiss_all = faiss_seconds * rows / len(few)
    differ, near_tie, largest = agreement(index, cosines, faiss_index, faiss_scores, vectors, few)
    queries = np.random.default_rng(2).choice(rows, size=datasets_queries, replace=False) if datasets_queries else every
    datasets_all = with_datasets(vectors, queries)
    return {"rows": rows, "ours": ours_seconds, "faiss": faiss_all, "faiss_scaled": len(few) < rows,
            "datasets": datasets_all, "datasets_scaled": len(queries) < rows, "compared": len(few),
            "differ": differ, "near_tie": near_tie, "largest": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[11_000, 110_000])
    parser.add_argument("--dim", type=int, default=2560)
    parser.add_argument("--faiss-queries", type=int, default=11_000,
                        help="query rows for IndexFlatIP above 11,000 rows (all rows searched), its time scaled to all")
    parser.add_argument("--datasets-queries", type=int, default=1_000,
                        help="query rows for datasets' get_nearest_examples_batch, its time scaled to all")
    args = parser.parse_args()
    import faiss

    print(f"cpu cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, faiss threads "
          f"{faiss.omp_get_max_threads()}, torch {torch.__version__}, faiss {faiss.__version__}")
    print("| rows x dim | ours | faiss IndexFlatIP | ratio | datasets add_faiss_index + get_nearest_examples_batch "
          "| ratio | rows compared | sets that differ (of which near-ties) | largest cosine difference |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in args.rows:
        result = run(rows, args.dim, args.faiss_queries if rows > 11_000 else None,
                     min(args.datasets_queries, rows) if args.datasets_queries else None)
        scaled = {True: " (scaled)", False: ""}
        print(f"| {rows:,} x {args.dim} | {result['ours']:.1f} s | {result['faiss']:.1f} s{scaled[result['faiss_scaled']]} "
              f"| {result['faiss'] / result['ours']:.2f}x | {result['datasets']:.1f} s{scaled[result['datasets_scaled']]} "
              f"| {result['datasets'] / result['ours']:.2f}x | {result['compared']:,} | {result['differ']} "
              f"({result['near_tie']}) | {result['largest']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
