"""The output directory, the card, and the Hub layout loaded back as a user would."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import List, Value, load_dataset, load_from_disk
from huggingface_hub import DatasetCard
from torch.utils.data import DataLoader

from elm_wikitext import publish
from elm_wikitext.errors import BuildError
from elm_wikitext.publish import MANIFEST_FILE, stage_hub_folder


def test_output_holds_data_card_manifest_and_histogram(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    splits = load_from_disk(str(embedded_output))
    assert manifest["config"]["model"] and manifest["versions"]["datasets"]
    assert set(manifest["stats"]) == {"text", "embed"}
    assert {name: entry["rows"] for name, entry in manifest["splits"].items()} == {
        name: len(split) for name, split in splits.items()}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["splits"].values())
    card = DatasetCard.load(embedded_output / "README.md")
    assert card.data.license == ["cc-by-sa-3.0", "gfdl"]
    assert "duplicate | 1" in card.text and "low_quality | 2" in card.text
    assert "load_dataset(" in card.text and "Merity" in card.text
    assert (embedded_output / "token_lengths.png").read_bytes()[:4] == b"\x89PNG"


def test_the_card_describes_the_text_stage_a_later_embed_run_reuses(sample_dir, tiny_model, tmp_path):
    from build import main

    output = str(tmp_path / "out")
    assert main(["--stage", "text", "--source", str(sample_dir), "--model", tiny_model, "--output", output,
                 "--min-tokens", "20", "--max-tokens", "3000"]) == 0
    assert main(["--stage", "embed", "--model", tiny_model, "--output", output]) == 0  # default options
    card = DatasetCard.load(Path(output) / "README.md")
    assert f"Built from `{sample_dir}`, its train" in card.text and "Salesforce/wikitext" not in card.text
    assert f"- Model: `{tiny_model}`." in card.text  # a local directory: no Hub config or revision
    assert "at most 3000 tokens per paragraph" in card.text and "outside 20-3000 tokens" in card.text
    table = card.text.split("| tokens | paragraphs |")[1].split("![")[0]
    buckets = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and "-" in line]
    assert buckets[0][0].strip().startswith("20-") and buckets[-1][0].strip().endswith("-3000")
    rows = sum(len(split) for split in load_from_disk(output).values())
    assert sum(int(count.replace(",", "")) for _, count in buckets) == rows  # every row in a bucket


def test_the_card_names_the_corpus_and_model_it_was_built_from(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    manifest["stats"]["text"].update(source="Salesforce/wikitext", source_config="wikitext-103-raw-v1")
    manifest["stats"]["embed"].update(model="Qwen/Qwen3-Embedding-0.6B", model_revision=None)
    card = publish.render_card(load_from_disk(str(embedded_output)), manifest)
    assert card.data.pretty_name == "ELM WikiText-103: paragraphs and their Qwen3-Embedding-0.6B vectors"
    assert card.data.source_datasets == ["Salesforce/wikitext"]
    assert "WikiText-103 paragraphs paired with their **Qwen/Qwen3-Embedding-0.6B** embeddings" in card.text
    assert "Built from `Salesforce/wikitext` (`wikitext-103-raw-v1`)" in card.text
    assert "revision `main`" in card.text and "WikiText-2" not in card.text


def test_hub_layout_loads_with_load_dataset(embedded_output, tmp_path):
    folder = stage_hub_folder(str(embedded_output), tmp_path / "hub", "someone/elm-wikitext2", "v1.2.3")
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        "test-00000-of-00001.parquet", "train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    hub = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))  # no earlier run's cache
    local = load_from_disk(str(embedded_output))
    assert hub["train"].features["embedding"] == List(Value("float32"), length=64)
    for name in local:
        assert hub[name].features == local[name].features
        assert hub[name]["text_id"][:] == local[name]["text_id"][:]
        np.testing.assert_array_equal(np.asarray(hub[name]["embedding"][:5]), np.asarray(local[name]["embedding"][:5]))
    card = DatasetCard.load(folder / "README.md")
    assert card.data.configs[0]["config_name"] == "default"
    assert [s["num_examples"] for s in card.data.dataset_info["splits"]] == [len(local[n]) for n in local]
    # The sizes the Hub shows: each split's Arrow bytes, close to what load_dataset counted writing them.
    sizes = {s["name"]: s["num_bytes"] for s in card.data.dataset_info["splits"]}
    for name in local:
        assert sizes[name] == local[name].data.nbytes > 0
        assert abs(sizes[name] - hub[name].info.splits[name].num_bytes) <= 0.02 * sizes[name]
    assert card.data.dataset_info["dataset_size"] == sum(sizes.values())
    assert 'revision="v1.2.3"' in card.text and "someone/elm-wikitext2" in card.text


def test_torch_dataloader_yields_embedding_tensors(embedded_output):
    train = load_from_disk(str(embedded_output))["train"].with_format("torch", columns=["embedding", "text"])
    batch = next(iter(DataLoader(train, batch_size=8, shuffle=True)))
    assert batch["embedding"].shape == (8, 64) and batch["embedding"].dtype == torch.float32
    assert len(batch["text"]) == 8 and isinstance(batch["text"][0], str)


def test_failed_write_leaves_earlier_output_intact(embedded_copy, monkeypatch):
    before = {p.relative_to(embedded_copy): p.read_bytes() for p in embedded_copy.rglob("*") if p.is_file()}
    splits, manifest = publish.read_output(str(embedded_copy))

    def failing_card(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish, "write_card", failing_card)
    with pytest.raises(BuildError, match="No space left on device.*earlier output there is unchanged"):
        publish.write_output(splits, manifest, str(embedded_copy))
    after = {p.relative_to(embedded_copy): p.read_bytes() for p in embedded_copy.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in embedded_copy.parent.iterdir() if p.name.startswith(".")] == []


def test_a_second_build_into_the_same_output_is_refused(embedded_copy, options, capsys):
    from build import main
    from elm_wikitext.publish import output_lock

    before = (embedded_copy / MANIFEST_FILE).read_bytes()
    with output_lock(str(embedded_copy)):  # a first build, still running
        code = main(["--source", options.source, "--model", options.model, "--output", str(embedded_copy)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: another build is writing {embedded_copy}")
    assert (embedded_copy / MANIFEST_FILE).read_bytes() == before
