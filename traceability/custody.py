"""Recording the chain of custody, called by the code that causes each physical step.

One function per step; each writes one custody row per order line and lot it concerns and
appends each to the audit log (core.audit), so a step is recorded once, where it happens,
never typed twice:

======================  =====================================================  ==============================
step                    function                                               called by
======================  =====================================================  ==============================
received at a node      ``record_received(session, lot, qty, at, actor)``      scenario load (flows.receive_stock)
picked                  ``record_picked(session, line, lot, qty, at, actor)``  pick lists issued (flows.record_picks)
loaded into a van       ``record_loaded(session, route, at, actor)``           the driver's route start
delivered               ``record_delivered(session, stop, at, actor)``         the driver's "delivered" stop event
failed                  ``record_failed(session, stop, at, actor, reason)``    the driver's "failed" stop event
returned to a node      ``record_returned(session, stop, at, actor)``          goods of a failed stop unloaded
returned to stock       ``record_returned_to_stock(session, order, at, actor)``  an order cancelled after picking
disposed                ``record_disposed(session, lot, qty, at, actor, why)`` quality staff
======================  =====================================================  ==============================

The driver-side functions take the route or stop rows the delivery room already holds and
work out the lines and lots themselves (from the order's lot reservations, which are what
the pick list named). They are idempotent by state, so a retried request records nothing
twice: a line already aboard this van is not loaded again, a line delivered is not delivered
again, a stop that failed does not fail twice. ``at`` is the time the driver reported (aware);
``actor`` the username; ``position`` an optional ``(lat, lon)``. Each returns the rows written
(empty when there was nothing left to record). The caller commits, as every service.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from sqlalchemy import String, bindparam, cast, func, literal, select, union_all
from sqlalchemy.orm import Session

from core import audit
from core.bulk import insert_with_ids
from core.hot import Hot
from core.timeutil import utcnow
from fulfillment.models import Order, OrderLine, Reservation
from routing.models import Plan, Route, RouteStop
from traceability.models import CustodyEvent
from warehouses.models import Node, Product, StockLot, Vehicle

Position = tuple[float, float]
_ABOARD = ("loaded", "failed")  # after these the goods are still in the van
_CE = CustodyEvent.__table__


@dataclass(frozen=True, slots=True)
class _Held:
    """One order line's quantity of one lot (from its reservations)."""

    order_id: int
    order_ref: str
    line_id: int
    line_no: int
    product_id: int
    sku: str
    temp_class: str
    lot_id: int
    lot: str
    qty: int
    lat: float
    lon: float


