"""Shared, session-scoped fixtures: the sample corpus, a tiny Qwen3 model (and one with other
weights), one text-stage run, one full build and its Hub layout. Tests that change an output
work on a copy (`text_output_copy`, `embedded_copy`): a copy takes milliseconds, a build seconds."""

import os
import shutil
from pathlib import Path

import pytest

# Under pytest-xdist (pyproject's `-n auto`) each worker takes its share of the cores for torch's
# threads, and so do the builds it starts: two workers of two threads each on two cores run
# slower than one. Set before torch is first imported (by the imports below).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

from elm_wikitext.options import BuildOptions  # noqa: E402  (torch's threads are set above)
from elm_wikitext.tiny import make_tiny_model  # noqa: E402

SAMPLE = Path(__file__).parent / "fixtures" / "wikitext_sample"


CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean():
    """No test writes into the checkout (a build run from it would leave logs/, data/, models/
    there): what is new at its top and in tests/ after the session fails the run."""
    def entries() -> set[str]:
        return {str(p.relative_to(CHECKOUT)) for folder in (CHECKOUT, CHECKOUT / "tests") for p in folder.iterdir()}

    before = entries()
    yield
    added = sorted(entries() - before - {".pytest_cache", "tests/__pycache__"})
    assert not added, f"tests wrote into the checkout: {added}"


@pytest.fixture(scope="session", autouse=True)
def libraries_kept_out_of_garbage_collection():
    """The libraries a build imports hold about half a million objects that live as long as the
    session: frozen (gc.freeze), the gc.collect a build makes before and after the
    sentence-transformers check scans only what the tests made, not them (half a second a call)."""
    import gc

    import matplotlib.pyplot  # noqa: F401  (what a build imports late, imported here first)
    import sentence_transformers  # noqa: F401

    import elm_wikitext.pipeline  # noqa: F401

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def work_in_a_temporary_folder(tmp_path_factory, monkeypatch):
    """Each test runs in a fresh folder of its own: what a build writes beside it (logs/, data/,
    models/) never lands in the checkout, nor in the test's own tmp_path."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """A WikiText-format sample written for this project (14 invented articles)."""
    return SAMPLE


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-weight Qwen3 (hidden 64) with the real Qwen tokenizer, as a model directory."""
    return make_tiny_model(str(tmp_path_factory.mktemp("models") / "tiny-qwen3"))


