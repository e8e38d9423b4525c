"""Neighbours stage: beside an embedding column C, each row's K nearest other rows of the same
split by cosine in C (search.py), as two columns named by `core.schema.neighbor_columns(C)`:
C_neighbors, their text_ids (which survive a user's filter, select or shuffle, where row
numbers would not), and C_neighbor_cosines, sorted descending, ties by text_id.

It reads the vectors and returns the split with the two columns added; which processes share the
work, and where they find the vectors, the caller says (pipeline.py).
"""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, concatenate_datasets

from elm_wikitext.neighbors.search import MARGIN
from elm_wikitext.core.schema import neighbor_columns

log = logging.getLogger(__name__)


def split_vectors(split: Dataset, column: str) -> np.ndarray:
    """A split's vectors as a (rows, dim) float32 array, straight from Arrow."""
    values = split.flatten_indices().data.column(column) if split._indices is not None else split.data.column(column)
    return pc.list_flatten(values).to_numpy().reshape(len(split), -1).astype(np.float32, copy=False)


def save_vectors(vectors: np.ndarray, path: Path) -> str:
    """The vectors where every process can map them (a launched build's other processes hold no split)."""
    np.save(path, vectors)
    return str(path)


def with_neighbors(split: Dataset, column: str, k: int, index: np.ndarray, cosines: np.ndarray) -> Dataset:
    """`split` with the neighbour columns of `column` added (replacing any there): row numbers
    become text_ids; a split of k rows or fewer leaves nulls past its last other row."""
    ids_name, cosines_name = neighbor_columns(column)
    split = without_neighbors(split, column)
    text_ids = np.asarray(split.data.column("text_id").to_pylist() + [None], dtype=object)
    missing = index < 0
    ids = pa.array(text_ids[np.where(missing, len(split), index)].ravel(), type=pa.string())
    values = pa.array(cosines.astype(np.float32).ravel(), mask=missing.ravel(), type=pa.float32())
    table = pa.table({ids_name: pa.FixedSizeListArray.from_arrays(ids, k),
                      cosines_name: pa.FixedSizeListArray.from_arrays(values, k)})
    # Fixed-size lists: datasets reads them as List(..., length=k), the published schema's types.
    return concatenate_datasets([split.flatten_indices() if split._indices is not None else split,
                                 Dataset(table)], axis=1)


def without_neighbors(split: Dataset, column: str) -> Dataset:
    """`split` without `column`'s neighbour columns (a --neighbors 0 run drops earlier ones)."""
    return split.remove_columns([name for name in neighbor_columns(column) if name in split.column_names])


def neighbor_stats(k: int, seconds: float, device: torch.device, processes: int, searched: int) -> dict:
    """What the manifest records of the stage (core.records.NeighborStats' fields)."""
    return {"k": k, "margin": MARGIN, "device": str(device), "processes": processes,
            "rows_searched_in_float64": searched, "seconds": round(seconds, 2)}
