"""Cancelling an order in custody (issue 11): before picking only the reservation goes; after picking the
picked units go back to their lot (custody ``returned`` to stock, audited); once the van has left with it
the cancel is refused; after a failed attempt it may be cancelled and the goods come back with the van.

Built on tests/delivery/helpers.build_day (real allocation and OR-Tools planning, dated from the day the
tests run).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.audit import AuditLog
from core.errors import Conflict
from delivery.schemas import RouteStartIn, StopEventIn
from delivery.service import driver_ref, start_route, stop_event
from fulfillment.models import Order, Reservation
from routing.replan import breakdown, replan
from routing.replan import cancel_order as cancel_event
from tests.delivery.helpers import build_day_received, routes_by_van
from tests.support import same
from traceability import flows
from traceability.models import CustodyEvent
from traceability.trace import lot_trace
from warehouses.models import StockLot


def _custody(session: Session, ref: str) -> list[CustodyEvent]:
    return session.scalars(select(CustodyEvent).join(Order, Order.id == CustodyEvent.order_id)
                           .where(Order.ref == ref).order_by(CustodyEvent.id)).all()


def _reserved(session: Session, ref: str) -> dict[int, int]:
    """The order's reservations per lot id."""
    rows = session.execute(select(Reservation.lot_id, func.sum(Reservation.qty))
                           .join(Reservation.line).join(Order).where(Order.ref == ref)
                           .group_by(Reservation.lot_id)).all()
    return {lot: int(q) for lot, q in rows}


@pytest.fixture
def day(session: Session, tmp_path: Path):  # noqa: ANN201
    return build_day_received(session, tmp_path)


def test_cancelled_before_picking_releases_the_reservation_and_returns_nothing(session: Session, day) -> None:  # noqa: ANN001
    ref = routes_by_van(session, day)["VAN-01"].stops[-1].order.ref
    held = _reserved(session, ref)
    assert held
    before = {lot_id: session.get(StockLot, lot_id).reserved for lot_id in held}
    flows.cancel_order(session, session.scalar(select(Order).where(Order.ref == ref)), "dispatcher", "客户取消")
    session.flush()
    session.expire_all()
    assert _reserved(session, ref) == {}
    for lot_id, qty in held.items():
        assert session.get(StockLot, lot_id).reserved == before[lot_id] - qty
    assert [e.type for e in _custody(session, ref)] == []  # nothing was picked: nothing to give back


def test_cancelled_after_picking_puts_the_picked_units_back_into_their_lots(session: Session, day) -> None:  # noqa: ANN001
    route = routes_by_van(session, day)["VAN-01"]
    ref = route.stops[-1].order.ref
    picked_at = route.start_at - timedelta(hours=1)
    flows.issue_pick_lists(session, day, actor="picker", at=picked_at)
    picks = [e for e in _custody(session, ref) if e.type == "picked"]
    assert picks
    lot_code = picks[0].lot
    lot_before = lot_trace(session, lot_code)
    mine = [o for o in lot_before["orders"] if o["order_ref"] == ref]
    assert mine and {ln["state"] for ln in mine[0]["lines"]} == {"picked"}
    audit.flush(session)  # records are chained when the transaction commits: write the queue now
    appended = session.scalar(select(func.max(AuditLog.id))) or 0

    order = session.scalar(select(Order).where(Order.ref == ref))
    cancelled_at = picked_at + timedelta(minutes=20)
    flows.cancel_order(session, order, "dispatcher", "客户改期", at=cancelled_at)
    audit.flush(session)

    returned = [e for e in _custody(session, ref) if e.type == "returned"]
    assert sorted((e.line_id, e.lot_id, e.qty, e.node_id) for e in returned) == \
        sorted((p.line_id, p.lot_id, p.qty, p.node_id) for p in picks)
    assert all(e.data["to"] == "stock" and e.actor == "dispatcher" and e.at == cancelled_at for e in returned)
    assert all("客户改期" in e.reason for e in returned)
    audited = session.scalars(select(AuditLog).where(AuditLog.id > appended).order_by(AuditLog.id)).all()
    actions = [a.action for a in audited]
    assert actions.count("custody.returned") == len(returned)
    assert {a.entity_id for a in audited if a.action == "custody.returned"} == {str(e.id) for e in returned}

    # the lot has them back: on hand unchanged (they never left the node), no longer promised, free again
    lot_after = lot_trace(session, lot_code)
    qty = sum(e.qty for e in returned if e.lot == lot_code)
    assert lot_after["remainder"]["totals"]["on_hand"] == lot_before["remainder"]["totals"]["on_hand"]
    assert lot_after["remainder"]["totals"]["reserved"] == lot_before["remainder"]["totals"]["reserved"] - qty
    free = sum(r["free"] for r in lot_after["remainder"]["on_hand"])
    assert free == sum(r["free"] for r in lot_before["remainder"]["on_hand"]) + qty
    mine = [o for o in lot_after["orders"] if o["order_ref"] == ref]
    assert mine and {ln["state"] for ln in mine[0]["lines"]} == {"returned"}  # a recall still finds it

    # a second cancel is refused, and gives back nothing twice
    with pytest.raises(Conflict):
        flows.cancel_order(session, order, "dispatcher")
    assert len([e for e in _custody(session, ref) if e.type == "returned"]) == len(returned)


