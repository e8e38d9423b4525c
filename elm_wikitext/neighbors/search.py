"""Exact nearest neighbours by cosine, within one set of rows (one split).

Two passes. The first finds candidates fast: the rows are cut into blocks, and each pair of
blocks (i <= j: the cosine is symmetric, so half the products suffice) is one float32 matrix
product on the build's device, from which every row keeps its best `k + MARGIN` others. The
second decides exactly: each row's candidates are scored again in float64 and sorted by cosine,
ties by text_id. A row is settled when its k-th float64 cosine beats, by more than float32's
error bound, the lowest candidate's float32 score: no row left out can then reach it. A row not
settled (a crowd of near-ties at its k-th place, or duplicates) is searched again over every row
in float64. So the result is the float64 brute force's, whatever float32 rounded.

Working memory is one tile of cosines (and its transposed copy) and two blocks of vectors (a
`budget` that does not grow with the rows), plus each row's candidates (the results).
"""

from contextlib import contextmanager

import numpy as np
import torch

MARGIN = 8  # candidates beyond k kept per row: near-ties at the k-th place rarely need more
BUDGET_BYTES = 256 * 2**20  # one tile and its two blocks of vectors, in float32
# Smaller blocks skip more of the symmetric half (a tile pair i < j serves both blocks), larger ones
# run the matrix product nearer its peak; of 1,024, 2,048 and 4,096, 2,048 was the fastest on 2
# CPU cores at 11k x 2,560.
MAX_BLOCK = 2048
RERANK_ROWS = 256  # rows whose candidates are rescored in float64 at once (~100 MB at dim 2560)


def block_rows(rows: int, dim: int, budget: int = BUDGET_BYTES) -> int:
    """Rows per block such that a (block x block) float32 tile, its transposed copy and two
    (block x dim) blocks fit `budget`: the positive root of 8 b^2 + 8 b dim = budget."""
    root = (-8 * dim + np.sqrt((8 * dim) ** 2 + 32 * budget)) / 16
    return int(max(1, min(rows, MAX_BLOCK, max(64, root))))


def block_pairs(rows: int, block: int) -> list[tuple[int, int]]:
    """The (i, j) block starts with i <= j: every pair of rows once."""
    starts = range(0, rows, block)
    return [(i, j) for i in starts for j in starts if i <= j]


def search_flops(rows: int, dim: int) -> float:
    """The float32 work of one split's search: the symmetric half of its (rows x rows x dim)
    products, 2 FLOPs a multiply-add (the float64 rescoring of k + MARGIN candidates a row is
    small beside it)."""
    return float(rows) * rows * dim


def float32_error(dim: int) -> float:
    """A bound on a float32 dot product's error for unit vectors of `dim` values (the classic
    n * u bound for a sum of n products whose magnitudes sum to at most 1), plus the
    normalization's few ulps, or vectors taken as they are within 1e-6 of unit length."""
    return dim * 2.0**-24 + 4e-6


@contextmanager
def full_float32():
    """Matrix products in true float32: a GPU's TF32 (10-bit mantissa) would break the error bound."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def unit_block(vectors: np.ndarray, norms: np.ndarray, start: int, size: int, device: torch.device) -> torch.Tensor:
    """Rows `start`..`start + size` scaled to unit length, as a float32 tensor on `device`. In
    numpy, with the norms computed once: torch's threaded reductions on a busy 2-core machine
    cost more than the matrix product they feed."""
    norms = norms[start:start + size, None]
    if np.abs(norms - 1).max(initial=0) < 1e-6:  # a normalizing recipe's vectors: within the error bound as they are
        return torch.from_numpy(np.array(vectors[start:start + size], dtype=np.float32)).to(device)
    block = vectors[start:start + size] / np.maximum(norms, np.finfo(np.float64).tiny)
    return torch.from_numpy(block.astype(np.float32)).to(device)


def _merge(scores: torch.Tensor, index: torch.Tensor, start: int, tile: torch.Tensor, offset: int) -> None:
    """Keep, for the tile's rows (`start` onwards), the best `width` of their current candidates
    and of `tile`'s columns (in no order: merge_candidates sorts once at the end)."""
    width, rows = scores.shape[1], slice(start, start + tile.shape[0])
    top = tile.topk(min(width, tile.shape[1]), dim=1, sorted=False)
    both_scores = torch.cat([scores[rows], top.values], dim=1)
    both_index = torch.cat([index[rows], top.indices + offset], dim=1)
    best = both_scores.topk(width, dim=1, sorted=False)
    scores[rows], index[rows] = best.values, both_index.gather(1, best.indices)


