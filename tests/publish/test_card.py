"""The dataset card, and the Hub layout loaded back as a user would."""

import json
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
from datasets import List, Value, load_dataset, load_from_disk
from huggingface_hub import DatasetCard

from elm_wikitext.publish.card import render_card, stage_hub_folder
from elm_wikitext.core.records import Manifest
from elm_wikitext.publish.output import EMBEDDING_MAP_FILE, HISTOGRAM_FILE, MANIFEST_FILE
from elm_wikitext.publish.visuals import nearest_neighbours, table_cell


def test_the_card_describes_the_text_stage_a_later_embed_run_reuses(sample_dir, tiny_model, tmp_path):
    from elm_wikitext.cli import main

    output = str(tmp_path / "out")
    assert main(["--stage", "text", "--source", str(sample_dir), "--model", tiny_model, "--output", output,
                 "--min-tokens", "20", "--max-tokens", "3000"]) == 0
    assert main(["--stage", "embed", "--model", tiny_model, "--output", output]) == 0  # default options
    card = DatasetCard.load(Path(output) / "README.md")
    # The config says which archive files a local folder gave: the raw ones, by default.
    assert "Built from `wikitext_sample (a local copy)`, config `wikitext-2-raw-v1` (the raw text" in card.text
    assert "Salesforce/wikitext" not in card.text and "<unk>` stays" not in card.text
    # A local directory without --model-id: its name, no revision, and no path of this machine.
    assert "- Model: `tiny-qwen3 (a local model folder)`." in card.text
    assert str(sample_dir) not in str(card) and tiny_model not in str(card) and str(tmp_path) not in str(card)
    assert "at most 3000 tokens per paragraph" in card.text and "outside 20-3000 tokens" in card.text
    table = card.text.split("| tokens | paragraphs |")[1].split("![")[0]
    buckets = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and "-" in line]
    assert buckets[0][0].strip().startswith("20-") and buckets[-1][0].strip().endswith("-3000")
    rows = sum(len(split) for split in load_from_disk(output).values())
    assert sum(int(count.replace(",", "")) for _, count in buckets) == rows  # every row in a bucket


