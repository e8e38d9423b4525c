"""Pairs of neighbouring paragraphs for ELM tasks, from the neighbours the build stored.

Each row of a build carries, per embedding column C, its nearest other rows of the same split
(`C_neighbors`: their text_ids; `C_neighbor_cosines`). `neighbor_positions` turns those ids into
row numbers of the split as the user holds it (after any filter, select or shuffle; -1 where a
neighbour is no longer there), in one Arrow lookup per batch. `midpoint_batches` is
`shuffled_batches` for the "midpoint" task: each row of a shuffled batch is paired with one of its
neighbours, drawn at random, and the vector a fraction alpha of the way from its vector to the
neighbour's (lerp or slerp) is the input; the "compare" task reads the same pairs' two vectors.
"""

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.schema import neighbor_columns
from elm_wikitext.training.loading import as_matrix

UNIT_TOLERANCE = 1e-3  # stored vectors this close to norm 1 come from a normalizing recipe


def neighbor_positions(split: Dataset, neighbor_ids: pa.Array | pa.ChunkedArray | Sequence) -> np.ndarray:
    """Row numbers in `split` (as it is now) of `neighbor_ids` (text_ids, e.g. a batch's
    `C_neighbors` flattened), -1 for ids not in it (filtered out, or null)."""
    return _positions(_text_ids(split), neighbor_ids)


def neighbors_of(split: Dataset, rows: Sequence[int], column: str = "embedding") -> dict:
    """The stored neighbours of `rows` (row numbers of `split`) gathered in one read: their row
    numbers in `split` (len(rows), K) (-1 where gone), their `column` vectors (len(rows), K, dim)
    (zeros where gone) and stored cosines (len(rows), K)."""
    ids_name, cosines_name = check_neighbor_columns(split, column)
    table = split.select_columns([ids_name, cosines_name]).with_format("arrow")[list(rows)]
    k = table.schema.field(ids_name).type.list_size
    positions = _positions(_text_ids(split), table.column(ids_name).combine_chunks().flatten()).reshape(-1, k)
    present = positions[positions >= 0]
    found = _tensor(split.select_columns([column]).with_format("arrow")[present.tolist()].column(column))
    vectors = torch.zeros((*positions.shape, found.shape[1] if len(present) else 0))
    vectors[torch.from_numpy(positions >= 0)] = found
    cosines = pc.list_flatten(table.column(cosines_name)).to_numpy(zero_copy_only=False).reshape(-1, k)
    return {"positions": positions, "vectors": vectors, "cosines": torch.from_numpy(cosines.astype(np.float32))}


def _text_ids(split: Dataset) -> dict[str, int]:
    """Each text_id's row number in `split` as it is now. A dict, built once: Arrow's index_in
    would hash every id of the split again for each batch."""
    ids = split.with_format("arrow").select_columns(["text_id"])[:].column("text_id").to_pylist()
    return {text_id: row for row, text_id in enumerate(ids)}


def _positions(rows: dict[str, int], neighbor_ids) -> np.ndarray:
    if isinstance(neighbor_ids, (pa.Array, pa.ChunkedArray)):
        neighbor_ids = neighbor_ids.to_pylist()
    return np.array([rows.get(text_id, -1) for text_id in neighbor_ids], dtype=np.int64)


def check_neighbor_columns(split: Dataset, column: str) -> tuple[str, str]:
    names = neighbor_columns(column)
    if not all(name in split.column_names for name in (column, *names)):
        raise BuildError(f"the split has no {names[0]} column beside {column!r}: rebuild it with "
                         "--neighbors K (the default, 8), or pass the column= it was built for")
    return names


def midpoint_batches(split: Dataset, batch_size: int, seed: int, column: str = "embedding",
                     alpha: tuple[float, float] = (0.3, 0.7), how: str = "slerp", drop_last: bool = False,
                     **loader_options) -> DataLoader:
    """A DataLoader of pair batches: `text_a`, `text_b` (lists of str), `text_id_a`, `text_id_b`,
    `embedding_a`, `embedding_b` (the two rows' (batch, dim) vectors, for "compare" tasks),
    `cosine` (theirs, as stored), `alpha` (batch,) drawn uniformly from the `alpha` range, and
    `embedding`: the point alpha of the way from a to b by `how` ("slerp" or "lerp"), re-normalized
    where the stored vectors are unit vectors (a normalizing recipe's). Rows whose neighbours are
    all gone from `split` (filtered out) are left out of their batch.

    Each epoch is a new order, set by `seed` as `shuffled_batches`; the neighbour and alpha of a
    row depend only on `seed` and the batch's rows, so workers and reruns give the same pairs."""
    if how not in ("slerp", "lerp"):
        raise BuildError(f"how={how!r} is not an interpolation: pass how='slerp' or how='lerp'")
    if not 0 <= alpha[0] <= alpha[1] <= 1:
        raise BuildError(f"alpha={alpha} is not a range within [0, 1]: pass e.g. alpha=(0.3, 0.7)")
    ids_name, cosines_name = check_neighbor_columns(split, column)
    rows = split.select_columns(["text_id", "text", column, ids_name, cosines_name]).with_format("arrow")
    order = RandomSampler(rows, generator=torch.Generator().manual_seed(seed))
    partners = split.select_columns(["text", column]).with_format("arrow")
    pair = functools.partial(pair_batch, partners=partners, text_ids=_text_ids(split), column=column, seed=seed,
                             alpha=alpha, how=how)
    return DataLoader(rows, sampler=BatchSampler(order, batch_size, drop_last), batch_size=None,
                      collate_fn=pair, **loader_options)


