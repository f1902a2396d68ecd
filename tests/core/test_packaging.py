"""A real install (`pip install .`, the Docker image) ships only what pyproject.toml lists:
every package and every data file the code reads must be named there, or the image breaks
while the editable install the tests use keeps working."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from tests.support import ROOT

SKIP_SUFFIXES = {".py", ".pyc"}


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_dirs() -> list[Path]:
    roots = [p.split(".")[0] for p in _setuptools()["packages"]]
    found = []
    for root in sorted(set(roots)):
        for init in (ROOT / root).rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                found.append(init.parent)
    return found


def test_every_package_under_the_shipped_roots_is_listed() -> None:
    listed = set(_setuptools()["packages"])
    dirs = {".".join(d.relative_to(ROOT).parts) for d in _package_dirs()}
    assert dirs - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_every_data_file_inside_a_package_is_shipped() -> None:
    data = _setuptools().get("package-data", {})
    missing = []
    listed = set(_setuptools()["packages"])
    for package in listed:
        pdir = ROOT / Path(*package.split("."))
        for f in pdir.rglob("*"):
            if not f.is_file() or f.suffix in SKIP_SUFFIXES or "__pycache__" in f.parts:
                continue
            owner = ".".join(f.parent.relative_to(ROOT).parts)
            while owner and owner not in listed:  # a data folder without __init__.py belongs to the package above
                owner = owner.rpartition(".")[0]
            if owner != package:
                continue
            rel = f.relative_to(ROOT / Path(*owner.split("."))).as_posix()
            if not any(fnmatch.fnmatch(rel, pattern) for pattern in data.get(owner, [])):
                missing.append(f"{owner}: {rel}")
    assert missing == [], "add these to [tool.setuptools.package-data] in pyproject.toml"


def test_the_image_builds_from_the_whole_tree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    steps = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    assert "COPY . ." in steps
    assert any(re.match(r"RUN pip install (--no-deps )?\.( |$)", line) for line in steps), "no RUN pip install ."
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored and "var" in ignored
