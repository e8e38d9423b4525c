"""The embedding model, resolved once per build: where it loads from, what it is on the Hub (id,
commit, its weight files' SHA-256), its kind, the dim kept and its recipe. The embed stage, the
manifest, the card, --verify and Embedder take this record instead of reading the model's files
again.

A Hub model knows its own identity: the commit of its cached snapshot, and its weight files are
stored in the cache under their SHA-256. A local folder knows it only where `hf download
--local-dir` left `.cache/huggingface/download/<file>.metadata` (the commit on the first line,
the file's ETag, which for a weights file is its SHA-256, on the second); its Hub id is not
there, so the user names it (`--model-id`).
"""

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import try_to_load_from_cache

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.locations import download_record
from elm_wikitext.core.recipe import Recipe

SHA256 = re.compile(r"^[0-9a-f]{64}$")
WEIGHT_FILES = ("*.safetensors", "*.bin")


@dataclass(frozen=True)
class ModelSpec:
    path: str  # what from_pretrained loads: a local folder or a Hub id
    revision: str | None
    hub_id: str | None  # the model's Hub id: --model itself, or --model-id for a local folder
    commit: str | None  # the Hub commit its files came from, where known
    weights_sha256: dict = field(default_factory=dict)  # weight file name -> SHA-256
    kind: str = "decoder"  # encode.architecture's answer
    dim: int = 0
    recipe: Recipe = Recipe()

    @property
    def public_name(self) -> str:
        """What a published file calls the model: its Hub id, never a path on this machine."""
        return self.hub_id or f"{Path(self.path).name} (a local model folder)"


def download_metadata(folder: Path) -> tuple[str | None, dict]:
    """The commit of a local folder's files (`hf download --local-dir`'s record), and the SHA-256
    of each weight file: its recorded ETag where that is one, else read here."""
    commit, etags = download_record(folder)
    sha256 = {}
    for path in sorted(p for pattern in WEIGHT_FILES for p in folder.glob(pattern)):
        etag = etags.get(path.name, "")
        sha256[path.name] = etag if SHA256.match(etag) else file_sha256(path)
    return commit, sha256


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def cached_commit(model: str, revision: str | None) -> str | None:
    """The commit of a Hub model's cached snapshot (its folder's name)."""
    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    return Path(cached).parent.name if isinstance(cached, str) else None


def cached_weights(model: str, revision: str | None) -> dict:
    """The SHA-256 of a cached Hub model's weight files: the cache stores each under its SHA-256."""
    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    if not isinstance(cached, str):
        return {}
    snapshot = Path(cached).parent
    return {path.name: path.resolve().name for pattern in WEIGHT_FILES for path in sorted(snapshot.glob(pattern))
            if SHA256.match(path.resolve().name)}


def check_weights_sha256(folder: str, recorded: dict, dataset: str) -> None:
    """A model folder's weight files are the ones a dataset was embedded with, file by file."""
    for name, expected in recorded.items():
        path = Path(folder) / name
        found = path.resolve().name if SHA256.match(path.resolve().name) else (
            file_sha256(path) if path.is_file() else "missing")
        if found != expected:
            raise BuildError(f"the weight file {name} of {folder} ({found[:12]}) is not the one {dataset} was "
                             f"embedded with ({expected[:12]}): pass model= a copy of that model")


def model_folder(model: str, revision: str | None) -> str:
    """Where a loaded model's files are: a local folder itself, or a Hub model's cached snapshot."""
    if Path(model).is_dir():
        return model
    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    return str(Path(cached).parent) if isinstance(cached, str) else model
