"""The layering is a contract (pyproject.toml's [tool.importlinter]): the stages are peers on the
ground floor, core/, and a stage that imports another breaks the build's CI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root`, with this checkout's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
               "sys.exit(lint_imports_command())", "--no-cache", str(ROOT / "pyproject.toml")]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)


def test_the_package_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert "ignored" not in result.stdout  # every contract holds as written, with no exception listed


@pytest.mark.parametrize("module, imported", [
    ("text/rows.py", "elm_wikitext.publish.output"),  # a stage importing another
    ("training/loading.py", "elm_wikitext.publish.output"),  # training reading an output through the publish stage
    ("core/schema.py", "elm_wikitext.training.loading"),  # the ground floor reaching up to training
    ("embed/chunks.py", "accelerate"),  # a stage asking how many processes run instead of being handed them
])
def test_an_import_across_the_floors_breaks_the_contract(tmp_path, module, imported):
    shutil.copytree(ROOT / "elm_wikitext", tmp_path / "elm_wikitext", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "elm_wikitext" / module
    path.write_text(path.read_text() + f"\nimport {imported}  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    importer = "elm_wikitext." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {imported}" in result.stdout, result.stdout
