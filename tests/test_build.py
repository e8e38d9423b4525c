import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from elm_wikitext.cli import main
from elm_wikitext.core.schema import SPLIT_NAMES
from elm_wikitext.options import BuildOptions
from elm_wikitext.publish.output import MANIFEST_FILE

BUILD = Path(__file__).parents[1] / "build.py"

# Each bad input, and what its one error line must say to fix. `{paths}` are filled per test.
REFUSALS = {
    "min-tokens above max-tokens": (["--min-tokens", "300", "--max-tokens", "200"],
                                    "lower --min-tokens or raise --max-tokens"),
    "negative split ratio": (["--split", "0.9,-0.1,0.2"], "such as --split 0.8,0.1,0.1"),
    "split not summing to 1": (["--split", "0.8,0.1,0.2"], "such as --split 0.8,0.1,0.1"),
    "missing source": (["--source", "{tmp}/nope"], "does not exist: pass a directory"),
    "model directory without tokenizer files": (["--model", "{config_only_model}"], "holds no tokenizer"),
    "empty model directory": (["--model", "{empty_model}"], "holds no tokenizer"),
    "missing model directory": (["--model", "{tmp}/no-such-model"], "does not exist: pass a local model directory"),
    "nothing left after filtering": (["--min-tokens", "1900", "--max-tokens", "1950"],
                                     "widen --min-tokens 1900 / --max-tokens 1950"),
    "dim below 32": (["--dim", "16"], "pass --dim between 32"),
    "an empty split": (["--split", "1,0,0"], "give each split a larger --split ratio"),
    "unknown choice": (["--dtype", "float8"], "invalid choice: 'float8'"),
    "unknown option": (["--bogus", "1"], "unrecognized arguments: --bogus 1: see python build.py --help"),
    "negative seed": (["--seed", "-1"], "pass a seed of 0 or more"),
    "no worker processes": (["--num-proc", "0"], "pass 1 or more, or leave it out"),
    "push without embeddings": (["--push"], "use --stage all, or --stage embed on this output"),
    "no GPUs to plan for": (["--dry-run", "--plan-gpus", "0"], "--plan-gpus 0 is not a number of GPUs: pass 1 or more"),
    "a GPU of unknown peak": (["--dry-run", "--plan-gpu", "B200"], "pass one of H100, H200, A100"),
    "a --repo-id with a space": (["--push", "--repo-id", "bad name/x"], "is not of the form owner/name that the Hub"),
    "a --repo-id without an owner": (["--push", "--repo-id", "elm"], "pass e.g. --repo-id your-name/elm-wikitext2"),
    "a --repo-id of three parts": (["--push", "--repo-id", "a/b/c"], "is not of the form owner/name that the Hub"),
    "a --version that is not a tag": (["--push", "--version", "1.0"], "pass --version vMAJOR.MINOR.PATCH"),
    "an --output beneath a file": (["--output", "{a_file}/out"], "make it writable, or pass an --output elsewhere"),
    "a negative number of neighbours": (["--neighbors", "-1"], "--neighbors -1 is not a number of neighbours"),
    "a neighbour column's name": (["--column", "embedding_neighbors"],
                                  "--column 'embedding_neighbors' is not a free column name"),
}

# Refusals of the embed stage, on an existing text-stage output that must stay as it was.
EMBED_REFUSALS = {
    "dim above the hidden size": (["--dim", "128"], "--dim 128 is outside 32..64"),
    "budget below the longest paragraph": (["--max-batch-tokens", "150"],
                                           "--max-batch-tokens 150 is below the longest paragraph"),
    "a tokenizer without a model": (["--model", "{tokenizer_only}"], "has no model config that transformers can read"),
    "no weight files": (["--model", "{no_weights}"], "cannot load the weights of --model"),
    "a truncated weight file": (["--model", "{truncated}"], "download the model again"),
    "a corrupt config.json": (["--model", "{corrupt_config}"], "has a damaged config.json"),
    "a config.json that is a list": (["--model", "{list_config}"], "has a config.json that is not a JSON object"),
    "config sizes that differ from the weights": (["--model", "{other_sizes}"], "have other sizes than its config.json says"),
    "weights its model class does not use": (["--model", "{llama_config}"],  # llama has no q_norm/k_norm
                                             "holds 4 weights its model class does not use"),
    "a vocabulary smaller than the token ids": (["--model", "{small_vocabulary}"],
                                                "has a vocabulary of 1000 tokens, but its tokenizer makes ids up to"),
    "all-zero weights": (["--model", "{zero_weights}"], "not finite unit vectors"),
    "a text-stage option that contradicts it": (["--min-tokens", "150"],
                                                "--min-tokens 150 contradicts the text stage of --output"),
    "a pooling it cannot reproduce": (["--model", "{max_pooling}"], "pools with 'max' in 1_Pooling/config.json, which this build cannot reproduce"),
    "a model that reads fewer tokens than the longest paragraph": (
        ["--model", "{short_context}"], "reads at most 64 tokens, and 57 kept paragraphs are longer in its tokens"),
    "a column name of the text stage's": (["--column", "text"], "--column 'text' is not a free column name"),
}


