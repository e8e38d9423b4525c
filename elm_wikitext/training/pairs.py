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

from elm_wikitext.errors import BuildError
from elm_wikitext.options import neighbor_columns
from elm_wikitext.training.loading import as_matrix, lerp, slerp

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


def _text_ids(split: Dataset) -> pa.Array:
    return split.with_format("arrow").select_columns(["text_id"])[:].column("text_id").combine_chunks()


def _positions(value_set: pa.Array, neighbor_ids) -> np.ndarray:
    if not isinstance(neighbor_ids, (pa.Array, pa.ChunkedArray)):
        neighbor_ids = pa.array(neighbor_ids, type=pa.string())
    return pc.fill_null(pc.index_in(neighbor_ids, value_set=value_set), -1).to_numpy(
        zero_copy_only=False).astype(np.int64)


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
    pair = functools.partial(pair_batch, split=rows, text_ids=_text_ids(split), column=column, seed=seed,
                             alpha=alpha, how=how)
    return DataLoader(rows, sampler=BatchSampler(order, batch_size, drop_last), batch_size=None,
                      collate_fn=pair, **loader_options)


def pair_batch(table: pa.Table, split: Dataset, text_ids: pa.Array, column: str, seed: int,
               alpha: tuple[float, float], how: str) -> dict:
    """One batch of `midpoint_batches` from the Arrow rows of its first members; `text_ids` are
    the split's, in its order."""
    ids_name, cosines_name = neighbor_columns(column)
    k = table.schema.field(ids_name).type.list_size
    rng = np.random.default_rng(_batch_seed(seed, table.column("text_id")))
    named = table.column(ids_name).combine_chunks().flatten()
    positions = _positions(text_ids, named).reshape(-1, k)
    present = positions >= 0
    # One present neighbour per row, uniformly: the argmax of random keys over the present ones.
    pick = np.where(present, rng.random(present.shape), -1).argmax(axis=1)
    keep = np.flatnonzero(present.any(axis=1))
    chosen = named.take(pa.array(keep * k + pick[keep], type=pa.int64()))
    first = table.take(pa.array(keep, type=pa.int64()))
    second = split[positions[keep, pick[keep]].tolist()]
    a, b = _tensor(first.column(column)), _tensor(second.column(column))
    fractions = torch.from_numpy(rng.uniform(alpha[0], alpha[1], len(keep)).astype(np.float32))
    cosines = pc.list_flatten(first.column(cosines_name)).to_numpy(zero_copy_only=False).reshape(-1, k)
    return {"text_a": first.column("text").to_pylist(), "text_b": second.column("text").to_pylist(),
            "text_id_a": first.column("text_id").to_pylist(), "text_id_b": chosen.to_pylist(),
            "embedding_a": a, "embedding_b": b, "alpha": fractions,
            "cosine": torch.from_numpy(cosines[keep, pick[keep]].astype(np.float32)),
            "embedding": interpolate(a, b, fractions, how)}


def interpolate(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor, how: str) -> torch.Tensor:
    """lerp or slerp per row; unit vectors give a unit result (lerp's is re-normalized), others
    keep slerp's direction at the lerp of the two norms."""
    unit = ((a.norm(dim=-1) - 1).abs() < UNIT_TOLERANCE) & ((b.norm(dim=-1) - 1).abs() < UNIT_TOLERANCE)
    if how == "lerp":
        mixed = lerp(a, b, t)
        return torch.where(unit[:, None], torch.nn.functional.normalize(mixed, dim=-1), mixed)
    length = torch.lerp(a.norm(dim=-1), b.norm(dim=-1), t)
    return slerp(a, b, t) * torch.where(unit, torch.ones_like(length), length)[:, None]


def _tensor(column: pa.ChunkedArray) -> torch.Tensor:
    return torch.from_numpy(as_matrix(column.combine_chunks()).astype(np.float32))


def _batch_seed(seed: int, text_ids: pa.ChunkedArray) -> list[int]:
    digest = hashlib.sha256("\n".join(text_ids.to_pylist()).encode()).digest()
    return [seed, int.from_bytes(digest[:8], "little")]
