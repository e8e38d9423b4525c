"""The Colab notebook runs headless, start to end, in its offline mode."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_notebook_builds_and_loads_offline(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setenv("ELM_NOTEBOOK_OFFLINE", "1")
    # The notebook runs in a checkout; this one's build.py and sample, linked into a folder of the
    # test's own, so that what it writes (models/, data/, logs/) stays out of the real checkout.
    for name in ("build.py", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    notebook = nbformat.read(ROOT / "notebooks" / "elm_colab.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []))
    assert "torch.Size([8, 64])" in printed  # the tiny model's vectors, read back as a tensor
    assert "INFO elm_wikitext.embed.chunks" in printed  # the build's log, shown as it ran, not kept back
    assert "published" not in printed        # offline: nothing is pushed
    assert "here:" in printed and "compute:" in printed  # --dry-run's estimate, before the build
