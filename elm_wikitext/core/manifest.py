"""manifest.json, read back: whole, sealed and of this format, or refused in one line.

On the ground floor because two sides read it: the build (publish/output.py, which also decides
whose a directory is) and the training side (`Embedder.from_dataset`). The seal is
`manifest_sha256`, the SHA-256 of the rest of the manifest: an edited manifest could describe
another build, so nothing of it is trusted.
"""

import hashlib
import json
from pathlib import Path

from elm_wikitext.core.errors import BuildError
from elm_wikitext.core.records import OUTPUT_FORMAT, OUTPUT_MARKER, Manifest, NotThisFormat

# The two files of an output that other tools read: the manifest, and the card with its recipes.
MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"

# The advice for a directory that is no output of this build at all.
ELSEWHERE = "pass the --output of an earlier build, or another directory"


def manifest_checksum(manifest: dict) -> str:
    """SHA-256 of the manifest's content but this checksum itself, so --verify sees an edit."""
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def is_sealed(manifest: dict) -> bool:
    """Whether the manifest has its checksum and matches it."""
    return manifest.get("manifest_sha256") == manifest_checksum(manifest)


def is_our_manifest(manifest) -> bool:
    """Whether the parsed manifest.json carries the marker that only this build writes."""
    return isinstance(manifest, dict) and OUTPUT_MARKER in manifest


def load_manifest_json(directory: Path):
    """The parsed manifest.json of `directory`; None where it is missing, unreadable or not JSON."""
    try:
        return json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None


def manifest_problem(manifest) -> str | None:
    """Why the parsed manifest cannot be read as this build's (None: it can): not ours, of another
    format, edited since the build, or not of this format's records."""
    if not isinstance(manifest, dict):
        return f"its {MANIFEST_FILE} is not a JSON object"
    if not is_our_manifest(manifest):
        return f"its {MANIFEST_FILE} was not written by this build"
    if manifest[OUTPUT_MARKER] != OUTPUT_FORMAT:
        return (f"its {MANIFEST_FILE} is of output format {manifest[OUTPUT_MARKER]!r}, and this version of "
                f"elm-wikitext reads format {OUTPUT_FORMAT} only")
    if not isinstance(manifest.get("manifest_sha256"), str):
        return f"its {MANIFEST_FILE} has no manifest_sha256, so an edit of it cannot be told"
    if not is_sealed(manifest):
        return f"its {MANIFEST_FILE} was changed since the build: it does not match its manifest_sha256"
    try:
        Manifest.from_json(manifest)
    except NotThisFormat as err:
        return f"its {MANIFEST_FILE} does not hold the records of format {OUTPUT_FORMAT}: {err}"
    return None


def rebuild_in_place(output: str) -> str:
    """The advice for an output of this build that cannot be read whole: rebuild it where it is."""
    return (f"nothing its {MANIFEST_FILE} says is trusted, so rebuild it from your own options: "
            f"python build.py --stage all --drop-columns --output {output} with the --source, --model and "
            "other options you built it with (this recomputes the text and the --column's vectors; "
            "add other columns again with --stage embed --column NAME)")


def read_manifest(directory: Path) -> Manifest:
    """The manifest of an output this build wrote, or one line saying why it cannot be read."""
    manifest = load_manifest_json(directory)
    problem = manifest_problem(manifest)
    if problem:
        advice = rebuild_in_place(str(directory)) if is_our_manifest(manifest) else ELSEWHERE
        raise BuildError(f"{directory} is not a whole output of this build ({problem}): {advice}")
    return Manifest.from_json(manifest)
