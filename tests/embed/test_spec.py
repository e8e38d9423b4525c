"""The model resolved once: its Hub identity, also for a folder `hf download --local-dir` left."""

import hashlib
import json
import shutil
from pathlib import Path

from elm_wikitext.embed.spec import resolve_model
from elm_wikitext.core.tokens import load_tokenizer
from elm_wikitext.publish.output import MANIFEST_FILE

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def downloaded(model: str, folder: Path, commit: str = COMMIT) -> Path:
    """`model` as `hf download REPO --local-dir folder` leaves it: each file with its metadata
    (commit, ETag, time), the ETag of a weights file being its SHA-256."""
    shutil.copytree(model, folder)
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        name = path.relative_to(folder).as_posix()
        etag = hashlib.sha256(path.read_bytes()).hexdigest() if path.suffix == ".safetensors" else "a1b2c3"
        metadata = folder / ".cache" / "huggingface" / "download" / f"{name}.metadata"
        metadata.parent.mkdir(parents=True, exist_ok=True)
        metadata.write_text(f"{commit}\n{etag}\n1764000000.0\n")
    return folder


def test_a_downloaded_folder_gets_the_commit_and_weights_hash_hf_download_recorded(tiny_model, tmp_path):
    folder = downloaded(tiny_model, tmp_path / "Qwen3-Embedding-4B")
    spec = resolve_model(str(folder), None, "Qwen/Qwen3-Embedding-4B", None, load_tokenizer(str(folder)))
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert (spec.hub_id, spec.commit, spec.weights_sha256) == ("Qwen/Qwen3-Embedding-4B", COMMIT, {"model.safetensors": sha})
    assert (spec.kind, spec.dim, spec.recipe.pooling, spec.public_name) == ("decoder", 64, "lasttoken", "Qwen/Qwen3-Embedding-4B")
    plain = resolve_model(tiny_model, None, None, None, load_tokenizer(tiny_model))
    assert (plain.hub_id, plain.commit, plain.weights_sha256) == (None, None, {"model.safetensors": sha})
    assert plain.public_name == "tiny-qwen3 (a local model folder)"


def test_the_offline_route_publishes_the_models_and_sources_hub_ids(sample_dir, tiny_model, tmp_path):
    """README's offline route: both downloaded with `hf download --local-dir`, built with
    --model-id and --source-id: the published card names them by Hub id and commit, no path."""
    from elm_wikitext.cli import main

    from elm_wikitext.publish.card import stage_hub_folder

    model = downloaded(tiny_model, tmp_path / "models" / "Qwen3-Embedding-4B")
    source = downloaded(str(sample_dir), tmp_path / "wikitext", commit="f" * 40)
    output = tmp_path / "out"
    assert main(["--source", str(source), "--source-id", "Salesforce/wikitext", "--model", str(model),
                 "--model-id", "Qwen/Qwen3-Embedding-4B", "--output", str(output)]) == 0
    embed = json.loads((output / MANIFEST_FILE).read_text())["stats"]["embed"]["embedding"]
    assert (embed["model_id"], embed["model_commit"]) == ("Qwen/Qwen3-Embedding-4B", COMMIT)
    hub = stage_hub_folder(str(output), tmp_path / "hub", "someone/elm-wikitext2", "v1.0.0")
    card = (hub / "README.md").read_text()
    assert f"- Model: `Qwen/Qwen3-Embedding-4B`, revision `{COMMIT}`." in card
    assert "pretty_name: 'ELM WikiText-2: paragraphs and their Qwen3-Embedding-4B vectors'" in card or \
        "pretty_name: ELM WikiText-2: paragraphs and their Qwen3-Embedding-4B vectors" in card
    assert f"Built from `Salesforce/wikitext` (commit `{'f' * 40}`)" in card
    assert str(tmp_path) not in card and "/tmp/" not in card


def test_push_of_a_local_folder_without_its_hub_id_is_refused_before_any_work(sample_dir, tiny_model, tmp_path, capsys):
    from elm_wikitext.cli import main

    output = tmp_path / "out"
    assert main(["--source", str(sample_dir), "--model", tiny_model, "--output", str(output), "--push"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --push publishes the model's Hub id, and --model {tiny_model} is a local folder: pass "
        "--model-id with its Hub id (e.g. --model-id Qwen/Qwen3-Embedding-4B)")
    assert main(["--source", str(sample_dir), "--model", tiny_model, "--model-id", "someone/tiny",
                 "--output", str(output), "--push"]) == 2
    assert "pass --source-id with its Hub id (e.g. --source-id Salesforce/wikitext)" in capsys.readouterr().err
    assert not output.exists()
