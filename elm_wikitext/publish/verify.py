"""Validation gates: run on an output before anything is published, or alone with
`python build.py --verify DIR`. Each gate returns the problems it found, naming the rows."""

import logging
import secrets
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from datasets import DatasetDict

from elm_wikitext.core.devices import pick_device
from elm_wikitext.core.reference import MIN_COSINE, SAMPLE_ROWS, check_against_reference
from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.schema import DEFAULT_COLUMN, expected_features, neighbor_columns
from elm_wikitext.core.keys import text_id
from elm_wikitext.core.records import EmbedStats, Manifest, SplitEntry
from elm_wikitext.publish.output import MANIFEST_FILE, manifest_intact, read_output, split_checksum

log = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-3
# What `verify` checks, in order; an output passes only when every gate ran and found nothing.
# "vectors" and the sample run for every embedding column, with its own recipe.
NEIGHBOR_TIE = 1e-6  # neighbours whose cosines differ by less may come in either order
NEIGHBOR_COSINE_TOLERANCE = 1e-5
GATES = ("schema", "counts", "files", "vectors", "uniqueness",
         f"neighbours (every id in its split; {SAMPLE_ROWS} rows a split and column against a float64 brute force)",
         f"sample re-embedded by sentence-transformers ({SAMPLE_ROWS} rows a split and column, cosine >= "
         f"{MIN_COSINE['float32']} in float32)")


def _ids(split, mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)
    return ", ".join(split[int(i)]["text_id"] for i in rows[:limit]) + (" ..." if len(rows) > limit else "")


def check_schema(splits: DatasetDict, manifest: Manifest) -> list[str]:
    expected = expected_features(manifest.stats.dims(), manifest.stats.neighbor_counts())
    return [f"{name}: features {dict(split.features)} differ from the published schema"
            for name, split in splits.items() if split.features != expected]


def check_counts(splits: DatasetDict, manifest: Manifest) -> list[str]:
    problems = []
    for name, expected in manifest.splits.items():
        if name not in splits or len(splits[name]) != expected.rows:
            problems.append(f"{name}: {len(splits[name]) if name in splits else 'no'} rows, "
                            f"the manifest says {expected.rows}")
    return problems


def check_vectors(splits: DatasetDict, column: str, embed: EmbedStats) -> list[str]:
    """Every row of `column` holds `embed.dim` finite values, of unit norm where its recipe normalizes."""
    problems, dim = [], embed.dim
    normalized = embed.pooling.normalize
    for name, split in splits.items():
        if column not in split.column_names:
            continue  # the schema gate reports it
        values = split.data.column(column)
        lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy()
        if (lengths != dim).any():  # missing or of another size: nothing more to check
            problems.append(f"{name}: rows whose {column} is not {dim} values: {_ids(split, lengths != dim)}")
            continue
        vectors = pc.list_flatten(values).to_numpy().reshape(len(split), dim)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            problems.append(f"{name}: non-finite {column} vectors in rows {_ids(split, ~finite)}")
        norms = np.linalg.norm(vectors, axis=1)
        # A recipe without Normalize gives vectors of any norm, but never 0 (no direction at all).
        bad_norm = finite & ((np.abs(norms - 1) > NORM_TOLERANCE) if normalized else (norms == 0))
        if bad_norm.any():
            problems.append(f"{name}: {column} vectors without {'unit' if normalized else 'any'} norm "
                            f"in rows {_ids(split, bad_norm)}")
    return problems


def check_files(splits: DatasetDict, manifest: Manifest, output: str) -> list[str]:
    """Each split's Arrow files hash as the manifest recorded, and each text_id is its text's."""
    problems = [f"{name}: its files differ from the SHA-256 in the manifest (changed since the build)"
                for name in splits if name in manifest.splits and _changed(Path(output) / name, manifest.splits[name])]
    if not manifest_intact(manifest):
        problems.append(f"{MANIFEST_FILE}: it differs from its SHA-256 (changed since the build)")
    for name, split in splits.items():
        wrong = np.array([text_id(text) != stored for text, stored
                          in zip(split.data.column("text").to_pylist(), split.data.column("text_id").to_pylist())])
        if wrong.any():
            problems.append(f"{name}: text_id is not the SHA-256 of the text in rows {_ids(split, wrong)}")
    return problems


def _changed(directory: Path, entry: SplitEntry) -> bool:
    # Only the files the build wrote: datasets adds cache-*.arrow files beside them when a user
    # maps a split.
    try:
        return split_checksum(directory, entry.files) != entry.sha256
    except OSError:  # a file the build wrote is gone
        return True


def check_uniqueness(splits: DatasetDict, split_by: str) -> list[str]:
    """No text_id twice, no text in two splits, and, where articles were kept whole, no article."""
    problems = []
    ids = np.concatenate([split.data.column("text_id").to_numpy(zero_copy_only=False) for split in splits.values()])
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        problems.append(f"text_id repeated: {', '.join(values[counts > 1][:5])}")
    for column in ("text", "article_id") if split_by == "article" else ("text",):
        seen = {name: set(split.data.column(column).to_pylist()) for name, split in splits.items()}
        names = list(seen)
        for i, first in enumerate(names):
            for second in names[i + 1:]:
                shared = seen[first] & seen[second]
                if shared:
                    problems.append(f"{len(shared)} {column} values in both {first} and {second}, "
                                    f"e.g. {str(sorted(shared)[0])[:60]!r}")
    return problems


