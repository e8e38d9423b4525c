"""Embedder: new text embedded as the dataset's rows were, from its manifest or its card."""

import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from datasets import load_from_disk
from huggingface_hub import DatasetCard

from elm_wikitext.core.errors import BuildError
from elm_wikitext.training.embedder import Embedder


def stored(output, name: str = "test") -> tuple[list[str], np.ndarray]:
    split = load_from_disk(str(output))[name]
    return split["text"][:], np.asarray(split["embedding"][:], dtype=np.float32)


def edited_card(hub_folder, tmp_path, changes: dict | None) -> str:
    """A copy of the staged folder whose card's embedding recipe has `changes` (None: no recipe)."""
    copy = tmp_path / "hub-copy"
    shutil.copytree(hub_folder, copy)
    card = DatasetCard.load(copy / "README.md")
    recipes = card.data.embedding  # one recipe per embedding column
    card.data.embedding = None if changes is None else {**recipes, "embedding": {**recipes["embedding"], **changes}}
    card.save(copy / "README.md")
    return str(copy)


def test_every_row_re_embeds_to_its_stored_vector(embedded_output):
    embedder = Embedder.from_dataset(str(embedded_output))
    for name, split in load_from_disk(str(embedded_output)).items():
        vectors = embedder.embed(split["text"][:])  # all at once: the build's batching and order
        expected = np.asarray(split["embedding"][:], dtype=np.float32)
        assert vectors.dtype == np.float32 and vectors.shape == expected.shape
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert (vectors * expected).sum(axis=1).min() >= 0.9999, name


def test_a_staged_hub_folder_carries_the_recipe_in_its_card(embedded_output, hub_folder, tiny_model):
    """Its card names a local model folder (built without --model-id) by its name alone: a reader
    passes a copy of it, whose weight files are checked by SHA-256."""
    assert not (hub_folder / "manifest.json").exists()
    with pytest.raises(BuildError, match=r"tiny-qwen3 \(a local model folder\) is not a directory .* pass model=DIR"):
        Embedder.from_dataset(str(hub_folder))
    texts, expected = stored(embedded_output)
    vectors = Embedder.from_dataset(str(hub_folder), model=tiny_model).embed(texts)
    assert (vectors * expected).sum(axis=1).min() >= 0.9999


def hub_cache_of(model: str, cache: Path, repo_id: str, commit: str) -> None:
    """`model`'s files in a Hub cache layout, as `from_pretrained(repo_id, revision=commit)`
    leaves them on another machine: snapshots/<commit>/<file> linked to blobs/<SHA-256>."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for path in Path(model).rglob("*"):
        if path.is_file():
            blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, blob)
            link = repo / "snapshots" / commit / path.relative_to(model)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_card_naming_a_hub_model_fetches_it_by_commit_and_checks_its_weights(
        hub_folder, tiny_model, embedded_output, tmp_path, monkeypatch):
    import hashlib

    commit = "1" * 40
    sha = hashlib.sha256((Path(tiny_model) / "model.safetensors").read_bytes()).hexdigest()
    cache = tmp_path / "hub-cache"
    hub_cache_of(tiny_model, cache, "someone/tiny-embedding", commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = edited_card(hub_folder, tmp_path, {"model": "someone/tiny-embedding", "model_revision": commit,
                                              "model_weights": commit, "weights_sha256": {"model.safetensors": sha}})
    texts, expected = stored(embedded_output)
    vectors = Embedder.from_dataset(card).embed(texts)
    assert (vectors * expected).sum(axis=1).min() >= 0.9999
    other = edited_card(hub_folder, tmp_path / "other", {"model": "someone/tiny-embedding", "model_revision": commit,
                                                         "model_weights": commit, "weights_sha256": {"model.safetensors": "0" * 64}})
    with pytest.raises(BuildError, match="the weight file model.safetensors of .* is not the one .* was embedded with"):
        Embedder.from_dataset(other)


def test_an_explicit_embedder_cuts_dim_as_the_build_does(tiny_model, embedded_output):
    texts, expected = stored(embedded_output)
    full = Embedder(model=tiny_model, dtype="float32").embed(texts)
    cut = Embedder(model=tiny_model, dim=32, dtype="float32").embed(texts)
    assert (full * expected).sum(axis=1).min() >= 0.9999
    matryoshka = expected[:, :32] / np.linalg.norm(expected[:, :32], axis=1, keepdims=True)
    assert cut.shape == (len(texts), 32) and (cut * matryoshka).sum(axis=1).min() >= 0.9999


def test_a_model_directory_elsewhere_is_named_and_a_copy_of_it_is_accepted(hub_folder, tiny_model, tmp_path):
    moved = edited_card(hub_folder, tmp_path, {"model": str(tmp_path / "gone" / "tiny-qwen3")})
    with pytest.raises(BuildError, match="model directory .*gone/tiny-qwen3.* not a directory on this "
                                         "machine: pass model=DIR"):
        Embedder.from_dataset(moved)
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    assert Embedder.from_dataset(moved, model=str(copy)).dim == 64


def test_other_weights_under_the_recorded_name_are_refused(embedded_output, retrained_model):
    with pytest.raises(BuildError, match="are not the ones .* was embedded with"):  # same architecture
        Embedder.from_dataset(str(embedded_output), model=retrained_model)


@pytest.mark.parametrize("changes, message", [
    (None, "has no `embedding:` recipe"),
    ({"pooling": "max"}, "pooling 'max' in float32, which this version of elm-wikitext cannot reproduce"),
    ({"dim": None}, "recipe of .* lacks dim"),
    ({"model_weights": None, "normalize": None}, "recipe of .* lacks model_weights, normalize"),
])
def test_a_recipe_it_cannot_reproduce_is_refused(hub_folder, tmp_path, changes, message):
    with pytest.raises(BuildError, match=message):
        Embedder.from_dataset(edited_card(hub_folder, tmp_path, changes))


def test_datasets_without_a_recipe_are_refused_in_one_line(text_output, tmp_path, monkeypatch):
    with pytest.raises(BuildError, match="holds no embeddings .* --stage embed"):
        Embedder.from_dataset(str(text_output))
    with pytest.raises(BuildError, match="holds neither manifest.json nor a dataset card"):
        Embedder.from_dataset(str(tmp_path))
    with pytest.raises(BuildError, match="revision='v1.0.0' names a version of a Hub dataset"):
        Embedder.from_dataset(str(text_output), revision="v1.0.0")
    with pytest.raises(BuildError, match="neither a dataset directory nor a Hub dataset id"):
        Embedder.from_dataset(str(tmp_path / "missing"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BuildError, match=r"cannot fetch the card of someone/elm-wikitext2 \(revision v2.0.0\)"):
        Embedder.from_dataset("someone/elm-wikitext2", revision="v2.0.0")


def test_empty_input_gives_an_empty_array(embedded_output):
    assert Embedder.from_dataset(str(embedded_output)).embed([]).shape == (0, 64)
