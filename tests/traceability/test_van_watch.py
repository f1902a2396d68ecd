"""What the telemetry rules are told of each van: its route under way and the products aboard, whose
limits tighten the compartment's (strawberries at 4 °C), checked through to the alert they raise."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day
from routing.models import Plan, Route
from routing.service import plan_depot
from telemetry.models import Alert, VehicleRuleState
from telemetry.service import Fleet, Message, default_engine, store_batch
from tests import scenario_files
from tests.support import DAY, after, same
from traceability.service import sync_vans, van_watch
from warehouses.models import Vehicle

STRAWBERRIES = (f"S1,{DAY},delivery,30.632,104.052,09:00,12:00,STRAW-1,2,,王五,13800000009,武侯区1号\n"
                f"S1,{DAY},delivery,30.632,104.052,09:00,12:00,EGG-30,1,,王五,13800000009,武侯区1号\n")
STOCK = f"HUB-01,EGG-30,L-E9,10,{after(16)}\n"


def planned(session, tmp_path: Path) -> dict[str, Route]:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path / "scen", append={"orders.csv": STRAWBERRIES,
                                                                          "stock.csv": STOCK}))
    allocate_day(session, DAY)
    for depot in ("FS-01", "HUB-01"):
        plan_depot(DAY, depot, time_limit=1, sessions=same(session))
    routes = session.scalars(select(Route).join(Plan).where(Plan.day == DAY, Plan.status == "current")).all()
    return {r.vehicle.code: r for r in routes if r.stops}


def test_cargo_is_the_tightest_range_of_the_products_aboard(session, tmp_path: Path) -> None:  # noqa: ANN001
    routes = planned(session, tmp_path)
    van = next(code for code, r in routes.items() if any(s.order.ref == "S1" for s in r.stops))
    route = routes[van]
    # independently: every product on the route, by class
    aboard: dict[str, list] = {}
    for stop in route.stops:
        for line in stop.order.lines:
            aboard.setdefault(line.product.temp_class, []).append(line.product)
    loaded = van_watch(session, DAY)  # a simulated day: every van with a route is loaded, none active
    assert set(loaded) == set(routes)
    assert loaded[van].active is False
    chilled = loaded[van].cargo["chilled"]
    assert chilled["max_c"] == min(p.max_c for p in aboard["chilled"]) == 4.0
    assert chilled["min_c"] == max(p.min_c for p in aboard["chilled"])
    # the SKUs named are those that set a bound: quality staff see why the limit is what it is
    assert chilled["skus"] == sorted({p.sku for p in aboard["chilled"]
                                      if p.max_c == chilled["max_c"] or p.min_c == chilled["min_c"]})
    assert "STRAW-1" in chilled["skus"]
    assert chilled["max_skus"] == sorted({p.sku for p in aboard["chilled"] if p.max_c == chilled["max_c"]})
    assert chilled["max_skus"] == ["STRAW-1"]  # eggs (max 8 °C) share the 0 °C minimum, not the 4 °C maximum

    # as of a time: only the routes under way, and then they are active
    during = van_watch(session, DAY, route.start_at + timedelta(minutes=1))
    assert during[van].active is True and during[van].cargo == loaded[van].cargo
    assert van not in van_watch(session, DAY, route.start_at - timedelta(hours=2))
    assert van not in van_watch(session, DAY, route.end_at + timedelta(hours=1))

    # the strawberries are delivered: the compartment goes back to what is left aboard
    for stop in route.stops:
        if stop.order.ref == "S1":
            stop.status = "delivered"
    session.flush()
    after = van_watch(session, DAY).get(van)
    left = [p for s in route.stops if s.status != "delivered" for line in s.order.lines
            for p in [line.product] if p.temp_class == "chilled"]
    if left:
        assert after.cargo["chilled"]["max_c"] == min(p.max_c for p in left)
        assert "STRAW-1" not in after.cargo["chilled"]["skus"]
    else:
        assert after is None or "chilled" not in (after.cargo or {})


def test_a_van_carrying_strawberries_alerts_at_their_limit_and_says_why(session, tmp_path: Path) -> None:  # noqa: ANN001
    routes = planned(session, tmp_path)
    van = next(code for code, r in routes.items() if any(s.order.ref == "S1" for s in r.stops))
    assert sync_vans(session, day=DAY) >= 1
    vehicles = {v.code: v for v in session.scalars(select(Vehicle))}
    state = session.get(VehicleRuleState, vehicles[van].id)
    assert state.cargo["chilled"]["max_c"] == 4.0 and state.active is False
    others = [code for code in vehicles if code != van]

    fleet = Fleet()
    fleet.load(session)
    now = routes[van].start_at + timedelta(hours=1)
    # 20 minutes at 5.5 °C: inside the chilled class's 8 °C, over the strawberries' 4 °C
    for code in [van, *others]:
        samples = [{"device": vehicles[code].device, "seq": i, "ts": (now - timedelta(minutes=25 - i)).isoformat(),
                    "temp_c": {"chilled": 5.5 if i < 20 else 2.0}} for i in range(25)]
        store_batch(session, [Message(f"coldchain/v1/vehicles/{code}/telemetry", json.dumps(samples).encode(), now)],
                    fleet, default_engine(), now=now)
    alerts = session.scalars(select(Alert)).all()
    assert [(a.vehicle_id, a.kind, a.compartment) for a in alerts] == [(vehicles[van].id, "temperature", "chilled")]
    assert alerts[0].details["threshold_c"] == 4.0 and alerts[0].details["cargo"] == ["STRAW-1"]
    assert 19 <= alerts[0].minutes_out <= 21

    # once the day's vans are told nothing is aboard, the class default is back
    assert sync_vans(session, now=routes[van].start_at - timedelta(hours=3)) >= 1
    session.refresh(state)
    assert state.cargo is None and state.active is False


def test_the_watch_route_shows_what_the_rules_use(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    routes = planned(session, tmp_path)
    van = next(code for code, r in routes.items() if any(s.order.ref == "S1" for s in r.stops))
    sync_vans(session, day=DAY)
    got = api.get(f"/api/v1/telemetry/vehicles/{van}/watch", headers=token("quality"))
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["active"] is False and body["cargo"]["chilled"]["max_c"] == 4.0
    assert body["limits_c"]["chilled"]["max"] == 4.0 and body["limits_c"]["chilled"]["max_set_by"] == ["STRAW-1"]
    idle = next(code for code in ("VAN-01", "VAN-02") if code != van)
    other = api.get(f"/api/v1/telemetry/vehicles/{idle}/watch", headers=token("dispatcher")).json()
    expected_chilled = other["cargo"].get("chilled", {}).get("max_c", 8.0)
    assert other["limits_c"]["chilled"]["max"] == min(8.0, expected_chilled)
    assert api.get("/api/v1/telemetry/vehicles/NOPE/watch", headers=token("quality")).status_code == 404
    assert api.get(f"/api/v1/telemetry/vehicles/{van}/watch", headers=token("driver")).status_code == 403
