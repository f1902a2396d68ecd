"""Custody from lot to door, and every source of history writing through the audit log.

Dates derive from the day the test runs (the shared scenario's dates are shifted to tomorrow).
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.audit import AuditLog
from core.timeutil import local_tomorrow
from fulfillment.service import allocate_day
from routing.models import Plan, Route
from routing.replan import cancel_order, replan
from routing.service import plan_depot
from telemetry.models import Alert
from telemetry.service import Fleet, Message, acknowledge_alert, default_engine, store_batch
from tests import scenario_files
from tests.routing.test_day_plan import same
from traceability import custody, flows
from traceability.service import sync_vans
from warehouses.models import StockLot, Vehicle
from warehouses.service import upsert_user

_DATE = re.compile(r"\b(\d{4}-\d{2}-\d{2})\b")


def write_scenario(folder: Path, day: date, append: dict[str, str] | None = None) -> Path:
    """The shared small scenario with every date moved so that its orders are for ``day``."""
    base = date.fromisoformat(scenario_files.FILES["orders.csv"].splitlines()[1].split(",")[1])
    shift = day - base

    def moved(body: str) -> str:
        return _DATE.sub(lambda m: (date.fromisoformat(m.group(1)) + shift).isoformat(), body)

    scenario_files.write(folder, overrides={k: moved(v) for k, v in scenario_files.FILES.items()},
                         append={k: moved(v) for k, v in (append or {}).items()})
    return folder


def records(session: Session, action: str | None = None, entity_id: str | None = None) -> list[AuditLog]:
    audit.flush(session)
    query = select(AuditLog).order_by(AuditLog.id)
    if action:
        query = query.where(AuditLog.action == action)
    if entity_id:
        query = query.where(AuditLog.entity_id == entity_id)
    return list(session.scalars(query))


def planned_route(session: Session, day: date, depot: str = "FS-01") -> Route:
    plan_depot(day, depot, time_limit=1, sessions=same(session))
    routes = session.scalars(select(Route).join(Plan).where(Plan.day == day, Plan.status == "current")).all()
    return next(r for r in routes if any(s.order.ref == "A1" for s in r.stops))


def test_an_order_from_lot_to_door(session: Session, tmp_path: Path) -> None:
    day = local_tomorrow()
    folder = write_scenario(tmp_path / "scen", day)
    report = flows.load_scenario(session, folder)
    assert report.ok, report.errors

    # received: every lot once, at its node, with its quantity; a reload receives nothing more
    lots = {lt.lot: lt for lt in session.scalars(select(StockLot))}
    received = {e["lot"]: e for e in custody.lot_custody(session, "L-E1") + custody.lot_custody(session, "L-D1")
                + custody.lot_custody(session, "L-S1") if e["type"] == "received"}
    assert {k: (v["node"], v["qty"]) for k, v in received.items()} == {
        "L-E1": ("FS-01", 50), "L-D1": ("FS-01", 80), "L-S1": ("HUB-01", 20)}
    flows.load_scenario(session, folder)
    assert len([e for e in custody.lot_custody(session, "L-E1") if e["type"] == "received"]) == 1
    # more eggs arrive (the file says 60 now): the 10 new ones are received
    (folder / "stock.csv").write_text((folder / "stock.csv").read_text().replace("L-E1,50", "L-E1,60"))
    flows.load_scenario(session, folder)
    assert [e["qty"] for e in custody.lot_custody(session, "L-E1") if e["type"] == "received"] == [50, 10]
    assert lots["L-E1"].qty == 60

    allocate_day(session, day, actor="tester")
    # picked as the pick lists are issued, line by line and lot by lot; issuing again picks nothing
    lists = flows.issue_pick_lists(session, day, actor="picker")
    assert {row["lot"] for entry in lists for rows in entry["classes"].values() for row in rows} == {
        "L-E1", "L-D1", "L-S1"}
    picks = [e for e in custody.order_custody(session, "A1") if e["type"] == "picked"]
    assert sorted((e["sku"], e["lot"], e["qty"], e["node"], e["actor"]) for e in picks) == [
        ("DUMP-1", "L-D1", 1, "FS-01", "picker"), ("EGG-30", "L-E1", 2, "FS-01", "picker")]
    assert flows.record_picks(session, day) == []

    route = planned_route(session, day)
    van = session.get(Vehicle, route.vehicle_id).code
    stop = next(s for s in route.stops if s.order.ref == "A1")
    start = route.start_at
    loaded = custody.record_loaded(session, route, start, "driver01")
    assert custody.record_loaded(session, route, start, "driver01") == []  # a retried route start
    failed = custody.record_failed(session, stop, start + timedelta(minutes=30), "driver01", "nobody home",
                                   position=(30.651, 104.071))
    assert custody.record_failed(session, stop, start + timedelta(minutes=31), "driver01", "nobody home") == []
    delivered = custody.record_delivered(session, stop, start + timedelta(hours=2), "driver01", recipient="张三")
    assert custody.record_delivered(session, stop, start + timedelta(hours=2), "driver01") == []
    assert (len(loaded), len(failed), len(delivered)) == (2, 2, 2)

    trace = custody.order_custody(session, "A1")
    by_line: dict[str, list[str]] = {}
    for e in trace:
        by_line.setdefault(e["sku"], []).append(e["type"])
    assert by_line == {"EGG-30": ["picked", "loaded", "failed", "delivered"],
                       "DUMP-1": ["picked", "loaded", "failed", "delivered"]}
    aboard = {(e["sku"], e["type"]): e for e in trace if e["type"] != "picked"}
    assert aboard[("EGG-30", "loaded")]["vehicle"] == van and aboard[("EGG-30", "loaded")]["compartment"] == "chilled"
    assert aboard[("DUMP-1", "loaded")]["compartment"] == "frozen"
    assert aboard[("EGG-30", "failed")]["position"] == [30.651, 104.071]
    assert aboard[("EGG-30", "failed")]["reason"] == "nobody home"
    assert aboard[("EGG-30", "delivered")]["position"] == [30.650, 104.070]  # the order's address
    assert aboard[("EGG-30", "delivered")]["data"] == {"recipient": "张三"}
    for e in trace:  # CONTRACTS.md section 3's custody shape
        assert {"type", "at", "vehicle", "compartment", "sku", "lot", "qty"} <= set(e)
        assert e["lot"] in ("L-E1", "L-D1") and e["qty"] == (2 if e["sku"] == "EGG-30" else 1)

    # every custody row is in the audit log, and the chain holds
    logged = {r.entity_id: r for r in records(session) if r.entity == "custody"}
    ids = [str(e.id) for e in loaded + failed + delivered]
    assert set(ids) <= set(logged)
    assert logged[str(failed[0].id)].action == "custody.failed" and logged[str(failed[0].id)].why == "nobody home"
    assert logged[str(loaded[0].id)].data["vehicle"] == van
    assert audit.verify(session).ok


def test_a_line_loaded_without_a_pick_list_is_picked_when_loaded(session: Session, tmp_path: Path) -> None:
    day = local_tomorrow()
    flows.load_scenario(session, write_scenario(tmp_path / "scen", day))
    allocate_day(session, day)
    route = planned_route(session, day)
    custody.record_loaded(session, route, route.start_at, "driver01")
    picks = [e for e in custody.order_custody(session, "A1") if e["type"] == "picked"]
    assert len(picks) == 2 and all(e["data"] == {"implied": True} and "no pick list" in e["reason"] for e in picks)
    stop = next(s for s in route.stops if s.order.ref == "A1")
    custody.record_failed(session, stop, route.start_at + timedelta(hours=1), "driver01", "shop closed")
    returned = custody.record_returned(session, stop, route.end_at, "driver01", reason="back after a failed stop")
    assert [(e.type, e.node_id is not None, e.vehicle_id) for e in returned] == [("returned", True, None)] * 2
    assert custody.record_returned(session, stop, route.end_at, "driver01") == []  # already off the van


def test_every_source_of_history_writes_through_the_audit_log(session: Session, tmp_path: Path) -> None:
    day = local_tomorrow()
    flows.load_scenario(session, write_scenario(tmp_path / "scen", day))
    (load,) = records(session, "scenario.loaded")
    assert load.data["counts"]["orders.csv"]["inserted"] == 3 and load.data["rejected"] == 0
    assert [r.entity_id for r in records(session, "order.received")] == ["A1", "A2"]

    allocate_day(session, day, actor="tester")
    (a1,) = records(session, "order.allocated", "A1")
    assert a1.actor == "tester" and a1.data["from"] == "received" and a1.data["to"] == "allocated"
    assert sorted((x["sku"], x["lot"], x["qty"]) for x in a1.data["reserved"]) == [
        ("DUMP-1", "L-D1", 1), ("EGG-30", "L-E1", 2)]

    route = planned_route(session, day)
    (stored,) = [r for r in records(session, "plan.stored") if r.data["depot"] == "FS-01"]
    assert any("A1" in r["stops"] for r in stored.data["routes"]) and stored.data["day"] == day.isoformat()
    assert records(session, "order.planned", "A1")

    # alerts raised by the ingestor's rules, then acknowledged by quality staff
    sync_vans(session, day=day)
    van = session.get(Vehicle, route.vehicle_id)
    fleet = Fleet()
    fleet.load(session)
    now = route.start_at + timedelta(hours=1)
    samples = [{"device": van.device, "seq": i, "ts": (now - timedelta(minutes=25 - i)).isoformat(),
                "temp_c": {"chilled": 9.5 if i < 20 else 2.0}} for i in range(25)]
    store_batch(session, [Message(f"coldchain/v1/vehicles/{van.code}/telemetry", json.dumps(samples).encode(), now)],
                fleet, default_engine(), now=now)
    alert = session.scalars(select(Alert).where(Alert.vehicle_id == van.id)).one()
    raised = records(session, "alert.raised", str(alert.id))
    assert len(raised) == 1 and raised[0].data["vehicle"] == van.code and raised[0].actor == "telemetry.rules"
    acknowledge_alert(session, alert.id, "quality01", "eggs checked, fine", now=now + timedelta(minutes=5))
    (ack,) = records(session, "alert.acknowledged", str(alert.id))
    assert ack.actor == "quality01" and ack.why == "eggs checked, fine"

    # a re-plan (an order cancelled) is one record for the plan, one for the order
    replan(day, "FS-01", cancel_order("A1", "customer called"), time_limit=1, actor="dispatcher",
           now=route.start_at - timedelta(hours=1), sessions=same(session))
    (re,) = records(session, "plan.replanned")
    assert re.actor == "dispatcher" and re.data["cancelled"] == ["A1"] and re.why
    assert records(session, "order.cancelled", "A1")[0].why == "customer called"

    # users: who and which role, never the password or its hash
    user, _ = upsert_user(session, "quality09", "quality", "s3cret-pass-word", actor="admin01")
    (made,) = records(session, "user.created", "quality09")
    text = audit.canonical({k: getattr(made, k) for k in audit.HASHED}).decode()
    assert made.actor == "admin01" and made.data["role"] == "quality"
    assert "s3cret-pass-word" not in text and user.password_hash not in text

    assert audit.verify(session).ok
