"""Semantic consistency: generations scored against their target vectors, beside a random-row baseline."""

import json
import re

import datasets
import numpy as np
import pytest
from datasets import load_from_disk

from elm_wikitext.training.consistency import main, other_rows, semantic_consistency
from elm_wikitext.training.embedder import Embedder


@pytest.fixture(scope="module")
def splits(embedded_output):
    return load_from_disk(str(embedded_output))


@pytest.fixture(scope="module")
def embedder(embedded_output):
    return Embedder.from_dataset(str(embedded_output))


def own_texts(splits, shuffle_seed: int | None = None) -> list[dict]:
    """Every row's text_id with its own text, or, shuffled, with a random other row's text of its
    split (rows in a random cycle, each taking the text of the one before it)."""
    predictions = []
    for split in splits.values():
        ids, texts = split["text_id"][:], split["text"][:]
        if shuffle_seed is not None:
            cycle = np.random.default_rng(shuffle_seed).permutation(len(texts))
            taken = dict(zip(cycle, np.roll(cycle, 1)))
            texts = [texts[taken[row]] for row in range(len(texts))]
        predictions += [{"text_id": text_id, "text": text} for text_id, text in zip(ids, texts)]
    return predictions


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def perfect(splits, embedder) -> dict:
    """The report of every row's own text as its prediction."""
    return semantic_consistency(splits, own_texts(splits), embedder)


def test_perfect_predictions_score_as_the_dataset_own_vectors(splits, perfect):
    rows = sum(len(split) for split in splits.values())
    assert perfect["predictions"] == rows
    assert perfect["consistency"]["mean"] >= 0.9999 and perfect["consistency"]["median"] >= 0.9999
    assert perfect["consistency"]["histogram"][-1] == {"range": "0.9..1.0", "count": rows}
    assert sum(bin["count"] for bin in perfect["baseline"]["histogram"]) == rows
    assert perfect["baseline"]["mean"] < perfect["consistency"]["mean"] - 0.01


def test_shuffled_predictions_score_near_the_baseline(splits, embedder, perfect):
    shuffled = semantic_consistency(splits, own_texts(splits, shuffle_seed=3), embedder)
    scale = perfect["consistency"]["mean"] - shuffled["baseline"]["mean"]  # from unrelated to exact
    assert abs(shuffled["consistency"]["mean"] - shuffled["baseline"]["mean"]) < 0.25 * scale


def test_the_baseline_draws_every_other_row_and_never_the_row_itself():
    rows = np.repeat(np.arange(5), 400)
    drawn = other_rows(rows, 5, np.random.default_rng(0))
    assert (drawn != rows).all() and drawn.min() == 0 and drawn.max() == 4
    for row in range(5):
        assert set(drawn[rows == row]) == set(range(5)) - {row}


def test_the_cli_prints_the_report(embedded_output, splits, tmp_path, capsys):
    predictions = write_jsonl(tmp_path / "p.jsonl", own_texts({"test": splits["test"]}))
    assert main(["--dataset", str(embedded_output), "--predictions", predictions, "--split", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"semantic consistency of {len(splits['test'])} predictions")
    assert lines[2].split()[:2] == ["mean", "1.0000"]
    assert main(["--dataset", str(embedded_output), "--predictions", predictions, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["consistency"]["mean"] >= 0.9999


def test_a_staged_hub_folder_is_scored_like_the_output(hub_folder, splits, perfect, tiny_model, tmp_path, monkeypatch,
                                                       capsys):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))  # not the user's cache
    predictions = write_jsonl(tmp_path / "p.jsonl", own_texts(splits))
    # Its card names the local model folder by name alone (built without --model-id): a copy is passed.
    assert main(["--dataset", str(hub_folder), "--predictions", predictions, "--json", "--model", tiny_model]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["predictions"] == perfect["predictions"]
    for score in ("consistency", "baseline"):  # the same rows, texts, vectors and seeded draws
        assert report[score]["mean"] == pytest.approx(perfect[score]["mean"], abs=1e-4)


@pytest.mark.parametrize("lines, extra, message", [
    (['{"text_id": "0000000000000000", "text": "x"}'], [], "1 text_id value is not in any split of the dataset"),
    (['{"text_id": "0000000000000000", "text": "x"}', '{"text_id": "0000000000000001", "text": "y"}'],
     ["--split", "test"], "2 text_id values are not in the test split of the dataset"),
    (["FIRST", "not json"], [], "line 2 is not a JSON object with string fields"),
    (['{"text_id": 7, "text": "x"}'], [], "line 1 is not a JSON object"),
    (['["a", "b"]'], [], "line 1 is not a JSON object"),
    ([""], [], "holds no predictions"),
    (["FIRST"], ["--split", "dev"], "--split dev is not a split of the dataset: pass one of train"),
    (["FIRST"], ["--bogus"], "unrecognized arguments|--bogus"),
    (["FIRST"], ["--column", "embedding_b"], "has no embedding column 'embedding_b': pass column= one of embedding"),
])
def test_bad_input_is_one_line_and_exit_2(embedded_output, splits, tmp_path, capsys, lines, extra, message):
    first = json.dumps({"text_id": splits["test"][0]["text_id"], "text": "x"})
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(first if line == "FIRST" else line for line in lines) + "\n")
    assert main(["--dataset", str(embedded_output), "--predictions", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0])


def test_a_missing_predictions_file_or_dataset_is_one_line(embedded_output, tmp_path, capsys):
    assert main(["--dataset", str(embedded_output), "--predictions", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot read --predictions" in capsys.readouterr().err
    path = write_jsonl(tmp_path / "p.jsonl", [{"text_id": "x", "text": "y"}])
    assert main(["--dataset", str(tmp_path / "nothing"), "--predictions", path]) == 2
    assert "neither a dataset directory nor a Hub dataset id" in capsys.readouterr().err