def test_the_card_names_the_corpus_and_model_it_was_built_from(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    manifest["stats"]["text"].update(source="Salesforce/wikitext", source_config="wikitext-103-raw-v1")
    manifest["stats"]["embed"]["embedding"].update(model="Qwen/Qwen3-Embedding-0.6B", model_revision=None)
    card = render_card(load_from_disk(str(embedded_output)), Manifest.from_json(manifest))
    assert card.data.pretty_name == "ELM WikiText-103: paragraphs and their Qwen3-Embedding-0.6B vectors"
    assert card.data.source_datasets == ["Salesforce/wikitext"]
    assert "WikiText-103 paragraphs paired with their **Qwen/Qwen3-Embedding-0.6B** embeddings" in card.text
    assert "Built from `Salesforce/wikitext`, config `wikitext-103-raw-v1` (the raw text" in card.text
    assert "revision `main`" in card.text and "WikiText-2" not in card.text


def test_local_folders_with_hub_ids_are_published_by_id_and_commit_never_by_path(embedded_output, as_built):
    """The README's offline route: `hf download Qwen/Qwen3-Embedding-4B --local-dir ...`, then
    --model-id and --source-id: the card names both by Hub id and commit, the recipe Embedder reads
    fetches by them, and no path of the builder's machine is left anywhere in it."""
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    commit, sha = "a" * 40, "b" * 64
    manifest["stats"]["text"].update(source_id="Salesforce/wikitext", source_commit="c" * 40)
    manifest["stats"]["embed"]["embedding"].update(model_id="Qwen/Qwen3-Embedding-4B", model_commit=commit,
                                                   weights_sha256={"model.safetensors": sha})
    card = render_card(load_from_disk(str(embedded_output)), as_built(manifest))
    assert card.data.pretty_name == "ELM WikiText-2: paragraphs and their Qwen3-Embedding-4B vectors"
    assert card.data.source_datasets == ["Salesforce/wikitext"]
    assert f"- Model: `Qwen/Qwen3-Embedding-4B`, revision `{commit}`." in card.text
    assert f"Built from `Salesforce/wikitext` (commit `{'c' * 40}`)" in card.text
    recipe = card.data.embedding["embedding"]
    assert (recipe["model"], recipe["model_revision"], recipe["model_weights"]) == ("Qwen/Qwen3-Embedding-4B", commit, commit)
    assert recipe["weights_sha256"] == {"model.safetensors": sha}
    command = card.text.split("## How it was built")[1]
    # The model and the source are the defaults' ids now: only their commits are named.
    assert f"--model-revision {commit}" in command and "--model " not in command and "--source " not in command
    local = [manifest["stats"]["embed"]["embedding"]["model"], manifest["stats"]["text"]["source"], str(embedded_output)]
    assert not any(path in str(card) for path in local), "a path of the builder's machine in the card"
    assert "@article{qwen3embedding" in card.text and "Instruct: {task}" in card.text  # Qwen3-Embedding's own


def test_the_card_of_a_tokenized_build_counts_its_unknown_words(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    manifest["stats"]["text"].update(source_config="wikitext-2-v1", raw=False,
                                     unknown_words={"words": 1234, "paragraphs": 56})
    card = render_card(load_from_disk(str(embedded_output)), Manifest.from_json(manifest)).text
    assert "config `wikitext-2-v1` (the tokenized text, with `<unk>` for rare words)" in card
    assert "1,234 of them in 56 kept paragraphs" in card and "rare words read `<unk>`" in card


def neighbour_rows(card_text: str) -> list[list[str]]:
    """The cells of the card's neighbours table, one list per row."""
    table = card_text.split("| paragraph | nearest neighbour | cosine |")[1].split("\n\n")[0]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table.splitlines()[2:]]


def test_the_card_shows_the_vectors_map_and_nearest_neighbours(embedded_output, hub_folder):
    """In the output and in the Hub folder: both plots are PNG images the card links to, and the
    table shows three paragraphs, each with its closest other row and their cosine."""
    import matplotlib.image

    splits = load_from_disk(str(embedded_output))
    pairs = nearest_neighbours(splits)
    for folder in (embedded_output, hub_folder):
        card = DatasetCard.load(folder / "README.md")
        for image in (HISTOGRAM_FILE, EMBEDDING_MAP_FILE):
            assert (folder / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            pixels = matplotlib.image.imread(folder / image)  # decodes: not just a PNG's first bytes
            assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 300 and pixels.std() > 0
            assert f"]({image})" in card.text
        rows = neighbour_rows(card.text)
        assert len(rows) == 3
        texts = [text for split in splits.values() for text in split["text"]]
        for (query, neighbour, cosine), pair in zip(rows, pairs):
            assert query.endswith(table_cell(texts[pair["row"]]))
            assert neighbour.endswith(table_cell(texts[pair["neighbour"]]))
            assert cosine == f"{pair['cosine']:.3f}"


def test_the_card_parses_back_with_huggingface_hub(embedded_output):
    """The card's YAML and text survive a save and load with huggingface_hub's DatasetCard (its
    validate() needs the network, so the parse is what is checked here)."""
    path = embedded_output / "README.md"
    card = DatasetCard.load(path)
    again = DatasetCard(str(card))
    assert again.data.to_dict() == card.data.to_dict() and again.text == card.text
    assert card.data.to_dict() == DatasetCard(path.read_text()).data.to_dict()
    assert card.data.embedding["embedding"]["dim"] == 64 and card.data.configs[0]["config_name"] == "default"


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


def test_sharded_hub_layout_loads_back_identically(embedded_output, tmp_path):
    local = load_from_disk(str(embedded_output))
    limit = local["train"].data.nbytes // 3 + 1  # the train split in three shards
    folder = stage_hub_folder(str(embedded_output), tmp_path / "hub", "someone/elm-wikitext2", "v1.2.3",
                              max_shard_bytes=limit)
    shards = sorted(p.name for p in (folder / "data").iterdir())
    assert [s for s in shards if s.startswith("train-")] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    patterns = {f["split"]: f["path"] for f in DatasetCard.load(folder / "README.md").data.configs[0]["data_files"]}
    for shard in shards:  # every shard is listed by exactly its own split's pattern
        assert [name for name, pattern in patterns.items() if fnmatch(f"data/{shard}", pattern)] == [shard.split("-")[0]]
    hub = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    for name in local:
        assert len(list((folder / "data").glob(f"{name}-*"))) == -(-local[name].data.nbytes // limit)
        assert hub[name].features == local[name].features
        assert hub[name].to_dict() == local[name].to_dict()  # same rows, same order, same vectors


def test_the_wheel_ships_the_card_template(tmp_path):
    """The card's template is one real file, elm_wikitext/dataset_card.md; a built wheel carries it
    where card.py reads it, byte for byte. Built from a copy, so nothing is written into the checkout."""
    import shutil
    import subprocess
    import sys
    import zipfile

    checkout = Path(__file__).resolve().parents[2]
    copy = tmp_path / "checkout"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(checkout / name, copy / name)
    shutil.copytree(checkout / "elm_wikitext", copy / "elm_wikitext", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(copy), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("elm_wikitext-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("elm_wikitext/dataset_card.md") == (checkout / "elm_wikitext" / "dataset_card.md").read_bytes()
