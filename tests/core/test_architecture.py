"""The import directions of ARCHITECTURE.md, enforced by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(*args: str) -> subprocess.CompletedProcess:
    if not LINT.exists() and shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    exe = str(LINT) if LINT.exists() else "lint-imports"
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_rooms_import_only_downwards() -> None:
    run = _lint()
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout and "BROKEN" not in run.stdout, run.stdout[-4000:]


def test_a_broken_direction_is_reported(tmp_path: Path) -> None:
    """The same tool on a contract the code breaks on purpose (routing does read fulfillment's orders)."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["routing", "fulfillment"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "routing must not read orders"\ntype = "forbidden"\n'
                      'source_modules = ["routing"]\nforbidden_modules = ["fulfillment"]\n', encoding="utf-8")
    run = _lint(str(config))
    assert run.returncode == 1 and "routing must not read orders BROKEN" in run.stdout, run.stdout[-3000:]
    assert "routing." in run.stdout and "-> fulfillment" in run.stdout