def test_a_cancel_through_re_planning_returns_the_picked_units_too(session: Session, day) -> None:  # noqa: ANN001
    route = routes_by_van(session, day)["VAN-01"]
    ref = route.stops[-1].order.ref
    flows.issue_pick_lists(session, day, actor="picker", at=route.start_at - timedelta(hours=1))
    out = replan(day, "FS-01", cancel_event(ref, "客户取消"), time_limit=1, actor="dispatcher",
                 now=route.start_at - timedelta(minutes=30), sessions=same(session), cancel=flows.cancel_order)
    assert out["cancelled"] == [ref]
    types = [e.type for e in _custody(session, ref)]
    assert types.count("returned") == types.count("picked") > 0


def test_once_loaded_the_cancel_is_refused_and_after_a_failed_attempt_the_goods_come_back_with_the_van(
        session: Session, day) -> None:  # noqa: ANN001
    route = routes_by_van(session, day)["VAN-01"]
    stops = sorted(route.stops, key=lambda s: s.seq)
    driver = driver_ref(session, "driver01")
    leave = route.start_at
    start_route(session, driver, RouteStartIn(date=day, at=leave), now=leave)
    first, *rest = stops
    order = first.order
    with pytest.raises(Conflict, match="out_for_delivery"):
        flows.cancel_order(session, order, "dispatcher", "too late")
    assert not [e for e in _custody(session, order.ref) if e.type == "returned"]

    at = leave + timedelta(minutes=20)
    stop_event(session, driver, first.stop_id, StopEventIn(type="failed", at=at, reason="not_home"), now=at)
    session.refresh(order)
    assert order.status == "reattempt"
    flows.cancel_order(session, order, "dispatcher", "客户拒收后取消", at=at + timedelta(minutes=5))
    session.flush()
    # still aboard: no return to stock while the goods are in the van
    assert [e.type for e in _custody(session, order.ref)][-1] == "failed"
    lot_code = _custody(session, order.ref)[-1].lot
    assert order.ref in {a["order_ref"] for a in lot_trace(session, lot_code)["remainder"]["aboard"]}

    for i, stop in enumerate(rest, start=1):
        t = at + timedelta(minutes=10 * i)
        stop_event(session, driver, stop.stop_id, StopEventIn(type="arrived", at=t - timedelta(minutes=2)), now=t)
        stop_event(session, driver, stop.stop_id, StopEventIn(type="delivered", at=t, recipient="本人"), now=t)
    back = [e for e in _custody(session, order.ref) if e.type == "returned"]
    loaded = [e for e in _custody(session, order.ref) if e.type == "loaded"]
    assert back and sorted((e.line_id, e.lot_id, e.qty) for e in back) == \
        sorted((e.line_id, e.lot_id, e.qty) for e in loaded)
    assert all(e.data["from_vehicle"] == route.vehicle_id for e in back)
    assert order.ref not in {a["order_ref"] for a in lot_trace(session, lot_code)["remainder"]["aboard"]}


