"""The trace, at-risk and hold routes over real HTTP (uvicorn), as quality staff and as the roles they are
not for; held stock on the dispatcher's plan and the van's watch; check on delivery on the driver's route."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from fulfillment.models import Order, OrderLine, Reservation
from tests.delivery.helpers import keep_keys_in
from tests.support import assert_problem
from tests.traceability.helpers import VAN, drive_day
from warehouses.models import StockLot


@pytest.fixture
def trace_api(api, session, live_app):  # noqa: ANN001, ANN201
    keep_keys_in(session, live_app)
    return api


def _lot_of(session, ref: str) -> str:  # noqa: ANN001
    return session.scalars(select(StockLot.lot).join(Reservation, Reservation.lot_id == StockLot.id)
                           .join(OrderLine, OrderLine.id == Reservation.line_id).join(Order)
                           .where(Order.ref == ref, StockLot.lot.like("L-E%"))).first()


def test_trace_routes_for_quality_staff(trace_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    api = trace_api
    d = drive_day(session, tmp_path)
    qa = token("quality")
    ref = d.refs[-1]
    got = api.get(f"/api/v1/trace/orders/{ref}", headers=qa)
    assert got.status_code == 200, got.text
    trace = got.json()
    assert trace["order_ref"] == ref and {"custody", "legs", "spoilage_risk", "breakage_risk"} <= set(trace)
    chilled = [leg for leg in trace["legs"] if leg["compartment"] == "chilled"]
    assert len(chilled) == 1 and chilled[0]["vehicle"] == VAN and "from" in chilled[0]
    assert {r["compartment"] for r in chilled[0]["readings"]} == {"chilled"}
    assert trace["spoilage_risk"]["level"] in ("at_risk", "reject")
    assert any("30 min above 8 °C" in r for r in trace["spoilage_risk"]["reasons"])
    assert {e["type"] for e in trace["custody"]} >= {"loaded", "delivered"}

    lot = _lot_of(session, ref)
    lot_got = api.get(f"/api/v1/trace/lots/{lot}", headers=qa)
    assert lot_got.status_code == 200, lot_got.text
    assert ref in {o["order_ref"] for o in lot_got.json()["orders"]}
    assert lot_got.json()["remainder"]["totals"]["delivered"] > 0

    risky = api.get("/api/v1/trace/at-risk", params={"date": d.day.isoformat()}, headers=qa)
    assert risky.status_code == 200, risky.text
    refs = {i["order_ref"] for i in risky.json()["items"]}
    assert ref in refs and d.damaged_ref in refs and d.refs[0] not in refs and risky.json()["next"] is None
    first = api.get("/api/v1/trace/at-risk", params={"date": d.day.isoformat(), "limit": 1}, headers=qa).json()
    assert len(first["items"]) == 1 and first["next"]
    rest = api.get(first["next"], headers=qa).json()
    assert rest["items"] and rest["items"][0]["order_ref"] != first["items"][0]["order_ref"]

    assert_problem(api.get("/api/v1/trace/orders/NO-SUCH", headers=qa), 404)
    assert_problem(api.get("/api/v1/trace/lots/NO-SUCH", headers=qa), 404)
    assert_problem(api.get("/api/v1/trace/at-risk", params={"date": "tomorrow"}, headers=qa), 422)
    assert api.get(f"/api/v1/trace/orders/{ref}", headers=token("admin")).status_code == 200
    for role in ("driver", "dispatcher"):
        who = token(role)
        for url in (f"/api/v1/trace/orders/{ref}", f"/api/v1/trace/lots/{lot}",
                    f"/api/v1/trace/at-risk?date={d.day.isoformat()}"):
            assert_problem(api.get(url, headers=who), 403)
        assert_problem(api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "x"}, headers=who), 403)
    assert_problem(api.get(f"/api/v1/trace/orders/{ref}"), 401)

    # the driver sees "check on delivery" on the risky stops of the route
    route = api.get("/api/v1/driver/route", params={"date": d.day.isoformat()}, headers=token("driver", "driver01"))
    assert route.status_code == 200, route.text
    checks = {s["order_ref"]: s["check"] for s in route.json()["stops"]}
    assert checks[ref]["level"] in ("at_risk", "reject") and checks[ref]["reasons"]
    assert checks[d.refs[0]] is None


def test_holds_over_http_flag_the_plan_and_the_watch(trace_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.delivery.helpers import build_day, routes_by_van

    api = trace_api
    day = build_day(session, tmp_path)
    van01 = [s.order.ref for s in routes_by_van(session, day)[VAN].stops]
    lot = _lot_of(session, van01[0])
    qa = token("quality")
    dispatcher = token("dispatcher")
    plan = api.get("/api/v1/plans", params={"date": day.isoformat()}, headers=dispatcher).json()
    assert plan["held"] == []
    assert api.get(f"/api/v1/telemetry/vehicles/{VAN}/watch", headers=dispatcher).json()["held_lots"] == []

    held = api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "蛋壳污染"}, headers=qa)
    assert held.status_code == 201, held.text
    assert (held.json()["lot"], held.json()["active"], held.json()["reason"]) == (lot, True, "蛋壳污染")
    assert_problem(api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "again"}, headers=qa), 409)
    assert_problem(api.post("/api/v1/trace/lots/NO-SUCH/hold", json={"reason": "x"}, headers=qa), 404)
    assert_problem(api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "  "}, headers=qa), 422)
    listed = api.get("/api/v1/holds", headers=dispatcher)
    assert listed.status_code == 200 and [h["lot"] for h in listed.json()["items"]] == [lot]

    plan = api.get("/api/v1/plans", params={"date": day.isoformat()}, headers=dispatcher).json()
    assert plan["held"] and {h["lot"] for h in plan["held"]} == {lot}
    stop_ids = {s["stop_id"] for r in plan["routes"] for s in r["stops"]}
    assert {h["stop_id"] for h in plan["held"]} <= stop_ids
    watch = api.get(f"/api/v1/telemetry/vehicles/{VAN}/watch", headers=dispatcher).json()
    assert watch["held_lots"] and {h["vehicle"] for h in watch["held_lots"]} == {VAN}
    assert {h["order_ref"] for h in watch["held_lots"]} <= set(van01)

    released = api.post(f"/api/v1/trace/lots/{lot}/release", json={"reason": "复检合格"}, headers=qa)
    assert released.status_code == 200, released.text
    assert released.json()["active"] is False and released.json()["release_reason"] == "复检合格"
    assert_problem(api.post(f"/api/v1/trace/lots/{lot}/release", json={"reason": "again"}, headers=qa), 409)
    assert api.get("/api/v1/holds", headers=qa).json()["items"] == []
    assert api.get("/api/v1/plans", params={"date": day.isoformat()}, headers=dispatcher).json()["held"] == []
    assert_problem(api.get("/api/v1/holds", headers=token("driver")), 403)
