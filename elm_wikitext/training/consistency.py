"""Semantic consistency of an ELM: how close what it wrote lands to the vector it was asked to describe.

Each generated text is embedded with the dataset's own recipe (`Embedder.from_dataset`) and
compared, by cosine, with its target row's stored vector. A cosine alone has no scale (random
paragraphs of one corpus are far from orthogonal), so the same text is also compared with the
vector of a random other row of the same split, seeded: the baseline an unrelated target gets.

    python -m elm_wikitext.training.consistency --dataset data/elm-wikitext2 --predictions preds.jsonl
    python -m elm_wikitext.training.consistency ... --column embedding_b   # another model's space

The predictions file holds one JSON object per line: {"text_id": "...", "text": "what the model wrote"}.
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from transformers import HfArgumentParser

from elm_wikitext.core.errors import BuildError
from elm_wikitext.training.embedder import Embedder, read_recipe
from elm_wikitext.training.loading import as_matrix, load_splits

log = logging.getLogger(__name__)

HISTOGRAM_EDGES = np.round(np.linspace(-1, 1, 21), 2)  # cosines in steps of 0.1


def read_predictions(path: str) -> list[dict]:
    """The {"text_id", "text"} objects of a JSON-lines file, each checked, in order."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BuildError(f"cannot read --predictions {path} ({err}): pass a UTF-8 JSON-lines file") from None
    predictions = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row = err
        if not (isinstance(row, dict) and isinstance(row.get("text_id"), str) and isinstance(row.get("text"), str)):
            raise BuildError(f"--predictions {path} line {number} is not a JSON object with string fields "
                             '"text_id" and "text": write one {"text_id": ..., "text": ...} per line')
        predictions.append({"text_id": row["text_id"], "text": row["text"]})
    if not predictions:
        raise BuildError(f"--predictions {path} holds no predictions: write one "
                         '{"text_id": ..., "text": ...} per line')
    return predictions


def target_rows(splits, text_ids: list[str], split: Optional[str]) -> list[tuple[str, int]]:
    """(split name, row) of each text_id, looked up in `split` or in every split."""
    names = [split] if split else list(splits)
    if split and split not in splits:
        raise BuildError(f"--split {split} is not a split of the dataset: pass one of {', '.join(splits)}")
    where = {text_id: (name, row) for name in names
             for row, text_id in enumerate(splits[name].data.column("text_id").to_pylist())}
    unknown = [text_id for text_id in text_ids if text_id not in where]
    if unknown:
        values = "1 text_id value is" if len(unknown) == 1 else f"{len(unknown)} text_id values are"
        where_not = f"the {split} split" if split else "any split"
        raise BuildError(f"{values} not in {where_not} of the dataset (e.g. {unknown[0]!r}): use the text_id "
                         "of the row each text was "
                         "generated from" + (", or another --split" if split else ""))
    return [where[text_id] for text_id in text_ids]


