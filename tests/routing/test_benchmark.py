"""The side-by-side routing benchmark runs end to end on tiny instances."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import routing as bench

DATA = Path(__file__).parent / "data"


def test_benchmark_checks_and_reports_every_solver(tmp_path, capsys):
    solvers = ["coldchain"] + [s for s, mod in (("pyvrp", "pyvrp"), ("vroom", "vroom"))
                               if importlib.util.find_spec(mod) is not None]
    out = tmp_path / "bench.json"
    code = bench.main(["--time-limit", "0.5", "--dir", str(DATA), "--instances", "tiny_vrptw",
                       "--solvers", *solvers, "--workers", "1", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert [r["solver"] for r in results] == solvers
    for r in results:
        assert r["errors"] == []
        assert r["distance"] == pytest.approx(82)
    assert "tiny_vrptw" in capsys.readouterr().out
