"""A model's own recipe, read from its sentence-transformers files, and the ones refused."""

import json
import shutil
from pathlib import Path

import pytest

from elm_wikitext.embed.recipe import Recipe, model_recipe
from elm_wikitext.errors import BuildError


@pytest.mark.parametrize("kind, pooling, normalize", [
    ("qwen3-lasttoken", "lasttoken", True), ("bert-mean", "mean", False), ("bert-cls", "cls", True),
    ("t5-mean", "mean", True)])
def test_the_recipe_is_read_from_the_sentence_transformers_files(st_models, kind, pooling, normalize):
    recipe = model_recipe(st_models[kind])
    assert (recipe.pooling, recipe.normalize, recipe.prompt, recipe.origin) == (pooling, normalize, "", "sentence-transformers")
    assert recipe.max_length == (4096 if kind.startswith("qwen3") else 512)  # positions, or the tokenizer's limit


def test_a_plain_transformers_model_gets_the_last_token_recipe(tiny_model):
    assert model_recipe(tiny_model) == Recipe(max_length=4096)  # Qwen3-Embedding's, and its positions


def copy_of(model: str, directory: Path) -> Path:
    return shutil.copytree(model, directory, ignore=shutil.ignore_patterns("*.safetensors"))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_files_of_older_sentence_transformers_are_read(st_models, tmp_path):
    model = copy_of(st_models["bert-cls"], tmp_path / "old")
    flags = {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
             "pooling_mode_max_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    (model / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    (model / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    recipe = model_recipe(str(model))
    assert (recipe.pooling, recipe.max_length) == ("cls", 256)


def test_the_document_prompt_is_the_one_encode_document_uses(st_models, tmp_path):
    model = copy_of(st_models["bert-mean"], tmp_path / "prompted")
    edit_json(model / "config_sentence_transformers.json",
              prompts={"query": "query: ", "passage": "passage: "}, default_prompt_name="query")
    assert model_recipe(str(model)).prompt == "passage: "


@pytest.mark.parametrize("change, message", [
    ("max pooling", "pools with 'max', which this build cannot reproduce"),
    ("a Dense module", "chains the sentence-transformers modules Transformer -> Pooling -> Dense -> Normalize"),
    ("a prompt left out of the pooling", "pools without its document prompt's tokens"),
])
def test_a_recipe_it_cannot_reproduce_is_refused(st_models, tmp_path, change, message):
    model = copy_of(st_models["t5-mean"], tmp_path / "model")
    if change == "max pooling":
        edit_json(model / "1_Pooling" / "config.json", pooling_mode="max")
    elif change == "a Dense module":
        modules = json.loads((model / "modules.json").read_text())
        dense = {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"}
        (model / "modules.json").write_text(json.dumps(modules[:2] + [dense] + modules[2:]))
    else:
        edit_json(model / "1_Pooling" / "config.json", include_prompt=False)
        edit_json(model / "config_sentence_transformers.json", prompts={"document": "passage: "})
    with pytest.raises(BuildError, match=message):
        model_recipe(str(model))


def test_a_recorded_recipe_reads_back_and_the_first_one_means_the_last_token():
    recipe = Recipe("mean", False, "passage: ", 512, "sentence-transformers")
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_json({"pooling": "last_token_l2"}) == Recipe()  # as the first builds recorded it
