"""The output directory: written whole or not at all, never over a folder it did not write."""

import json
import re
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from huggingface_hub import DatasetCard
from torch.utils.data import DataLoader

from elm_wikitext.core.errors import BuildError
from elm_wikitext.publish.output import (BY_DESIGN, MANIFEST_FILE, OUTPUT_ENTRIES, _not_ours, make_hub_folder,
                                         make_work_folder, output_lock, read_output, recover_output, write_output)


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
    from elm_wikitext.cli import main

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
    "a folder of notes": ("{notes}", "is not an earlier output of this build (it holds important.txt, which this build did not write)"),
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
    from elm_wikitext.cli import main

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
    from elm_wikitext.cli import main

    assert main(["--stage", "embed", "--model", tiny_model, "--output", f"{text_output_copy}/"]) == 0
    assert {p.name for p in text_output_copy.iterdir()} <= OUTPUT_ENTRIES
    assert [p.name for p in text_output_copy.parent.iterdir()] == [text_output_copy.name]


def test_a_symlinked_output_is_written_through_the_link(text_output_copy, sample_dir, tiny_model, tmp_path):
    from elm_wikitext.cli import main

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


KEY = "0123456789abcdef"  # a work key's shape (chunks.work_key)


def work_folder_beside(output: Path) -> Path:
    """A work folder as a stopped embed stage leaves it: marked, one key's chunk, a chunk being written."""
    folder = make_work_folder(Path(f"{output}.embed-work"))
    (folder / KEY).mkdir()
    (folder / KEY / "chunk-00000-fedcba9876543210.npz").write_bytes(b"chunk")
    (folder / KEY / ".chunk-00001.123.tmp").write_bytes(b"half")
    return folder


def hub_folder_beside(output: Path) -> Path:
    """A Hub layout as a failed upload leaves it (stage_hub_folder's names, and its marker)."""
    folder = Path(f"{output}.hub")
    make_hub_folder(folder)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (folder / "README.md").write_text("---\n---\ncard\n")
    return folder


# A user's file or folder put anywhere in a folder the build owns: (which folder, its path there).
FOREIGN = {
    "a file at the output's top": ("output", "notes.txt"),
    "a file inside a split": ("output", "train/notes.txt"),
    "a folder deep inside a split": ("output", "validation/mine/deeper/notes.txt"),
    "a hidden file inside a split": ("output", "test/.notes"),
    "an Arrow file the build did not record": ("output", "train/data-00007-of-00009.arrow"),
    "a copy of a build file under another name": ("output", "manifest.json.bak"),
    "an empty folder of the user's": ("output", "train/empty/"),
    "a symlink in a split": ("output", "test/link->"),
    "a file at the work folder's top": ("work", "notes.txt"),
    "a file beside the chunks": ("work", f"{KEY}/notes.txt"),
    "a chunk-like file in a folder of the user's": ("work", "mine/chunk-00000-fedcba9876543210.npz"),
    "a folder inside a key's folder": ("work", f"{KEY}/sub/vectors.npy"),
    "a parquet file of the user's in the Hub layout": ("hub", "data/mine.parquet"),
    "a folder of the user's in the Hub layout": ("hub", "notes/README.md"),
    "a shard one folder too deep": ("hub", "data/old/train-00000-of-00001.parquet"),
}


def put(folder: Path, path: str) -> None:
    if path.endswith("->"):
        (folder / path[:-2]).symlink_to("/etc/hostname")
    elif path.endswith("/"):
        (folder / path).mkdir(parents=True)
    else:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text("mine\n")


