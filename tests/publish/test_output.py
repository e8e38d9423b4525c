"""The output directory: written whole or not at all, never over a folder it did not write."""

import json
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from huggingface_hub import DatasetCard
from torch.utils.data import DataLoader

from elm_wikitext.errors import BuildError
from elm_wikitext.publish.output import (MANIFEST_FILE, OUTPUT_ENTRIES, make_work_folder, output_lock, read_output,
                                         recover_output, write_output)


def test_output_holds_data_card_manifest_and_histogram(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    splits = load_from_disk(str(embedded_output))
    assert manifest["config"]["model"] and manifest["versions"]["datasets"]
    assert set(manifest["stats"]) == {"text", "embed", "neighbors"}
    assert {name: entry["rows"] for name, entry in manifest["splits"].items()} == {
        name: len(split) for name, split in splits.items()}
    assert all(len(entry["sha256"]) == 64 for entry in manifest["splits"].values())
    card = DatasetCard.load(embedded_output / "README.md")
    assert card.data.license == ["cc-by-sa-3.0", "gfdl"]
    assert "duplicate | 1" in card.text and "low_quality | 2" in card.text
    assert "load_dataset(" in card.text and "Merity" in card.text
    assert (embedded_output / "token_lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert (embedded_output / "embedding_map.png").read_bytes()[:4] == b"\x89PNG"


def test_torch_dataloader_yields_embedding_tensors(embedded_output):
    train = load_from_disk(str(embedded_output))["train"].with_format("torch", columns=["embedding", "text"])
    batch = next(iter(DataLoader(train, batch_size=8, shuffle=True)))
    assert batch["embedding"].shape == (8, 64) and batch["embedding"].dtype == torch.float32
    assert len(batch["text"]) == 8 and isinstance(batch["text"][0], str)


def test_failed_write_leaves_earlier_output_intact(embedded_copy):
    before = {p.relative_to(embedded_copy): p.read_bytes() for p in embedded_copy.rglob("*") if p.is_file()}
    splits, manifest = read_output(str(embedded_copy))

    def failing_card(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.raises(BuildError, match="No space left on device.*earlier output there is unchanged"):
        write_output(splits, manifest, str(embedded_copy), card=failing_card)
    after = {p.relative_to(embedded_copy): p.read_bytes() for p in embedded_copy.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in embedded_copy.parent.iterdir() if p.name.startswith(".")] == []


def test_a_second_build_into_the_same_output_is_refused(embedded_copy, options, capsys):
    from build import main

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
    assert {p.name for p in text_output_copy.iterdir()} <= OUTPUT_ENTRIES
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
    staging = make_work_folder(parent / f".{name}.writing-1")  # a build killed while saving
    lookalike = parent / f".{name}.previous-2"  # a user's folder that happens to look like ours
    lookalike.mkdir()
    (lookalike / "important.txt").write_text("mine\n")
    recover_output(str(embedded_copy))
    assert not staging.exists()
    assert (lookalike / "important.txt").read_text() == "mine\n"


def test_the_output_lock_leaves_no_file_behind_and_still_excludes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    locks = tmp_path / "cache" / "elm-wikitext" / "locks"
    for _ in range(2):  # taken again after it was released
        with output_lock(str(tmp_path / "out")):
            with pytest.raises(BuildError, match="another build is writing"):
                with output_lock(str(tmp_path / "out")):
                    pass
        assert list(locks.iterdir()) == []
