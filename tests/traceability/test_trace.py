"""Order and lot traces, risk from stored readings and driver damage, the at-risk list and quality holds,
on a day driven through the driver's service (tests/traceability/helpers.py) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from core.audit import AuditLog
from delivery.service import driver_ref, route_of
from fulfillment.models import Order, OrderLine, Reservation
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day, day_allocations
from tests.delivery.helpers import build_day, scenario
from tests.support import DAY
from tests.traceability.helpers import VAN, WARM_C, drive_day
from traceability.service import held_on_routes, hold_lot, release_lot
from traceability.trace import assess_orders, at_risk, lot_trace, order_trace
from warehouses.models import StockLot


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _chilled(trace: dict) -> dict:
    legs = [leg for leg in trace["legs"] if leg["compartment"] == "chilled"]
    assert len(legs) == 1, trace["legs"]
    return legs[0]


def test_the_warm_interval_shows_in_the_trace_with_its_readings_and_a_spoilage_risk(session, tmp_path: Path) -> None:
    d = drive_day(session, tmp_path)
    ref = d.refs[-1]
    trace = order_trace(session, ref, now=d.evening)
    assert trace["order_ref"] == ref
    kinds = [e["type"] for e in trace["custody"]]
    assert "loaded" in kinds and kinds[-1] == "delivered"
    leg = _chilled(trace)
    start, end = _at(leg["from"]), _at(leg["to"])
    assert (leg["vehicle"], leg["device"], leg["open"], leg["ended_by"]) == (VAN, "TL-0001", False, "delivered")
    assert (start, end) == (d.leave, d.delivered[ref])
    readings = leg["readings"]
    # only that compartment, only inside the leg: one a minute from loading to the door
    assert {(r["kind"], r["compartment"]) for r in readings} == {("temperature", "chilled")}
    assert all(start <= _at(r["ts"]) < end for r in readings)
    assert len(readings) == (end - start).total_seconds() / 60
    warm = [r for r in readings if r["value"] == WARM_C]
    assert len(warm) == 30 and all(d.warm_from <= _at(r["ts"]) < d.warm_to for r in warm)
    assert leg["summary"]["max_c"] == WARM_C and leg["summary"]["min_c"] == 4.0
    assert len(leg["door_openings"]) == len(d.refs) and {o["minutes"] for o in leg["door_openings"]} == {2.0}
    assert leg["max_shock_g"] == 0.3 and leg["shocks"] == []  # nothing near a hard jolt
    risk = trace["spoilage_risk"]
    assert risk["level"] in ("at_risk", "reject"), risk
    assert any("30 min above 8 °C" in r and f"{WARM_C:.1f} °C" in r and VAN in r for r in risk["reasons"]), risk
    # the frozen line (if any) rode at -19 °C: its leg holds frozen readings only
    for frozen in (leg for leg in trace["legs"] if leg["compartment"] == "frozen"):
        assert {r["compartment"] for r in frozen["readings"]} == {"frozen"}


def test_an_order_with_no_excursion_is_ok_and_damage_makes_breakage_reject(session, tmp_path: Path) -> None:
    d = drive_day(session, tmp_path)
    first = order_trace(session, d.refs[0], now=d.evening)
    assert _chilled(first)["summary"]["max_c"] == 4.0
    assert first["spoilage_risk"]["level"] == "ok", first["spoilage_risk"]
    assert first["breakage_risk"]["level"] == "ok", first["breakage_risk"]  # delivered before the broken egg
    damaged = order_trace(session, d.damaged_ref, now=d.evening)
    assert damaged["breakage_risk"]["level"] == "reject", damaged["breakage_risk"]
    assert any("damage at the door" in r and "蛋碎了一个" in r for r in damaged["breakage_risk"]["reasons"])
    before = order_trace(session, d.refs[-2], now=d.evening)  # delivered before the report, 10 min of the warmth
    assert before["breakage_risk"]["level"] == "ok", before["breakage_risk"]
    assert before["spoilage_risk"]["level"] == "watch", before["spoilage_risk"]
    assert any("10 min above 8 °C" in r for r in before["spoilage_risk"]["reasons"])


def test_at_risk_lists_exactly_the_risky_orders_and_the_driver_sees_check_on_delivery(session, tmp_path: Path) -> None:
    d = drive_day(session, tmp_path)
    refs = session.scalars(select(Order.ref).where(Order.delivery_date == d.day).order_by(Order.id)).all()
    one_by_one = {ref: order_trace(session, ref, now=d.evening) for ref in refs}
    risky = {ref for ref, t in one_by_one.items()
             if t["spoilage_risk"]["level"] != "ok" or t["breakage_risk"]["level"] != "ok"}
    assert d.refs[-1] in risky and d.refs[-2] in risky and d.refs[0] not in risky
    assert one_by_one[d.refs[-2]]["breakage_risk"]["level"] == "ok"  # at risk by its spoilage only
    items, following = at_risk(session, d.day, now=d.evening)
    assert following is None and {i["order_ref"] for i in items} == risky
    for item in items:  # the batch agrees with the one-order trace
        t = one_by_one[item["order_ref"]]
        assert item["spoilage_risk"]["reasons"] == t["spoilage_risk"]["reasons"]
        assert item["breakage_risk"]["level"] == t["breakage_risk"]["level"]
    paged, cursor = [], None
    while True:  # one at a time, the cursor walks the same list
        page, cursor = at_risk(session, d.day, limit=1, after=cursor, now=d.evening)
        paged += [i["order_ref"] for i in page]
        if cursor is None:
            break
    assert paged == [i["order_ref"] for i in items]

    route = route_of(session, driver_ref(session, "driver01"), d.day)
    checks = {s["order_ref"]: s["check"] for s in route["stops"]}
    assert {ref for ref, c in checks.items() if c is not None} == risky & set(d.refs)
    last = checks[d.refs[-1]]
    assert last["spoilage"] in ("at_risk", "reject") and any("min above 8 °C" in r for r in last["reasons"])
    assert last["breakage"] == "reject" and any("蛋碎了一个" in r for r in last["reasons"])
    assert checks[d.refs[0]] is None


def test_a_lots_trace_lists_its_orders_and_its_remainder(session, tmp_path: Path) -> None:
    d = drive_day(session, tmp_path, readings=False)
    line = session.execute(select(Reservation.lot_id, StockLot.lot).join(StockLot, StockLot.id == Reservation.lot_id)
                           .join(OrderLine, OrderLine.id == Reservation.line_id).join(Order)
                           .where(Order.ref == d.refs[-1], StockLot.lot.like("L-E%"))).first()
    lot = line[1]
    trace = lot_trace(session, lot)
    expected = session.execute(select(Order.ref, Order.customer, Reservation.qty).select_from(Order).join(OrderLine)
                               .join(Reservation, Reservation.line_id == OrderLine.id)
                               .join(StockLot, StockLot.id == Reservation.lot_id).where(StockLot.lot == lot)).all()
    assert {o["order_ref"] for o in trace["orders"]} == {ref for ref, _c, _q in expected}
    assert {o["customer"] for o in trace["orders"]} == {c for _r, c, _q in expected}
    states = {o["order_ref"]: {ln["state"] for ln in o["lines"]} for o in trace["orders"]}
    van01 = [ref for ref in d.refs if ref in states]
    assert van01 and all(states[ref] == {"delivered"} for ref in van01)
    others = set(states) - set(d.refs)  # orders on VAN-03, not yet loaded
    assert all(states[ref] == {"reserved"} for ref in others)
    totals = trace["remainder"]["totals"]
    delivered = sum(q for ref, _c, q in expected if ref in d.refs)
    reserved = sum(q for ref, _c, q in expected if ref not in d.refs)
    stock = session.execute(select(StockLot.qty).where(StockLot.lot == lot)).scalars().all()
    assert totals["delivered"] == delivered and totals["aboard"] == 0
    assert totals["received"] == sum(stock) and totals["on_hand"] == sum(stock) - delivered
    assert totals["reserved"] == reserved
    assert trace["custody"] and {e["lot"] for e in trace["custody"]} == {lot}


def test_a_held_lot_is_never_allocated_and_release_lets_it_allocate_again(session, tmp_path: Path) -> None:
    day = DAY
    report = load_scenario(session, scenario(tmp_path, day))
    assert not report.errors
    hold_lot(session, "L-S1", "供应商召回: 草莓农残超标", "qa1")  # the hub's only strawberries
    hold_lot(session, "L-E1", "蛋壳污染 抽检", "qa1")  # the first-expiring eggs: orders take L-E2 instead
    allocate_day(session, day)
    session.flush()
    out = day_allocations(session, day)
    unallocated = {u["order_ref"]: u["reason"] for u in out["unallocated"]}
    assert "C1" in unallocated and "quality hold" in unallocated["C1"] and "L-S1" in unallocated["C1"]
    lots = {ln["lot"] for a in out["allocations"] for ln in a["lines"]}
    assert "L-E1" not in lots and "L-S1" not in lots and "L-E2" in lots
    release_lot(session, "L-S1", "复检合格", "qa2")
    allocate_day(session, day)
    session.flush()
    again = day_allocations(session, day)
    c1 = [a for a in again["allocations"] if a["order_ref"] == "C1"]
    assert c1 and {ln["lot"] for ln in c1[0]["lines"]} == {"L-S1"}
    assert "L-E1" not in {ln["lot"] for a in again["allocations"] for ln in a["lines"]}  # still held
    session.commit()
    actions = session.execute(select(AuditLog.action, AuditLog.entity_id, AuditLog.actor)
                              .where(AuditLog.action.in_(("lot.hold", "lot.release"))).order_by(AuditLog.id)).all()
    assert [tuple(a) for a in actions] == [("lot.hold", "L-S1", "qa1"), ("lot.hold", "L-E1", "qa1"),
                                           ("lot.release", "L-S1", "qa2")]
    held = lot_trace(session, "L-S1")
    assert not held["on_hold"] and held["holds"][0]["release_reason"] == "复检合格"


def test_held_stock_already_on_a_route_is_flagged(session, tmp_path: Path) -> None:
    day = build_day(session, tmp_path)
    lot = session.execute(select(StockLot.lot).join(Reservation, Reservation.lot_id == StockLot.id)
                          .join(OrderLine, OrderLine.id == Reservation.line_id).join(Order)
                          .where(Order.delivery_date == day, StockLot.lot.like("L-E%"))).scalars().first()
    assert held_on_routes(session, day) == []
    hold_lot(session, lot, "抽检", "qa1")
    flagged = held_on_routes(session, day)
    reserved = session.execute(select(Order.ref).select_from(Order).join(OrderLine)
                               .join(Reservation, Reservation.line_id == OrderLine.id)
                               .join(StockLot, StockLot.id == Reservation.lot_id)
                               .where(StockLot.lot == lot)).scalars().all()
    assert flagged and {f["lot"] for f in flagged} == {lot} and {f["reason"] for f in flagged} == {"抽检"}
    assert {f["order_ref"] for f in flagged} <= set(reserved)
    assert held_on_routes(session, day - timedelta(days=1)) == []
    assert assess_orders(session, []) == []


def test_at_risk_is_worst_first_assessed_once_per_day_and_again_when_a_reading_comes_in(session,
                                                                                       tmp_path: Path) -> None:
    import pytest

    from core.errors import Invalid
    from tests.traceability.helpers import store_readings
    from traceability import risk, trace
    from traceability.trace import parse_cursor

    d = drive_day(session, tmp_path)
    trace.forget_day_risks()  # an earlier test may have built this very day in a rolled-back transaction
    before = trace.computations
    items, following = at_risk(session, d.day, now=d.evening)
    assert following is None and len(items) >= 2 and trace.computations == before + 1

    def worst(i: dict) -> int:
        return max(risk.LEVELS.index(i["spoilage_risk"]["level"]), risk.LEVELS.index(i["breakage_risk"]["level"]))

    assert [worst(i) for i in items] == sorted((worst(i) for i in items), reverse=True)
    assert items[0]["order_ref"] == d.damaged_ref  # the broken egg (reject) before the warm-only orders
    paged, cursor = [], None
    while True:
        page, cursor = at_risk(session, d.day, limit=1, after=cursor, now=d.evening)
        paged += [i["order_ref"] for i in page]
        if cursor is None:
            break
    assert paged == [i["order_ref"] for i in items]
    assert trace.computations == before + 1  # every page came from the one assessment

    # a late reading inside the vans' time aboard: the day is assessed again, to the same list here
    late = {"device": "TL-0001", "seq": 900000, "ts": (d.leave + timedelta(minutes=3, seconds=30)).isoformat(),
            "temp_c": {"chilled": 4.0}}
    store_readings(session, [late], d.evening)
    again, _ = at_risk(session, d.day, now=d.evening)
    assert trace.computations == before + 2
    assert [i["order_ref"] for i in again] == [i["order_ref"] for i in items]
    with pytest.raises(Invalid):
        parse_cursor("12")
