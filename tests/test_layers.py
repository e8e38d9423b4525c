"""The layering is a contract (pyproject.toml's [tool.importlinter]): the stages are peers on the
ground floor, core/, and a stage that imports another breaks the build's CI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_a_stage_that_imports_another_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "elm_wikitext", tmp_path / "elm_wikitext", ignore=shutil.ignore_patterns("__pycache__"))
    rows = tmp_path / "elm_wikitext" / "text" / "rows.py"
    rows.write_text(rows.read_text() + "\nfrom elm_wikitext.publish import output  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "elm_wikitext.text.rows -> elm_wikitext.publish.output" in result.stdout
