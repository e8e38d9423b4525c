"""A model's own recipe, read from its sentence-transformers files, and the ones refused."""

import json
import re
import shutil
from pathlib import Path

import pytest

from elm_wikitext.core.recipe import Recipe, model_recipe
from elm_wikitext.core.errors import BuildError


@pytest.mark.parametrize("kind, pooling, normalize", [
    ("qwen3-lasttoken", "lasttoken", True), ("bert-mean", "mean", False), ("bert-cls", "cls", True),
    ("t5-mean", "mean", True)])
def test_the_recipe_is_read_from_the_sentence_transformers_files(st_models, kind, pooling, normalize):
    recipe = model_recipe(st_models[kind])
    assert (recipe.pooling, recipe.normalize, recipe.prompt, recipe.origin) == (pooling, normalize, "", "sentence-transformers")
    assert recipe.max_length == (4096 if kind.startswith("qwen3") else 512)  # positions, or the tokenizer's limit


def test_the_tiny_model_carries_qwen3_embeddings_recipe(tiny_model):
    """Transformer -> Pooling last-token -> Normalize, a query instruction and no document prompt."""
    recipe = model_recipe(tiny_model)
    assert (recipe.pooling, recipe.normalize, recipe.prompt, recipe.max_length) == ("lasttoken", True, "", 4096)
    assert recipe.query_prompt.startswith("Instruct: ") and recipe.origin == "sentence-transformers"


ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling", "2_Normalize")


def plain_copy(model: str, directory: Path, **config) -> Path:
    """`model` without its sentence-transformers files (weights linked, not copied), its
    config.json changed by `config`."""
    copy = shutil.copytree(model, directory, ignore=shutil.ignore_patterns("*.safetensors", *ST_FILES))
    for weights in Path(model).glob("*.safetensors"):
        (copy / weights.name).symlink_to(weights)
    if config:
        edit_json(copy / "config.json", **config)
    return copy


@pytest.mark.parametrize("architectures, pooling", [
    (["Qwen3Model"], "mean"), (["Qwen3ForCausalLM"], "lasttoken")])
def test_a_plain_folder_gets_what_sentence_transformers_builds_for_it(tiny_model, tmp_path, architectures, pooling):
    """Last token for a causal language model, mean otherwise; never normalized, no prompt."""
    recipe = model_recipe(str(plain_copy(tiny_model, tmp_path / "plain", architectures=architectures)))
    assert recipe == Recipe(pooling, False, "", 4096, "transformers")


def test_a_plain_folder_whose_tokenizer_has_a_chat_template_is_refused(tiny_model, tmp_path):
    model = plain_copy(tiny_model, tmp_path / "plain")
    edit_json(model / "tokenizer_config.json", chat_template="{{ messages[0]['content'] }}")
    with pytest.raises(BuildError, match="has a chat template, which SentenceTransformer"):
        model_recipe(str(model))


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
    ("max pooling", "pools with 'max' in 1_Pooling/config.json, which this build cannot reproduce"),
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


def test_a_recorded_recipe_reads_back():
    recipe = Recipe("mean", False, "passage: ", 512, "sentence-transformers")
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_a_file_modules_json_names_and_that_is_missing_is_refused(st_models, tmp_path):
    """sentence-transformers would pool by mean in its place (Qwen3-Embedding-4B has that layout)."""
    model = copy_of(st_models["qwen3-lasttoken"], tmp_path / "model")
    shutil.rmtree(model / "1_Pooling")
    with pytest.raises(BuildError, match="lacks 1_Pooling/config.json, which its modules.json names"):
        model_recipe(str(model))