def _held(session: Session, order_ids: Iterable[int]) -> dict[int, list[_Held]]:
    """Per order: each line and lot it holds, in line order."""
    ids = sorted(set(order_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(Order.id, Order.ref, OrderLine.id, OrderLine.line_no, Product.id, Product.sku, Product.temp_class,
               StockLot.id, StockLot.lot, func.sum(Reservation.qty), Order.lat, Order.lon)
        .join(OrderLine, OrderLine.order_id == Order.id)
        .join(Reservation, Reservation.line_id == OrderLine.id)
        .join(StockLot, StockLot.id == Reservation.lot_id)
        .join(Product, Product.id == OrderLine.product_id)
        .where(Order.id.in_(ids))
        .group_by(Order.id, Order.ref, OrderLine.id, OrderLine.line_no, Product.id, Product.sku, Product.temp_class,
                  StockLot.id, StockLot.lot, Order.lat, Order.lon)
        .order_by(Order.id, OrderLine.line_no, StockLot.lot)).all()
    out: dict[int, list[_Held]] = defaultdict(list)
    for r in rows:
        out[r[0]].append(_Held(*r[:9], int(r[9]), r[10], r[11]))
    return out


def _last(session: Session, line_ids: Iterable[int]) -> dict[tuple[int, int], CustodyEvent]:
    """The last custody row recorded for each (line, lot): where that quantity is now. By the order
    recorded, not the times reported, which a driver's clock or a late report may set out of order."""
    ids = sorted(set(line_ids))
    if not ids:
        return {}
    last: dict[tuple[int, int], CustodyEvent] = {}
    for ev in session.scalars(select(CustodyEvent).where(CustodyEvent.line_id.in_(ids)).order_by(CustodyEvent.id)):
        last[(ev.line_id, ev.lot_id)] = ev
    return last


def _picked(session: Session, line_ids: Iterable[int]) -> dict[tuple[int, int], int]:
    ids = sorted(set(line_ids))
    if not ids:
        return {}
    return {(line, lot): int(q) for line, lot, q in session.execute(
        select(CustodyEvent.line_id, CustodyEvent.lot_id, func.sum(CustodyEvent.qty))
        .where(CustodyEvent.line_id.in_(ids), CustodyEvent.type == "picked")
        .group_by(CustodyEvent.line_id, CustodyEvent.lot_id))}


def make_event(type_: str, at: datetime, actor: str, held: _Held | None = None, **values: object) -> CustodyEvent:
    if at.tzinfo is None:
        raise ValueError("naive datetime given where an aware one is required")
    if held is not None:
        values = {"order_id": held.order_id, "line_id": held.line_id, "product_id": held.product_id,
                  "lot_id": held.lot_id, "lot": held.lot, "qty": held.qty, **values}
    return CustodyEvent(type=type_, at=at, actor=actor, **values)


def _audited(session: Session, events: Sequence[CustodyEvent]) -> list[CustodyEvent]:
    """Append each written custody row (its ``id`` known) to the audit log, in one append_many."""
    views = event_views(session, events)
    audit.append_many(session, [audit.Entry(ev.actor, f"custody.{ev.type}", "custody", ev.id, view, why=ev.reason,
                                            at=ev.at) for ev, view in zip(events, views, strict=True)])
    return list(events)


def record(session: Session, events: Sequence[CustodyEvent]) -> list[CustodyEvent]:
    """Write custody rows and append each to the audit log (one flush, one append_many)."""
    if not events:
        return []
    session.add_all(events)
    session.flush()
    return _audited(session, events)


def record_bulk(session: Session, events: Sequence[CustodyEvent]) -> list[CustodyEvent]:
    """:func:`record` for tens of thousands of rows (a scenario's stock received): the same rows and
    audit records, written by COPY / executemany instead of the ORM's flush (~0.3 ms a row). The
    events stay outside the session; their ``id`` is filled in."""
    if not events:
        return []
    columns = [c.name for c in CustodyEvent.__table__.columns if c.name != "id"]
    ids = insert_with_ids(session, CustodyEvent.__table__, [{c: getattr(ev, c) for c in columns} for ev in events])
    for ev, id_ in zip(events, ids, strict=True):
        ev.id = id_
    return _audited(session, events)


# ----------------------------------------------------------------------------- at a node


def record_received(session: Session, lot: StockLot, qty: int, at: datetime, actor: str, *,
                    source: str = "scenario", note: str | None = None) -> CustodyEvent:
    """``qty`` units of ``lot`` arrived at the lot's node (a scenario's stock, a delivery from a grower)."""
    return record(session, [received_event(lot, qty, at, actor, source=source, note=note)])[0]


def received_event(lot: StockLot, qty: int, at: datetime, actor: str, *, source: str = "scenario",
                   note: str | None = None) -> CustodyEvent:
    """The row record_received writes, for callers that record many lots in one go."""
    return make_event("received", at, actor, node_id=lot.node_id, product_id=lot.product_id, lot_id=lot.id, lot=lot.lot,
                      qty=qty, reason=note, data={"source": source, "expires": lot.expires.isoformat()})


def record_picked(session: Session, line: OrderLine, lot: StockLot, qty: int, at: datetime, actor: str, *,
                  document: str | None = None) -> CustodyEvent:
    """``qty`` units of ``lot`` picked at the lot's node for ``line`` (``document``: the pick list's name)."""
    order = line.order
    return record(session, [make_event("picked", at, actor, node_id=lot.node_id, order_id=order.id, line_id=line.id,
                                       product_id=line.product_id, lot_id=lot.id, lot=lot.lot, qty=qty,
                                       data={"document": document} if document else None)])[0]


def record_disposed(session: Session, lot: StockLot, qty: int, at: datetime, actor: str, reason: str,
                    line: OrderLine | None = None) -> CustodyEvent:
    """``qty`` units of ``lot`` destroyed (spoiled, broken, recalled), at its node or from an order line."""
    return record(session, [make_event("disposed", at, actor, node_id=lot.node_id, product_id=lot.product_id,
                                       lot_id=lot.id, lot=lot.lot, qty=qty, reason=reason,
                                       order_id=line.order_id if line else None, line_id=line.id if line else None)])[0]


# ----------------------------------------------------------------------------- the driver's day


def _depot_of(session: Session, route: Route) -> int:
    return session.scalar(select(Plan.depot_id).where(Plan.id == route.plan_id))


def record_loaded(session: Session, route: Route, at: datetime, actor: str,
                  stops: Iterable[RouteStop] | None = None) -> list[CustodyEvent]:
    """The van of ``route`` leaves its depot loaded: every line of its stops still to serve goes into the
    compartment of the product's class ("loaded into the chilled compartment of VAN-03").

    ``stops`` narrows it to one trip's stops (default: every stop not yet delivered or failed). A line
    never picked through a pick list is recorded picked at the depot first, marked implied, so the
    chain stays complete. Lines already aboard this van are skipped.
    """
    todo = [s for s in (stops if stops is not None else route.stops) if s.status not in ("delivered", "failed")]
    held = _held(session, [s.order_id for s in todo])
    lines = [h for s in todo for h in held.get(s.order_id, [])]
    last = _last(session, [h.line_id for h in lines])
    picked = _picked(session, [h.line_id for h in lines])
    depot = _depot_of(session, route)
    stop_of = {s.order_id: s for s in todo}
    events = []
    for h in lines:
        now = last.get((h.line_id, h.lot_id))
        if now is not None and (now.type == "delivered"
                                or (now.type in _ABOARD and now.vehicle_id == route.vehicle_id)):
            continue
        if picked.get((h.line_id, h.lot_id), 0) < h.qty:
            events.append(make_event("picked", at, actor, h, node_id=depot,
                                     qty=h.qty - picked.get((h.line_id, h.lot_id), 0),
                                     reason="no pick list was issued: picked when loaded", data={"implied": True}))
        events.append(make_event("loaded", at, actor, h, node_id=depot, vehicle_id=route.vehicle_id,
                                 compartment=h.temp_class, route_id=route.id, stop_id=stop_of[h.order_id].id))
    return _record_core(session, events)


_CE_WRITTEN = tuple(c.name for c in CustodyEvent.__table__.columns if c.name != "id")
_CE_LAST_ID = select(func.coalesce(func.max(_CE.c.id), 0))


@lru_cache(maxsize=8)
def _insert_one(columns: tuple[str, ...]) -> Hot:
    """One custody row of these columns, returning its id, on PostgreSQL's cursor (core.hot)."""
    return Hot(_CE.insert().values({c: bindparam(c, type_=_CE.c[c].type) for c in columns}).returning(_CE.c.id))


def _insert_rows(session: Session, rows: list[dict]) -> list[int]:
    """Custody rows in one INSERT, their ids in the rows' order. PostgreSQL: RETURNING, ordered by parameter.
    SQLite cannot order a multi-row RETURNING (SQLAlchemy then sends a statement a row): the ids follow the
    highest one instead, which is safe because a writing SQLite transaction holds the database's write lock."""
    conn = session.connection()
    if conn.dialect.name == "postgresql" and len(rows) == 1:  # a stop's usual one line
        return [id_ for (id_,) in _insert_one(tuple(rows[0])).rows(conn, rows[0])]
    if conn.dialect.name == "postgresql" or len(rows) == 1:
        return list(conn.execute(_CE_INSERT, rows).scalars().all())
    last = int(conn.execute(_CE_LAST_ID).scalar_one())
    ids = list(range(last + 1, last + 1 + len(rows)))
    conn.execute(_CE.insert(), [{"id": id_, **row} for id_, row in zip(ids, rows, strict=True)])
    return ids


def _record_core(session: Session, events: Sequence[CustodyEvent]) -> list[CustodyEvent]:
    """:func:`record` in one INSERT however many rows (a route start's every line, where the ORM's flush wrote
    one statement a row): the same rows and audit records; the events stay outside the session, ``id`` filled
    in."""
    if not events:
        return []
    ids = _insert_rows(session, [{c: getattr(ev, c) for c in _CE_WRITTEN} for ev in events])
    for ev, id_ in zip(events, ids, strict=True):
        ev.id = id_
    return _audited(session, events)


def _at_stop(session: Session, stop: RouteStop) -> tuple[Route, list[_Held], dict[tuple[int, int], CustodyEvent]]:
    route = session.get(Route, stop.route_id)
    lines = _held(session, [stop.order_id]).get(stop.order_id, [])
    return route, lines, _last(session, [h.line_id for h in lines])


def _where(position: Position | None, h: _Held) -> dict:
    lat, lon = position if position is not None else (h.lat, h.lon)
    return {"lat": float(lat), "lon": float(lon)}


def record_delivered(session: Session, stop: RouteStop, at: datetime, actor: str, position: Position | None = None,
                     recipient: str | None = None, note: str | None = None) -> list[CustodyEvent]:
    """The stop's order handed over: each of its lines leaves the van's compartment at ``position``
    (default: the order's address). ``recipient`` and ``note`` are kept with the rows."""
    route, lines, last = _at_stop(session, stop)
    data = {k: v for k, v in (("recipient", recipient), ("note", note)) if v}
    events = [make_event("delivered", at, actor, h, vehicle_id=route.vehicle_id, compartment=h.temp_class,
                         route_id=route.id, stop_id=stop.id, data=data or None, **_where(position, h))
              for h in lines if getattr(last.get((h.line_id, h.lot_id)), "type", None) != "delivered"]
    return record(session, events)


def record_failed(session: Session, stop: RouteStop, at: datetime, actor: str, reason: str,
                  position: Position | None = None) -> list[CustodyEvent]:
    """A delivery attempt failed (nobody home, refused, address not found): the goods stay in the van."""
    route, lines, last = _at_stop(session, stop)
    events = []
    for h in lines:
        now = last.get((h.line_id, h.lot_id))
        if now is not None and (now.type == "delivered" or (now.type == "failed" and now.stop_id == stop.id)):
            continue
        events.append(make_event("failed", at, actor, h, vehicle_id=route.vehicle_id, compartment=h.temp_class,
                                 route_id=route.id, stop_id=stop.id, reason=reason, **_where(position, h)))
    return record(session, events)


@dataclass(frozen=True, slots=True)
class Door:
    """A stop as the delivery room's hot path holds it (plain values, no ORM objects): what
    :func:`record_at_door` needs to know without reading it again."""

    stop_pk: int
    stop_code: str
    order_id: int
    order_ref: str
    route_id: int
    vehicle_id: int
    vehicle_code: str


def _last_of(col: str) -> object:
    """The newest custody row's ``col`` for the held line and lot (by the order recorded, as :func:`_last`)."""
    return (select(_CE.c[col]).where(_CE.c.line_id == OrderLine.id, _CE.c.lot_id == StockLot.id)
            .order_by(_CE.c.id.desc()).limit(1).scalar_subquery())


# one order's held lines and lots (:func:`_held`) with where each is now (:func:`_last`), in one statement
_HELD_AND_LAST = Hot(
    select(OrderLine.id, OrderLine.line_no, Product.id, Product.sku, Product.temp_class, StockLot.id, StockLot.lot,
           func.sum(Reservation.qty), Order.lat, Order.lon, _last_of("type").label("last_type"),
           _last_of("stop_id").label("last_stop"))
    .select_from(Order)
    .join(OrderLine, OrderLine.order_id == Order.id)
    .join(Reservation, Reservation.line_id == OrderLine.id)
    .join(StockLot, StockLot.id == Reservation.lot_id)
    .join(Product, Product.id == OrderLine.product_id)
    .where(Order.id == bindparam("order_id"))
    .group_by(Order.id, OrderLine.id, OrderLine.line_no, Product.id, Product.sku, Product.temp_class,
              StockLot.id, StockLot.lot, Order.lat, Order.lon)
    .order_by(OrderLine.line_no, StockLot.lot))
_CE_INSERT = _CE.insert().returning(_CE.c.id, sort_by_parameter_order=True)
_CE_COLUMNS = ("type", "at", "actor", "node_id", "lat", "lon", "vehicle_id", "compartment", "route_id", "stop_id",
               "order_id", "line_id", "product_id", "lot_id", "lot", "qty", "reason", "data")


def record_at_door(session: Session, door: Door, kind: str, at: datetime, actor: str,
                   position: Position | None = None, recipient: str | None = None, note: str | None = None,
                   reason: str | None = None) -> int:
    """:func:`record_delivered` (``kind`` "delivered") or :func:`record_failed` ("failed") for a stop the
    caller holds as plain values: the same rows and audit records, in three statements' worth of work less
    (one read of the lines with their last custody row, one INSERT of the rows, and the views the audit log
    keeps built from what is known here instead of read back). Returns how many rows were written."""
    if at.tzinfo is None:
        raise ValueError("naive datetime given where an aware one is required")
    if kind not in ("delivered", "failed"):
        raise ValueError(f"record_at_door records delivered or failed, not {kind}")
    data = {k: v for k, v in (("recipient", recipient), ("note", note)) if v} or None if kind == "delivered" else None
    rows: list[dict] = []
    names: list[tuple[str, int]] = []
    for (line_id, line_no, product_id, sku, temp_class, lot_id, lot, qty, lat, lon, last_type,
         last_stop) in _HELD_AND_LAST.rows(session.connection(), {"order_id": door.order_id}):
        if last_type == "delivered" or (kind == "failed" and last_type == "failed" and last_stop == door.stop_pk):
            continue
        where_lat, where_lon = position if position is not None else (lat, lon)
        rows.append({"type": kind, "at": at, "actor": actor, "node_id": None, "lat": float(where_lat),
                     "lon": float(where_lon), "vehicle_id": door.vehicle_id, "compartment": temp_class,
                     "route_id": door.route_id, "stop_id": door.stop_pk, "order_id": door.order_id,
                     "line_id": line_id, "product_id": product_id, "lot_id": lot_id, "lot": lot, "qty": int(qty),
                     "reason": reason if kind == "failed" else None, "data": data})
        names.append((sku, line_no))
    if not rows:
        return 0
    ids = _insert_rows(session, rows)
    audit.append_many(session, [
        audit.Entry(actor, f"custody.{kind}", "custody", id_, {
            "type": kind, "at": audit.utc_text(at), "vehicle": door.vehicle_code, "compartment": row["compartment"],
            "sku": sku, "lot": row["lot"], "qty": row["qty"], "node": None, "position": [row["lat"], row["lon"]],
            "order_ref": door.order_ref, "line_no": line_no, "stop_id": door.stop_code, "actor": actor,
            "reason": row["reason"], "data": data}, why=row["reason"], at=at)
        for id_, row, (sku, line_no) in zip(ids, rows, names, strict=True)])
    return len(rows)


def record_returned(session: Session, stop: RouteStop, at: datetime, actor: str, node: Node | None = None,
                    reason: str | None = None) -> list[CustodyEvent]:
    """The goods of a stop come off the van at ``node`` (default: the route's depot), e.g. after a failure.

    What comes off is what custody says is aboard (each line and lot whose last row is ``loaded`` or
    ``failed``), not the order's reservations: an order cancelled after a failed attempt has none left,
    and its goods still come back with the van. Those of a cancelled order go back to stock (``data.to`` =
    ``stock``, as :func:`record_returned_to_stock` says of goods cancelled before loading): nothing waits
    for a re-attempt, the cancel already released the reservation.
    """
    route = session.get(Route, stop.route_id)
    node_id = node.id if node is not None else _depot_of(session, route)
    line_ids = session.scalars(select(OrderLine.id).where(OrderLine.order_id == stop.order_id)).all()
    cancelled = session.scalar(select(Order.status).where(Order.id == stop.order_id)) == "cancelled"
    extra = {"to": "stock", "cause": "order cancelled"} if cancelled else {}
    if cancelled:
        reason = "; ".join(filter(None, [reason, "order cancelled: back to stock"]))
    events = [make_event("returned", at, actor, node_id=node_id, order_id=ev.order_id, line_id=ev.line_id,
                         product_id=ev.product_id, lot_id=ev.lot_id, lot=ev.lot, qty=ev.qty, route_id=route.id,
                         stop_id=stop.id, reason=reason,
                         data={"from_vehicle": ev.vehicle_id, "from_compartment": ev.compartment, **extra})
              for _key, ev in sorted(_last(session, line_ids).items()) if ev.type in _ABOARD]
    return record(session, events)


def record_returned_to_stock(session: Session, order: Order, at: datetime, actor: str,
                             reason: str | None = None) -> list[CustodyEvent]:
    """An order cancelled after its lines were picked and before they went aboard: each picked quantity
    goes back into its lot at the node it was picked at (custody ``returned``, ``data.to`` = ``stock``).

    Only lines whose last custody row is ``picked`` come back: a line aboard a van comes back with the
    van (:func:`record_returned` at the end of the route), one already returned or delivered has nothing
    to give back, one never picked was only reserved (releasing the reservation is all there is).
    The quantity is what was picked since the line's last other custody row. The lot's stock row needs
    no change: its ``qty`` is what the node received, picking never took from it; the cancel's released
    reservation is what makes the units free again.
    """
    line_ids = session.scalars(select(OrderLine.id).where(OrderLine.order_id == order.id)).all()
    if not line_ids:
        return []
    pending: dict[tuple[int, int | None], list[CustodyEvent]] = {}
    for ev in session.scalars(select(CustodyEvent).where(CustodyEvent.line_id.in_(line_ids))
                              .order_by(CustodyEvent.id)):
        key = (ev.line_id, ev.lot_id)
        if ev.type == "picked":
            pending.setdefault(key, []).append(ev)
        else:
            pending.pop(key, None)
    why = "order cancelled after picking: back to stock" + (f" ({reason})" if reason else "")
    events = [make_event("returned", at, actor, node_id=picks[-1].node_id, order_id=order.id, line_id=key[0],
                         product_id=picks[-1].product_id, lot_id=key[1], lot=picks[-1].lot,
                         qty=sum(p.qty for p in picks), reason=why,
                         data={"to": "stock", "cause": "order cancelled", "picked": [p.id for p in picks]})
              for key, picks in sorted(pending.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))]
    return record(session, events)


