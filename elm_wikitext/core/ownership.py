"""Which folders are the build's own: a folder it makes beside an output (the embedding's chunks,
the Hub layout, an output being written) carries a marker, and only a marked folder is ever deleted."""

from pathlib import Path

WORK_MARKER = ".elm-wikitext-work"


def make_work_folder(folder: Path) -> Path:
    """Create a work folder and mark it as the build's, so that only such a folder is deleted."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WORK_MARKER).touch()
    return folder