@pytest.mark.parametrize("name, content, where", [
    ("modules.json", {"0": "Transformer"}, "modules.json"),
    ("modules.json", [{"type": 3, "path": ""}], "modules.json key 'type'"),
    ("1_Pooling/config.json", ["lasttoken"], "1_Pooling/config.json"),
    ("1_Pooling/config.json", {"pooling_mode": "mean", "include_prompt": "no"}, "1_Pooling/config.json key 'include_prompt'"),
    ("config_sentence_transformers.json", {"prompts": ["passage: "]}, "config_sentence_transformers.json key 'prompts'"),
    ("config_sentence_transformers.json", {"prompts": {"document": 1}}, "key 'prompts.document'"),
    ("sentence_bert_config.json", {"max_seq_length": "512"}, "sentence_bert_config.json key 'max_seq_length'"),
    ("sentence_bert_config.json", [512], "sentence_bert_config.json of the wrong type"),
    ("2_Normalize/config.json", "yes", "2_Normalize/config.json of the wrong type"),
])
def test_recipe_files_of_the_wrong_json_type_are_refused_in_one_line(st_models, tmp_path, name, content, where):
    model = copy_of(st_models["qwen3-lasttoken"], tmp_path / "model")
    (model / name).write_text(json.dumps(content))
    with pytest.raises(BuildError, match=re.escape(where)) as refused:
        model_recipe(str(model))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name, changes, key", [
    ("sentence_bert_config.json", {"do_lower_case": True}, "do_lower_case"),
    ("sentence_bert_config.json", {"modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"},
                                                       "message": {"method": "forward", "method_output_name": "last_hidden_state"}}},
     "modality_config"),
    ("sentence_bert_config.json", {"transformer_task": "text-generation"}, "transformer_task"),
    ("sentence_bert_config.json", {"processing_kwargs": {"text": {"max_length": 16}}}, "processing_kwargs"),
    ("sentence_bert_config.json", {"config_kwargs": {"rope_theta": 10.0}}, "config_kwargs"),
    ("sentence_bert_config.json", {"tokenizer_args": {"add_eos_token": False}}, "tokenizer_args"),
    ("sentence_bert_config.json", {"a_new_setting": 1}, "a_new_setting"),
    ("config_sentence_transformers.json", {"truncate_dim": 32}, "truncate_dim"),
    ("config_sentence_transformers.json", {"model_type": "CrossEncoder"}, "model_type"),
    ("config_sentence_transformers.json", {"default_prompt_name": "classification"}, "default_prompt_name"),
    ("2_Normalize/config.json", {"module_input_name": "token_embeddings"}, "module_input_name"),
])
def test_a_setting_that_changes_the_vectors_and_is_not_reproduced_is_refused(st_models, tmp_path, name, changes, key):
    model = copy_of(st_models["qwen3-lasttoken"], tmp_path / "model")
    edit_json(model / name, **changes)
    with pytest.raises(BuildError, match=f"sets {key}=.* in {re.escape(name)}, which this build cannot reproduce"):
        model_recipe(str(model))


def test_harmless_settings_and_document_lengths_are_read(st_models, tmp_path):
    model = copy_of(st_models["bert-mean"], tmp_path / "model")
    edit_json(model / "sentence_bert_config.json", max_seq_length=256, do_lower_case=False, document_length=128,
              query_length=32, unpad_inputs=False, tokenizer_args={"padding_side": "left"})
    assert model_recipe(str(model)).max_length == 128  # documents are cut at document_length


def test_a_module_of_another_package_or_a_transformer_in_a_subfolder_is_refused(st_models, tmp_path):
    model = copy_of(st_models["bert-cls"], tmp_path / "model")
    modules = json.loads((model / "modules.json").read_text())
    (model / "modules.json").write_text(json.dumps([{**modules[0], "type": "custom_code.Transformer"}] + modules[1:]))
    with pytest.raises(BuildError, match="sets type='custom_code.Transformer' in modules.json"):
        model_recipe(str(model))
    (model / "modules.json").write_text(json.dumps([{**modules[0], "path": "0_Transformer"}] + modules[1:]))
    with pytest.raises(BuildError, match="sets path='0_Transformer' in modules.json"):
        model_recipe(str(model))