def candidates(vectors: np.ndarray, norms: np.ndarray, pairs: list[tuple[int, int]], block: int, width: int,
               device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best `width` others (in no order) by float32 cosine over the block `pairs` given (a process's
    share): scores (rows, width) float32 and row numbers (rows, width) int64 (-inf and -1 where
    the pairs held fewer)."""
    rows = len(vectors)
    scores = torch.full((rows, width), -torch.inf, device=device)
    index = torch.full((rows, width), -1, dtype=torch.int64, device=device)
    a, loaded = None, None
    with full_float32(), torch.inference_mode():
        for i, j in pairs:  # i changes least often: its block is loaded once a run of pairs
            a, loaded = (a, loaded) if loaded == i else (unit_block(vectors, norms, i, block, device), i)
            b = a if i == j else unit_block(vectors, norms, j, block, device)
            tile = a @ b.T
            if i == j:
                tile.fill_diagonal_(-torch.inf)  # a row is not its own neighbour
            _merge(scores, index, i, tile, j)
            if i != j:  # a contiguous copy: top-k along the rows of a transposed view is 1.5x slower
                _merge(scores, index, j, tile.T.contiguous(), i)
    return scores.cpu().numpy(), index.cpu().numpy()


def merge_candidates(parts: list[tuple[np.ndarray, np.ndarray]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """One (scores, index) from the processes' parts: each row's best `width` of all of them."""
    scores = np.concatenate([part[0] for part in parts], axis=1)
    index = np.concatenate([part[1] for part in parts], axis=1)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(scores, best, 1), np.take_along_axis(index, best, 1)


def norms64(vectors: np.ndarray, block: int) -> np.ndarray:
    """Each row's norm, in float64 (products of float32 values are exact in float64)."""
    return np.concatenate([np.sqrt(np.einsum("ij,ij->i", vectors[i:i + block], vectors[i:i + block], dtype=np.float64))
                           for i in range(0, len(vectors), block)]) if len(vectors) else np.zeros(0)


def _ranked(cosines: np.ndarray, index: np.ndarray, id_rank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first `k` by cosine descending, ties by text_id (its rank among the split's ids)."""
    order = np.lexsort((id_rank[index], -cosines), axis=-1)[:, :k]
    return np.take_along_axis(index, order, 1), np.take_along_axis(cosines, order, 1)


def _rescored(vectors: np.ndarray, norms: np.ndarray, index: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Float64 cosines of `rows` with their candidates `index[rows]`, RERANK_ROWS rows at a time."""
    cosines = np.empty(index[rows].shape, dtype=np.float64)
    for start in range(0, len(rows), RERANK_ROWS):
        part = rows[start:start + RERANK_ROWS]
        others = vectors[index[part].ravel()].reshape(len(part), index.shape[1], -1)
        # float32 in, float64 products and sums (einsum casts as it goes: no float64 copy of the rows).
        dots = np.einsum("rd,rwd->rw", vectors[part], others, dtype=np.float64)
        cosines[start:start + len(part)] = dots / np.maximum(norms[part, None] * norms[index[part]],
                                                             np.finfo(np.float64).tiny)
    return cosines


def rerank(vectors: np.ndarray, norms: np.ndarray, scores: np.ndarray, index: np.ndarray, id_rank: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's first `k` by float64 cosine among its candidates (sorted by float32 score), and
    which rows are settled (see the module's docstring). Only the first k are rescored, unless a
    later candidate's float32 score comes within the error bound of the k-th float64 cosine: then
    all of the row's are."""
    rows, width = index.shape
    error, everyone = float32_error(vectors.shape[1]), np.arange(rows)
    k = min(k, width)
    best_index, best_cosines = _ranked(_rescored(vectors, norms, index[:, :k], everyone), index[:, :k], id_rank, k)
    tight = everyone[scores[:, k:].max(axis=1, initial=-np.inf) + error >= best_cosines[:, -1]]
    if len(tight):
        best_index[tight], best_cosines[tight] = _ranked(_rescored(vectors, norms, index, tight), index[tight],
                                                         id_rank, k)
    if width >= rows - 1:  # every other row was a candidate
        return best_index, best_cosines, np.ones(rows, dtype=bool)
    settled = best_cosines[:, -1] > scores[:, -1].astype(np.float64) + error
    return best_index, best_cosines, settled


def brute_force_rows(vectors: np.ndarray, norms: np.ndarray, rows: np.ndarray, id_rank: np.ndarray, k: int,
                     block: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `k` others of `rows` over every row, in float64, a block of rows at a time."""
    query = vectors[rows].astype(np.float64) / np.maximum(norms[rows, None], np.finfo(np.float64).tiny)
    index = np.zeros((len(rows), 0), dtype=np.int64)
    cosines = np.zeros((len(rows), 0), dtype=np.float64)
    for start in range(0, len(vectors), block):
        keys = vectors[start:start + block].astype(np.float64)
        keys /= np.maximum(norms[start:start + block, None], np.finfo(np.float64).tiny)
        tile = query @ keys.T
        tile[rows[:, None] == np.arange(start, start + len(keys))[None, :]] = -np.inf  # not itself
        columns = np.broadcast_to(np.arange(start, start + len(keys)), tile.shape)
        index, cosines = _ranked(np.concatenate([cosines, tile], 1), np.concatenate([index, columns], 1), id_rank, k)
    return index, cosines


def nearest(vectors: np.ndarray, text_ids: np.ndarray | None, k: int, device: torch.device,
            share=lambda items: items, gather=lambda obj: [obj], budget: int = BUDGET_BYTES):
    """Each row's `k` nearest other rows by cosine, exactly: row numbers (rows, k) int64 and
    float64 cosines, sorted by cosine descending, ties by text_id; -1 and NaN past the last other
    row of a set of k rows or fewer; and how many rows needed the float64 search over every row. `share` picks this process's part of a list of equal work
    items and `gather` returns every process's object (accelerate's sharding; by default one
    process). Every process computes its share of the candidates; the main process (given the
`text_ids`) decides and returns the result, the others (given None) return None."""
    rows, dim = vectors.shape
    width = min(k + MARGIN, rows - 1)
    if width < 1:  # a split of one row (or none): no other row
        return None if text_ids is None else np.full((rows, k), -1, dtype=np.int64), np.full((rows, k), np.nan), 0
    block = block_rows(rows, dim, budget)
    norms = norms64(vectors, block)
    parts = gather(candidates(vectors, norms, share(block_pairs(rows, block)), block, width, device))
    if text_ids is None:  # another process: the main one, which holds the text_ids, decides
        return None
    scores, index = merge_candidates(parts, width)
    id_rank = np.argsort(np.argsort(text_ids, kind="stable"), kind="stable")
    index, cosines, settled = rerank(vectors, norms, scores, index, id_rank, k)
    unsettled = np.flatnonzero(~settled)
    for start in range(0, len(unsettled), block):  # a block of them at a time: memory stays bounded
        part = unsettled[start:start + block]
        index[part], cosines[part] = brute_force_rows(vectors, norms, part, id_rank, k, block)
    short = k - index.shape[1]  # a set of k rows or fewer: each has fewer than k others
    if short:
        index = np.pad(index, ((0, 0), (0, short)), constant_values=-1)
        cosines = np.pad(cosines, ((0, 0), (0, short)), constant_values=np.nan)
    return index, cosines, len(unsettled)
