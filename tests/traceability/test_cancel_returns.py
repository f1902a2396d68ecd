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
from routing.replan import cancel_order as cancel_event
from routing.replan import replan
from tests.delivery.helpers import build_day, routes_by_van
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
    d = build_day(session, tmp_path)
    first = min(r.start_at for r in routes_by_van(session, d).values())
    flows.receive_stock(session, at=first - timedelta(hours=3), actor="receiver")
    return d


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
