"""The embed stage end to end through build.py: column, resume after kill -9, two machines."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import List, Value, load_from_disk

ROOT = Path(__file__).resolve().parents[2]
SMALL_CHUNKS = ["--chunk-tokens", "2048"]  # the sample's ~12k tokens make several chunks


def build_code(kill_at: tuple | None = None) -> str:
    """Python code that runs the command line's main (elm_wikitext.cli). `kill_at=("module:attr.path", n, "before" or "after")`
    makes it SIGKILL itself at the n-th call of that function: a real kill -9 at a chosen point."""
    code = "import sys; from elm_wikitext.cli import main; sys.exit(main(sys.argv[1:]))"
    if kill_at is not None:
        target, n, when = kill_at
        code = KILL_HOOK.format(target=target, n=n, after=when == "after") + code
    return code


def run_build(*args: str, kill_at: tuple | None = None, env: dict | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    """build.py in a fresh process (see `build_code`), run from `cwd` (default: the test's folder)."""
    return subprocess.run([sys.executable, "-c", build_code(kill_at), *args], cwd=cwd or Path.cwd(), capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


KILL_HOOK = """
import importlib, os, signal
module, path = "{target}".split(":")
owner = importlib.import_module(module)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
real, calls = getattr(owner, name), [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {n} and not {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    result = real(*args, **kwargs)
    if calls[0] == {n} and {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, dying)
"""
KILL_AFTER_TWO_CHUNKS = ("elm_wikitext.embed.chunks:ChunkStore.save", 2, "after")


def work_folder(output: Path) -> Path:
    """The one KEY folder of an output's embedding work files (beside the folder's marker file)."""
    folders = [path for path in Path(f"{output}.embed-work").iterdir() if path.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def vectors(output: Path) -> dict[str, np.ndarray]:
    splits = load_from_disk(str(output)).with_format("numpy")
    return {name: split["embedding"][:] for name, split in splits.items()}


def embed_stats(output: Path) -> dict:
    return json.loads((output / "manifest.json").read_text())["stats"]["embed"]["embedding"]


def run_main(*args: str, capsys) -> tuple[int, str]:
    """build.py's main in this process (a rerun needs no process of its own): status and stderr."""
    from elm_wikitext.cli import main

    capsys.readouterr()
    status = main([str(arg) for arg in args])
    return status, capsys.readouterr().err


@pytest.fixture(scope="module")
def killed(text_output, tiny_model, tmp_path_factory) -> Path:
    """A copy of the sample's text output whose embed stage was killed (-9) after its second
    chunk: the output untouched, two chunks in its work folder. Shared: copy it to resume it."""
    output = tmp_path_factory.mktemp("killed") / "out"
    shutil.copytree(text_output, output)
    done = run_build("--stage", "embed", "--model", tiny_model, "--output", str(output), *SMALL_CHUNKS,
                     kill_at=KILL_AFTER_TWO_CHUNKS, cwd=output.parent)  # a module fixture starts before the test's folder
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return output


@pytest.fixture
def killed_copy(killed, tmp_path) -> Path:
    """The killed embed stage's output and work folder, copied to be resumed here."""
    output = tmp_path / "out"
    shutil.copytree(killed, output)
    shutil.copytree(f"{killed}.embed-work", f"{output}.embed-work")
    return output


def test_embedding_column_is_a_fixed_length_unit_vector(embedded_output):
    splits = load_from_disk(str(embedded_output))
    assert splits["train"].features["embedding"] == List(Value("float32"), length=64)
    for array in vectors(embedded_output).values():
        assert array.shape[1] == 64 and np.isfinite(array).all()
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1, atol=1e-5)
    stats = embed_stats(embedded_output)
    assert stats["paragraphs"] == sum(len(s) for s in splits.values())
    assert stats["padding_share"] <= 0.03
    assert stats["compiled"] is False  # --compile auto compiles on a GPU only
    assert 0 < stats["embedding_seconds"] <= stats["seconds"]
    assert stats["tokens_per_second"] >= stats["tokens"] / stats["seconds"]  # batches only, no loading


def test_kill_9_then_rerun_resumes_and_matches(embedded_output, killed_copy, tiny_model, capsys):
    assert "embedding" not in load_from_disk(str(killed_copy))["train"].column_names  # untouched
    finished = sorted(work_folder(killed_copy).glob("chunk-*.npz"))
    assert len(finished) == 2
    done_rows = sum(len(np.load(path)["vectors"]) for path in finished)

    status, err = run_main("--stage", "embed", "--model", tiny_model, "--output", killed_copy, *SMALL_CHUNKS,
                           capsys=capsys)
    assert status == 0, err[-3000:]
    total = embed_stats(embedded_output)["paragraphs"]
    assert embed_stats(killed_copy)["paragraphs"] == total - done_rows  # only the unfinished chunks
    assert "2 of " in err and "were done before" in err
    for name, array in vectors(killed_copy).items():
        np.testing.assert_allclose((array * vectors(embedded_output)[name]).sum(axis=1), 1, atol=1e-5)
    assert not Path(f"{killed_copy}.embed-work").exists()  # cleaned up once written


def test_rerunning_on_an_up_to_date_output_reuses_its_vectors_without_the_model(
        embedded_copy, sample_dir, tiny_model, monkeypatch):
    from elm_wikitext.cli import main
    from elm_wikitext.embed import chunks as embed

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    before = vectors(embedded_copy)
    monkeypatch.setattr(embed, "load_encoder", no_model)
    args = ["--source", str(sample_dir), "--model", tiny_model, "--output", str(embedded_copy)]
    assert main(args) == 0  # the same command that built it
    assert embed_stats(embedded_copy)["reused"] is True
    for name, array in vectors(embedded_copy).items():
        np.testing.assert_array_equal(array, before[name])
    with pytest.raises(AssertionError, match="the model was loaded"):  # another dim: other vectors
        main([*args, "--dim", "32"])


def test_changed_dim_never_reuses_old_vectors(killed_copy, tiny_model, capsys):
    status, err = run_main("--stage", "embed", "--model", tiny_model, "--output", killed_copy, *SMALL_CHUNKS,
                           "--dim", "32", capsys=capsys)
    assert status == 0, err[-3000:]
    assert "0 of " in err and "were done before" in err
    splits = load_from_disk(str(killed_copy))
    assert embed_stats(killed_copy)["paragraphs"] == sum(len(s) for s in splits.values())
    assert splits["train"].features["embedding"].length == 32


def test_new_weights_under_the_same_path_never_reuse_old_vectors(text_output_copy, tiny_model, retrained_model,
                                                                  tmp_path, monkeypatch, capsys):
    from elm_wikitext.embed import chunks as embed

    model = shutil.copytree(tiny_model, tmp_path / "model")
    args = ("--stage", "embed", "--model", model, "--output", text_output_copy, *SMALL_CHUNKS)
    real_save, saves = embed.ChunkStore.save, []

    def stopped_after_two(store, *args, **kwargs):  # Ctrl-C once two chunks are saved
        real_save(store, *args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(embed.ChunkStore, "save", stopped_after_two)
        assert run_main(*args, capsys=capsys)[0] == 130
    assert len(list(work_folder(text_output_copy).glob("chunk-*.npz"))) == 2
    shutil.copy(Path(retrained_model) / "model.safetensors", model)  # e.g. a fine-tuned checkpoint saved over it
    status, err = run_main(*args, capsys=capsys)
    assert status == 0, err[-3000:]
    assert "0 of " in err and "were done before" in err
    splits = load_from_disk(str(text_output_copy))
    assert embed_stats(text_output_copy)["paragraphs"] == sum(len(s) for s in splits.values())


def two_machines(args: list[str], scripts: tuple[Path, Path], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Machines 0 and 1 of two, one CPU process each, launched on this host with docs/scaling.md's
    `accelerate launch --num_machines 2` command; `scripts` are what each one runs."""
    with socket.socket() as probe:  # a free port for the main process
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU
    machines = [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
         "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
         "--num_processes", "2", str(script), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank, script in enumerate(scripts)]
    done = [(machine, *machine.communicate(timeout=600)) for machine in machines]
    return [subprocess.CompletedProcess(m.args, m.returncode, out, err) for m, out, err in done]


def test_two_machines_equal_one_process_and_a_lost_one_is_relaunched_for_its_chunks_only(
        embedded_output, text_output_copy, tiny_model, tmp_path):
    args = ["--stage", "embed", "--model", tiny_model, "--output", str(text_output_copy), *SMALL_CHUNKS]
    dying = tmp_path / "dying_build.py"  # machine 1 is lost after writing its first chunk
    dying.write_text(build_code(kill_at=("elm_wikitext.embed.chunks:ChunkStore.save", 1, "after")))
    survivor, lost = two_machines(args, (ROOT / "build.py", dying), tmp_path)
    assert lost.returncode != 0 and "SIGKILL" in lost.stderr
    assert survivor.returncode != 0, survivor.stderr[-3000:]
    assert "another process of this run is gone" in survivor.stderr  # after finishing its own chunks
    assert "embedding" not in load_from_disk(str(text_output_copy))["train"].column_names
    work = work_folder(text_output_copy)
    finished = {path.name: path.stat().st_mtime_ns for path in work.glob("chunk-*.npz")}

    main, other = two_machines(args, (ROOT / "build.py", ROOT / "build.py"), tmp_path)  # both relaunched
    assert main.returncode == 0 and other.returncode == 0, main.stderr[-3000:] + other.stderr[-3000:]
    assert f"; {len(finished)} of " in main.stderr and "were done before" in main.stderr
    stats = embed_stats(text_output_copy)
    assert stats["processes"] == 2 and 0 < stats["paragraphs"] < embed_stats(embedded_output)["paragraphs"]
    one, two = load_from_disk(str(embedded_output)), load_from_disk(str(text_output_copy))
    for name in one:
        assert one[name]["text_id"][:] == two[name]["text_id"][:]
        assert (vectors(embedded_output)[name] * vectors(text_output_copy)[name]).sum(axis=1).min() >= 0.99999
        assert one[name]["embedding_neighbors"] == two[name]["embedding_neighbors"]  # searched by both processes
    assert json.loads((text_output_copy / "manifest.json").read_text())["stats"]["neighbors"]["embedding"]["processes"] == 2


def test_compiled_layers_give_the_same_vectors(embedded_output, text_output_copy, tiny_model):
    done = run_build("--stage", "embed", "--model", tiny_model, "--output", str(text_output_copy),
                     *SMALL_CHUNKS, "--compile", "yes", env={"TORCH_LOGS": "recompiles"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiling 2 decoder layers with torch.compile" in done.stderr
    # The warm-up's second graph (several rows) is the only recompilation: no batch waits for one.
    assert done.stderr.count("Recompiling function") == 1, done.stderr[-3000:]
    assert embed_stats(text_output_copy)["compiled"] is True
    for name, array in vectors(text_output_copy).items():
        assert (array * vectors(embedded_output)[name]).sum(axis=1).min() >= 0.99999


NO_COMPILER = {"CXX": "/bin/false", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}  # inductor's C++ build fails


def test_compile_without_a_working_compiler_is_refused_before_any_work(text_output_copy, tiny_model):
    before = sorted(p.name for p in text_output_copy.parent.iterdir())
    done = run_build("--stage", "embed", "--model", tiny_model, "--output", str(text_output_copy),
                     "--compile", "yes", env=NO_COMPILER)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1].startswith("error: --compile yes cannot compile on this machine")
    assert "or pass --compile no" in done.stderr.splitlines()[-1]
    assert "embedding" not in load_from_disk(str(text_output_copy))["train"].column_names
    assert sorted(p.name for p in text_output_copy.parent.iterdir()) == before  # no work files either


def test_where_compiling_fails_unasked_the_layers_stay_eager_and_embed_the_same(tiny_model, tokenizer):
    """What --compile auto does on a GPU without a working compiler (run here on CPU)."""
    code = f"""
import logging, torch
from elm_wikitext.embed.encode import compile_layers, embed_ids, load_encoder
logging.basicConfig()
encoder = load_encoder({tiny_model!r}, None, "float32", None, 0)
ids = [[11, 22, 33, 44, 0], [55, 66, 0]]
eager = embed_ids(encoder, ids)
assert compile_layers(encoder, required=False) is False
assert torch.allclose(embed_ids(encoder, ids), eager, atol=1e-6)
print("same vectors")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=Path.cwd(), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **NO_COMPILER})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "same vectors"
    assert "cannot compile the model on this machine" in done.stderr and "embedding eagerly" in done.stderr


def test_damaged_chunks_are_recomputed_not_loaded(embedded_output, killed_copy, tiny_model, capsys):
    truncated, flipped = sorted(work_folder(killed_copy).glob("chunk-*.npz"))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    data = flipped.read_bytes()
    flipped.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    status, err = run_main("--stage", "embed", "--model", tiny_model, "--output", killed_copy, *SMALL_CHUNKS,
                           capsys=capsys)
    assert status == 0, err[-3000:]
    assert f"chunk file {truncated.name} is damaged" in err and f"chunk file {flipped.name} is damaged" in err
    assert "0 of " in err and "were done before" in err
    for name, array in vectors(killed_copy).items():
        np.testing.assert_allclose((array * vectors(embedded_output)[name]).sum(axis=1), 1, atol=1e-5)


def test_a_chunk_no_process_could_see_names_the_shared_storage_fix(tmp_path):
    from elm_wikitext.embed.chunks import ChunkStore, assemble, plan_chunks
    from elm_wikitext.core.errors import BuildError

    store = ChunkStore(tmp_path / "work", dim=4)
    chunks = plan_chunks(np.array([3, 2, 2]), chunk_tokens=4)
    store.save(0, np.ones((len(chunks[0]), 4), dtype=np.float32), recomputed=0)  # chunk 1 was written elsewhere
    with pytest.raises(BuildError, match="chunk 1 is missing .* --output must be on storage they all share"):
        assemble(store, chunks, rows=3)


def test_the_text_key_is_one_join_of_every_text_id_hashed_in_slices():
    import hashlib

    import pyarrow as pa

    from elm_wikitext.embed.chunks import joined_digest

    ids = [f"{i:016x}" for i in range(1000)]
    column = pa.chunked_array([pa.array(ids[:333], pa.string()), pa.array(ids[333:], pa.string())])
    whole = hashlib.sha256("\n".join(ids).encode()).hexdigest()  # the key of earlier runs' chunks
    assert joined_digest(column, slice_rows=7) == joined_digest(column) == whole
    assert joined_digest(column.slice(1), slice_rows=7) != whole


def test_float32_recomputations_are_counted_over_every_run_that_made_the_chunks(tmp_path):
    from elm_wikitext.embed.chunks import ChunkStore, assemble, plan_chunks

    chunks = plan_chunks(np.array([3, 2, 2]), chunk_tokens=4)
    ChunkStore(tmp_path / "work", dim=4).save(0, np.ones((len(chunks[0]), 4), np.float32), recomputed=1)
    resumed = ChunkStore(tmp_path / "work", dim=4)  # a later run finds chunk 0 and computes chunk 1
    resumed.save(1, np.ones((len(chunks[1]), 4), np.float32), recomputed=2)
    path, recomputed = assemble(resumed, chunks, rows=3)
    assert recomputed == 3 and np.load(path).shape == (3, 4)


def splits_as_rows(output: Path) -> dict:
    return {name: list(zip(split["text_id"][:], split["text"][:], split["article"][:]))
            for name, split in load_from_disk(str(output)).items()}


def test_kill_9_mid_text_stage_then_rerun_matches(text_output, sample_dir, tiny_model, tmp_path, monkeypatch, capsys):
    import datasets

    args = ("--stage", "text", "--source", str(sample_dir), "--model", tiny_model, "--output", str(tmp_path / "out"))
    cache = tmp_path / "cache"  # nothing cached by earlier runs: the rerun meets what the kill left there
    killed = run_build(*args, kill_at=("elm_wikitext.text.paragraphs:clean_text", 30, "before"), env={"HF_DATASETS_CACHE": str(cache)})
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "out").exists()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    status, err = run_main(*args, capsys=capsys)
    assert status == 0, err[-3000:]
    assert splits_as_rows(tmp_path / "out") == splits_as_rows(text_output)


def test_kill_9_between_the_output_renames_then_rerun_matches(text_output, text_output_copy, sample_dir, tiny_model,
                                                             capsys):
    args = ("--stage", "text", "--source", str(sample_dir), "--model", tiny_model, "--output", str(text_output_copy))
    # The first os.replace moves the old output aside, the second would move the new one in.
    killed = run_build(*args, kill_at=("os:replace", 2, "before"))
    assert killed.returncode == -signal.SIGKILL and not text_output_copy.exists()
    status, err = run_main(*args, capsys=capsys)
    assert status == 0, err[-3000:]
    assert splits_as_rows(text_output_copy) == splits_as_rows(text_output)
    assert [p.name for p in text_output_copy.parent.iterdir() if p.name.startswith(".")] == []


def fill_the_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")


def half_a_chunk_then_full(handle, **arrays):
    handle.write(b"PK\x03\x04 half a chunk")  # a partial write, then the disk is full
    fill_the_disk()


@pytest.mark.parametrize("where", ["saving a chunk", "adding the column"])
def test_a_full_disk_is_one_line_and_leaves_no_temporary_files(where, text_output_copy, tiny_model,
                                                             monkeypatch, capsys):
    from elm_wikitext.cli import main
    from elm_wikitext.embed import chunks as embed

    if where == "saving a chunk":
        monkeypatch.setattr(embed.np, "savez", half_a_chunk_then_full)
    else:
        monkeypatch.setattr(embed, "attach_vectors", fill_the_disk)
    before = sorted(p.name for p in text_output_copy.rglob("*"))
    assert main(["--stage", "embed", "--output", str(text_output_copy)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: cannot write") and "No space left on device" in error
    assert sorted(p.name for p in text_output_copy.rglob("*")) == before
    work = Path(f"{text_output_copy}.embed-work")
    left = [p.name for p in work.rglob("*") if p.suffix == ".tmp" or p.name.startswith("tmp")]
    assert left == []


@pytest.fixture(scope="module")
def two_columns(embedded_output, st_models, tmp_path_factory) -> Path:
    """The full build with a second model's column added: `--stage embed --model BERT-mean
    --column embedding_b` (a tokenizer that counts otherwise, a recipe without Normalize)."""
    output = tmp_path_factory.mktemp("two-columns") / "out"
    shutil.copytree(embedded_output, output)
    done = run_build("--stage", "embed", "--model", st_models["bert-mean"], "--column", "embedding_b",
                     "--output", str(output), cwd=output.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "counts otherwise than the text stage's tokenizer" in done.stderr  # the filter stays the text stage's
    return output


def test_a_second_model_adds_its_column_and_leaves_the_first_as_it_was(embedded_output, two_columns, st_models):
    splits = load_from_disk(str(two_columns))
    assert splits["train"].column_names[-6:] == ["embedding", "embedding_neighbors", "embedding_neighbor_cosines",
                                                 "embedding_b", "embedding_b_neighbors", "embedding_b_neighbor_cosines"]
    assert splits["train"].features["embedding_b"] == List(Value("float32"), length=32)
    first = load_from_disk(str(embedded_output))
    for name, array in vectors(embedded_output).items():
        np.testing.assert_array_equal(splits[name].with_format("numpy")["embedding"][:], array)  # untouched
        assert splits[name]["embedding_neighbors"] == first[name]["embedding_neighbors"]  # kept as they were
    manifest = json.loads((two_columns / "manifest.json").read_text())
    first, second = manifest["stats"]["embed"]["embedding"], manifest["stats"]["embed"]["embedding_b"]
    assert first == embed_stats(embedded_output)  # its record kept as it was
    assert second["model"] == st_models["bert-mean"]
    assert (second["pooling"]["pooling"], second["pooling"]["normalize"]) == ("mean", False)


def test_each_column_is_verified_and_re_embedded_by_its_own_recipe(two_columns, capsys):
    from elm_wikitext.training.embedder import Embedder

    status, err = run_main("--verify", two_columns, capsys=capsys)
    assert status == 0, err[-2000:]
    split = load_from_disk(str(two_columns))["validation"].with_format("numpy")
    for column in ("embedding", "embedding_b"):
        fresh = Embedder.from_dataset(str(two_columns), column=column).embed(list(split["text"][:]))
        stored = split[column][:]
        cosine = (fresh * stored).sum(axis=1) / np.linalg.norm(fresh, axis=1) / np.linalg.norm(stored, axis=1)
        assert cosine.min() >= 0.99999, (column, cosine)


def test_the_card_names_every_column_with_its_recipe(two_columns):
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(two_columns / "README.md", repo_type="dataset")
    recipes = card.data.to_dict()["embedding"]
    assert list(recipes) == ["embedding", "embedding_b"]
    assert (recipes["embedding_b"]["pooling"], recipes["embedding_b"]["normalize"]) == ("mean", False)
    assert "| `embedding_b` | 32 x float32 |" in card.text and "mean of the tokens, not normalized" in card.text
    assert "| `embedding_b_neighbors` | 8 x string |" in card.text
    # How far the two spaces' neighbourhoods agree, from the stored neighbours.
    splits = load_from_disk(str(two_columns))
    shares = [len(set(a) & set(b) - {None}) / len(set(a) - {None}) for split in splits.values()
              for a, b in zip(split["embedding_neighbors"], split["embedding_b_neighbors"])]
    assert f"`embedding` and `embedding_b` agree on {100 * np.mean(shares):.1f}% of a row's neighbours" in card.text


def test_the_card_of_two_models_says_only_what_is_true_of_each(two_columns, as_built):
    """Read as a stranger would: unit vectors only where a recipe normalizes, the query recipe of
    the model that has one, Qwen3-Embedding's instruction and citation only for it, and a load
    snippet with the dataset's own column names; a card led by the BERT-like column alone says none
    of Qwen3's."""
    from elm_wikitext.publish.card import render_card
    from elm_wikitext.core.records import Manifest

    manifest = json.loads((two_columns / "manifest.json").read_text())
    manifest["stats"]["embed"]["embedding"].update(model_id="Qwen/Qwen3-Embedding-4B", model_commit="a" * 40)
    splits = load_from_disk(str(two_columns))
    card = render_card(splits, Manifest.from_json(manifest)).text
    assert "(`embedding`: 64 floats, unit length; `embedding_b`: 32 floats)." in card
    assert "| `embedding_b` | 32 x float32 | the paragraph's `bert-mean (a local model folder)` embedding |" in card
    assert 'columns=["embedding", "text"]' in card and "encode_query`, which puts `Instruct: Given a web search" in card
    assert "Instruct: {task}" in card and "@article{qwen3embedding" in card
    assert "dot product (both are unit vectors)" in card

    del manifest["stats"]["embed"]["embedding"]  # the BERT-like column alone
    manifest["config"]["column"] = "embedding_b"
    card = render_card(splits, as_built(manifest)).text
    assert "a 32-float vector." in card and "unit" not in card.split("## How to load")[0]
    assert 'columns=["embedding_b", "text"]' in card and 'batch["embedding_b"]' in card
    assert "Instruct" not in card and "qwen3" not in card.lower() and "cosine similarity" in card
    assert "`SentenceTransformer(model).encode_document(text)` gives" in card


def test_a_column_is_reused_for_the_same_recipe_and_refused_for_another(two_columns, st_models, tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(two_columns, output)
    before = vectors(output)
    status, err = run_main("--stage", "embed", "--model", st_models["bert-mean"], "--column", "embedding_b",
                           "--output", output, capsys=capsys)
    assert status == 0 and "reusing it" in err
    status, err = run_main("--stage", "embed", "--model", st_models["bert-cls"], "--column", "embedding_b",
                           "--output", output, capsys=capsys)
    assert status == 2 and "already has a column 'embedding_b'" in err.splitlines()[-1]
    assert "pass another --column" in err
    for name, array in vectors(output).items():
        np.testing.assert_array_equal(array, before[name])
    # Its other advice, "rebuild with --stage all", replaces that column and keeps the first.
    source = json.loads((output / "manifest.json").read_text())["config"]["source"]
    status, err = run_main("--stage", "all", "--source", source, "--model", st_models["bert-cls"], "--column",
                           "embedding_b", "--output", output, capsys=capsys)
    assert status == 0, err[-2000:]
    assert embed_stats(output)["key"] == json.loads((two_columns / "manifest.json").read_text())["stats"]["embed"][
        "embedding"]["key"] and json.loads((output / "manifest.json").read_text())["stats"]["embed"]["embedding_b"][
        "pooling"]["pooling"] == "cls"
    for name, array in vectors(output).items():
        np.testing.assert_array_equal(array, before[name])


def all_vectors(output: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every embedding column of every split."""
    splits = load_from_disk(str(output)).with_format("numpy")
    columns = [name for name in splits["train"].column_names
               if name.startswith("embedding") and not name.endswith(("_neighbors", "_neighbor_cosines"))]
    return {column: {name: split[column][:] for name, split in splits.items()} for column in columns}


# Rebuilds of a two-column output with its own text options: each keeps every column, reusing or
# keeping the vectors, whichever column it names (the default one, or the second model's).
KEEPING_REBUILDS = {
    "--stage text": ["--stage", "text"],
    "--stage all (the first column's model)": ["--stage", "all"],
    "--stage all with the second model, --stage embed forgotten": ["--stage", "all", "--model", "{bert}",
                                                                   "--column", "embedding_b"],
}


@pytest.mark.parametrize("case", list(KEEPING_REBUILDS))
def test_a_rebuild_of_the_same_text_keeps_every_column(case, two_columns, st_models, tiny_model, sample_dir,
                                                       tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(two_columns, output)
    before, records = all_vectors(output), json.loads((output / "manifest.json").read_text())["stats"]["embed"]
    args = [arg.format(bert=st_models["bert-mean"]) for arg in KEEPING_REBUILDS[case]]
    if "--model" not in args:
        args += ["--model", tiny_model]
    status, err = run_main(*args, "--source", sample_dir, "--output", output, capsys=capsys)
    assert status == 0, err[-3000:]
    after = all_vectors(output)
    assert list(after) == list(before) == ["embedding", "embedding_b"]
    for column in before:
        for name in before[column]:
            np.testing.assert_array_equal(after[column][name], before[column][name])
    kept = json.loads((output / "manifest.json").read_text())["stats"]["embed"]
    assert {column: kept[column]["key"] for column in kept} == {column: records[column]["key"] for column in records}
    assert "| `embedding_b` |" in (output / "README.md").read_text()  # the card names both still
    status, err = run_main("--verify", output, capsys=capsys)
    assert status == 0, err[-2000:]


@pytest.mark.parametrize("stage", ["text", "all"])
@pytest.mark.parametrize("change", [["--seed", "7"], ["--min-tokens", "150"], ["--split-by", "paragraph"]])
def test_a_rebuild_that_changes_the_text_names_the_columns_it_would_drop(stage, change, two_columns, tiny_model,
                                                                        sample_dir, tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(two_columns, output)
    before = {str(p): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    with pytest.MonkeyPatch.context() as patch:  # refused before any weights load
        patch.setattr("elm_wikitext.embed.chunks.load_encoder", lambda *a, **k: pytest.fail("weights loaded"))
        status, err = run_main("--stage", stage, *change, "--source", sample_dir, "--model", tiny_model,
                               "--output", output, capsys=capsys)
    line = err.strip().splitlines()[-1]
    named = "embedding, embedding_b" if stage == "text" else "embedding_b"  # --stage all rebuilds its own --column
    assert status == 2 and f"its columns {named} were embedded from the old text: pass --drop-columns" in line, line
    assert f"--stage embed --output {output} --column embedding_b --model " in line
    assert {str(p): p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    status, err = run_main("--stage", stage, *change, "--drop-columns", "--source", sample_dir, "--model", tiny_model,
                           "--output", output, capsys=capsys)
    assert status == 0, err[-2000:]
    assert list(all_vectors(output)) == ([] if stage == "text" else ["embedding"])
    if change == ["--seed", "7"]:  # the line's commands, followed literally, embed them again
        for command in line[line.index("embed them again (") + 18:line.index("); or keep")].split("; "):
            status, err = run_main(*command.split()[2:], capsys=capsys)
            assert status == 0, err[-2000:]
        assert sorted(all_vectors(output)) == ["embedding", "embedding_b"]


def test_one_columns_run_never_deletes_anothers_unfinished_chunks(killed_copy, st_models, tiny_model, capsys):
    """A run of `embedding` stopped with two chunks done, then a finished run of another column:
    the stopped run's chunks stay, and its rerun resumes from them."""
    work = Path(f"{killed_copy}.embed-work")
    chunks = sorted(p.name for p in work.rglob("chunk-*.npz"))
    status, err = run_main("--stage", "embed", "--model", st_models["bert-mean"], "--column", "embedding_c",
                           "--output", killed_copy, capsys=capsys)
    assert status == 0, err[-2000:]
    assert sorted(p.name for p in work.rglob("chunk-*.npz")) == chunks  # the other column's chunks only
    assert "kept" in err and "unfinished work of other runs" in err
    status, err = run_main("--stage", "embed", "--model", tiny_model, "--output", killed_copy, *SMALL_CHUNKS,
                           capsys=capsys)
    assert status == 0, err[-2000:]
    assert f"{len(chunks)} of" in err.split("were done before")[0].splitlines()[-1]
    assert not work.exists()  # nothing unfinished is left: the folder goes
    assert list(all_vectors(killed_copy)) == ["embedding_c", "embedding"]


def test_the_same_weights_at_another_path_resume_and_are_reused(killed_copy, tiny_model, tmp_path, capsys):
    moved = tmp_path / "models" / "moved-tiny"
    shutil.copytree(tiny_model, moved)
    status, err = run_main("--stage", "embed", "--model", moved, "--output", killed_copy, *SMALL_CHUNKS, capsys=capsys)
    assert status == 0, err[-2000:]
    assert "2 of" in err.split("were done before")[0].splitlines()[-1]  # resumed from the first path's chunks
    status, err = run_main("--stage", "all", "--source", json.loads((killed_copy / "manifest.json").read_text())[
        "config"]["source"], "--model", tiny_model, "--output", killed_copy, *SMALL_CHUNKS, capsys=capsys)
    assert status == 0 and "reusing it" in err
    assert embed_stats(killed_copy)["model"] == tiny_model  # the record names where the weights are now


@pytest.mark.parametrize("stage", ["text", "all", "embed"])
def test_columns_whose_files_changed_since_the_build_are_not_kept_as_its_own(stage, two_columns, tiny_model, st_models,
                                                                              sample_dir, tmp_path, capsys):
    """A byte of a vector changed in place: a rebuild must not seal it into a new manifest unchecked."""
    output = tmp_path / "out"
    shutil.copytree(two_columns, output)
    (arrow,) = (output / "validation").glob("data-*.arrow")
    data = bytearray(arrow.read_bytes())
    data[-200] ^= 0x40  # inside the last rows' vectors
    arrow.write_bytes(bytes(data))
    before = {str(p): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    args = (["--stage", "embed", "--model", st_models["bert-cls"], "--column", "embedding_c"] if stage == "embed" else
            ["--stage", stage, "--source", sample_dir, "--model", tiny_model])
    status, err = run_main(*args, "--output", output, capsys=capsys)
    line = err.strip().splitlines()[-1]
    assert status == 2 and "changed since its build (validation: its files differ" in line, line
    assert {str(p): p.read_bytes() for p in output.rglob("*") if p.is_file()} == before
    if stage == "embed":  # its text is the run's input: the line's command rebuilds it
        command = line[line.index("python build.py"):line.index(" and the options")].split()
        args = [*command[2:], "--source", sample_dir, "--model", tiny_model]
    else:
        assert "pass --drop-columns to go on without them" in line
        args = [*args, "--drop-columns", "--output", output]
    status, err = run_main(*args, capsys=capsys)
    assert status == 0, err[-2000:]
    assert list(all_vectors(output)) == ([] if stage == "text" else ["embedding"])
    if stage != "text":  # recomputed, not reused from the changed file
        assert "reusing it" not in err and run_main("--verify", output, capsys=capsys)[0] == 0


def test_a_model_that_reads_fewer_tokens_is_refused_with_the_max_tokens_that_fits():
    from datasets import Dataset

    from elm_wikitext.embed.chunks import check_lengths
    from elm_wikitext.core.recipe import Recipe
    from elm_wikitext.core.errors import BuildError

    # The text stage's counts, and another model's of the same paragraphs (it counts more).
    paragraphs = Dataset.from_dict({"token_count": [100, 150, 300, 250, 140]})
    theirs = np.array([120, 520, 600, 480, 170])
    with pytest.raises(BuildError, match=r"reads at most 512 tokens, and 2 kept paragraphs are longer in its tokens "
                                         r"\(the longest 600\): rebuild the text stage with --max-tokens 149 "):
        check_lengths(paragraphs, theirs, Recipe(max_length=512), "other")
    kept = np.array([100, 150, 300, 250, 140]) <= 149  # what that rebuild keeps: all within the model's reach
    check_lengths(Dataset.from_dict({"token_count": [100, 140]}), theirs[kept], Recipe(max_length=512), "other")
    with pytest.raises(BuildError, match="no --max-tokens keeps a paragraph it reads whole"):
        check_lengths(paragraphs, theirs, Recipe(max_length=110), "other")
