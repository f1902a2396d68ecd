"""Benchmark formats: Solomon and VRPLIB parsing, solving, section-6 output, checking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from routing.vrplib import (
    check_solution,
    read_instance,
    read_solomon,
    read_vrplib,
    route_distance,
    solve_file,
)

DATA = Path(__file__).parent / "data"
SOLOMON = Path(os.environ.get("COLDCHAIN_SOLOMON_DIR", "/work/shared/benchmarks/solomon"))
C101 = SOLOMON / "C101.txt"
needs_solomon = pytest.mark.skipif(not C101.exists(), reason="Solomon instances not available")


@needs_solomon
def test_read_solomon_c101():
    inst = read_solomon(str(C101))
    assert inst.name == "C101"
    assert len(inst.ids) == 101 and inst.ids[0] == 0 and inst.ids[-1] == 100
    assert inst.num_vehicles == 25 and inst.capacity == 200
    # customer 1: 45 68 10 912 967 90
    assert list(inst.coords[1]) == [45, 68]
    assert (inst.demand[1], inst.ready[1], inst.due[1], inst.service[1]) == (10, 912, 967, 90)
    assert inst.due[0] == 1236
    assert inst.distance[0, 1] == pytest.approx((5**2 + 18**2) ** 0.5)  # unrounded Euclidean


@needs_solomon
def test_solve_c101_matches_best_known_and_answers_section_6():
    ticks: list[float] = []
    res = solve_file(str(C101), 3.0, workers=2, progress=ticks.append)
    assert list(res) == ["instance", "vehicles", "distance", "seconds", "routes"]
    assert res["instance"] == "C101"
    assert check_solution(str(C101), res["routes"]) == []
    assert sorted(c for r in res["routes"] for c in r) == list(range(1, 101))
    assert all(isinstance(c, int) for r in res["routes"] for c in r)
    assert res["vehicles"] == len(res["routes"]) == 10
    assert res["distance"] <= 828.94 * 1.01
    assert res["distance"] == round(route_distance(read_instance(str(C101)), res["routes"]), 2)
    assert res["seconds"] <= 4.5
    assert ticks and ticks[-1] == 1.0


@needs_solomon
def test_checker_catches_what_a_bad_plan_does():
    inst = read_solomon(str(C101))
    # one client per route: fine for windows, but 100 routes > 25 vehicles
    assert any("vehicles" in e for e in check_solution(inst, [[c] for c in range(1, 101)]))
    good = solve_file(str(C101), 1.5, workers=1)["routes"]
    assert check_solution(inst, good) == []
    missing = [r[:] for r in good]
    dropped = missing[0].pop()
    assert any("not visited" in e and str(dropped) in e for e in check_solution(inst, missing))
    twice = [r[:] for r in good]
    twice[1].append(twice[0][0])
    assert any("visited 2 times" in e for e in check_solution(inst, twice))
    reversed_route = [list(reversed(good[0]))] + good[1:]
    assert any("after its due date" in e for e in check_solution(inst, reversed_route))
    merged = [good[0] + good[1] + good[2]] + good[3:]
    errors = check_solution(inst, merged)
    assert any("exceeds capacity" in e for e in errors)


def test_vrplib_cvrp_euc_2d_uses_tsplib_rounding_and_file_numbers():
    inst = read_vrplib(str(DATA / "tiny_cvrp.vrp"))
    assert inst.name == "tiny-cvrp" and inst.ids == [1, 2, 3, 4, 5, 6]
    assert inst.capacity == 10 and inst.num_vehicles is None
    assert inst.distance[1, 5] == 4  # sqrt(18) = 4.24 -> 4
    res = solve_file(str(DATA / "tiny_cvrp.vrp"), 1.0, workers=1)
    assert check_solution(inst, res["routes"]) == []
    assert sorted(c for r in res["routes"] for c in r) == [2, 3, 4, 5, 6]
    assert res["distance"] == 53  # {3,6} {2} {4,5}: 23 + 10 + 20
    assert res["vehicles"] == 3


def test_vrplib_vrptw_explicit_crlf():
    inst = read_instance(str(DATA / "tiny_vrptw.vrp"))
    assert inst.kind == "vrplib" and inst.num_vehicles == 2
    assert inst.distance[3, 2] == inst.distance[2, 3] == 12
    assert list(inst.ready) == [0, 0, 0, 60] and list(inst.due) == [200, 50, 100, 150]
    res = solve_file(str(DATA / "tiny_vrptw.vrp"), 1.0, workers=1)
    assert check_solution(inst, res["routes"]) == []
    assert res["distance"] == 82
    assert sorted(map(sorted, res["routes"])) == [[2], [3, 4]]


@needs_solomon
def test_in_process_portfolio_on_one_core():
    ticks: list[float] = []
    res = solve_file(str(C101), 3.0, workers=1, progress=ticks.append)
    assert check_solution(str(C101), res["routes"]) == []
    assert res["distance"] <= 828.94 * 1.03
    assert res["seconds"] <= 3.6
    assert len(ticks) >= 3 and ticks == sorted(ticks) and ticks[-1] == 1.0