@pytest.fixture
def paths(tmp_path, tiny_model) -> dict:
    """A model directory with its config but no tokenizer, and an empty one."""
    config_only, empty = tmp_path / "config-only-model", tmp_path / "empty-model"
    config_only.mkdir()
    shutil.copy(Path(tiny_model) / "config.json", config_only)
    empty.mkdir()
    (tmp_path / "a-file").write_text("")
    return {"tmp": tmp_path, "config_only_model": config_only, "empty_model": empty, "a_file": tmp_path / "a-file"}


def run(argv: list[str], capsys) -> tuple[int, str]:
    """build.py's exit status and its one error line (progress bars may come before it)."""
    status = main([str(arg) for arg in argv])
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    return status, errors[0]


def snapshot(path: Path):
    """What a user would find at and beside `path`: its files' bytes, and the sibling names
    (a staging directory left behind would show)."""
    if path.is_dir():
        content = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
    else:
        content = path.read_bytes() if path.exists() else None
    return sorted(p.name for p in path.parent.iterdir()), content


@pytest.mark.parametrize("earlier_output", [False, True], ids=["fresh", "earlier-output"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_input_is_one_error_line_and_writes_nothing(
        case, earlier_output, request, paths, sample_dir, tiny_model, tmp_path, capsys):
    args, fix = REFUSALS[case]
    output = request.getfixturevalue("text_output_copy") if earlier_output else tmp_path / "out"
    before = snapshot(output)
    status, error = run(["--stage", "text", "--source", sample_dir, "--model", tiny_model,
                         "--output", output, *(arg.format(**paths) for arg in args)], capsys)
    assert status == 2
    assert fix in error
    assert snapshot(output) == before
    if not earlier_output:
        assert not output.exists()


@pytest.fixture(scope="session")
def broken_models(tiny_model, tmp_path_factory) -> dict:
    """Model directories with the tokenizer in place and the model wrong or incomplete (read-only:
    shared by the tests that refuse them)."""
    tmp_path = tmp_path_factory.mktemp("broken-models")
    tokenizer_files = shutil.ignore_patterns("config.json", "*.safetensors")
    tokenizer_only = shutil.copytree(tiny_model, tmp_path / "tokenizer-only", ignore=tokenizer_files)
    no_weights, truncated = tmp_path / "no-weights", tmp_path / "truncated"
    shutil.copytree(tiny_model, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(tiny_model, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    corrupt_config = model_with_config(tiny_model, tmp_path / "corrupt-config")
    (corrupt_config / "config.json").write_text('{"model_type": "qwen3", ')  # cut off
    list_config = model_with_config(tiny_model, tmp_path / "list-config")
    (list_config / "config.json").write_text("[1, 2]")
    return {"tokenizer_only": tokenizer_only, "no_weights": no_weights, "truncated": truncated,
            "corrupt_config": corrupt_config, "list_config": list_config, "zero_weights": zero_weights(tiny_model, tmp_path / "zeros"),
            "other_sizes": model_with_config(tiny_model, tmp_path / "other-sizes", intermediate_size=200),
            "small_vocabulary": model_with_config(tiny_model, tmp_path / "small-vocabulary", vocab_size=1000),
            "llama_config": model_with_config(tiny_model, tmp_path / "llama", model_type="llama",
                                              architectures=["LlamaModel"]),
            "max_pooling": with_max_pooling(tiny_model, tmp_path / "max-pooling"),
            "short_context": model_with_config(tiny_model, tmp_path / "short-context", max_position_embeddings=64)}


def model_with_config(tiny_model: str, directory: Path, **changes) -> Path:
    """The tiny model (its files linked, not copied) under a config.json with `changes`."""
    shutil.copytree(tiny_model, directory, copy_function=os.link)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").unlink()  # a file of its own: the link is the session model's
    (directory / "config.json").write_text(json.dumps({**config, **changes}))
    return directory


def zero_weights(tiny_model: str, directory: Path) -> Path:
    """The tiny model with every weight 0: each vector it gives has norm 0."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model, directory, ignore=shutil.ignore_patterns("*.safetensors"))
    weights = load_file(Path(tiny_model) / "model.safetensors")
    save_file({name: tensor.zero_() for name, tensor in weights.items()}, directory / "model.safetensors",
              metadata={"format": "pt"})
    return directory


def with_max_pooling(tiny_model: str, directory: Path) -> Path:
    """The tiny model with sentence-transformers files that pool by the maximum of each dimension."""
    model_with_config(tiny_model, directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    # Files of their own: the linked ones are the session model's.
    (directory / "modules.json").unlink()
    (directory / "modules.json").write_text(json.dumps(modules))
    shutil.rmtree(directory / "1_Pooling")
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, "pooling_mode": "max"}))
    return directory


@pytest.mark.parametrize("case", list(EMBED_REFUSALS))
def test_embed_stage_refusals_keep_the_earlier_output(case, text_output_copy, tiny_model, broken_models, capsys):
    args, fix = EMBED_REFUSALS[case]
    args = [arg.format(**broken_models) for arg in args]
    before = snapshot(text_output_copy)
    status, error = run(["--stage", "embed", "--output", text_output_copy, *args], capsys)
    assert status == 2 and fix in error
    assert snapshot(text_output_copy) == before


def test_a_model_the_pooling_does_not_fit_is_refused_before_the_text_stage(
        sample_dir, broken_models, tmp_path, capsys, monkeypatch):
    def text_stage(*args, **kwargs):
        raise AssertionError("the text stage ran before the model was checked")

    monkeypatch.setattr("elm_wikitext.pipeline.text_stage", text_stage)
    status = main([str(arg) for arg in ["--source", sample_dir, "--model", broken_models["max_pooling"],
                                         "--output", tmp_path / "out"]])
    err = capsys.readouterr().err
    assert status == 2 and "pools with 'max' in 1_Pooling/config.json, which this build cannot reproduce" in err.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []  # no output, no work folder


def test_output_that_is_a_file_is_refused_and_kept(sample_dir, tiny_model, tmp_path, capsys):
    output = tmp_path / "out"
    output.write_text("my notes\n")
    status, error = run(["--stage", "text", "--source", sample_dir, "--model", tiny_model,
                         "--output", output], capsys)
    assert status == 2
    assert f"--output {output} is a file: pass a directory path" in error
    assert output.read_text() == "my notes\n"


@pytest.mark.parametrize("existing", [True, False], ids=["empty-directory", "missing-directory"])
def test_embed_stage_without_text_stage_output_is_refused(existing, tiny_model, tmp_path, capsys):
    output = tmp_path / "out"
    if existing:
        output.mkdir()
    status, error = run(["--stage", "embed", "--model", tiny_model, "--output", output], capsys)
    assert status == 2
    assert "run `python build.py --stage text` first" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])
    assert not existing or list(output.iterdir()) == []


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for option in dataclasses.fields(BuildOptions):
        assert f"--{option.name.replace('_', '-')}" in shown, option.name
    # Where to read more, and the commands to start from, each on a line of its own.
    assert "docs: README.md and docs/options.md" in shown and "https://github.com/elm-wikitext/elm-wikitext" in shown
    assert "\n  python build.py --dry-run " in shown and "--model models/tiny-qwen3 --output data/trial\n" in shown


def test_text_stage_writes_a_dataset_dict_and_its_statistics(text_output):
    from elm_wikitext.core.schema import expected_features

    # `text_output` is `build.py --stage text` on the sample (see conftest.py).
    splits = load_from_disk(str(text_output))
    assert list(splits) == list(SPLIT_NAMES)
    assert all(split.features == expected_features() for split in splits.values())  # no vector yet
    stats = json.loads((text_output / MANIFEST_FILE).read_text())["stats"]["text"]
    # The sample's 63 paragraphs less the 6 it drops (test_text.py), split by article 0.8/0.1/0.1.
    assert {name: len(split) for name, split in splits.items()} == stats["splits"] == {
        "train": 46, "validation": 6, "test": 5}
    assert stats["tokens"] == {name: sum(split["token_count"]) for name, split in splits.items()}
    assert [p.name for p in text_output.parent.iterdir()] == ["out"]  # no staging left beside it


def test_readme_documents_every_option():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for option in dataclasses.fields(BuildOptions):
        assert f"`--{option.name.replace('_', '-')}" in readme, option.name


def test_help_lists_each_option_once_with_one_default_and_loads_no_heavy_library(tmp_path):
    # What `python build.py --help` imports: it must answer before torch, datasets or transformers load.
    code = (f"import runpy, sys; sys.argv = [{str(BUILD)!r}, '--help']\n"
            "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit: pass\n"
            "print('loaded:', [m for m in ('torch', 'datasets', 'transformers') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(BUILD.parent)}  # this checkout's package
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "loaded: []"
    entries = run.stdout.split("options:")[1].split("\n  --")[1:]  # one entry per option
    for option in dataclasses.fields(BuildOptions):
        dashed = option.name.replace("_", "-")
        mine = [entry for entry in entries if entry.split()[0] == dashed]
        assert len(mine) == 1, option.name
        assert "_" not in option.name or f"--{option.name} " not in run.stdout, option.name  # no underscore twin
        assert " ".join(mine[0].split()).lower().count("default") <= 1, mine[0]
    assert not list(tmp_path.iterdir())  # no log file for a --help


def test_dry_run_prints_a_readable_plan_and_writes_nothing(sample_dir, tiny_model, tmp_path, capsys, text_output):
    output = tmp_path / "out"
    assert main(["--dry-run", "--source", str(sample_dir), "--model", tiny_model, "--output", str(output),
                 "--chunk-tokens", "2048", "--plan-gpus", "2", "--plan-gpu", "A100"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if ":" in line)
    stats = json.loads((text_output / MANIFEST_FILE).read_text())["stats"]["text"]
    assert lines["paragraphs"].strip() == ", ".join(f"{name} {rows:,}" for name, rows in stats["splits"].items())
    assert lines["tokens"].strip().startswith(f"{sum(stats['tokens'].values()):,} in ")
    from elm_wikitext.embed.encode import row_flops

    lengths = np.concatenate([split["token_count"][:] for split in load_from_disk(str(text_output)).values()])
    # The tiny model's few GFLOPs, to the 3 digits shown (not rounded to 0).
    assert float(lines["compute"].split()[0]) == pytest.approx(row_flops(tiny_model, None, lengths).sum() / 1e12,
                                                               rel=5e-3)
    assert re.fullmatch(r"(< 1 s|\d+ s) on cpu \(its matrix products at [\d,.]+ GFLOP/s, this CPU's rate measured "
                        r"just now; .*\)", lines["here"].strip())
    assert lines["cluster"].strip().startswith("< 1 s on 2 x A100 (compiled; the busiest GPU embeds")
    # The neighbours' search beside it: n^2 x dim multiply-adds a split (the symmetric half), dim 64.
    search = sum(rows * rows * 64 for rows in stats["splits"].values()) / 1e12
    assert lines["neighbours"].strip() == f"{search:.3g} TFLOP: < 1 s on cpu, < 1 s on 2 x A100"
    assert not output.exists()


@pytest.mark.parametrize("seconds, shown", [(0, "< 1 s"), (0.004, "< 1 s"), (1.4, "1 s"), (59.4, "59 s"),
                                            (90, "1.5 min"), (5400, "1.5 h"), (6.5e6, "75.2 days"),
                                            (None, "unknown")])
def test_planned_durations_are_readable_and_never_zero(seconds, shown):
    from elm_wikitext.cli import duration

    assert duration(seconds).startswith(shown)


def closed_port() -> int:
    """A local port nothing listens on: connecting to it is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# What each Hub id's refusal must tell a user without the Hub.
HUB_IDS = {"source": ("HF_DATASETS_OFFLINE", "local --source"), "model": ("HF_HUB_OFFLINE", "local model directory")}


@pytest.mark.parametrize("hub_env", ["offline", "unreachable"])
@pytest.mark.parametrize("from_hub", list(HUB_IDS))
def test_hub_id_without_a_reachable_hub_fails_fast_and_writes_nothing(
        from_hub, hub_env, sample_dir, tiny_model, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}  # an empty cache: nothing to fall back on
    for name in ("HF_DATASETS_CACHE", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name, None)
    if hub_env == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    source, model = ("Salesforce/wikitext", tiny_model) if from_hub == "source" else (sample_dir, "Qwen/Qwen3-Embedding-4B")
    output = tmp_path / "out"
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(BUILD), "--stage", "text", "--source", str(source), "--model", model,
         "--output", str(output)], env=env, capture_output=True, text=True, timeout=120)
    # Most of this is importing torch and transformers; retries of the Hub would add tens of seconds.
    assert time.monotonic() - started < 30
    assert run.returncode == 2, run.stderr
    assert len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith("error: ")
    assert all(words in run.stderr for words in HUB_IDS[from_hub]), run.stderr
    assert not output.exists()
    assert [path.name for path in tmp_path.iterdir() if path.name != "hf"] == []  # no staging left
    assert run.stdout == ""


def test_a_hub_out_of_reach_is_reported_for_the_source_and_the_model_in_one_line(tmp_path, monkeypatch, capsys):
    asked = []

    class HubOutOfReach:
        def repo_info(self, repo_id, revision=None, repo_type=None, timeout=None):
            asked.append(repo_id)
            raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr("elm_wikitext.core.locations.HfApi", HubOutOfReach)
    monkeypatch.setattr("elm_wikitext.core.tokens.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("elm_wikitext.text.source.datasets.config.HF_HUB_OFFLINE", False)
    status, error = run(["--output", tmp_path / "out"], capsys)  # the defaults: both from the Hub
    assert status == 2 and asked == ["Salesforce/wikitext", "Qwen/Qwen3-Embedding-4B"]
    assert error.startswith("error: cannot reach --source Salesforce/wikitext and --model Qwen/Qwen3-Embedding-4B "
                            "on the Hub (ConnectionRefusedError: connection refused): for --source, pass a local "
                            "--source directory")
    assert "for --model, pass a local model directory" in error and "README's offline trial" in error
    assert not (tmp_path / "out").exists()


def test_library_warnings_show_once_and_reach_the_log(tmp_path, monkeypatch, capsys):
    from elm_wikitext.cli import start_logging

    monkeypatch.chdir(tmp_path)
    log_path = start_logging()
    names = ("huggingface_hub.utils._http", "datasets.builder", "transformers.modeling_utils")
    try:
        for name in names:
            logging.getLogger(name).warning("a warning from %s", name)
        lines = capsys.readouterr().err.splitlines()
        for name in names:
            assert sum(f"a warning from {name}" in line for line in lines) == 1, lines
            assert f"a warning from {name}" in log_path.read_text()
    finally:
        logging.basicConfig(force=True)  # let go of the log file


def damage(output: Path, how: str) -> None:
    if how == "a missing split folder":
        shutil.rmtree(output / "validation")
    elif how == "no dataset_dict.json":
        (output / "dataset_dict.json").unlink()
    elif how == "a corrupt manifest":
        (output / MANIFEST_FILE).write_text('{"config": ')
    elif how == "a manifest that is a list":
        (output / MANIFEST_FILE).write_text("[]")
    elif how == "a manifest lacking keys":
        manifest = json.loads((output / MANIFEST_FILE).read_text())
        (output / MANIFEST_FILE).write_text(json.dumps({key: manifest[key] for key in ("versions", "created")}))
    elif how == "another tool's dataset":
        from datasets import Dataset, DatasetDict

        shutil.rmtree(output)
        DatasetDict({name: Dataset.from_dict({"text": ["a"]}) for name in SPLIT_NAMES}).save_to_disk(str(output))


@pytest.mark.parametrize("mode", ["--stage embed", "--verify"])
@pytest.mark.parametrize("how", ["a missing split folder", "no dataset_dict.json", "a corrupt manifest",
                                 "a manifest that is a list", "a manifest lacking keys", "another tool's dataset"])
def test_a_damaged_or_foreign_output_is_one_line_and_kept(how, mode, embedded_copy, tiny_model, capsys):
    damage(embedded_copy, how)
    before = snapshot(embedded_copy)
    where = ["--output", embedded_copy] if mode == "--stage embed" else []
    status, error = run([*mode.split(), *where, "--model", tiny_model] if where else
                        [mode, embedded_copy, "--model", tiny_model], capsys)
    assert status == 2
    # Refused as an output to replace, or as one to read.
    assert any(says in error for says in ("is not an earlier output of this build",
                                          "is not a whole output of this build", "holds no build output")), error
    assert ("--output" if where else "--verify") in error  # the option the path came from
    assert snapshot(embedded_copy) == before


def test_verify_of_a_missing_directory_names_verify(tmp_path, capsys):
    status, error = run(["--verify", tmp_path / "nope"], capsys)
    assert status == 2 and f"--verify {tmp_path / 'nope'} holds no build output" in error
    assert "--output" not in error.replace("pass the --output of", "") and "--stage text" not in error


def unwritable(kind: str, tmp_path: Path, monkeypatch) -> None:
    """Make a place the build needs unusable (a file where a folder must be: tests run as root,
    for whom permissions do not stop a write)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if kind == "logs is a file":
        monkeypatch.chdir(tmp_path)
        (tmp_path / "logs").write_text("")
    elif kind == "the datasets cache":
        import datasets

        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", blocker / "datasets")
    else:  # the user's cache, where the output's lock lives
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))


@pytest.mark.parametrize("kind, says", [("logs is a file", "cannot write this run's log"),
                                        ("the datasets cache", "make that path a writable folder"),
                                        ("the user's cache", "make that path a writable folder")])
def test_a_place_the_build_cannot_write_is_one_line(kind, says, sample_dir, tiny_model, tmp_path, monkeypatch, capsys):
    unwritable(kind, tmp_path, monkeypatch)
    status = main([str(arg) for arg in ["--stage", "text", "--source", sample_dir, "--model", tiny_model,
                                         "--output", tmp_path / "out"]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and lines[-1].startswith("error: ") and says in lines[-1], lines
    assert not any("Traceback" in line for line in lines)
    assert not (tmp_path / "out").exists()


def test_a_source_of_headings_only_is_one_line(tiny_model, tmp_path, capsys):
    source = tmp_path / "headings"
    source.mkdir()
    for name in ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"):
        (source / name).write_text(" \n = Alpha = \n \n = = Early life = = \n \n")
    status, error = run(["--stage", "text", "--source", source, "--model", tiny_model,
                         "--output", tmp_path / "out"], capsys)
    assert status == 2 and "holds no paragraph, only headings and blank lines" in error, error
    assert not (tmp_path / "out").exists()


def test_embed_stage_takes_the_text_stages_settings_and_the_card_rebuilds_it(text_output_copy, tmp_path):
    from elm_wikitext.options import parse_options

    text = json.loads((text_output_copy / MANIFEST_FILE).read_text())["config"]
    assert main(["--stage", "embed", "--output", str(text_output_copy)]) == 0  # no --model: the text stage's
    manifest = json.loads((text_output_copy / MANIFEST_FILE).read_text())
    assert manifest["config"]["model"] == text["model"] and manifest["stats"]["embed"]["embedding"]["model"] == text["model"]
    command = manifest["command"].split()
    assert command[:2] == ["python", "build.py"] and "--stage" not in command
    again = dataclasses.asdict(parse_options(command[2:]))
    same = [key for key in text if key not in ("stage", "output")]
    assert {key: again[key] for key in same} == {key: text[key] for key in same}
    # The card's copy names the model and the source as a stranger can fetch them (here, local
    # folders without Hub ids: by their names), and the output at its default place: no path.
    card = (text_output_copy / "README.md").read_text()
    published = manifest["command"].replace(text["model"], Path(text["model"]).name).replace(
        text["source"], Path(text["source"]).name).replace(f" --output {text_output_copy}", "")
    assert published in card and str(tmp_path) not in card and text["model"] not in card


@pytest.mark.parametrize("signal_name, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_build_says_how_to_resume_and_leaves_nothing_half_written(
        signal_name, status, sample_dir, tiny_model, tmp_path):
    import signal

    output = tmp_path / "out"
    build = subprocess.Popen(
        [sys.executable, str(BUILD), "--source", str(sample_dir), "--model", tiny_model, "--output", str(output),
         "--chunk-tokens", "200", "--max-batch-tokens", "400"],  # many small chunks: seconds of embedding
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C's default action, even where pytest runs in a background job (which ignores SIGINT)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    work = tmp_path / "out.embed-work"
    deadline = time.monotonic() + 120
    while not any(work.rglob("chunk-*.npz")) and build.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    build.send_signal(getattr(signal, signal_name))
    _, err = build.communicate(timeout=120)
    assert build.returncode == status, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the build stopped") and "rerun the same command to resume" in last
    assert "Traceback" not in err
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "out.embed-work"]  # no staging
    assert not [p for p in work.rglob("*") if p.name.endswith(".tmp") or p.name.startswith("tmp")]
    assert "Traceback" in next((tmp_path / "logs").iterdir()).read_text()  # the details, in the log


def edit_manifest(output: Path, how: str) -> None:
    """A hand edit of the manifest, as a user (or a script) would make it."""
    manifest = json.loads((output / MANIFEST_FILE).read_text())
    if how == "its checksum deleted":
        del manifest["manifest_sha256"]
    elif how == "a setting changed":
        manifest["config"]["seed"] = 7
    elif how == "the recorded command changed":
        manifest["command"] += " --max-tokens 900"
    elif how == "a column's record changed":
        manifest["stats"]["embed"]["embedding"]["pooling"]["pooling"] = "mean"
    elif how == "a user's file listed as the build's":
        manifest["files"].append("notes.txt")
    elif how == "its checksum changed":
        manifest["manifest_sha256"] = "0" * 64
    (output / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


MANIFEST_EDITS = ["its checksum deleted", "a setting changed", "the recorded command changed",
                  "a column's record changed", "a user's file listed as the build's", "its checksum changed"]


@pytest.mark.parametrize("mode", ["--verify", "--stage embed", "--push"])
@pytest.mark.parametrize("how", MANIFEST_EDITS)
def test_an_edited_manifest_is_refused_by_every_reader_with_a_recovery(how, mode, embedded_copy, tiny_model, capsys,
                                                                       monkeypatch):
    edit_manifest(embedded_copy, how)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # --push would need one: the manifest is refused first
    before = snapshot(embedded_copy)
    argv = ([mode, embedded_copy] if mode == "--verify" else
            ["--stage", "embed", "--output", embedded_copy, *(["--push"] if mode == "--push" else [])])
    status, error = run([*argv, "--model", tiny_model], capsys)
    assert status == 2
    assert ("was changed since the build" in error or "has no manifest_sha256" in error), error
    assert f"python build.py --stage all --drop-columns --output {embedded_copy}" in error
    assert snapshot(embedded_copy) == before


@pytest.mark.parametrize("how", ["a setting changed", "a user's file listed as the build's", "a corrupt manifest"])
def test_the_advice_on_an_edited_manifest_rebuilds_an_output_that_verifies(how, embedded_copy, sample_dir, tiny_model,
                                                                           capsys):
    """The line's command, followed literally with the options the output was built with."""
    damage(embedded_copy, how) if how == "a corrupt manifest" else edit_manifest(embedded_copy, how)
    status, error = run(["--verify", embedded_copy], capsys)
    command = error[error.index("python build.py"):error.index(" with the --source")].split()
    assert command[:2] == ["python", "build.py"]
    assert main([*command[2:], "--source", str(sample_dir), "--model", tiny_model]) == 0
    capsys.readouterr()
    assert main(["--verify", str(embedded_copy)]) == 0
    manifest = json.loads((embedded_copy / MANIFEST_FILE).read_text())
    assert manifest["config"]["seed"] == 42 and "notes.txt" not in manifest["files"]  # recomputed, not taken


def test_an_edited_manifest_cannot_make_a_users_file_the_builds(embedded_copy, sample_dir, tiny_model, capsys):
    edit_manifest(embedded_copy, "a user's file listed as the build's")
    (embedded_copy / "notes.txt").write_text("mine\n")
    before = snapshot(embedded_copy)
    status, error = run(["--stage", "all", "--drop-columns", "--source", sample_dir, "--model", tiny_model,
                         "--output", embedded_copy], capsys)
    assert status == 2 and "it holds notes.txt, which this build did not write" in error
    assert snapshot(embedded_copy) == before


def test_a_rebuild_over_an_untrusted_output_with_columns_needs_drop_columns(embedded_copy, sample_dir, tiny_model,
                                                                             capsys):
    edit_manifest(embedded_copy, "a setting changed")
    before = snapshot(embedded_copy)
    status, error = run(["--stage", "text", "--source", sample_dir, "--model", tiny_model,
                         "--output", embedded_copy], capsys)
    assert status == 2 and "cannot keep its columns embedding, embedding_neighbors" in error and "pass --drop-columns" in error, error
    assert snapshot(embedded_copy) == before


# A card template as a checkout or an install can break it, and what the one line says.
BROKEN_TEMPLATES = {
    "missing": (None, "cannot be read"),
    "a symlink checked out as its target's path": ("../dataset_card.md", "is not a card template"),
    "a template that does not parse": ("---\n---\n{% for row in %}\n", "does not parse (line 3"),
    "empty": ("", "is not a card template"),
}


@pytest.mark.parametrize("case", list(BROKEN_TEMPLATES))
def test_a_broken_card_template_is_one_line_before_any_work(case, sample_dir, tiny_model, tmp_path, monkeypatch,
                                                            capsys):
    content, says = BROKEN_TEMPLATES[case]
    template = tmp_path / "dataset_card.md"
    if content is not None:
        template.write_text(content)
    monkeypatch.setattr("elm_wikitext.publish.card.CARD_TEMPLATE", template)
    monkeypatch.setattr("elm_wikitext.pipeline.load_tokenizer", lambda *a, **k: pytest.fail("work before the check"))
    status, error = run(["--source", sample_dir, "--model", tiny_model, "--output", tmp_path / "out"], capsys)
    assert status == 2 and "the card's template" in error and says in error, error
    assert "restore elm_wikitext/dataset_card.md" in error and "space" not in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.embed-work").exists()


def test_a_template_that_does_not_render_is_one_line_and_the_rerun_resumes(text_output_copy, tiny_model, tmp_path,
                                                                            monkeypatch, capsys):
    from elm_wikitext.publish import card

    template, original = tmp_path / "dataset_card.md", card.CARD_TEMPLATE
    template.write_text(original.read_text() + "\n{{ text.no_such_field.deeper }}\n")
    monkeypatch.setattr(card, "CARD_TEMPLATE", template)
    before = snapshot(text_output_copy)
    status, error = run(["--stage", "embed", "--model", tiny_model, "--output", text_output_copy], capsys)
    assert status == 2 and "does not render (UndefinedError" in error and "the vectors are kept" in error, error
    assert snapshot(text_output_copy)[1] == before[1]
    assert list(Path(f"{text_output_copy}.embed-work").rglob("chunk-*.npz"))
    monkeypatch.setattr(card, "CARD_TEMPLATE", original)  # the template restored
    assert main(["--stage", "embed", "--model", tiny_model, "--output", str(text_output_copy)]) == 0
    assert "1 of 1 were done before" in capsys.readouterr().err  # the chunk computed before the card failed


def test_the_card_template_is_one_real_file_in_the_package():
    from elm_wikitext.publish.card import CARD_TEMPLATE

    checkout = Path(__file__).resolve().parents[1]
    assert CARD_TEMPLATE == checkout / "elm_wikitext" / "dataset_card.md"
    assert CARD_TEMPLATE.is_file() and not CARD_TEMPLATE.is_symlink()
    copies = [p for p in checkout.rglob("dataset_card.md") if ".venv" not in p.parts and "build" not in p.parts]
    assert copies == [CARD_TEMPLATE]  # no second copy to drift


def test_the_advice_on_a_contradicting_text_option_rebuilds(text_output_copy, sample_dir, tiny_model, capsys):
    status, error = run(["--stage", "embed", "--min-tokens", "150", "--model", tiny_model,
                         "--output", text_output_copy], capsys)
    assert status == 2
    advice = error[error.index("rebuild the text with ") + len("rebuild the text with "):error.index(" (the columns")]
    assert main([*advice.split(), "--source", str(sample_dir), "--model", tiny_model,
                 "--output", str(text_output_copy)]) == 0
    assert json.loads((text_output_copy / MANIFEST_FILE).read_text())["stats"]["text"]["min_tokens"] == 150