def pair_batch(table: pa.Table, partners: Dataset, text_ids: dict[str, int], column: str, seed: int,
               alpha: tuple[float, float], how: str) -> dict:
    """One batch of `midpoint_batches` from the Arrow rows of its first members; `partners` is the
    split's text and vectors, `text_ids` each of its text_ids' row number."""
    ids_name, cosines_name = neighbor_columns(column)
    k = table.schema.field(ids_name).type.list_size
    rng = np.random.default_rng(_batch_seed(seed, table.column("text_id")))
    named = np.array(table.column(ids_name).combine_chunks().flatten().to_pylist(), dtype=object).reshape(-1, k)
    # Each row's neighbours in a random order; the first still in the split is its partner (one
    # lookup a row, mostly, where looking all k up cost more than reading the rows).
    order = rng.permuted(np.tile(np.arange(k), (len(named), 1)), axis=1)
    pick = np.array([next((j for j in row_order if text_ids.get(ids[j], -1) >= 0), -1)
                     for ids, row_order in zip(named, order)], dtype=np.int64)
    keep = np.flatnonzero(pick >= 0)
    chosen = named[keep, pick[keep]]
    first = table if len(keep) == len(table) else table.take(pa.array(keep, type=pa.int64()))
    second = partners[[text_ids[text_id] for text_id in chosen]]
    a, b = _matrix(first.column(column)), _matrix(second.column(column))
    fractions = rng.uniform(alpha[0], alpha[1], len(keep)).astype(np.float32)
    cosines = pc.list_flatten(table.column(cosines_name)).to_numpy(zero_copy_only=False).reshape(-1, k)
    return {"text_a": first.column("text").to_pylist(), "text_b": second.column("text").to_pylist(),
            "text_id_a": first.column("text_id").to_pylist(), "text_id_b": chosen.tolist(),
            "embedding_a": torch.from_numpy(a.astype(np.float32)), "embedding_b": torch.from_numpy(b.astype(np.float32)),
            "alpha": torch.from_numpy(fractions), "embedding": torch.from_numpy(interpolate(a, b, fractions, how)),
            "cosine": torch.from_numpy(cosines[keep, pick[keep]].astype(np.float32))}


def interpolate(a: np.ndarray, b: np.ndarray, t: np.ndarray, how: str) -> np.ndarray:
    """`loading.lerp` or `loading.slerp` per row, in numpy: torch's threaded reductions on a
    (64, 2560) batch took 10 ms each where other work kept the cores busy, numpy's 0.1 ms. Unit
    vectors give a unit result (lerp's is re-normalized); others keep slerp's direction at the
    lerp of the two norms. Each row is one weighted sum of a and b: the weights are per row."""
    t = t[:, None]
    norm_a, norm_b, dot = _norm(a), _norm(b), np.einsum("ij,ij->i", a, b)[:, None]
    unit = (np.abs(norm_a - 1) < UNIT_TOLERANCE) & (np.abs(norm_b - 1) < UNIT_TOLERANCE)
    if how == "lerp":
        weight_a, weight_b = 1 - t, t
    else:
        # The angle from the chord lengths between the unit directions (accurate near 0 and pi,
        # as slerp's), and sin(x angle) / sin(angle) as x sinc(x angle) / sinc(angle).
        cosine = np.clip(dot / (norm_a * norm_b), -1, 1)
        angle = 2 * np.arctan2(np.sqrt(2 - 2 * cosine), np.sqrt(2 + 2 * cosine))
        weight_a = (1 - t) * np.sinc((1 - t) * angle / np.pi) / np.sinc(angle / np.pi) / norm_a
        weight_b = t * np.sinc(t * angle / np.pi) / np.sinc(angle / np.pi) / norm_b
    # |wa a + wb b| from the norms and the dot product: no pass over the mixed vectors.
    length = np.sqrt(np.maximum(weight_a**2 * norm_a**2 + weight_b**2 * norm_b**2 + 2 * weight_a * weight_b * dot, 0))
    scale = 1 / length if how == "lerp" else np.where(unit, 1, (1 - t) * norm_a + t * norm_b) / length
    scale = np.where(unit | (how != "lerp"), scale, 1)
    return (weight_a * scale).astype(np.float32) * a + (weight_b * scale).astype(np.float32) * b


def _norm(vectors: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))[:, None]


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    return as_matrix(column.combine_chunks())


def _tensor(column: pa.ChunkedArray) -> torch.Tensor:
    return torch.from_numpy(as_matrix(column.combine_chunks()).astype(np.float32))


def _batch_seed(seed: int, text_ids: pa.ChunkedArray) -> list[int]:
    digest = hashlib.sha256("\n".join(text_ids.to_pylist()).encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]
