"""Every build and --verify check a sample of the stored vectors against sentence-transformers itself."""

import json
import shutil

import pytest

from elm_wikitext.embed import spec
from elm_wikitext.embed.recipe import Recipe
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
    from build import main

    monkeypatch.setattr(spec, "model_recipe", lambda model, revision=None: Recipe("mean", True, "", 4096))
    output = tmp_path / "out"
    assert main(["--source", str(sample_dir), "--model", tiny_model, "--output", str(output)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the log goes to stderr too
    assert error.startswith("error: nothing was written: the stored vectors differ from "
                            "SentenceTransformer(model).encode_document (seed ")
    assert not (output / MANIFEST_FILE).exists()


def test_the_summary_states_the_check_its_seed_and_its_seconds(sample_dir, st_models, tmp_path, capsys):
    """A BERT-like model with mean pooling and no Normalize, checked the same way."""
    from build import main

    model = shutil.copytree(st_models["bert-mean"], tmp_path / "bert")
    assert main(["--source", str(sample_dir), "--model", str(model), "--output", str(tmp_path / "out"),
                 "--max-tokens", "500"]) == 0
    checked = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("checked:"))
    assert "rows of embedding against sentence-transformers (seed " in checked and "floor 0.99999" in checked
    assert "s loading its model" in checked