def _stops_of(session: Session, day, ref: str) -> list[tuple[str, str, str]]:  # noqa: ANN001
    """(van, stop id, status) of every stop of ``ref`` on the day's current plans."""
    return sorted((van, s.stop_id, s.status) for van, r in routes_by_van(session, day).items() for s in r.stops
                  if s.order.ref == ref)


@pytest.mark.parametrize("onto", ["any van", "VAN-01 again"])
@pytest.mark.parametrize("how", ["replan", "api"])
def test_a_failed_order_moved_by_a_replan_then_cancelled_comes_back_once_with_the_first_van(
        session: Session, day, how: str, onto: str) -> None:  # noqa: ANN001
    """Issue 11's named gap: the order failed at its stop (goods still aboard VAN-01), a re-plan gives it a new
    stop (on any van, or, VAN-03 broken down, on VAN-01's own later trip), then it is cancelled (through a
    re-plan's cancel event, or the API's cancel): its goods come back to their lot at the depot once, with
    VAN-01, audited; nothing is loaded anywhere else; VAN-01's route still finishes; the lot's reservation
    and free stock are as before the order took them."""
    route = routes_by_van(session, day)["VAN-01"]
    stops = sorted(route.stops, key=lambda s: s.seq)
    driver = driver_ref(session, "driver01")
    leave = route.start_at
    flows.issue_pick_lists(session, day, actor="picker", at=leave - timedelta(hours=1))
    first, *rest = stops
    order = first.order
    ref, first_id = order.ref, first.stop_id
    lots = {e.lot_id: e.lot for e in _custody(session, ref) if e.type == "picked"}
    assert lots
    before = {lot_id: (session.get(StockLot, lot_id).qty, session.get(StockLot, lot_id).reserved)
              for lot_id in lots}
    held = _reserved(session, ref)
    trace_before = {code: lot_trace(session, code)["remainder"]["totals"] for code in lots.values()}
    start_route(session, driver, RouteStartIn(date=day, at=leave), now=leave)
    at = leave + timedelta(minutes=20)
    stop_event(session, driver, first_id, StopEventIn(type="failed", at=at, reason="not_home"), now=at)
    session.refresh(order)
    assert order.status == "reattempt"

    # the re-plan gives the re-attempt a new stop; the failed one stays on VAN-01
    moved_at = at + timedelta(minutes=5)
    event = None if onto == "any van" else breakdown("VAN-03", moved_at)
    out = replan(day, "FS-01", event, time_limit=1, actor="dispatcher", now=moved_at, sessions=same(session),
                 cancel=flows.cancel_order)
    placed = _stops_of(session, day, ref)
    assert ("VAN-01", first_id, "failed") in placed, placed
    new = [p for p in placed if p[2] == "planned"]
    assert len(new) == 1 and new[0][1] != first_id, (placed, out)
    if onto == "VAN-01 again":
        assert new[0][0] == "VAN-01", placed
    session.refresh(order)
    assert order.status == "planned"
    audit.flush(session)
    appended = session.scalar(select(func.max(AuditLog.id))) or 0

    cancelled_at = at + timedelta(minutes=10)
    if how == "replan":
        replan(day, "FS-01", cancel_event(ref, "客户取消"), time_limit=1, actor="dispatcher", now=cancelled_at,
               sessions=same(session), cancel=flows.cancel_order)
    else:
        flows.cancel_order(session, order, "dispatcher", "客户取消", at=cancelled_at)
    session.flush()
    session.refresh(order)
    assert order.status == "cancelled"
    assert _reserved(session, ref) == {}
    # no stop left to visit for it (the failed one stays, as history), and nothing back while still aboard
    assert [p for p in _stops_of(session, day, ref) if p[2] != "failed"] == []
    assert [e.type for e in _custody(session, ref)][-1] == "failed"

    if how == "api":  # the re-plan's cancel drops the stop from its new version; the API's says so in the log
        audit.flush(session)
        dropped = session.scalars(select(AuditLog).where(AuditLog.id > appended,
                                                         AuditLog.action == "plan.stop_dropped")).all()
        assert [a.entity_id for a in dropped] == [new[0][1]]
    # the van the new stop was on starts its day: nothing of the cancelled order goes aboard it
    new_van = new[0][0]
    other = routes_by_van(session, day).get(new_van)
    if new_van != "VAN-01" and other is not None and other.stops:  # (a re-plan may leave it no route at all)
        assert other.status == "planned"
        start_route(session, driver_ref(session, {"VAN-02": "driver02", "VAN-03": "driver03"}[new_van]),
                    RouteStartIn(date=day, at=cancelled_at), now=cancelled_at)
    aboard_vans = {e.vehicle_id for e in _custody(session, ref) if e.type == "loaded"}
    assert aboard_vans == {route.vehicle_id}

    # VAN-01 finishes its route: the goods come off at the depot, once
    session.expire_all()
    left = sorted((s for s in routes_by_van(session, day)["VAN-01"].stops if s.status == "planned"),
                  key=lambda s: s.seq)
    assert left and ref not in {s.order.ref for s in left}
    for i, stop in enumerate(left, start=1):
        t = cancelled_at + timedelta(minutes=10 * i)
        stop_event(session, driver, stop.stop_id, StopEventIn(type="arrived", at=t - timedelta(minutes=2)), now=t)
        stop_event(session, driver, stop.stop_id, StopEventIn(type="delivered", at=t, recipient="本人"), now=t)
    session.expire_all()
    assert routes_by_van(session, day)["VAN-01"].status == "done"
    audit.flush(session)
    custody = _custody(session, ref)
    back = [e for e in custody if e.type == "returned"]
    loaded = [e for e in custody if e.type == "loaded"]
    assert back and sorted((e.line_id, e.lot_id, e.qty) for e in back) == \
        sorted((e.line_id, e.lot_id, e.qty) for e in loaded)
    depot = session.get(StockLot, back[0].lot_id).node_id
    assert all(e.node_id == session.get(StockLot, e.lot_id).node_id == depot for e in back)
    assert all(e.data["from_vehicle"] == route.vehicle_id and e.data.get("to") == "stock" for e in back), \
        [e.data for e in back]
    audited = session.scalars(select(AuditLog).where(AuditLog.id > appended, AuditLog.action == "custody.returned"))
    assert sorted(a.entity_id for a in audited) == sorted(str(e.id) for e in back)

    # the stock: received unchanged, the order's reservation gone, free again; the lot's trace agrees
    for lot_id, code in lots.items():
        lot = session.get(StockLot, lot_id)
        qty = sum(e.qty for e in back if e.lot_id == lot_id)
        assert (lot.qty, lot.reserved) == (before[lot_id][0], before[lot_id][1] - held[lot_id])
        trace = lot_trace(session, code)
        totals = trace["remainder"]["totals"]
        assert ref not in {a["order_ref"] for a in trace["remainder"]["aboard"]}
        # every unit counted once: on hand, aboard, delivered or disposed
        assert totals["on_hand"] + totals["aboard"] + totals["delivered"] + totals["disposed"] == \
            totals["received"] == trace_before[code]["received"]
        assert totals["reserved"] <= trace_before[code]["reserved"] - qty
        mine = [o for o in trace["orders"] if o["order_ref"] == ref]
        assert mine and {ln["state"] for ln in mine[0]["lines"]} == {"returned"}  # a recall still finds it