@pytest.fixture(scope="session")
def retrained_model(tiny_model, tmp_path_factory) -> str:
    """The tiny model's architecture and tokenizer with other weights (seed 1), as a fine-tuned
    checkpoint would be: the tokenizer files are copied, not built again (seconds each)."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    directory = tmp_path_factory.mktemp("models") / "retrained"
    shutil.copytree(tiny_model, directory, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.manual_seed(1)
    Qwen3Model(Qwen3Config.from_pretrained(tiny_model)).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from elm_wikitext.core.tokens import load_tokenizer

    return load_tokenizer(tiny_model)


@pytest.fixture
def options(tiny_model, sample_dir, tmp_path) -> BuildOptions:
    """Options of a build of the sample with the tiny model into a fresh directory."""
    return BuildOptions(source=str(sample_dir), model=tiny_model, output=str(tmp_path / "out"))


def build_sample(directory: Path, sample_dir: Path, tiny_model: str, *stage: str) -> Path:
    """`build.py` on the sample with the tiny model, in-process, writing `directory`/out; it runs
    from a folder beside `directory`, where its logs/ go (a session fixture starts before any
    test's own folder). Returns the output directory."""
    from elm_wikitext.cli import main

    output, before = directory / "out", os.getcwd()
    cwd = directory.with_name(f"{directory.name}-cwd")
    cwd.mkdir()
    os.chdir(cwd)
    try:
        assert main([*stage, "--source", str(sample_dir), "--model", tiny_model, "--output", str(output)]) == 0
    finally:
        os.chdir(before)
    return output


@pytest.fixture(scope="session")
def text_output(tiny_model, sample_dir, tmp_path_factory) -> Path:
    """One text-stage output of the sample, shared read-only by tests (copy it to modify)."""
    return build_sample(tmp_path_factory.mktemp("text"), sample_dir, tiny_model, "--stage", "text")


@pytest.fixture(scope="session")
def embedded_output(tiny_model, sample_dir, tmp_path_factory) -> Path:
    """One full build (text and embeddings) of the sample, shared read-only by tests."""
    return build_sample(tmp_path_factory.mktemp("embedded"), sample_dir, tiny_model)


@pytest.fixture
def text_output_copy(text_output, tmp_path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(text_output, copy)
    return copy


@pytest.fixture
def embedded_copy(embedded_output, tmp_path) -> Path:
    copy = tmp_path / "embedded"
    shutil.copytree(embedded_output, copy)
    return copy


@pytest.fixture(scope="session")
def hub_folder(embedded_output, tmp_path_factory) -> Path:
    """The folder --push uploads for the full build (parquet shards and the card, no manifest)."""
    from elm_wikitext.publish.card import stage_hub_folder

    return stage_hub_folder(str(embedded_output), tmp_path_factory.mktemp("hub") / "hub",
                            "someone/elm-wikitext2", "v1.0.0")


def save_sentence_transformer(plain: str, directory: Path, pooling: str, normalize: bool, **transformer) -> str:
    """`plain` (a transformers model folder) as sentence-transformers saves a model of its
    modules: Transformer -> Pooling(`pooling`) [-> Normalize], with its real files."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    module = Transformer(plain, **transformer)
    modules = [module, Pooling(module.get_embedding_dimension(), pooling_mode=pooling)] + ([Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, device="cpu").save(str(directory))
    return str(directory)


@pytest.fixture(scope="session")
def st_models(tiny_model, sample_dir, tmp_path_factory) -> dict[str, str]:
    """A tiny random model of each kind this build reproduces, saved with sentence-transformers:
    Qwen3 last-token (padding on the left, as Qwen3-Embedding's), BERT mean (not normalized),
    BERT CLS, and a T5 encoder with mean pooling; and plain transformers folders of Qwen3 and
    BERT, without those files."""
    from elm_wikitext.tiny import make_tiny_bert, make_tiny_t5

    root = tmp_path_factory.mktemp("st-models")
    texts = (sample_dir / "wiki.train.raw").read_text(encoding="utf-8").splitlines()
    bert, t5 = make_tiny_bert(str(root / "plain-bert"), texts), make_tiny_t5(str(root / "plain-t5"), texts)
    plain_qwen3 = shutil.copytree(tiny_model, root / "plain-qwen3", ignore=shutil.ignore_patterns(
        "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling", "2_Normalize"))
    return {"plain-qwen3": str(plain_qwen3), "plain-bert": bert,  # no sentence-transformers files
            "qwen3-lasttoken": save_sentence_transformer(tiny_model, root / "qwen3", "lasttoken", True,
                                                         processor_kwargs={"padding_side": "left"}),
            "bert-mean": save_sentence_transformer(bert, root / "bert-mean", "mean", False),
            "bert-cls": save_sentence_transformer(bert, root / "bert-cls", "cls", True),
            "t5-mean": save_sentence_transformer(t5, root / "t5-mean", "mean", True)}


@pytest.fixture(scope="session")
def rewrite_output():
    """A function that rewrites an output's splits beside it, as a damaged or tampered output."""
    return _rewrite


def _rewrite(output, change, update_checksums=True):
    """Apply `change` to the splits and save them beside `output` with its manifest, the files'
    checksums updated as a build that made these rows would have written them (or not)."""
    import json

    from datasets import load_from_disk

    from elm_wikitext.publish.output import MANIFEST_FILE, manifest_checksum, split_checksum

    splits = change(load_from_disk(str(output)))
    manifest = json.loads((output / MANIFEST_FILE).read_text())
    tmp = output.parent / "rewritten"
    splits.save_to_disk(str(tmp))
    if update_checksums:
        for name, entry in manifest["splits"].items():
            entry["sha256"] = split_checksum(tmp / name, entry["files"])
        manifest["manifest_sha256"] = manifest_checksum(manifest)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest))
    return tmp


@pytest.fixture(scope="session")
def as_built():
    """A function that reads a manifest's JSON, edited to stand for another build, as that build
    would have written it: its card's command made from these records (a build records it)."""
    return _as_built


def _as_built(manifest: dict):
    from elm_wikitext.core.records import Manifest, published_command

    record = Manifest.from_json(manifest)
    first = next(iter(record.stats.embed.values()))  # the column that leads the card
    record.published_command = published_command(BuildOptions(**manifest["config"]), record.stats.text, first)
    return record
