"""Search configurations: iterated local search keeps every day-plan constraint, and a
warm start (re-planning) still works when the portfolio asks for ILS."""

from __future__ import annotations

import json

import pytest

from benchmarks import routing as bench
from routing.solver import InitialRoute, SearchConfig, Stop, Vehicle, _Model, solve
from tests.support import DAY, assert_schedule_feasible, problem, same, sample_city, served, van

ILS = SearchConfig("PARALLEL_CHEAPEST_INSERTION", "ITERATED_LOCAL_SEARCH", ruin_size=5)


def test_ils_parameters_ask_for_sisr_ruins_and_annealing():
    pts = [(0, 0), (1000, 0)]
    p = problem(pts, [van("V1")], [Stop("s1", 1, {"chilled": 1})])
    m = _Model(p, [0])
    params = m.params(ILS, 1.0)
    assert params.use_iterated_local_search
    ruin = params.iterated_local_search_parameters.ruin_recreate_parameters.ruin_strategies
    assert [r.WhichOneof("strategy") for r in ruin] == ["sisr"]
    assert ruin[0].sisr.avg_num_removed_visits == 5
    acc = params.iterated_local_search_parameters.reference_solution_acceptance_strategy
    assert acc.simulated_annealing.automatic_temperatures


def test_ils_keeps_compartments_windows_weight_time_on_board_and_allowed_vans():
    pts = [(0, 0)] + [(1000 * (i % 4), 1000 * (i // 4 + 1)) for i in range(1, 13)]
    stops = [Stop(f"s{i}", i, {"chilled": 40, "frozen": 15 if i % 3 == 0 else 0}, weight=50,
                  window=(8 * 3600, 13 * 3600), service=180) for i in range(1, 13)]
    stops[0].max_on_board = 1200.0
    stops[1].allowed_vehicles = ["V2"]
    vans = [van("V1", frozen=100, max_weight=400), van("V2", frozen=0, max_weight=400)]
    p = problem(pts, vans, stops, limit=1.5)
    sol = solve(p, workers=1, portfolio=[ILS])
    assert len(served(sol)) == 12
    assert served(sol)["s2"] == "V2"
    assert all(served(sol)[f"s{i}"] == "V1" for i in (3, 6, 9, 12))  # frozen goods need V1
    assert all(r.weight <= 400 + 1e-6 for r in sol.routes)
    assert "ILS" in sol.strategy
    assert_schedule_feasible(p, sol)


def test_ils_with_locked_and_pinned_routes_starts_from_them_with_guided_local_search():
    pts = [(0, 0), (1000, 0), (2000, 0), (3000, 0), (0, 1000), (0, 2000)]
    stops = [Stop(f"s{i}", i, {"chilled": 1}) for i in range(1, 6)]
    initial = [InitialRoute("V1", ["s3", "s1"], locked=2), InitialRoute("V2", ["s5"], pinned=True)]
    p = problem(pts, [van("V1"), van("V2")], stops, initial_routes=initial)
    sol = solve(p, workers=1, portfolio=[ILS])
    routes = {r.vehicle_id: [v.stop_id for v in r.visits] for r in sol.routes}
    assert routes["V1"][:2] == ["s3", "s1"]
    assert "s5" in routes["V2"]
    assert set(served(sol)) == {f"s{i}" for i in range(1, 6)}
    assert "GUIDED_LOCAL_SEARCH" in sol.strategy


def test_default_portfolio_on_two_workers_with_two_depots():
    pts = [(0, 0), (5000, 0)] + [(1000 * (i % 5), 800 * (i // 5 + 1)) for i in range(12)]
    stops = [Stop(f"s{i}", i + 2, {"ambient": 50}, window=(8 * 3600, 12 * 3600), service=120)
             for i in range(12)]
    vans = [Vehicle("A", 0, 0, (8 * 3600, 18 * 3600), {"ambient": 300}),
            Vehicle("B", 1, 1, (8 * 3600, 18 * 3600), {"ambient": 300})]
    p = problem(pts, vans, stops, limit=3.0)
    sol = solve(p, workers=2)
    assert len(served(sol)) == 12
    assert_schedule_feasible(p, sol)


def test_benchmark_reuses_stored_peer_results(tmp_path):
    first = tmp_path / "first.json"
    assert bench.main(["--time-limit", "0.5", "--dir", str(bench_data()), "--instances", "tiny_vrptw",
                       "--solvers", "coldchain", "--cities", "--workers", "1", "--json", str(first)]) == 0
    ref = json.loads(first.read_text())
    for r in ref["results"]:
        r["solver"] = "pyvrp"  # pretend a peer found it: it must not be run again
    stored = tmp_path / "ref.json"
    stored.write_text(json.dumps(ref))
    out = tmp_path / "out.json"
    assert bench.main(["--time-limit", "0.5", "--dir", str(bench_data()), "--instances", "tiny_vrptw",
                       "--solvers", "coldchain", "pyvrp", "--cities", "--workers", "1", "--reference", str(stored),
                       "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert [r["solver"] for r in res] == ["coldchain", "pyvrp"]
    assert res[1]["routes"] == ref["results"][0]["routes"]
    with pytest.raises(SystemExit):
        bench.main(["--time-limit", "1", "--dir", str(bench_data()), "--instances", "tiny_vrptw",
                    "--solvers", "pyvrp", "--cities", "--reference", str(stored)])


def bench_data():
    from pathlib import Path

    return Path(__file__).parent / "data"


def test_one_worker_tries_two_first_solutions_and_keeps_the_one_that_serves_more(session, tmp_path) -> None:  # noqa: ANN001
    """A Celery child plans with one process. On the sample city's HUB-03 (24 orders, strawberries and
    milk with time-on-board limits) ILS from parallel cheapest insertion alone serves 17; the single-worker
    portfolio also tries local cheapest insertion and serves 22 (the other 2 cannot be served in the shift)."""
    from fulfillment.scenario import load_scenario
    from fulfillment.service import allocate_day
    from routing.service import plan_depot

    load_scenario(session, sample_city(tmp_path / "chengdu"))  # the shipped sample, for the day under test
    allocate_day(session, DAY)
    out = plan_depot(DAY, "HUB-03", time_limit=3, workers=1, sessions=same(session))
    assert out["stops"] + out["unserved"] == 24
    assert out["stops"] >= 22, out


def test_ils_recreate_order_cooling_and_route_selection_reach_or_tools_and_still_serve_every_stop():
    """The tuning knobs of SearchConfig (benchmarks, README "last percent") reach OR-Tools' parameters,
    and a search with them still gives a feasible plan serving every stop."""
    from ortools.constraint_solver import routing_heuristic_parameters_pb2 as hp
    from ortools.constraint_solver import routing_ils_pb2

    cfg = SearchConfig("PARALLEL_CHEAPEST_INSERTION", "ITERATED_LOCAL_SEARCH", ruin_size=3,
                       recreate_sorting=("SORTING_PROPERTY_RANDOM",), cooling="LINEAR", route_neighbors=0.5)
    pts = [(0, 0)] + [(900 * (i % 3), 700 * (i // 3 + 1)) for i in range(9)]
    stops = [Stop(f"s{i}", i + 1, {"chilled": 30}, window=(8 * 3600, 12 * 3600), service=60) for i in range(9)]
    p = problem(pts, [van("V1"), van("V2")], stops, limit=1.0)
    params = _Model(p, list(range(9))).params(cfg, 1.0)
    rr = params.iterated_local_search_parameters.ruin_recreate_parameters
    lci = rr.recreate_strategy.parameters.local_cheapest_insertion
    assert list(lci.insertion_sorting_properties) == [
        hp.LocalCheapestInsertionParameters.InsertionSortingProperty.Value("SORTING_PROPERTY_RANDOM")]
    assert rr.route_selection_neighbors_ratio == 0.5
    sa = params.iterated_local_search_parameters.reference_solution_acceptance_strategy.simulated_annealing
    assert sa.cooling_schedule_strategy == routing_ils_pb2.CoolingScheduleStrategy.Value.Value("LINEAR")
    plain = _Model(p, list(range(9))).params(ILS, 1.0)
    assert not plain.iterated_local_search_parameters.ruin_recreate_parameters.recreate_strategy.HasField("parameters")
    sol = solve(p, workers=1, portfolio=[cfg])
    assert len(served(sol)) == 9
    assert_schedule_feasible(p, sol)