# ----------------------------------------------------------------------------- reading back


def event_views(session: Session, events: Sequence[CustodyEvent]) -> list[dict]:
    """Custody rows as the trace shows them (CONTRACTS.md section 3): type, at, vehicle, compartment,
    sku, lot, qty, and where, who, which order line and why."""
    # every name the rows refer to in one statement (a UNION ALL of one lookup per kind), not one per kind
    wanted = {"node": (Node, Node.code, {e.node_id for e in events}),
              "van": (Vehicle, Vehicle.code, {e.vehicle_id for e in events}),
              "sku": (Product, Product.sku, {e.product_id for e in events}),
              "ref": (Order, Order.ref, {e.order_id for e in events}),
              "line": (OrderLine, OrderLine.line_no, {e.line_id for e in events}),
              "stop": (RouteStop, RouteStop.stop_id, {e.stop_id for e in events})}
    parts = [select(literal(kind).label("kind"), model.id.label("id"), cast(column, String).label("name"))
             .where(model.id.in_(sorted(ids - {None})))
             for kind, (model, column, ids) in wanted.items() if ids - {None}]
    found: dict[str, dict[int, str]] = {kind: {} for kind in wanted}
    if parts:
        for kind, id_, name in session.execute(union_all(*parts) if len(parts) > 1 else parts[0]):
            found[kind][id_] = name
    nodes, vans, skus, refs, stop_ids = found["node"], found["van"], found["sku"], found["ref"], found["stop"]
    line_nos = {k: int(v) for k, v in found["line"].items()}
    return [{"type": e.type, "at": audit.utc_text(e.at), "vehicle": vans.get(e.vehicle_id),
             "compartment": e.compartment, "sku": skus.get(e.product_id), "lot": e.lot, "qty": e.qty,
             "node": nodes.get(e.node_id), "position": [e.lat, e.lon] if e.lat is not None else None,
             "order_ref": refs.get(e.order_id), "line_no": line_nos.get(e.line_id), "stop_id": stop_ids.get(e.stop_id),
             "actor": e.actor, "reason": e.reason, "data": e.data}
            for e in events]


def order_custody(session: Session, order_ref: str) -> list[dict]:
    """Every custody row of one order, in time order."""
    events = session.scalars(select(CustodyEvent).join(Order, Order.id == CustodyEvent.order_id)
                             .where(Order.ref == order_ref).order_by(CustodyEvent.at, CustodyEvent.id)).all()
    return event_views(session, events)


def lot_custody(session: Session, lot: str) -> list[dict]:
    """Every custody row of a lot code (all nodes), in time order: where each part of it went."""
    events = session.scalars(select(CustodyEvent).where(CustodyEvent.lot == lot)
                             .order_by(CustodyEvent.at, CustodyEvent.id)).all()
    return event_views(session, events)


def now_or(at: datetime | None) -> datetime:
    return at if at is not None else utcnow()
