import pytest
from datasets import load_from_disk

from elm_wikitext.core.recipe import Recipe
from elm_wikitext.core.tokens import check_tokenizer, load_tokenizer, token_ids
from elm_wikitext.core.errors import BuildError


def test_token_ids_are_the_tokenizers_own_with_end_of_text(text_output, tokenizer):
    # Every stage counts and feeds the ids of this one call; they must be exactly what the
    # tokenizer gives, end-of-text appended, even where the tokenizer's files set truncation.
    texts = [row["text"] for split in load_from_disk(str(text_output)).values() for row in split]
    expected = tokenizer(texts, add_special_tokens=True)["input_ids"]
    assert token_ids(texts, tokenizer) == expected
    assert all(ids[-1] == tokenizer.eos_token_id for ids in expected)
    tokenizer.backend_tokenizer.enable_truncation(max_length=16)
    try:
        assert token_ids(texts, tokenizer) == expected
        # and the caller's tokenizer keeps the truncation it was given
        assert tokenizer.backend_tokenizer.truncation["max_length"] == 16
    finally:
        tokenizer.backend_tokenizer.no_truncation()
    assert token_ids([], tokenizer) == []


def test_refuses_a_tokenizer_without_appended_end_token(tiny_model, tmp_path):
    import json
    import shutil

    # The tiny model's tokenizer files, copied (building the tokenizer anew takes seconds).
    plain = shutil.copytree(tiny_model, tmp_path / "tok", ignore=shutil.ignore_patterns("*.safetensors"))
    tokenizer = json.loads((plain / "tokenizer.json").read_text())
    tokenizer["post_processor"] = None  # nothing appended
    (plain / "tokenizer.json").write_text(json.dumps(tokenizer))
    loaded = load_tokenizer(str(plain))  # once: a load of Qwen's vocabulary takes a second or two
    with pytest.raises(BuildError, match="does not append an end-of-text token"):
        check_tokenizer(loaded, Recipe(), str(plain))
    check_tokenizer(loaded, Recipe(pooling="mean"), str(plain))  # mean pooling reads no such token


def test_a_model_id_the_hub_does_not_know_is_refused_before_any_download(monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub.errors import RepositoryNotFoundError

    class HubWithoutIt:
        def repo_info(self, repo_id, revision=None, repo_type=None, timeout=None):
            response = SimpleNamespace(status_code=404, headers={}, request=None)
            raise RepositoryNotFoundError(f"404: {repo_id}", response=response)

    monkeypatch.setattr("elm_wikitext.core.locations.HfApi", HubWithoutIt)
    monkeypatch.setattr("elm_wikitext.core.tokens.constants.HF_HUB_OFFLINE", False)
    with pytest.raises(BuildError, match=r"--model Qwen/Qwen3-Embeding-4B \(revision main\) is not a model "
                                         r"on the Hub.*check the id and --model-revision"):
        load_tokenizer("Qwen/Qwen3-Embeding-4B")