@pytest.mark.parametrize("stage", ["text", "all"])
@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_foreign_file_anywhere_in_what_the_build_owns_stops_it_and_survives(case, stage, embedded_copy, sample_dir,
                                                                               tiny_model, capsys):
    from elm_wikitext.cli import main

    kind, path = FOREIGN[case]
    folders = {"output": embedded_copy, "work": work_folder_beside(embedded_copy), "hub": hub_folder_beside(embedded_copy)}
    put(folders[kind], path)
    before = tree(embedded_copy.parent)
    status = main(["--stage", stage, "--source", str(sample_dir), "--model", tiny_model, "--output", str(embedded_copy)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and lines[-1].startswith("error: "), lines
    # The first foreign path: the user's folder, where the file is inside one.
    named = {"validation/mine/deeper/notes.txt": "validation/mine", "mine/chunk-00000-fedcba9876543210.npz": "mine",
             f"{KEY}/sub/vectors.npy": f"{KEY}/sub", "notes/README.md": "notes",
             "data/old/train-00000-of-00001.parquet": "data/old"}.get(path, path.rstrip("/").removesuffix("->"))
    assert f"it holds {named}, which this build did not write" in lines[-1], lines[-1]
    assert tree(embedded_copy.parent) == before  # nothing changed, the user's file included


def test_a_hub_layout_without_the_builds_marker_is_not_the_builds(embedded_copy):
    """A folder at the Hub staging path holding a user's card and shard, made by hand, as the build's would look."""
    from elm_wikitext.publish.card import stage_hub_folder

    folder = Path(f"{embedded_copy}.hub")
    put(folder, "README.md")
    put(folder, "data/train-00000-of-00001.parquet")
    before = tree(folder)
    with pytest.raises(BuildError, match="has no .elm-wikitext-work marker"):
        stage_hub_folder(str(embedded_copy), folder, "someone/elm-wikitext2", "v1.0.0")
    assert tree(folder) == before


# What the build's own machinery leaves in what it owns, by design: a rebuild goes on over it.
BY_DESIGN_FILES = {
    "datasets' cache of a user's map": ("output", "train/cache-0123abcd.arrow"),
    "datasets' temporary file of a stopped map": ("output", "validation/tmpk2j3h4"),
    "a chunk being written when a run stopped": ("work", f"{KEY}/.chunk-00003.999.tmp"),
    "the column being assembled": ("work", f"{KEY}/vectors.npy"),
    "its Arrow file": ("work", f"{KEY}/test.arrow"),
}


@pytest.mark.parametrize("case", list(BY_DESIGN_FILES))
def test_what_the_builds_machinery_leaves_by_design_is_the_builds(case, embedded_copy, sample_dir, tiny_model):
    from elm_wikitext.cli import main

    kind, path = BY_DESIGN_FILES[case]
    folders = {"output": embedded_copy, "work": work_folder_beside(embedded_copy)}
    put(folders[kind], path)
    assert main(["--stage", "text", "--source", str(sample_dir), "--model", tiny_model,
                 "--output", str(embedded_copy)]) == 0
    assert not (embedded_copy / path).exists()  # the output was replaced whole
    assert "embedding" in load_from_disk(str(embedded_copy))["train"].column_names  # its column kept


def test_a_users_map_on_a_loaded_split_leaves_only_by_design_files(embedded_copy):
    split = load_from_disk(str(embedded_copy))["train"]
    split.map(lambda row: {"n": len(row["text"])})  # datasets caches it beside the split's files
    assert list((embedded_copy / "train").glob("cache-*.arrow"))
    assert _not_ours(embedded_copy) is None


def test_the_manifest_lists_every_file_of_the_output(embedded_output):
    manifest = json.loads((embedded_output / MANIFEST_FILE).read_text())
    # Other tests share this output and map its splits: datasets' cache files are by design, not the build's.
    by_design = re.compile("|".join(BY_DESIGN["output"]))
    files = sorted(str(p.relative_to(embedded_output)) for p in embedded_output.rglob("*") if p.is_file())
    assert manifest["files"] == [name for name in files if name != MANIFEST_FILE and not by_design.fullmatch(name)]
    assert {"README.md", "token_lengths.png", "train/state.json"} <= set(manifest["files"])
