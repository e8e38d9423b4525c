"""Reading the published dataset for training: shuffled batches, interpolation, statistics.

Users get the dataset with `load_dataset("org/elm-wikitext2")` or `load_from_disk(DIR)`. A plain
`DataLoader(split.with_format("torch"), batch_size=64, shuffle=True)` works, and reads each batch
in one go, but then takes a detour: datasets' torch formatter splits the (64, 2560) vectors into
per-row arrays and stacks them again, `Dataset.__getitems__` splits the batch into 64 row dicts,
and the DataLoader's collate stacks those once more. `shuffled_batches` reads the same batches in
Arrow and makes each column one tensor with one numpy copy: about 3x the rows/s, and far more
when torch's threaded copies meet busy cores (benchmarks/load_speed.py).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from elm_wikitext.core.errors import BuildError


def load_splits(source: str, revision: str | None = None) -> DatasetDict:
    """build.py's --output (what `save_to_disk` wrote), a downloaded copy of the Hub repo (its
    parquet files and card), or a Hub dataset id at `revision`."""
    if (Path(source) / "dataset_dict.json").is_file():
        return load_from_disk(source)
    return load_dataset(source, revision=revision)


def shuffled_batches(split: Dataset, batch_size: int, seed: int,
                     columns: Sequence[str] = ("text", "embedding"), drop_last: bool = False,
                     **loader_options) -> DataLoader:
    """A DataLoader of dicts: `embedding` as a (batch, dim) float32 tensor, `text` as a list of str.

    Each pass over it is one epoch in a new order; the orders depend only on `seed`. The sampler is
    a `BatchSampler`, which accelerate's `prepare` shards across processes. `loader_options` go to
    the DataLoader (`num_workers`, `pin_memory`, ...); the conversion runs in the workers.
    """
    rows = split.select_columns(list(columns)).with_format("arrow")
    order = RandomSampler(rows, generator=torch.Generator().manual_seed(seed))
    # batch_size=None: the DataLoader passes each list of row numbers to `rows[...]` whole.
    return DataLoader(rows, sampler=BatchSampler(order, batch_size, drop_last), batch_size=None,
                      collate_fn=arrow_batch_to_torch, **loader_options)


def arrow_batch_to_torch(table: pa.Table) -> dict:
    """A batch as `with_format("torch")` gives it, without its per-row detour: fixed-size lists of
    numbers as one (rows, size) tensor, numbers as a tensor, anything else as a Python list."""
    return {name: column_to_torch(table.column(name)) for name in table.column_names}


def column_to_torch(column: pa.ChunkedArray) -> torch.Tensor | list:
    array = column.combine_chunks()
    kind = array.type
    if pa.types.is_fixed_size_list(kind) and _is_number(kind.value_type):
        return _owned_tensor(as_matrix(array))
    if _is_number(kind) and array.null_count == 0:
        return _owned_tensor(array.to_numpy())
    return array.to_pylist()


def as_matrix(array: pa.FixedSizeListArray) -> np.ndarray:
    """A fixed-size list array as a (rows, size) numpy view of its buffer (no copy)."""
    if array.null_count:
        raise BuildError(f"{array.null_count} rows have no vector: drop them first, e.g. with "
                         "`split.filter(lambda row: row['embedding'] is not None)`")
    return array.flatten().to_numpy().reshape(len(array), array.type.list_size)


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _owned_tensor(values: np.ndarray) -> torch.Tensor:
    # Arrow's buffers are read-only, so the tensor needs a copy; numpy's `astype` makes it and casts
    # to the dtypes of `with_format("torch")` in one step (torch's own threaded copy of a batch
    # took up to 100x longer on a 2-core machine with other work running).
    dtype = np.int64 if np.issubdtype(values.dtype, np.integer) else np.float32
    return torch.from_numpy(values.astype(dtype))


def lerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """(1 - t) a + t b along the last dimension. `t` is a number or a tensor of the batch shape,
    e.g. (k,) for k points between one pair. Between unit vectors the path cuts inside the sphere
    (the midpoint's norm is cos(angle / 2)); `slerp` stays on it."""
    return torch.lerp(a, b, _fractions(t, a))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """The point a fraction `t` along the great-circle arc from a's direction to b's: unit norm,
    a at t=0, b at t=1. Nearly parallel pairs need no special case; antipodal pairs have no single
    arc, and what it returns for them means nothing. Batched like `lerp`; differentiable."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    # The angle from the chord lengths: accurate near 0 and pi, where acos(a . b) loses digits.
    angle = 2 * torch.atan2((a - b).norm(dim=-1, keepdim=True), (a + b).norm(dim=-1, keepdim=True))
    t = _fractions(t, a)
    # sin(t angle) / sin(angle) = t sinc(t angle) / sinc(angle), and sinc(0) = 1: no special case
    # for parallel vectors, where the formula tends to lerp.
    weight_a = (1 - t) * _sinc((1 - t) * angle) / _sinc(angle)
    weight_b = t * _sinc(t * angle) / _sinc(angle)
    return F.normalize(weight_a * a + weight_b * b, dim=-1)


def _sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.sinc(x / torch.pi)  # torch.sinc(x) is sin(pi x) / (pi x)


def _fractions(t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device).unsqueeze(-1)


def split_statistics(splits: DatasetDict | Dataset) -> dict[str, dict]:
    """Per split: rows, articles, tokens and the token_count / char_count distributions, and the
    embeddings' dim and norms: what a user checks before training, as JSON-ready numbers. One
    split (`load_dataset(..., split="train")`) gives the same, under its name ("split" if none)."""
    if isinstance(splits, Dataset):
        return {str(splits.split or "split"): statistics(splits)}
    return {name: statistics(split) for name, split in splits.items()}


def statistics(split: Dataset) -> dict:
    """One split's statistics, of the columns it has (a text-stage output has no embedding)."""
    article = "article_id" if "article_id" in split.column_names else "article"  # older builds
    wanted = [name for name in (article, "token_count", "char_count", "embedding")
              if name in split.column_names]
    stats = {"rows": len(split)}
    if not wanted or len(split) == 0:
        return stats
    table = split.select_columns(wanted).with_format("arrow")[:]  # respects select/shuffle
    if article in wanted:
        stats["articles"] = len(pc.unique(table.column(article)))
    if "token_count" in wanted:
        stats["tokens"] = int(pc.sum(table.column("token_count")).as_py())
    for name in ("token_count", "char_count"):
        if name in wanted:
            stats[name] = distribution(table.column(name).to_numpy())
    if "embedding" in wanted:
        stats["embedding"] = embedding_statistics(table.column("embedding"))
    return stats


def distribution(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "mean": float(values.mean(dtype=np.float64)),
            "median": float(np.median(values)), "max": int(values.max())}


def embedding_statistics(column: pa.ChunkedArray) -> dict:
    """Norms (all near 1 for this dataset) and the norm of the mean vector: near 0 when the
    vectors spread over the sphere, near 1 when they crowd into one direction."""
    chunks = [as_matrix(chunk) for chunk in column.chunks if len(chunk)]  # views: no copy
    norms = np.concatenate([np.linalg.norm(chunk, axis=1) for chunk in chunks])
    total = sum(chunk.sum(axis=0, dtype=np.float64) for chunk in chunks)
    return {"dim": column.type.list_size, "norm_mean": float(norms.mean(dtype=np.float64)),
            "norm_min": float(norms.min()), "norm_max": float(norms.max()),
            "mean_vector_norm": float(np.linalg.norm(total / len(norms)))}