def other_rows(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """For each row, a random other row of a split of `size` rows."""
    if size < 2:
        raise BuildError("a split of one row has no other row for the baseline: score a larger split")
    drawn = rng.integers(0, size - 1, len(rows))
    return drawn + (drawn >= rows)  # skips the row itself, every other row equally likely


def summary(cosines: np.ndarray) -> dict:
    counts, _ = np.histogram(np.clip(cosines, -1, 1), HISTOGRAM_EDGES)
    return {"mean": float(cosines.mean()), "median": float(np.median(cosines)),
            "histogram": [{"range": f"{low:.1f}..{high:.1f}", "count": int(count)}
                          for low, high, count in zip(HISTOGRAM_EDGES, HISTOGRAM_EDGES[1:], counts)]}


def semantic_consistency(splits, predictions: list[dict], embedder: Embedder, split: Optional[str] = None,
                         seed: int = 0, column: str = "embedding") -> dict:
    """Cosine of each generated text's vector to its target row's vector in `column`, and to a
    random other row's vector of the same split (the baseline): mean, median and histogram of
    each. (Cosines: vectors of a recipe without Normalize are normalized here.)"""
    places = target_rows(splits, [p["text_id"] for p in predictions], split)
    generated = unit_rows(embedder.embed([p["text"] for p in predictions]))
    rng = np.random.default_rng(seed)
    target, baseline = np.empty(len(predictions)), np.empty(len(predictions))
    for name in sorted({name for name, _ in places}):
        mine = np.array([i for i, (where, _) in enumerate(places) if where == name])
        rows = np.array([places[i][1] for i in mine])
        vectors = unit_rows(as_matrix(splits[name].data.column(column).combine_chunks()))
        target[mine] = (generated[mine] * vectors[rows]).sum(axis=1)
        baseline[mine] = (generated[mine] * vectors[other_rows(rows, len(vectors), rng)]).sum(axis=1)
    return {"predictions": len(predictions), "consistency": summary(target), "baseline": summary(baseline)}


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def report_lines(report: dict) -> list[str]:
    """The report as a table: mean and median, then the histogram's rows from the lowest to the
    highest non-empty bin of either column."""
    ours, base = report["consistency"], report["baseline"]
    lines = [f"semantic consistency of {report['predictions']} predictions (cosine to the target vector; "
             "baseline: to a random other row of the same split)",
             f"{'':<12}{'target':>10}{'baseline':>10}",
             f"{'mean':<12}{ours['mean']:>10.4f}{base['mean']:>10.4f}",
             f"{'median':<12}{ours['median']:>10.4f}{base['median']:>10.4f}"]
    used = [i for i, (a, b) in enumerate(zip(ours["histogram"], base["histogram"])) if a["count"] or b["count"]]
    for a, b in list(zip(ours["histogram"], base["histogram"]))[used[0]:used[-1] + 1]:
        lines.append(f"{a['range']:<12}{a['count']:>10}{b['count']:>10}")
    return lines


@dataclass
class ConsistencyArgs:
    dataset: str = field(metadata={"help": "build.py's --output, a downloaded copy of the Hub repo, or a Hub dataset id."})
    predictions: str = field(metadata={"help": 'JSON lines of {"text_id": ..., "text": generated text}.'})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of --dataset."})
    split: Optional[str] = field(default=None, metadata={"help": "The split the text_ids come from (default: any)."})
    column: str = field(default="embedding", metadata={"help": "The embedding column to score against, embedded by its own recipe."})
    model: Optional[str] = field(default=None, metadata={"help": "A local copy of the embedding model, for a dataset "
                                                          "whose card names a local model folder (no Hub id)."})
    seed: int = field(default=0, metadata={"help": "Seed of the baseline's random rows."})
    json: bool = field(default=False, metadata={"help": "Print the report as JSON."})


def parse_args(argv: Optional[list[str]]) -> ConsistencyArgs:
    parser = HfArgumentParser(ConsistencyArgs, description=__doc__.splitlines()[0])

    def refuse(message: str):  # argparse would print its whole usage; one line says enough
        raise BuildError(f"{message}: see python -m elm_wikitext.training.consistency --help")

    parser.error = refuse
    args, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        refuse(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        # Every input is checked before the model loads (minutes for Qwen3-Embedding-4B).
        predictions = read_predictions(args.predictions)
        read_recipe(args.dataset, args.revision, args.column)  # a dataset without one is refused here
        splits = load_splits(args.dataset, args.revision)
        target_rows(splits, [p["text_id"] for p in predictions], args.split)
        embedder = Embedder.from_dataset(args.dataset, args.revision, model=args.model, column=args.column)
        report = semantic_consistency(splits, predictions, embedder, args.split, args.seed, args.column)
    except BuildError as err:
        print("error:", " ".join(str(err).split()), file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else "\n".join(report_lines(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
