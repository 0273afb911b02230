"""The code's own layering: the import-linter contracts in pyproject.toml ([tool.importlinter]) hold, and break when
one forbidden import comes back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT_IMPORTS.is_file(), reason="import-linter (the dev extra) is not installed")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the packages under ``root`` with its pyproject.toml (no cache written)."""
    env = {**os.environ, "PYTHONPATH": str(root)}  # ahead of the editable install of the working tree
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True)


def test_the_contracts_hold() -> None:
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "contract"),
    [
        ("zoo/bench.py", "import training.trainer", "never pull in the training code"),
        ("zoo/kernels/binary.py", "import zoo.nn.self_distribution", "kernels know tensors and thresholds"),
        ("zoo/kernels/cuda/__init__.py", "import zoo.kernels.binary", "dispatch to the CUDA ones"),
        ("zoo/leaderboard.py", "import zoo.cli", "the CLI drives the leaderboard"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, bad_import: str, contract: str) -> None:
    for package in ("zoo", "training"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / module, "a") as f:
        f.write(f"\n\ndef _reintroduced() -> None:\n    {bad_import}  # noqa\n")
    run = lint_imports(tmp_path)
    assert run.returncode != 0 and "1 broken" in run.stdout, run.stdout + run.stderr
    assert contract in run.stdout.split("Broken contracts")[-1]
