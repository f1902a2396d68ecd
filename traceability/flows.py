"""Use cases that span rooms, written once in the highest room they touch (ARCHITECTURE.md), called
alike by the Celery jobs the API sends and by the command line (Netflix Dispatch keeps such
sequences in a domain's flows module).

Planning and re-planning: plan or re-plan a depot, then tell the telemetry rules what each van
carries. Each step opens its own transaction: none is open while the solver runs, so on SQLite
the ingestor and the API keep writing during a minute-long solve.

Custody of what fulfillment and warehouses cause (they may not import traceability) is recorded
here, right after them and in the same transaction:

* received: a scenario's stock, when the scenario is loaded (:func:`load_scenario`);
* picked: when the day's pick lists are issued (:func:`issue_pick_lists`). Not at allocation:
  a reservation is a promise about stock, not a movement of it (it is undone by a cancel or a
  re-allocation with nothing touched), while the pick list is the document the warehouse
  picks against, naming lot and quantity, so issuing it is the step custody can stand on.
  A line loaded without a pick list is recorded picked at loading (custody.record_loaded).

Both recorders are idempotent by quantity: they record only what is not yet recorded (a
re-loaded scenario that raised a lot's quantity records the difference as received; issuing
the pick lists again records nothing), so calling them again after a retry is safe.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from core.db import session_scope
from core.timeutil import utcnow
from fulfillment.models import Order, OrderLine, Reservation
from fulfillment.picklists import pick_lists
from fulfillment.scenario import load_scenario as _load_scenario
from routing.replan import Event, depot_of, replan
from routing.service import plan_depot
from traceability.custody import make_event, now_or, received_event, record, record_bulk
from traceability.models import CustodyEvent
from traceability.service import sync_vans, van_positions
from warehouses.models import Node, StockLot
from warehouses.service import LoadReport, Progress


def tell_the_rules() -> int:
    """After a plan changes, the rules learn at once which vans carry what (not on beat's next tick)."""
    with session_scope() as session:
        return sync_vans(session)


def plan_depot_flow(day: date, depot: str, time_limit: float, actor: str = "system", workers: int = 1,
                    progress: Callable[[float], None] | None = None) -> dict:
    """Plan one depot's day, then update the vans' cargo limits."""
    out = plan_depot(day, depot, time_limit, actor=actor, workers=workers, progress=progress)
    tell_the_rules()
    return out


def depot_for_event(day: date, event: Event) -> str:
    """The depot an event belongs to (raises NotFound / Invalid before any job is sent)."""
    with session_scope(write=False) as session:
        return depot_of(session, day, event)


def replan_flow(day: date, event: Event | None, time_limit: float = 5.0, actor: str = "system",
                now: datetime | None = None, depot: str | None = None, workers: int = 1) -> dict:
    """Re-plan the depot of ``event``: vans on the road go on from their newest known position (their
    telemetry's last fix), the solver runs outside any transaction, and the rules learn the new cargo."""
    if depot is None:
        if event is None:
            raise ValueError("re-planning without an event needs the depot")
        depot = depot_for_event(day, event)
    moment = now or getattr(event, "at", None) or utcnow()
    with session_scope(write=False) as session:
        positions = van_positions(session, depot, moment)
    out = replan(day, depot, event, time_limit=time_limit, actor=actor, now=now, positions=positions,
                 workers=workers)
    tell_the_rules()
    return out


def receive_stock(session: Session, at: datetime | None = None, actor: str = "scenario",
                  source: str = "scenario") -> list[CustodyEvent]:
    """Record as received every unit of stock on hand that no custody row received yet."""
    at = now_or(at)
    received = dict(session.execute(select(CustodyEvent.lot_id, func.sum(CustodyEvent.qty))
                                    .where(CustodyEvent.type == "received").group_by(CustodyEvent.lot_id)).all())
    lots = session.execute(select(StockLot.id, StockLot.node_id, StockLot.product_id, StockLot.lot, StockLot.qty,
                                  StockLot.expires).order_by(StockLot.id)).all()
    return record_bulk(session, [received_event(lot, lot.qty - int(received.get(lot.id) or 0), at, actor, source=source)
                            for lot in lots if lot.qty > int(received.get(lot.id) or 0)])


def load_scenario(session: Session, directory: Path, progress: Progress | None = None,
                  actor: str = "scenario", at: datetime | None = None) -> LoadReport:
    """Load a scenario folder (fulfillment.scenario) and record its stock as received at its nodes."""
    report = _load_scenario(session, directory, progress)
    receive_stock(session, at, actor)
    return report


def record_picks(session: Session, day: date, at: datetime | None = None, actor: str = "system",
                 node_code: str | None = None, document: str | None = None) -> list[CustodyEvent]:
    """Record as picked, per order line and lot, every reserved unit of ``day``'s orders not yet picked."""
    at = now_or(at)
    query = (select(Reservation).join(OrderLine, OrderLine.id == Reservation.line_id)
             .join(Order, Order.id == OrderLine.order_id)
             .where(Order.delivery_date == day, Order.status != "cancelled")
             .options(joinedload(Reservation.line), joinedload(Reservation.lot))
             .order_by(Order.ref, OrderLine.line_no, Reservation.id))
    if node_code:
        query = query.join(Node, Node.id == Reservation.node_id).where(Node.code == node_code)
    reservations = session.scalars(query).all()
    wanted: dict[tuple[int, int], int] = {}
    first: dict[tuple[int, int], Reservation] = {}
    for r in reservations:
        key = (r.line_id, r.lot_id)
        wanted[key] = wanted.get(key, 0) + r.qty
        first.setdefault(key, r)
    if not wanted:
        return []
    line_ids = sorted({k[0] for k in wanted})
    done = {(line, lot): int(q) for line, lot, q in session.execute(
        select(CustodyEvent.line_id, CustodyEvent.lot_id, func.sum(CustodyEvent.qty))
        .where(CustodyEvent.type == "picked", CustodyEvent.line_id.in_(line_ids))
        .group_by(CustodyEvent.line_id, CustodyEvent.lot_id))}
    events = []
    for key, qty in wanted.items():
        missing = qty - done.get(key, 0)
        if missing > 0:
            r = first[key]
            events.append(make_event("picked", at, actor, node_id=r.node_id, order_id=r.line.order_id,
                                     line_id=r.line_id, product_id=r.line.product_id, lot_id=r.lot_id, lot=r.lot.lot,
                                     qty=missing, data={"document": document} if document else None))
    return record(session, events)


def issue_pick_lists(session: Session, day: date, node_code: str | None = None, actor: str = "system",
                     at: datetime | None = None) -> list[dict]:
    """The day's pick lists (fulfillment.picklists) and, as they are issued, custody "picked" for each line."""
    lists = pick_lists(session, day, node_code)
    record_picks(session, day, at, actor, node_code, document=f"pick list {day.isoformat()}")
    return lists
