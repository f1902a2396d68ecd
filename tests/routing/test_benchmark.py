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
                       "--solvers", *solvers, "--cities", "--workers", "1", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())["results"]
    assert [r["solver"] for r in results] == solvers
    for r in results:
        assert r["errors"] == []
        assert r["distance"] == pytest.approx(82)
    assert "tiny_vrptw" in capsys.readouterr().out


SOLOMON = """TINY

VEHICLE
NUMBER     CAPACITY
  2         10

CUSTOMER
CUST NO.  XCOORD.   YCOORD.    DEMAND   READY TIME  DUE DATE   SERVICE   TIME

    0      0         0          0          0        100          0
    1      3         4          4          0         10          1
    2      6         8          5          0         30          1
    3      0        10          6         20         40          1
"""


def test_own_solomon_checker_recomputes_windows_capacity_and_coverage(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(SOLOMON)
    assert bench.check_solomon_routes(str(path), [[1, 2], [3]]) == []
    errors = bench.check_solomon_routes(str(path), [[2, 1], [3]])  # 1 reached at 10 + 1 + 5 = 16 > 10
    assert errors == ["route 0: customer 1 at 16.000, due 10"]
    assert bench.check_solomon_routes(str(path), [[1, 2, 3]]) == ["route 0: load 15 > capacity 10"]
    assert bench.check_solomon_routes(str(path), [[1], [2], [3]])[0] == "3 routes but only 2 vehicles"
    assert bench.check_solomon_routes(str(path), [[1, 2], [1]]) == ["customer 1 served 2 times",
                                                                  "1 customers not served, e.g. [3]"]


@pytest.mark.skipif(importlib.util.find_spec("pyvrp") is None, reason="PyVRP is a bench extra: pip install .[bench]")
def test_day_plan_benchmark_runs_both_solvers_on_a_generated_city_and_checks_them(tmp_path, monkeypatch):
    from tests.support import DAY, check_plan_path

    monkeypatch.setattr(bench, "CHECK_PLAN", str(check_plan_path()))
    rows = bench.run_city(("tiny-city", 2, 40, 4), [1.0], ["coldchain", "pyvrp"], 1, variants=["no-tob"], day=DAY)
    assert [(r["solver"], r["variant"]) for r in rows] == [("coldchain", "no-tob"), ("pyvrp", "no-tob")]
    for r in rows:
        assert r["errors"] == [], r["errors"]  # own recomputation and check_plan.py
        assert r["check_plan"].endswith("violations=0")
        assert r["served"] > 0 and r["cost"] > 0


def test_own_day_check_catches_a_full_van_a_late_stop_and_time_on_board():
    from routing.solver import Stop, solve
    from tests.support import H, problem, van

    pts = [(0, 0), (3000, 0), (3000, 3000)]
    stops = [Stop("a", 1, {"chilled": 30}, window=(8 * H, 12 * H), service=300),
             Stop("b", 2, {"chilled": 30}, window=(8 * H, 12 * H), service=300)]
    p = problem(pts, [van("V1", fixed_cost=100.0, cost_per_km=2.0)], stops)
    sol = solve(p, workers=1)
    errors, served, cost, km = bench.check_day(p, sol)
    assert errors == [] and served == 2
    assert cost == pytest.approx(100 + 2 * km)
    p.vehicles[0].capacity["chilled"] = 50
    p.stops[1].window = (8 * H, 8 * H)
    p.stops[1].max_on_board = 60.0
    errors = bench.check_day(p, sol)[0]
    assert any("chilled 60 l > 50 l" in e for e in errors)
    assert any(e.startswith("b: served at") for e in errors)
    assert any(e.startswith("b: ") and "min on board > 1" in e for e in errors)
