"""Time on board at scale: the limit is bounded natively in the search (a dimension without waiting) and every
trip is checked exactly afterwards; short trips in slots of the shift are offered when one trip per van cannot
keep the perishables within their limits (routing.service.on_board_trips)."""

from __future__ import annotations

import math
import random

from routing import solver
from routing.service import on_board_trips, trips_needed
from routing.solver import Stop, solve
from tests.support import H, assert_schedule_feasible, problem, van

RELOAD = 20 * 60.0


def assert_on_board(p, sol) -> None:  # noqa: ANN001
    """Every stop with a limit is served within it, counted from its own trip's departure."""
    limits = {s.id: s.max_on_board for s in p.stops}
    for r in sol.routes:
        for v in r.visits:
            if limits[v.stop_id] is not None:
                assert v.service_start - r.start <= limits[v.stop_id] + 1e-6, (r.vehicle_id, r.trip, v.stop_id)


def assert_trips_apart(sol) -> None:  # noqa: ANN001
    last: dict[str, float] = {}
    for r in sorted(sol.routes, key=lambda r: (r.vehicle_id, r.trip)):
        if r.vehicle_id in last:
            assert r.start >= last[r.vehicle_id] + RELOAD - 1e-6
        last[r.vehicle_id] = r.end


def four_waves() -> tuple[list[tuple[float, float]], list[Stop]]:
    """Three perishable orders (1.5 h on board at most) in each of four windows three hours apart, 1-3 km out:
    one trip can serve one window's orders only."""
    points = [(0.0, 0.0)]
    stops = []
    for w, (a, b) in enumerate([(8, 9), (11, 12), (14, 15), (17, 18)]):
        for j in range(3):
            angle = 2 * math.pi * (3 * w + j) / 12
            points.append((1000.0 * (1 + j) * math.cos(angle), 1000.0 * (1 + j) * math.sin(angle)))
            stops.append(Stop(f"W{w}-{j}", len(points) - 1, {"chilled": 5.0}, window=(a * H, b * H), service=300,
                              max_on_board=1.5 * H))
    return points, stops


def test_perishables_across_the_day_get_short_trips_in_slots_and_all_are_served() -> None:
    points, stops = four_waves()
    vans = [van(f"V{i}") for i in range(1, 4)]
    assert trips_needed(vans, stops) == 1  # plenty of room: capacity alone would keep one trip per van
    n = on_board_trips(vans, stops, RELOAD)
    assert n == 3  # slots from 8:00, 11:40 and 15:00: leaving at its start, each slot reaches more waves
    one = solve(problem(points, vans, stops, limit=1, reload_time=RELOAD), workers=1)
    assert len(one.unserved) >= 3, "three vans with one trip each cannot keep four waves within 1.5 h"
    slotted = [van(v.id, trips=n, trip_slots=True) for v in vans]
    p = problem(points, slotted, stops, limit=1, reload_time=RELOAD)
    sol = solve(p, workers=1)
    assert sol.unserved == [], sol.unserved
    assert sol.trips > sol.vehicles_used  # some van went out again
    assert_schedule_feasible(p, sol)
    assert_on_board(p, sol)
    assert_trips_apart(sol)


def test_a_day_within_the_limits_keeps_one_trip_per_van() -> None:
    points, stops = four_waves()
    vans = [van(f"V{i}") for i in range(1, 4)]
    assert on_board_trips(vans, [s for s in stops if s.window[0] < 9.5 * H], RELOAD) == 1
    assert on_board_trips(vans, [Stop(s.id, s.node, s.demand, s.weight, s.window, s.service) for s in stops],
                          RELOAD) == 1  # no limits at all


def test_a_big_depot_with_many_time_on_board_limits_gets_a_first_plan_within_a_short_limit() -> None:
    # 260 orders, 120 with a limit, 3 vans: the exact constraints (per stop and van) took 1.6-2.2 s to OR-Tools'
    # first solution on a depot of this size; the native bound takes about 0.1 s
    rng = random.Random(7)
    points = [(0.0, 0.0)]
    stops = []
    for i in range(260):
        r, a = 4000.0 * math.sqrt(rng.random()), rng.random() * 2 * math.pi
        points.append((r * math.cos(a), r * math.sin(a)))
        start = rng.choice([8, 9, 10, 11, 12, 13, 14, 15, 16])
        stops.append(Stop(f"S{i}", i + 1, {"chilled": 3.0}, window=(start * H, (start + 2) * H), service=300,
                          max_on_board=rng.choice([2, 4, 6]) * H if i % 13 < 6 else None))
    assert sum(s.max_on_board is not None for s in stops) * 3 > solver.EXACT_ON_BOARD  # the native bound alone
    p = problem(points, [van(f"V{i}") for i in range(1, 4)], stops, limit=1.0, reload_time=RELOAD)
    sol = solve(p, workers=1)
    assert "after the time limit" not in sol.strategy, sol.strategy
    assert sol.seconds < 1.0 + 0.5
    assert len(sol.unserved) < len(stops) and len({u.stop_id for u in sol.unserved}) == len(sol.unserved)
    assert_schedule_feasible(p, sol)
    assert_on_board(p, sol)


def test_waiting_for_a_window_on_the_way_is_checked_exactly_and_the_order_reported(monkeypatch) -> None:  # noqa: ANN001
    # A must be served by 8:10, B (30 min on board at most) not before 9:00: the bound without waiting
    # lets one trip take both, the exact check from the latest departure (8:05 at the latest) does not
    monkeypatch.setattr(solver, "EXACT_ON_BOARD", 0)
    points = [(0.0, 0.0), (500.0, 0.0), (1000.0, 0.0)]
    stops = [Stop("A", 1, {"chilled": 5.0}, window=(8 * H, 8 * H + 600), service=300),
             Stop("B", 2, {"chilled": 5.0}, window=(9 * H, 10 * H), service=300, max_on_board=1800)]
    p = problem(points, [van("V1", shift=(8 * H, 12 * H))], stops, limit=0.5, reload_time=RELOAD)
    sol = solve(p, workers=1)
    assert [v.stop_id for r in sol.routes for v in r.visits] == ["A"]
    assert [u.stop_id for u in sol.unserved] == ["B"]
    assert "time on board" in sol.unserved[0].reason and "30 min" in sol.unserved[0].reason
    assert_schedule_feasible(p, sol)
    assert_on_board(p, sol)
