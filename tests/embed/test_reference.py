"""Every build and --verify check a sample of the stored vectors against sentence-transformers itself."""

import json
import shutil

import pytest

from elm_wikitext.embed import spec
from elm_wikitext.core.recipe import Recipe
from elm_wikitext.publish.output import MANIFEST_FILE


def test_the_build_records_its_check_against_sentence_transformers(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    check = manifest["stats"]["embed"]["embedding"]["reference"]
    splits = manifest["splits"]
    assert check["rows"] == sum(min(8, entry["rows"]) for entry in splits.values())  # from every split
    assert check["min_cosine"] == 0.99999 <= check["lowest_cosine"]  # float32 on this CPU
    assert isinstance(check["seed"], int) and check["seconds"] > 0 and check["load_seconds"] > 0


def test_vectors_made_by_a_misread_recipe_stop_the_build_before_anything_is_written(
        sample_dir, tiny_model, tmp_path, monkeypatch, capsys):
    """The build's own reading of the recipe cannot vouch for itself: a mean where the model's
    files say last token is caught by sentence-transformers' vectors, exit 2, no output."""
    from elm_wikitext.cli import main

    monkeypatch.setattr(spec, "model_recipe", lambda model, revision=None: Recipe("mean", True, "", 4096))
    output = tmp_path / "out"
    assert main(["--source", str(sample_dir), "--model", tiny_model, "--output", str(output)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the log goes to stderr too
    assert error.startswith("error: nothing was written: the stored vectors differ from "
                            "SentenceTransformer(model).encode_document (seed ")
    assert not (output / MANIFEST_FILE).exists()


def test_the_summary_states_the_check_its_seed_and_its_seconds(sample_dir, st_models, tmp_path, capsys):
    """A BERT-like model with mean pooling and no Normalize, checked the same way."""
    from elm_wikitext.cli import main

    model = shutil.copytree(st_models["bert-mean"], tmp_path / "bert")
    assert main(["--source", str(sample_dir), "--model", str(model), "--output", str(tmp_path / "out"),
                 "--max-tokens", "500"]) == 0
    checked = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("checked:"))
    assert "rows of embedding against sentence-transformers (seed " in checked and "floor 0.99999" in checked
    assert "s loading its model" in checked


def test_a_float16_overflow_of_sentence_transformers_is_left_out_and_counted(embedded_output, monkeypatch):
    """Qwen3-Embedding overflows in float16 on some inputs; the build recomputes those rows in
    float32, sentence-transformers does not: its NaN row is no evidence either way."""
    import numpy as np
    import torch
    from datasets import load_from_disk

    from elm_wikitext.core import reference

    splits = load_from_disk(str(embedded_output))
    stored = {text: vector for split in splits.values()
              for text, vector in zip(split["text"], split.with_format("numpy")["embedding"][:])}

    class Overflowing:
        def encode_document(self, texts, **kwargs):
            vectors = np.stack([stored[text] for text in texts]).astype(np.float32)
            vectors[0] = np.nan  # the first row of each split overflowed
            return vectors

    monkeypatch.setattr(reference, "load_reference", lambda *args: (Overflowing(), 0.1))
    report = reference.check_against_reference(splits, {"embedding": ("model", None, "float16", 64)}, 7,
                                               torch.device("cpu"))
    facts = report["columns"]["embedding"]
    assert facts["not_finite_there"] == 3 and facts["rows"] == report["rows"] == 19 - 3
    assert facts["lowest_cosine"] >= 0.99999 and facts["min_cosine"] == 0.999
