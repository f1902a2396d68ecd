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

* returned: an order cancelled after picking and before loading (:func:`cancel_order`): the
  picked units go back into their lots. Cancelling is refused once the van has left with the
  order aboard (``out_for_delivery``: PRODUCT.md's "cancel ... is allowed until the van leaves";
  the customer can still refuse it at the door, a failed attempt, and it comes back with the
  van). An order in ``reattempt`` after a failed attempt may be cancelled with its goods still
  aboard: they stay in the van and are recorded ``returned`` when the route ends
  (custody.record_returned, called by delivery; if it had ended, they came back then).

Both recorders are idempotent by quantity: they record only what is not yet recorded (a
re-loaded scenario that raised a lot's quantity records the difference as received; issuing
the pick lists again records nothing), so calling them again after a retry is safe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from core.db import session_scope
from core.timeutil import utcnow
from fulfillment import service as fulfillment
from fulfillment.models import Order, OrderLine, Reservation
from fulfillment.picklists import pick_lists
from fulfillment.scenario import load_scenario as _load_scenario
from routing.replan import Event, depot_of, replan
from routing.service import drop_open_stops, plan_depot
from traceability.custody import make_event, now_or, received_event, record, record_bulk, record_returned_to_stock
from traceability.models import CustodyEvent
from traceability.service import sync_vans, van_positions
from warehouses.models import Node, StockLot
from warehouses.service import LoadReport, Progress


def tell_the_rules() -> int:
    """After a plan changes, the rules learn at once which vans carry what (not on beat's next tick)."""
    with session_scope() as session:
        return sync_vans(session)


def cancel_order(session: Session, order: Order, actor: str, reason: str | None = None,
                 at: datetime | None = None) -> Order:
    """Cancel an order (fulfillment: its reservations released, the order event) and give back to stock,
    in custody, what was picked for it and not yet loaded; its stops still to visit leave the current
    routes (routing.service.drop_open_stops; goods still aboard after a failed attempt come back with
    that van when its route ends, custody.record_returned); the API, the CLI and re-planning all cancel
    through here. Refused (Conflict) for an order out for delivery, as fulfillment refuses it."""
    fulfillment.cancel_order(session, order, actor, reason=reason)
    drop_open_stops(session, order, actor, reason=reason)
    record_returned_to_stock(session, order, now_or(at), actor, reason=reason)
    return order


def plan_depot_flow(day: date, depot: str, time_limit: float, actor: str = "system", workers: int = 1,
                    progress: Callable[[float], None] | None = None, started: float | None = None) -> dict:
    """Plan one depot's day, then update the vans' cargo limits. ``started``: when the caller's clock for
    ``time_limit`` began (routing.service.plan_depot); the result's ``timing`` adds the rules' update."""
    t0 = time.monotonic() if started is None else started
    out = plan_depot(day, depot, time_limit, actor=actor, workers=workers, progress=progress, started=t0)
    t_rules = time.monotonic()
    tell_the_rules()
    out["timing"]["rules"] = round(time.monotonic() - t_rules, 3)
    out["timing"]["total"] = round(time.monotonic() - t0, 3)
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
                 workers=workers, cancel=cancel_order)
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


def accept_transfer_flow(session: Session, day: date, proposal: dict, actor: str = "system") -> dict:
    """Move the stock of a transfer proposal (fulfillment.service.accept_transfer) and record its custody:
    the hub receives what it was sent."""
    from fulfillment.service import accept_transfer

    moved = accept_transfer(session, day, proposal, actor)
    receive_stock(session, actor=actor, source="transfer")
    return moved
