"""The pure routing engine on small hand-made problems.

Geometry: points on a plane in metres, vans drive 10 m/s, so 1 km = 100 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from routing.solver import InitialRoute, Problem, Solution, Stop, Vehicle, hhmm, solve
from tests.support import H, assert_schedule_feasible, problem, served, van


def reasons(sol: Solution) -> dict[str, str]:
    return {u.stop_id: u.reason for u in sol.unserved}


def test_hhmm_formats_seconds_since_midnight():
    assert hhmm(0) == "00:00"
    assert hhmm(8 * H + 14 * 60) == "08:14"
    assert hhmm(23 * H + 59 * 60 + 20) == "23:59"


def test_time_windows_are_kept_and_waiting_is_allowed():
    pts = [(0, 0), (3000, 0), (3000, 3000), (0, 3000)]
    stops = [Stop("a", 1, {"chilled": 10}, window=(9 * H, 9.5 * H), service=300),
             Stop("b", 2, {"chilled": 10}, window=(8 * H, 8.5 * H), service=300),
             Stop("c", 3, {"chilled": 10}, window=(10 * H, 10.25 * H), service=300)]
    p = problem(pts, [van("V1")], stops)
    sol = solve(p, workers=1)
    assert set(served(sol)) == {"a", "b", "c"}
    assert sol.unserved == []
    order = [v.stop_id for v in sol.routes[0].visits]
    assert order == ["b", "a", "c"]
    assert_schedule_feasible(p, sol)
    # the van does not leave earlier than it needs to: b opens at 08:00, 500 s away
    assert sol.routes[0].start >= 8 * H - 1


def test_van_leaves_as_late_as_the_first_window_allows():
    pts = [(0, 0), (6000, 0)]  # 10 minutes away
    stops = [Stop("a", 1, {"chilled": 1}, window=(10 * H, 11 * H), service=300)]
    sol = solve(problem(pts, [van("V1", shift=(8 * H, 18 * H))], stops), workers=1)
    r = sol.routes[0]
    assert hhmm(r.start) == "09:50"  # not 08:00 with 1 h 50 min of waiting
    assert r.visits[0].arrival == pytest.approx(10 * H, abs=1)
    assert hhmm(r.end) == "10:15"


def test_compartments_send_frozen_goods_to_the_van_with_a_freezer():
    pts = [(0, 0), (1000, 0), (2000, 0), (0, 1000), (0, 2000)]
    vans = [van("ICE", frozen=100, chilled=0, ambient=0), van("FRIDGE", frozen=0, chilled=400, ambient=0)]
    stops = [Stop("f1", 1, {"frozen": 60}), Stop("f2", 2, {"frozen": 30}),
             Stop("c1", 3, {"chilled": 300}), Stop("c2", 4, {"chilled": 90})]
    p = problem(pts, vans, stops)
    sol = solve(p, workers=1)
    on = served(sol)
    assert on == {"f1": "ICE", "f2": "ICE", "c1": "FRIDGE", "c2": "FRIDGE"}
    loads = {r.vehicle_id: r.load for r in sol.routes}
    assert loads["ICE"]["frozen"] == 90
    assert_schedule_feasible(p, sol)


def test_impossible_stops_get_their_reason_and_the_rest_is_served():
    pts = [(0, 0), (1000, 0), (2000, 0), (0, 8400), (0, 1000), (3000, 0)]
    stops = [
        Stop("big", 1, {"chilled": 520}),
        Stop("early", 3, {"chilled": 5}, window=(7 * H, 7.5 * H)),  # 840 s away from an 08:00 start
        Stop("ok1", 2, {"chilled": 100}),
        Stop("ok2", 4, {"frozen": 20}),
        Stop("ghost", 5, {"ambient": 1}, allowed_vehicles=["NOPE"]),
    ]
    p = problem(pts, [van("V1"), van("V2")], stops)
    sol = solve(p, workers=1)
    why = reasons(sol)
    assert why["big"] == "demand exceeds every van's compartment (chilled 520 l > 400 l)"
    assert why["early"] == "time window 07:00-07:30 ends before the earliest arrival 08:14"
    assert why["ghost"] == "no van at the depot"
    assert set(served(sol)) == {"ok1", "ok2"}
    assert_schedule_feasible(p, sol)


def test_no_vehicles_at_all_reports_every_stop():
    pts = [(0, 0), (1000, 0)]
    p = problem(pts, [], [Stop("a", 1, {"chilled": 1})])
    sol = solve(p, workers=1)
    assert sol.routes == []
    assert reasons(sol) == {"a": "no van at the depot"}


def test_dropped_for_capacity_says_fleet_capacity_exhausted():
    pts = [(0, 0), (1000, 0), (0, 1000), (1000, 1000)]
    stops = [Stop(f"s{i}", i, {"chilled": 150}) for i in (1, 2, 3)]
    p = problem(pts, [van("V1", chilled=400)], stops)
    sol = solve(p, workers=1)
    assert len(served(sol)) == 2
    assert list(reasons(sol).values()) == ["fleet capacity exhausted"]


def test_dropped_for_time_says_shift_time_exhausted():
    # three stops each 20 min away, 40 min of service each; a 2 h shift fits only two
    pts = [(0, 0), (12000, 0), (0, 12000), (-12000, 0)]
    stops = [Stop(f"s{i}", i, {"chilled": 10}, service=40 * 60) for i in (1, 2, 3)]
    p = problem(pts, [van("V1", shift=(8 * H, 10.5 * H))], stops)
    sol = solve(p, workers=1)
    assert len(served(sol)) == 2
    assert list(reasons(sol).values()) == ["shift time exhausted"]
    assert_schedule_feasible(p, sol)


def test_shift_end_is_respected_including_the_way_back():
    pts = [(0, 0), (9000, 0)]  # 15 min each way
    stops = [Stop("late", 1, {"chilled": 1}, window=(9.9 * H, 12 * H), service=600)]
    p = problem(pts, [van("V1", shift=(8 * H, 10 * H))], stops)
    sol = solve(p, workers=1)
    # service could start at 09:54 at the earliest, the van cannot be back by 10:00
    assert served(sol) == {}
    assert "shift time exhausted" in reasons(sol)["late"]


def test_max_time_on_board_is_enforced_for_the_van_that_serves_it():
    # P 10 km west, Q 10 km east; Q must be served in the first 25 minutes of the day,
    # P may stay on board at most 20 minutes. One van could do Q then P (cheapest with a
    # fixed cost per van), but P would then ride ~50 minutes.
    pts = [(0, 0), (-10000, 0), (10000, 0)]
    q = Stop("Q", 2, {"chilled": 5}, window=(8 * H, 8 * H + 25 * 60))
    p_free = Stop("P", 1, {"chilled": 5}, window=(8 * H, 12 * H))
    vans = [van("V1", fixed_cost=50.0), van("V2", fixed_cost=50.0)]
    base = solve(problem(pts, vans, [q, p_free]), workers=1)
    assert len(base.routes) == 1  # without the limit one van does both

    p_cold = Stop("P", 1, {"chilled": 5}, window=(8 * H, 12 * H), max_on_board=20 * 60)
    prob = problem(pts, vans, [q, p_cold])
    sol = solve(prob, workers=1)
    assert set(served(sol)) == {"P", "Q"}
    assert len(sol.routes) == 2
    assert_schedule_feasible(prob, sol)
    route = next(r for r in sol.routes if any(v.stop_id == "P" for v in r.visits))
    visit = next(v for v in route.visits if v.stop_id == "P")
    assert visit.service_start - route.start <= 20 * 60 + 1e-6


def test_max_time_on_board_impossible_even_direct():
    pts = [(0, 0), (30000, 0)]  # 50 min away
    stops = [Stop("fish", 1, {"frozen": 5}, max_on_board=30 * 60)]
    sol = solve(problem(pts, [van("V1")], stops), workers=1)
    assert reasons(sol)["fish"] == "time on board would exceed the product's limit (50 min > 30 min)"


def test_travel_times_are_rounded_up_so_schedules_hold_in_exact_arithmetic():
    # A then B needs 50.4 + 50.4 = 100.8 s > B's deadline 100.7 s: rounding to the
    # nearest second (50 + 50 = 100) would accept it. B alone (100.5 s) is fine.
    tt = np.array([[0.0, 50.4, 100.5], [50.4, 0.0, 50.4], [100.5, 50.4, 0.0]])
    stops = [Stop("A", 1, {"chilled": 1}, window=(0, 60)), Stop("B", 2, {"chilled": 1}, window=(0, 100.7))]
    vans = [Vehicle("V1", 0, 0, shift=(0, 1000), capacity={"chilled": 10})]
    p = Problem(vans, stops, tt, tt * 10, time_limit=0.5, time_scale=10)
    sol = solve(p, workers=1)
    assert len(served(sol)) == 1
    assert_schedule_feasible(p, sol)
    # two vans: both served, each on its own
    p2 = Problem(vans + [Vehicle("V2", 0, 0, shift=(0, 1000), capacity={"chilled": 10})], stops, tt, tt * 10,
                 time_limit=0.5, time_scale=10)
    sol2 = solve(p2, workers=1)
    assert set(served(sol2)) == {"A", "B"}
    assert len(sol2.routes) == 2
    assert_schedule_feasible(p2, sol2)


def test_weight_limit():
    pts = [(0, 0), (1000, 0), (2000, 0)]
    stops = [Stop("a", 1, {"ambient": 10}, weight=600), Stop("b", 2, {"ambient": 10}, weight=600)]
    p = problem(pts, [van("V1", max_weight=1000), van("V2", max_weight=1000)], stops)
    sol = solve(p, workers=1)
    assert len(sol.routes) == 2
    heavy = problem(pts, [van("V1", max_weight=500)], stops[:1])
    assert reasons(solve(heavy, workers=1))["a"] == "weight exceeds every van's limit (600 kg > 500 kg)"


def test_allowed_vehicles_and_costs_per_van():
    pts = [(0, 0), (1000, 0), (0, 1000)]
    stops = [Stop("a", 1, {"chilled": 1}, allowed_vehicles=["V2"]), Stop("b", 2, {"chilled": 1})]
    vans = [van("V1", cost_per_km=1.0), van("V2", cost_per_km=5.0)]
    sol = solve(problem(pts, vans, stops), workers=1)
    on = served(sol)
    assert on["a"] == "V2"
    assert on["b"] == "V1"  # cheaper per km, so b goes on its own route
    r2 = next(r for r in sol.routes if r.vehicle_id == "V2")
    assert r2.distance == pytest.approx(2000.0)
    assert r2.cost == pytest.approx(10.0)


def test_locked_prefix_stays_first_in_order_and_pinned_stops_stay_on_their_van():
    pts = [(0, 0), (1000, 0), (2000, 0), (3000, 0), (0, 1000), (0, 2000)]
    stops = [Stop(f"s{i}", i, {"chilled": 1}) for i in range(1, 6)]
    vans = [van("V1"), van("V2")]
    # an odd order that the optimiser would never choose: s3 then s1 first
    initial = [InitialRoute("V1", ["s3", "s1"], locked=2), InitialRoute("V2", ["s5"], pinned=True)]
    p = problem(pts, vans, stops, initial_routes=initial)
    sol = solve(p, workers=1)
    routes = {r.vehicle_id: [v.stop_id for v in r.visits] for r in sol.routes}
    assert routes["V1"][:2] == ["s3", "s1"]
    assert "s5" in routes["V2"]
    assert set(served(sol)) == {f"s{i}" for i in range(1, 6)}


def test_warm_start_from_initial_routes_keeps_everything_served():
    pts = [(0, 0), (1000, 0), (2000, 0), (0, 1000)]
    stops = [Stop(f"s{i}", i, {"chilled": 1}) for i in (1, 2, 3)]
    p = problem(pts, [van("V1")], stops, initial_routes=[InitialRoute("V1", ["s2", "s3", "s1"])])
    sol = solve(p, workers=1)
    assert len(served(sol)) == 3
    # the search improves on the warm start: 0-1-2-3-0 style tour, no zig-zag
    assert sol.distance <= 1000 + 1000 + float(np.hypot(2000, 1000)) + 1000 + 1e-6


def test_two_workers_give_a_plan_too():
    pts = [(0, 0)] + [(1000 * (i % 5), 1000 * (i // 5)) for i in range(1, 16)]
    stops = [Stop(f"s{i}", i, {"chilled": 30}, window=(8 * H, 12 * H), service=120) for i in range(1, 16)]
    p = problem(pts, [van("V1"), van("V2")], stops, limit=1.5)
    sol = solve(p, workers=2)
    assert len(served(sol)) == 15
    assert_schedule_feasible(p, sol)
    assert sol.seconds < 5
