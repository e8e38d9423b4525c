"""The output directory, the card, and the Hub layout loaded back as a user would."""

import json
from fnmatch import fnmatch
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
    # The config says which archive files a local folder gave: the raw ones, by default.
    assert f"Built from `{sample_dir}`, config `wikitext-2-raw-v1` (the raw text" in card.text
    assert "Salesforce/wikitext" not in card.text and "<unk>` stays" not in card.text
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
    assert "Built from `Salesforce/wikitext`, config `wikitext-103-raw-v1` (the raw text" in card.text
    assert "revision `main`" in card.text and "WikiText-2" not in card.text


def test_the_card_of_a_tokenized_build_counts_its_unknown_words(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    manifest["stats"]["text"].update(source_config="wikitext-2-v1", raw=False,
                                     unknown_words={"words": 1234, "paragraphs": 56})
    card = publish.render_card(load_from_disk(str(embedded_output)), manifest).text
    assert "config `wikitext-2-v1` (the tokenized text, with `<unk>` for rare words)" in card
    assert "1,234 of them in 56 kept paragraphs" in card and "rare words read `<unk>`" in card


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


def tree(path: Path) -> dict:
    """Every file under `path` and its bytes, symlinks as their targets."""
    return {str(p.relative_to(path)): (str(p.readlink()) if p.is_symlink() else p.read_bytes())
            for p in path.rglob("*") if p.is_symlink() or p.is_file()}


@pytest.fixture
def user_places(sample_dir, tiny_model, tmp_path) -> dict:
    """Folders a user keeps: a copy of the source, a model folder (its config is enough: the
    output is checked before anything is loaded), a folder of notes, another tool's dataset."""
    import shutil

    from datasets import Dataset, DatasetDict

    places = {"source": tmp_path / "wikitext", "model": tmp_path / "models" / "qwen", "notes": tmp_path / "notes"}
    shutil.copytree(sample_dir, places["source"])
    places["model"].mkdir(parents=True)
    shutil.copy(Path(tiny_model) / "config.json", places["model"])
    places["notes"].mkdir()
    (places["notes"] / "important.txt").write_text("do not lose this\n")
    other = tmp_path / "other-dataset"
    DatasetDict({name: Dataset.from_dict({"text": ["a"]}) for name in ("train", "validation", "test")}).save_to_disk(str(other))
    places["other"] = other
    (tmp_path / "lookalike").mkdir()  # an output's layout, with a manifest of someone else's
    shutil.copy(other / "dataset_dict.json", tmp_path / "lookalike")
    (tmp_path / "lookalike" / MANIFEST_FILE).write_text('{"config": {}, "stats": {}, "splits": {}}')
    places["lookalike"] = tmp_path / "lookalike"
    return places


# --output values a build must refuse, and what the one line says.
NOT_OURS = {
    "a folder of notes": ("{notes}", "is not an earlier output of this build (it holds important.txt)"),
    "the source folder": ("{source}", "is inside --source"),
    "a folder inside the source": ("{source}/built", "is inside --source"),
    "the model folder": ("{model}", "is inside --model"),
    "a folder holding the model": ("{model}/../..", "is inside --output"),
    "the working directory, as an empty --output": ("", "--output is empty"),
    "the working directory": (".", "is inside --output"),
    "another tool's dataset": ("{other}", "no manifest.json written by this build"),
    "a manifest of someone else's": ("{lookalike}", "no manifest.json written by this build"),
    "a work folder of the user's beside it": ("{notes}/../fresh", "fresh.embed-work exists and was not made by this build"),
}


@pytest.mark.parametrize("case", list(NOT_OURS))
def test_a_build_never_replaces_a_folder_it_did_not_write(case, user_places, tmp_path, monkeypatch, capsys):
    from build import main

    output, says = NOT_OURS[case]
    (tmp_path / "fresh.embed-work").mkdir()
    (tmp_path / "fresh.embed-work" / "mine.txt").write_text("mine\n")
    monkeypatch.chdir(user_places["source"].parent)  # "" and "." name the folder that holds them all
    before = tree(tmp_path)
    status = main(["--source", str(user_places["source"]), "--model", str(user_places["model"]),
                   "--output", output.format(**user_places)])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 2 and error.startswith("error: ") and says in error
    after = tree(tmp_path)
    assert {name: data for name, data in after.items() if not name.startswith("logs/")} == before


def test_a_trailing_slash_keeps_the_work_files_beside_the_output(text_output_copy, tiny_model):
    from build import main

    assert main(["--stage", "embed", "--model", tiny_model, "--output", f"{text_output_copy}/"]) == 0
    assert {p.name for p in text_output_copy.iterdir()} <= publish.OUTPUT_ENTRIES
    assert [p.name for p in text_output_copy.parent.iterdir()] == [text_output_copy.name]


def test_a_symlinked_output_is_written_through_the_link(text_output_copy, sample_dir, tiny_model, tmp_path):
    from build import main

    link = tmp_path / "link"
    link.symlink_to(text_output_copy)
    assert main(["--stage", "text", "--source", str(sample_dir), "--model", tiny_model, "--output", str(link),
                 "--seed", "7"]) == 0
    assert link.is_symlink() and link.resolve() == text_output_copy  # the link kept, its target replaced
    assert json.loads((text_output_copy / MANIFEST_FILE).read_text())["config"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "logs") == ["link", "out"]


def test_recovery_removes_only_what_a_build_left(embedded_copy):
    parent, name = embedded_copy.parent, embedded_copy.name
    staging = publish.make_work_folder(parent / f".{name}.writing-1")  # a build killed while saving
    lookalike = parent / f".{name}.previous-2"  # a user's folder that happens to look like ours
    lookalike.mkdir()
    (lookalike / "important.txt").write_text("mine\n")
    publish.recover_output(str(embedded_copy))
    assert not staging.exists()
    assert (lookalike / "important.txt").read_text() == "mine\n"


def test_the_output_lock_leaves_no_file_behind_and_still_excludes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    locks = tmp_path / "cache" / "elm-wikitext" / "locks"
    for _ in range(2):  # taken again after it was released
        with publish.output_lock(str(tmp_path / "out")):
            with pytest.raises(BuildError, match="another build is writing"):
                with publish.output_lock(str(tmp_path / "out")):
                    pass
        assert list(locks.iterdir()) == []


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