def check_neighbors(splits: DatasetDict, column: str, k: int, seed: int) -> list[str]:
    """Every neighbour a row of `column` names is another row of its split, as many as the split
    allows; and for a random sample of rows, the stored neighbours are the k nearest by a float64
    brute force over the split (any order among cosines within NEIGHBOR_TIE), with their cosines."""
    ids_name, cosines_name = neighbor_columns(column)
    rng, problems = np.random.default_rng(seed), []
    for name, split in splits.items():
        own = split.data.column("text_id").to_numpy(zero_copy_only=False)
        stored = pc.list_flatten(split.data.column(ids_name)).to_numpy(zero_copy_only=False).reshape(len(split), k)
        position = {text: i for i, text in enumerate(own)}
        named = np.array([[position.get(text, -2) if text is not None else -1 for text in row] for row in stored])
        wrong = (named == -2).any(axis=1) | (named == np.arange(len(split))[:, None]).any(axis=1) | (
            (named >= 0).sum(axis=1) != min(k, len(split) - 1))
        if wrong.any():
            problems.append(f"{name}: {ids_name} names rows not of this split, the row itself, or too few, "
                            f"in rows {_ids(split, wrong)}")
            continue
        vectors = pc.list_flatten(split.data.column(column)).to_numpy().reshape(len(split), -1).astype(np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float64).tiny)
        cosines = pc.list_flatten(split.data.column(cosines_name)).to_numpy(zero_copy_only=False).reshape(len(split), k)
        for row in rng.choice(len(split), size=min(SAMPLE_ROWS, len(split)), replace=False):
            problem = _neighbors_problem(vectors, int(row), named[row], cosines[row])
            if problem:
                problems.append(f"{name}: row {own[row]}'s {ids_name} {problem}")
    return problems


def _neighbors_problem(vectors: np.ndarray, row: int, named: np.ndarray, stored: np.ndarray) -> str | None:
    """Why `named` (row numbers, -1 past the split's last other row) and their `stored` cosines
    are not `row`'s nearest others, by a float64 brute force; None if they are."""
    exact = vectors @ vectors[row]
    exact[row] = -np.inf
    named, stored = named[named >= 0], stored[:len(named[named >= 0])].astype(np.float64)
    if np.abs(exact[named] - stored).max(initial=0) > NEIGHBOR_COSINE_TOLERANCE:
        return f"cosines differ from their float64 values by up to {np.abs(exact[named] - stored).max():.2e}"
    if (np.diff(exact[named]) > NEIGHBOR_TIE).any():
        return "are not sorted by cosine"
    others = np.delete(exact, np.append(named, row))
    if len(named) and others.max(initial=-np.inf) > exact[named].min() + NEIGHBOR_TIE:
        return f"miss a row of cosine {others.max():.6f}, nearer than the last named ({exact[named].min():.6f})"
    return None


def verify(output: str, model: str | None = None, option: str = "--output", seed: int | None = None,
           column: str = DEFAULT_COLUMN) -> dict:
    """Run every gate, on every embedding column; raise BuildError listing what failed, else
    return what was checked. `model` points at `column`'s weights where they are now (the
    manifest's path, by default); the re-embedded sample is drawn afresh each run unless `seed`
    is given."""
    splits, manifest = read_output(output, option)
    stats = manifest.stats
    if not stats.embed:
        raise BuildError(f"{output} has no embeddings to verify: run the embed stage first")
    if model is not None and column not in stats.embed:
        raise BuildError(f"--model {model} is for --column {column}, which {output} does not have: "
                         f"pass --column, one of {', '.join(stats.embed)}")
    seed = secrets.randbits(32) if seed is None else seed
    problems = check_schema(splits, manifest)
    if not problems:  # the other gates read the columns the schema promises
        problems += check_counts(splits, manifest) + check_files(splits, manifest, output)
        whole = []  # the columns whose vectors the neighbours can be checked against
        for name, embed in stats.embed.items():
            found = check_vectors(splits, name, embed)
            problems, whole = problems + found, whole + ([] if found else [name])
        problems += check_uniqueness(splits, stats.text.split_by)
        for name, k in stats.neighbor_counts().items():
            problems += check_neighbors(splits, name, k, seed) if name in whole else []
    if problems:
        raise BuildError(f"{output} failed verification ({len(problems)} problems): " + "; ".join(problems))
    # The slow gate only for an output that passed the others: sentence-transformers' own vectors.
    log.info("re-embedding a sample drawn with seed %d with sentence-transformers", seed)
    columns = {name: (model if name == column and model else embed.model, embed.model_revision, embed.dtype, embed.dim)
               for name, embed in stats.embed.items()}
    try:
        reference = check_against_reference(splits, columns, seed, pick_device())
    except BuildError as err:
        raise BuildError(f"{output} failed verification: {err}") from None
    log.info("verified %s", output)
    lowest = min((facts["lowest_cosine"] for facts in reference["columns"].values()
                  if facts["lowest_cosine"] is not None), default=None)
    return {"verified": output, "rows": {name: len(split) for name, split in splits.items()},
            "columns": list(stats.embed), "gates": list(GATES), "sample_rows": reference["rows"], "sample_seed": seed,
            "lowest_sample_cosine": lowest, "min_cosine_allowed": {name: facts["min_cosine"] for name, facts
                                                                 in reference["columns"].items()},
            "reference_seconds": reference["seconds"], "reference_load_seconds": reference["load_seconds"]}
