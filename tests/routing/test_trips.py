"""Second trips: a van that runs out of room (or of time on board) comes back to its depot, reloads and goes out
again within its shift; its fixed cost counts once. The pure solver first, then a day plan end to end (stored,
exported per CONTRACTS.md section 5, independently checked, drawn on the GeoJSON map with the returns to the depot)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day, day_allocations
from routing.exports import route_geojson
from routing.service import day_routes, plan_depot, reload_seconds, trips_needed
from routing.solver import Stop, solve
from tests.support import (
    DAY,
    REPLAN_MORE,
    REPLAN_STOCK,
    H,
    assert_schedule_feasible,
    check,
    problem,
    same,
    van,
    write,
)

RELOAD = 20 * 60.0
# eight stops of 30 l chilled on a line east of the depot, 1-8 km out: 240 l for a van of 100 l
POINTS = [(0.0, 0.0)] + [(1000.0 * i, 300.0 * (i % 3)) for i in range(1, 9)]


def line_stops(litres: float = 30.0, **kw) -> list[Stop]:  # noqa: ANN003
    return [Stop(f"S{i}", i, {"chilled": litres}, service=300, **kw) for i in range(1, 9)]


def by_van(sol) -> dict[str, list]:  # noqa: ANN001
    out: dict[str, list] = defaultdict(list)
    for r in sol.routes:
        out[r.vehicle_id].append(r)
    return out


def assert_trips_apart(sol, reload: float = RELOAD) -> None:  # noqa: ANN001
    for trips in by_van(sol).values():
        assert [r.trip for r in trips] == list(range(1, len(trips) + 1))
        for a, b in zip(trips, trips[1:], strict=False):
            assert b.start >= a.end + reload - 1e-6, f"trip {b.trip} leaves {b.start} before {a.end} + reload"


def test_a_van_too_small_for_the_day_goes_out_again_and_serves_everything() -> None:
    one = problem(POINTS, [van("V1", chilled=100.0, fixed_cost=100, cost_per_km=2.0)], line_stops(), limit=1.5,
                  reload_time=RELOAD)
    alone = solve(one, workers=1)
    assert len(alone.unserved) == 5 and {u.reason for u in alone.unserved} == {"fleet capacity exhausted"}

    p = problem(POINTS, [van("V1", chilled=100.0, fixed_cost=100, cost_per_km=2.0, trips=3)], line_stops(),
                limit=1.5, reload_time=RELOAD)
    sol = solve(p, workers=1)
    assert sol.unserved == []
    assert sol.vehicles_used == 1 and sol.trips == 3
    assert_trips_apart(sol)
    assert_schedule_feasible(p, sol)  # per trip: from its own departure, capacity per trip, shift
    for r in sol.routes:
        assert r.load["chilled"] <= 100.0 + 1e-9


def test_a_van_with_two_trips_pays_its_fixed_cost_once() -> None:
    # 160 l for vans of 100 l: two loads; one van twice is cheaper than two vans (same kilometres, one fixed cost)
    stops = line_stops(20.0)
    vans = [van("V1", chilled=100.0, fixed_cost=500, cost_per_km=1.0, trips=2),
            van("V2", chilled=100.0, fixed_cost=500, cost_per_km=1.0, trips=2)]
    p = problem(POINTS, vans, stops, limit=2, reload_time=RELOAD)
    sol = solve(p, workers=1)
    assert sol.unserved == []
    assert sol.vehicles_used == 1 and sol.trips == 2, [(r.vehicle_id, r.trip) for r in sol.routes]
    km_cost = sum(r.distance for r in sol.routes) / 1000 * 1.0
    assert sol.cost == pytest.approx(km_cost + 500)  # fixed cost once, on trip 1
    assert [r.cost for r in sol.routes] == pytest.approx([sol.routes[0].distance / 1000 + 500,
                                                         sol.routes[1].distance / 1000])
    # the same plan with one trip per van needs both vans: the objective is higher by one fixed cost
    single = solve(problem(POINTS, [van(v.id, chilled=100.0, fixed_cost=500, cost_per_km=1.0) for v in vans],
                           stops, limit=2, reload_time=RELOAD), workers=1)
    assert single.unserved == [] and single.vehicles_used == 2
    assert single.cost - sol.cost > 400


def test_time_on_board_counts_from_each_trips_own_departure() -> None:
    # plenty of room, but 25 minutes on board at most: 1 km = 100 s, so one trip cannot reach 8 stops in time
    stops = line_stops(5.0, max_on_board=25 * 60)
    one = solve(problem(POINTS, [van("V1")], stops, limit=1.5, reload_time=RELOAD), workers=1)
    assert one.unserved, "one load must not serve every stop within the limit"
    p = problem(POINTS, [van("V1", trips=3)], stops, limit=1.5, reload_time=RELOAD)
    sol = solve(p, workers=1)
    assert len(sol.unserved) < len(one.unserved)
    assert sol.trips >= 2
    assert_trips_apart(sol)
    for r in sol.routes:
        for v in r.visits:
            assert v.service_start - r.start <= 25 * 60 + 1e-6


def test_unserved_orders_say_when_no_further_trip_fits_the_shift() -> None:
    # a shift of one hour: a second load would have to leave 20 minutes after the first is back
    p = problem(POINTS, [van("V1", shift=(8 * H, 9 * H), chilled=100.0, trips=3)], line_stops(), limit=1,
                reload_time=RELOAD)
    sol = solve(p, workers=1)
    assert sol.unserved
    assert_trips_apart(sol)
    for u in sol.unserved:
        assert "another trip" in u.reason and "shift" in u.reason and "20 min" in u.reason, u.reason
    full = solve(problem(POINTS, [van("V1", chilled=100.0, trips=2)], line_stops(), limit=1, reload_time=RELOAD),
                 workers=1)
    assert {u.reason for u in full.unserved} == {
        "fleet capacity exhausted (every van full on each of its trips, at most 2 a day)"}


def test_trips_are_modelled_only_when_the_day_needs_them() -> None:
    vans = [van("V1", chilled=100.0)]
    assert trips_needed(vans, line_stops(10.0)) == 1  # 80 l for 100 l
    assert trips_needed(vans, line_stops(30.0)) == 3  # 240 l
    assert trips_needed(vans, line_stops(5.0, max_on_board=3600)) == 3
    assert trips_needed(vans * 3, line_stops(5.0, max_on_board=3600)) == 1  # three vans spread the time on board


# ------------------------------------------------------------------------------------------ a day plan

# FS-01's one van carries 50 l chilled, so two of the six 24 l egg orders a load: three trips serve them all
SMALL_VAN = (
    "code,depot,frozen_l,chilled_l,ambient_l,max_kg,shift_start,shift_end,speed_kmh,cost_per_km,fixed_cost,device\n"
    "VAN-01,FS-01,120,50,600,800,07:30,17:30,28,2.5,150,TL-0001\n"
    "VAN-02,HUB-01,0,300,300,500,08:00,18:00,25,2.0,100,TL-0002\n")
NO_A1 = "order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node,customer,phone,address\n"


@pytest.fixture
def busy(session, tmp_path: Path):  # noqa: ANN001, ANN201
    folder = write(tmp_path / "scen", overrides={"vehicles.csv": SMALL_VAN, "orders.csv": NO_A1},
                   append={"orders.csv": REPLAN_MORE, "stock.csv": REPLAN_STOCK})
    load_scenario(session, folder)
    allocate_day(session, DAY)
    summary = plan_depot(DAY, "FS-01", time_limit=3, sessions=same(session))
    return session, folder, summary


def test_a_busy_depot_is_served_with_second_trips_checked_independently(busy, tmp_path: Path) -> None:  # noqa: ANN001
    session, folder, summary = busy
    assert summary["unserved"] == 0 and summary["stops"] == 6
    assert summary["vans"] == 1 and summary["trips"] == summary["routes"] == 3
    assert summary["cost"] == pytest.approx(summary["distance_km"] * 2.5 + 150, abs=0.05)  # fixed cost once
    routes = day_routes(session, DAY)
    trips = [r for r in routes["routes"] if r["vehicle"] == "VAN-01"]
    assert [r["trip"] for r in trips] == [1, 2, 3]
    assert all(len(r["stops"]) == 2 for r in trips)
    minutes = [(int(r["start"][:2]) * 60 + int(r["start"][3:]), int(r["end"][:2]) * 60 + int(r["end"][3:]))
               for r in trips]
    for (_s1, e1), (s2, _e2) in zip(minutes, minutes[1:], strict=False):
        assert s2 >= e1 + reload_seconds() / 60 - 1  # HH:MM rounds to the minute
    result = check(folder, {"date": DAY.isoformat(), **day_allocations(session, DAY), **routes}, tmp_path)
    assert result.returncode == 0, result.stdout
    assert "violations=0" in result.stdout

    # the map goes back to the depot between trips; the stops are numbered through the day
    gj = route_geojson(session, DAY, "VAN-01")
    home = gj["features"][0]["geometry"]["coordinates"]
    line = gj["features"][-1]["geometry"]["coordinates"]
    assert line.count(home) == 4  # out, back and out again twice, back
    stops = [f["properties"] for f in gj["features"] if f["properties"]["kind"] == "stop"]
    assert [s["seq"] for s in stops] == list(range(1, 7))
    assert [s["trip"] for s in stops] == [1, 1, 2, 2, 3, 3]
    assert [s["reload_before"] for s in stops] == [False, False, True, False, True, False]
    assert gj["properties"]["trips"] == 3


def test_more_orders_than_the_trips_carry_are_unserved_with_a_reason_naming_trips(session, tmp_path: Path) -> None:  # noqa: ANN001
    seven = REPLAN_MORE + REPLAN_MORE.replace("B", "C")  # twelve orders of 24 l: three trips carry six
    folder = write(tmp_path / "scen", overrides={"vehicles.csv": SMALL_VAN, "orders.csv": NO_A1},
                   append={"orders.csv": seven, "stock.csv": REPLAN_STOCK.replace("100", "200")})
    load_scenario(session, folder)
    allocate_day(session, DAY)
    summary = plan_depot(DAY, "FS-01", time_limit=2, sessions=same(session))
    assert summary["stops"] == 6 and summary["unserved"] == 6
    reasons = {u["reason"] for u in day_routes(session, DAY)["unserved"]}
    assert reasons == {"fleet capacity exhausted (every van full on each of its trips, at most 3 a day)"}
