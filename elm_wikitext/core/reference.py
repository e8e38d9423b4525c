"""The independent reference: a sample of the stored vectors embedded again by sentence-transformers
itself (`SentenceTransformer(folder).encode_document`), not by this build's own reading of the
recipe, which would only agree with itself.

The sample is drawn anew each run (its seed is reported), from every split. The model is loaded
only here, after the build has let its own copy go, so the build never holds two on the GPU.
"""

import gc
import logging
import time

import numpy as np
import torch
from datasets import DatasetDict

from elm_wikitext.core.devices import DTYPES
from elm_wikitext.core.errors import BuildError

log = logging.getLogger(__name__)

SAMPLE_ROWS = 8  # per split and column
# The lowest cosine allowed between a stored vector and sentence-transformers' own, by the dtype
# both ran in. float32 agrees to rounding. Half precision differs by how the sums are cut into
# kernels (batch shapes, padding, fused attention): docs/embedding.md has the noise measured
# between the two on this project's CPU, and these floors sit below its worst case with a margin.
MIN_COSINE = {"float32": 0.99999, "bfloat16": 0.99, "float16": 0.999}


def sample_positions(splits: DatasetDict, seed: int, rows: int = SAMPLE_ROWS) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: np.sort(rng.choice(len(split), size=min(rows, len(split)), replace=False))
            for name, split in splits.items()}


def load_reference(model: str, revision: str | None, dtype: str, device: torch.device):
    """sentence-transformers' own model, in `dtype`, and the seconds its loading took."""
    from sentence_transformers import SentenceTransformer  # a second or two of imports: only when checking

    free_memory()
    started = time.perf_counter()
    try:
        reference = SentenceTransformer(model, revision=revision, device=str(device), model_kwargs={"dtype": DTYPES[dtype]})
    except (OSError, ValueError, TypeError, KeyError) as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise BuildError(f"sentence-transformers cannot load --model {model} to check the vectors ({reason}): "
                         "pass a complete model folder") from None
    return reference, time.perf_counter() - started


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_against_reference(splits: DatasetDict, columns: dict[str, tuple[str, str | None, str, int]],
                            seed: int, device: torch.device) -> dict:
    """Embed a sample of each column's rows with sentence-transformers and compare. `columns`:
    column -> (model folder or id, revision, dtype, dim). Returns the report; raises one line
    naming the rows below the floor."""
    positions = sample_positions(splits, seed)
    report = {"seed": seed, "rows": 0, "seconds": 0.0, "load_seconds": 0.0, "columns": {}}
    problems = []
    for column, (model, revision, dtype, dim) in columns.items():
        reference, load_seconds = load_reference(model, revision, dtype, device)
        started = time.perf_counter()
        cosines, skipped = [], 0
        for name, split in splits.items():
            rows = split.select(positions[name])
            fresh = reference.encode_document(rows["text"], convert_to_numpy=True, batch_size=SAMPLE_ROWS)
            fresh = fresh.astype(np.float32)[:, :dim]  # a --dim cut keeps the first values
            stored = np.asarray(rows.with_format("numpy", columns=[column])[column], dtype=np.float32).reshape(len(rows), dim)
            found = cosine_rows(fresh, stored)
            # float16 overflows on some inputs (Qwen3-Embedding's known issue): the build recomputes
            # such rows in float32, sentence-transformers does not, so its row says nothing.
            overflowed = ~np.isfinite(fresh).all(axis=1)
            skipped += int(overflowed.sum())
            cosines += found[~overflowed].tolist()
            floor = MIN_COSINE[dtype]
            problems += [f"{name} row {text_id} ({column}): cosine {cosine:.6f}"
                         for text_id, cosine, lost in zip(rows["text_id"], found, overflowed)
                         if not lost and not cosine >= floor]
        del reference
        free_memory()
        seconds = time.perf_counter() - started
        report["columns"][column] = {"model": model, "dtype": dtype, "rows": len(cosines),
                                     "lowest_cosine": round(min(cosines), 7) if cosines else None,
                                     "min_cosine": MIN_COSINE[dtype], "seconds": round(seconds, 2),
                                     "load_seconds": round(load_seconds, 2), "not_finite_there": skipped}
        if skipped:
            log.warning("sentence-transformers gave %d sampled rows of %s no finite vector in %s (an overflow): "
                        "they are left out of the comparison", skipped, column, dtype)
        report["rows"] += len(cosines)
        report["seconds"] = round(report["seconds"] + seconds, 2)
        report["load_seconds"] = round(report["load_seconds"] + load_seconds, 2)
    log.info("checked %d rows against sentence-transformers (seed %d): %s", report["rows"], seed,
             ", ".join(f"{column} lowest cosine {facts['lowest_cosine']} (floor {facts['min_cosine']}), "
                       f"{facts['seconds']} s + {facts['load_seconds']} s loading"
                       for column, facts in report["columns"].items()))
    if problems:
        raise BuildError(f"the stored vectors differ from SentenceTransformer(model).encode_document (seed {seed}, "
                         f"{len(problems)} of {report['rows']} rows below the floor): {'; '.join(problems[:5])}: "
                         "they are not that model's vectors of these texts (the output was changed, the weights "
                         "at --model differ, or this build misreads the model's recipe: pick another model)")
    return report


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64)) / np.where(norms > 0, norms, np.nan)
