"""Order intake: scenario files, CSV imports and API calls all pass through here."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, selectinload

from core import audit
from core.bulk import copy_rows, existing_keys, insert_with_ids, update_rows
from core.csvio import CsvFileError, CsvRow, RowError, inherit_blanks, read_rows, validate_row
from core.errors import Conflict, Invalid
from core.settings import get_settings
from core.timeutil import parse_hhmm, utcnow
from fulfillment.lifecycle import check_move
from fulfillment.models import Order, OrderEvent, OrderLine, Reservation
from fulfillment.schemas import ORDER_FIELDS, ORDER_FIELDS_NEEDED, ORDER_OPTIONAL, ORDER_REQUIRED, OrderRow
from warehouses.models import TEMP_CLASSES, LotHold, Node, Product, StockLot, Vehicle
from warehouses.service import LoadReport

EDITABLE = ("received", "unallocated")


def record_event(session: Session, order: Order, type_: str, actor: str, to_status: str | None = None,
                 data: dict | None = None, at: datetime | None = None) -> OrderEvent:
    """Change an order's status (if given, and only along the lifecycle) and keep the change as an event."""
    if to_status and order.status and to_status != order.status:
        try:
            check_move(order.ref, order.status, to_status)
        except ValueError as exc:
            raise Conflict(str(exc)) from exc
    event = OrderEvent(at=at or utcnow(), actor=actor, type=type_, from_status=order.status,
                       to_status=to_status or order.status, data=data)
    audit.append(session, actor, f"order.{type_}", "order", order.ref, _audit_data(event), why=_why(data),
                 at=event.at)
    if order.id is None:  # a new order: the event rides along in the same flush (no flush per order)
        order.events.append(event)
    else:
        event.order_id = order.id
        session.add(event)
    if to_status:
        order.status = to_status
    return event


@dataclass(frozen=True, slots=True)
class OrderMoves:
    """What :func:`order_moves` worked out: the order's status after the moves, its event rows and their audit
    records (in the moves' order)."""

    status: str
    rows: list[dict]
    entries: list[audit.Entry]


def order_moves(order_id: int, ref: str, status: str, moves: list[tuple[str, str | None, dict | None]],
                actor: str, at: datetime) -> OrderMoves:
    """:func:`record_event` for an order known by its id, ref and status (no ORM object), for hot paths (a
    driver's stop event): each ``(type, to_status, data)`` checked along the lifecycle in turn (Conflict
    naming both states otherwise), nothing written yet; :func:`write_order_moves` writes them."""
    rows: list[dict] = []
    entries: list[audit.Entry] = []
    for type_, to_status, data in moves:
        if to_status and status and to_status != status:
            try:
                check_move(ref, status, to_status)
            except ValueError as exc:
                raise Conflict(str(exc)) from exc
        row = {"order_id": order_id, "at": at, "actor": actor, "type": type_, "from_status": status,
               "to_status": to_status or status, "data": data}
        rows.append(row)
        entries.append(audit.Entry(actor, f"order.{type_}", "order", ref, _audit_data(row), why=_why(data), at=at))
        if to_status:
            status = to_status
    return OrderMoves(status, rows, entries)


_ORDER_EVENTS_INSERT = OrderEvent.__table__.insert()
_ORDER_STATUS = (update(Order.__table__).where(Order.__table__.c.id == bindparam("order_id"))
                 .values(status=bindparam("new_status")))


def write_order_moves(session: Session, before: str, moves: OrderMoves) -> None:
    """The event rows of :func:`order_moves` in one INSERT and the order's new status in one UPDATE (none when
    it stays); the audit records are the caller's to queue (audit.append_many), in the order it wants them."""
    if not moves.rows:
        return
    conn = session.connection()
    conn.execute(_ORDER_EVENTS_INSERT, moves.rows)
    if moves.status != before:
        conn.execute(_ORDER_STATUS, {"order_id": moves.rows[0]["order_id"], "new_status": moves.status})


def _audit_data(event: OrderEvent | dict) -> dict:
    """An order event as the audit log keeps it: the status move and the event's facts."""
    get = event.get if isinstance(event, dict) else lambda k: getattr(event, k)
    return {"from": get("from_status"), "to": get("to_status"), "data": get("data")}


def _why(data: dict | None) -> str | None:
    reason = (data or {}).get("reason")
    return reason if isinstance(reason, str) else None


def load_orders_csv(session: Session, path: Path, report: LoadReport, *, actor: str = "scenario",
                    source: str = "scenario", placed_at: datetime | None = None,
                    apply_cutoff: bool = False) -> list[str]:
    """Load an orders file (scenario orders.csv, `coldchain orders import`, the API's CSV upload).

    Rows with the same order_ref are one order. The order's own columns (ORDER_FIELDS) may be
    given on its first row only, as shops and ERPs export them: a later row that leaves them
    empty takes the first row's; one that gives another value contradicts it and is refused.

    Scenario files are taken for the date they name; imports (`apply_cutoff`) are orders
    being placed now, so the cut-off moves a late one to the next day and says so.

    An order with any bad row is refused whole (a partial order would ship the wrong
    goods) and each of its rows is named, so nothing is lost silently. Returns the refs loaded.
    """
    name = path.name
    report.file(name)
    rows: dict[str, list[tuple[CsvRow, OrderRow]]] = defaultdict(list)  # valid rows, by order
    bad_refs: dict[str, int] = {}  # order -> its first bad line
    first_errors: dict[str, set[tuple[str, str]]] = {}  # order -> what was wrong on its first row
    try:
        for row in inherit_blanks(read_rows(path, ORDER_REQUIRED, ORDER_OPTIONAL), "order_ref", ORDER_FIELDS):
            rec, errors = validate_row(OrderRow, row, name)
            ref = row.values.get("order_ref", "")
            if row.first_line is None:
                errors = [_needed_on_first_row(e, row, ref) for e in errors]
                first_errors[ref] = {(e.field, e.reason) for e in errors}
            else:  # what is wrong with the cells it took from the first row is said there, once
                errors = [e for e in errors if e.field not in row.inherited
                          and not (e.field == "-" and (e.field, e.reason) in first_errors.get(ref, ()))]
            if rec is None:
                if not errors:
                    errors = [RowError(name, row.line, "order_ref",
                                       f"order {ref} refused whole: its line {bad_refs[ref]} is bad")]
                for e in errors:
                    report.reject(e, count=False)
                report.file(name).rejected += 1
                if ref:
                    bad_refs.setdefault(ref, row.line)
                continue
            rows[rec.order_ref].append((row, rec))
    except CsvFileError as exc:
        report.reject(exc.error, count=False)
        return []

    products = {p.sku: p for p in session.scalars(select(Product))}
    nodes = {n.code: n for n in session.scalars(select(Node))}
    existing = _existing_orders(session, list(rows))
    counts = report.file(name)
    loaded: list[str] = []
    now = placed_at or utcnow()
    new_orders: list[tuple[str, dict, list[tuple[str, int]]]] = []  # written in bulk after the checks
    for ref, rows_of_order in rows.items():
        group = [(row.line, rec) for row, rec in rows_of_order]
        head_row, first = rows_of_order[0]
        first_line = head_row.line
        first_fields = first.order_fields()
        problems: list[RowError] = []
        for row, rec in rows_of_order:
            line = row.line
            if rec.sku not in products:
                problems.append(RowError(name, line, "sku", f"unknown sku {rec.sku}"))
            if rec.pickup_node and rec.pickup_node not in nodes:
                problems.append(RowError(name, line, "pickup_node", f"unknown node {rec.pickup_node}"))
            if row.first_line is not None and row.first_line == first_line:  # a later row of a good first row
                for k, v in rec.order_fields().items():
                    if v != first_fields[k]:
                        problems.append(RowError(
                            name, line, k, f"{_cell(row, k)} differs from line {first_line} of the same order "
                                           f"{ref} ({_cell(head_row, k)} there)"))
        skus = [rec.sku for _, rec in group]
        if len(set(skus)) != len(skus):
            dup = next(s for s in skus if skus.count(s) > 1)
            line = [ln for ln, r in group if r.sku == dup][1]
            problems.append(RowError(name, line, "sku", f"sku {dup} appears twice in order {ref}"))
        if ref in bad_refs:
            problems.append(RowError(name, first_line, "order_ref",
                                     f"order {ref} refused whole: its line {bad_refs[ref]} is bad"))
        if problems:
            bad_lines = {p.line for p in problems}
            for p in problems:
                report.reject(p, count=False)
            for line, _rec in group:
                if line not in bad_lines:
                    report.reject(RowError(name, line, "order_ref", f"order {ref} refused whole with its bad line"),
                                  count=False)
            counts.rejected += len(group)
            continue
        order_values = dict(first_fields)
        pickup = order_values.pop("pickup_node")
        order_values["pickup_node_id"] = nodes[pickup].id if pickup else None
        lines = [(rec.sku, rec.qty) for _, rec in group]
        current = existing.get(ref)
        if apply_cutoff and current is None:
            order_values["delivery_date"], moved = delivery_date_for(now, order_values["delivery_date"])
            if moved:
                report.notes.append(f"{name}:{first_line}: {ref}: {moved}")
                order_values["note"] = "; ".join(filter(None, [order_values.get("note"), moved]))
        if current is None:
            new_orders.append((ref, order_values, lines))
            counts.inserted += len(group)
            loaded.append(ref)
            continue
        same_lines = [(ln.product_id, ln.qty) for ln in current.lines] == [(products[s].id, q) for s, q in lines]
        same_order = all(getattr(current, k) == v for k, v in order_values.items())
        if same_lines and same_order:
            counts.unchanged += len(group)
            loaded.append(ref)
            continue
        if current.status not in EDITABLE:
            for line, _rec in group:
                report.reject(RowError(name, line, "order_ref",
                                       f"order {ref} is already {current.status}; cancel it before changing it"))
            continue
        for k, v in order_values.items():
            setattr(current, k, v)
        current.lines.clear()
        session.flush()
        current.lines = [OrderLine(line_no=i + 1, product_id=products[s].id, qty=q) for i, (s, q) in enumerate(lines)]
        record_event(session, current, "updated", actor, to_status="received", data={"source": source})
        counts.updated += len(group)
        loaded.append(ref)
    session.flush()
    _insert_new_orders(session, new_orders, {s: p.id for s, p in products.items()}, now, actor, source)
    return loaded


def _existing_orders(session: Session, refs: list[str]) -> dict[str, Order]:
    """The orders of this file that exist already (usually none: only those are loaded as objects)."""
    known = sorted(existing_keys(session, Order.__table__.c.ref, refs))
    out: dict[str, Order] = {}
    for i in range(0, len(known), 500):
        out.update((o.ref, o) for o in session.scalars(select(Order).options(selectinload(Order.lines))
                                                         .where(Order.ref.in_(known[i:i + 500]))))
    return out


def _insert_new_orders(session: Session, new_orders: list[tuple[str, dict, list[tuple[str, int]]]],
                       product_ids: dict[str, int], now: datetime, actor: str, source: str) -> None:
    """Write new orders, their lines, their "received" events and audit records in bulk.

    PostgreSQL: ids from the sequence and COPY; SQLite: executemany. The ORM's unit of work costs
    ~0.5 ms an order (20,000 orders: 41-70 s with its flush); this path writes the same rows: each
    order received, status received, one event and one audit record ``order.received`` with the
    same data as :func:`record_event` gives.
    """
    if not new_orders:
        return
    ids = insert_with_ids(session, Order.__table__, [
        {"ref": ref, "placed_at": now, "source": source, "status": "received", "status_reason": None,
         "node_id": None, **values} for ref, values, _lines in new_orders])
    copy_rows(session, OrderLine.__table__, [
        {"order_id": oid, "line_no": i + 1, "product_id": product_ids[sku], "qty": qty}
        for oid, (_ref, _values, lines) in zip(ids, new_orders, strict=True)
        for i, (sku, qty) in enumerate(lines)])
    data = {"source": source}
    copy_rows(session, OrderEvent.__table__, [
        {"order_id": oid, "at": now, "actor": actor, "type": "received", "from_status": "received",
         "to_status": "received", "data": data} for oid in ids])
    facts = _audit_data({"from_status": "received", "to_status": "received", "data": data})
    audit.append_many(session, [audit.Entry(actor, "order.received", "order", ref, facts, at=now)
                                for ref, _values, _lines in new_orders])


def _needed_on_first_row(error: RowError, row: CsvRow, ref: str) -> RowError:
    """An order's first row that leaves one of its needed columns empty: say so plainly (its later
    rows have nothing to take it from) rather than "Input should be a valid number"."""
    if ref and error.field in ORDER_FIELDS_NEEDED and not row.values.get(error.field):
        return RowError(error.file, error.line, error.field,
                        f"empty on the first row of order {ref}: the order's own columns go on its first row "
                        "(later rows may leave them empty)")
    return error


def _cell(row: CsvRow, column: str) -> str:
    value = row.values.get(column, "")
    return repr(value) if value else "empty"


# ---------------------------------------------------------------------------------------------
# ordering ahead (订单前置)


def delivery_date_for(placed_at: datetime, requested: date | None) -> tuple[date, str | None]:
    """The day an order placed at `placed_at` can be delivered; a note when it had to move.

    Orders for day D close at the cut-off (default 20:00 local) on D-1: buying only what was
    ordered the evening before is how the business cuts spoilage.
    """
    settings = get_settings()
    local = placed_at.astimezone(settings.tz)
    cutoff = parse_hhmm(settings.order_cutoff)
    earliest = local.date() + timedelta(days=1 if local.time() < cutoff else 2)
    if requested is None:
        return earliest, None
    if requested < earliest:
        return earliest, (f"placed {local:%Y-%m-%d %H:%M} after the {settings.order_cutoff} cut-off for "
                          f"{requested}; moved to {earliest}")
    return requested, None


# ---------------------------------------------------------------------------------------------
# allocation


@dataclass
class _OpenOrder:
    id: int
    ref: str
    status: str
    reason: str | None
    pure: object  # fulfillment.allocation.Order
    line_ids: dict[str, int]


def _open_orders(session: Session, day: date, codes: dict[int, str], skus: dict[int, str]) -> list[_OpenOrder]:
    """Claim the day's orders still to allocate (PostgreSQL: FOR UPDATE SKIP LOCKED, so two allocators split them)."""
    from fulfillment import allocation as alg

    query = (select(Order.id, Order.ref, Order.status, Order.status_reason, Order.mode, Order.delivery_date,
                    Order.lat, Order.lon, Order.pickup_node_id, Order.allow_split)
             .where(Order.delivery_date == day, Order.status.in_(("received", "unallocated")))
             .order_by(Order.placed_at, Order.ref))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = session.execute(query).all()
    lines: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for order_id, line_id, product_id, qty in session.execute(
            select(OrderLine.order_id, OrderLine.id, OrderLine.product_id, OrderLine.qty)
            .join(Order, OrderLine.order_id == Order.id)
            .where(Order.delivery_date == day, Order.status.in_(("received", "unallocated")))
            .order_by(OrderLine.order_id, OrderLine.line_no)):
        lines[order_id].append((line_id, product_id, qty))
    out = []
    for r in rows:
        mine = lines[r.id]
        pure = alg.Order(ref=r.ref, mode=r.mode, delivery_date=r.delivery_date, lat=r.lat, lon=r.lon,
                         lines=tuple((skus[p], q) for _l, p, q in mine), pickup_node=codes.get(r.pickup_node_id),
                         allow_split=r.allow_split)
        out.append(_OpenOrder(r.id, r.ref, r.status, r.status_reason, pure, {skus[p]: lid for lid, p, _q in mine}))
    return out


def _prior_allocations(session: Session, day: date, codes: dict[int, str], skus: dict[int, str],
                       open_ids: set[int]) -> dict[int, tuple[str, list]]:
    """What the day's orders allocated by earlier runs hold: order id -> (ref, allocations).

    A re-run passes these to the allocator with the orders in their place in the sequence, so
    that the reasons it gives are the ones the first run gave (fulfillment.allocation, "Re-runs").
    Read after the stock is locked, so that they match the lots' `reserved`.
    """
    from fulfillment import allocation as alg

    held: dict[int, tuple[str, dict[str, list]]] = {}
    for order_id, ref, node_id, product_id, lot, qty in session.execute(
            select(Order.id, Order.ref, Reservation.node_id, OrderLine.product_id, StockLot.lot, Reservation.qty)
            .join(OrderLine, OrderLine.order_id == Order.id)
            .join(Reservation, Reservation.line_id == OrderLine.id)
            .join(StockLot, Reservation.lot_id == StockLot.id)
            .where(Order.delivery_date == day, Order.status != "cancelled")
            .order_by(Order.id, Reservation.node_id, OrderLine.line_no, Reservation.id)):
        if order_id in open_ids:
            continue
        by_node = held.setdefault(order_id, (ref, {}))[1]
        by_node.setdefault(codes[node_id], []).append(alg.AllocLine(skus[product_id], lot, qty))
    return {oid: (ref, [alg.Allocation(ref, node, tuple(lines)) for node, lines in by_node.items()])
            for oid, (ref, by_node) in held.items()}


def _day_sequence(session: Session, day: date) -> list[int]:
    """The ids of the day's orders (not cancelled) in placement order, the order allocation takes them."""
    return list(session.scalars(select(Order.id).where(Order.delivery_date == day, Order.status != "cancelled")
                                .order_by(Order.placed_at, Order.ref)))


def _lock_stock(session: Session) -> None:
    """Lock what allocation draws on before reading it.

    PostgreSQL: every node and stock lot row FOR UPDATE in id order (no deadlocks); a second
    allocator waits, then reads what the first committed. SQLite: the writer session already
    holds the database's single write lock (BEGIN IMMEDIATE). The CHECK reserved <= qty is the
    last line of defence either way.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Node.id).order_by(Node.id).with_for_update())
        session.execute(select(StockLot.id).order_by(StockLot.id).with_for_update())
    else:
        session.execute(update(Node).where(Node.id == -1).values(code=Node.code))


def capacity_used(session: Session, day: date) -> dict[int, dict[str, float]]:
    """Litres per class already staged for `day` at each node by earlier allocations."""
    rows = session.execute(
        select(Reservation.node_id, Product.temp_class, func.sum(Reservation.qty * Product.unit_l))
        .join(OrderLine, Reservation.line_id == OrderLine.id)
        .join(Order, OrderLine.order_id == Order.id)
        .join(Product, OrderLine.product_id == Product.id)
        .where(Order.delivery_date == day, Order.status != "cancelled")
        .group_by(Reservation.node_id, Product.temp_class)
    )
    used: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(TEMP_CLASSES, 0.0))
    for node_id, temp_class, litres in rows:
        used[node_id][temp_class] = float(litres or 0)
    return used


@dataclass
class Network:
    """The pure allocator's view of the network for a day, and the ids to write results back."""

    nodes: list
    products: list
    lots: list
    node_ids: dict[str, int]
    codes: dict[int, str]
    skus: dict[int, str]
    lot_ids: dict[tuple[str, str, str], int]


def network_inputs(session: Session, day: date) -> Network:
    from shapely import wkt

    from fulfillment import allocation as alg

    used = capacity_used(session, day)
    with_van = set(session.scalars(select(Vehicle.depot_id).distinct()))
    node_rows = session.execute(select(Node.id, Node.code, Node.kind, Node.lat, Node.lon, Node.parent_id,
                                       Node.service_area_wkt, Node.frozen_l, Node.chilled_l, Node.ambient_l)
                                .order_by(Node.id)).all()
    codes = {r.id: r.code for r in node_rows}
    nodes = [
        alg.Node(code=r.code, kind=r.kind, lat=r.lat, lon=r.lon, parent=codes.get(r.parent_id),
                 area=wkt.loads(r.service_area_wkt) if r.service_area_wkt else None, has_van=r.id in with_van,
                 **{f"{c}_l": max(getattr(r, f"{c}_l") - used.get(r.id, {}).get(c, 0.0), 0.0) for c in TEMP_CLASSES})
        for r in node_rows
    ]
    product_rows = session.execute(select(Product.id, Product.sku, Product.temp_class, Product.unit_l)
                                   .order_by(Product.id)).all()
    skus = {r.id: r.sku for r in product_rows}
    products = [alg.Product(sku=r.sku, temp_class=r.temp_class, unit_l=r.unit_l) for r in product_rows]
    lots, lot_ids = [], {}
    # a lot code under an active quality hold is held at every node, also where its stock came in after the
    # hold was put on (the lot's own on_hold flag is set only on the rows there were then)
    held = set(session.scalars(select(LotHold.lot).where(LotHold.released_at.is_(None))))
    for r in session.execute(select(StockLot.id, StockLot.node_id, StockLot.product_id, StockLot.lot, StockLot.qty,
                                    StockLot.reserved, StockLot.expires, StockLot.on_hold).order_by(StockLot.id)):
        key = (codes[r.node_id], skus[r.product_id], r.lot)
        lot_ids[key] = r.id
        lots.append(alg.Lot(node=key[0], sku=key[1], lot=r.lot, qty=r.qty - r.reserved, expires=r.expires,
                            on_hold=r.on_hold or r.lot in held))
    return Network(nodes, products, lots, {c: i for i, c in codes.items()}, codes, skus, lot_ids)


@dataclass
class DayAllocation:
    day: date
    allocated: int
    unallocated: int
    seconds: float
    result: object  # fulfillment.allocation.AllocationResult


def allocate_day(session: Session, day: date, actor: str = "system") -> DayAllocation:
    """Allocate every open order of `day`, reserve lots FEFO, record events. The caller commits.

    A re-run gives the same answer: orders allocated before keep their lots and are passed to
    the allocator as prior allocations in their place in the sequence, so an order still
    unallocated keeps the reason it was given (and gets no new event) unless the day changed.

    Reads and writes in bulk (Core statements, executemany) so that tens of thousands of
    orders allocate in seconds; the ORM's unit of work is not used for these rows.
    """
    from fulfillment import allocation as alg

    started = time.perf_counter()
    codes = dict(session.execute(select(Node.id, Node.code)).all())
    skus = dict(session.execute(select(Product.id, Product.sku)).all())
    open_orders = _open_orders(session, day, codes, skus)
    _lock_stock(session)
    net = network_inputs(session, day)
    open_by_id = {o.id: o for o in open_orders}
    held = _prior_allocations(session, day, codes, skus, set(open_by_id))
    sequence, prior = [], []
    if held:
        for oid in _day_sequence(session, day):
            if oid in open_by_id:
                sequence.append(open_by_id[oid].pure)
            elif oid in held:
                ref, allocations = held[oid]
                sequence.append(alg.Order(ref=ref, mode="delivery", delivery_date=day, lat=None, lon=None, lines=()))
                prior.extend(allocations)
    else:
        sequence = [o.pure for o in open_orders]
    result = alg.allocate(net.nodes, net.products, net.lots, sequence, prior=prior,
                          radius_km=get_settings().default_service_radius_km)
    by_ref = {o.ref: o for o in open_orders}
    now = utcnow()
    reservations, events, order_updates = [], [], {}
    reserved: dict[int, int] = defaultdict(int)
    for alloc in result.allocations:
        order = by_ref[alloc.order_ref]
        node_id = net.node_ids[alloc.node]
        for sku, lot_code, qty in alloc.lines:
            lot_id = net.lot_ids[(alloc.node, sku, lot_code)]
            reservations.append({"line_id": order.line_ids[sku], "lot_id": lot_id, "node_id": node_id, "qty": qty})
            reserved[lot_id] += qty
        if order.id not in order_updates:
            order_updates[order.id] = {"oid": order.id, "status": "allocated", "node_id": node_id, "reason": None}
            events.append({"order_id": order.id, "at": now, "actor": actor, "type": "allocated",
                           "from_status": order.status, "to_status": "allocated", "data": {"node": alloc.node}})
    for miss in result.unallocated:
        order = by_ref[miss.order_ref]
        order_updates[order.id] = {"oid": order.id, "status": "unallocated", "node_id": None, "reason": miss.reason}
        if order.status != "unallocated" or order.reason != miss.reason:
            events.append({"order_id": order.id, "at": now, "actor": actor, "type": "unallocated",
                           "from_status": order.status, "to_status": "unallocated", "data": {"reason": miss.reason}})
    copy_rows(session, Reservation.__table__, reservations)
    update_rows(session, StockLot.__table__, "id", [{"id": i, "reserved": q} for i, q in reserved.items()],
                increment=("reserved",))
    update_rows(session, Order.__table__, "id", [{"id": u["oid"], "status": u["status"], "node_id": u["node_id"],
                                                  "status_reason": u["reason"]} for u in order_updates.values()])
    copy_rows(session, OrderEvent.__table__, events)
    _audit_allocation(session, events, {o.id: o.ref for o in open_orders}, result.allocations, actor)
    session.expire_all()
    return DayAllocation(day, len({a.order_ref for a in result.allocations}), len(result.unallocated),
                         time.perf_counter() - started, result)


def _audit_allocation(session: Session, events: list[dict], refs: dict[int, str], allocations: list,
                      actor: str) -> None:
    """The bulk path's order events into the audit log in one go, each allocation with the lots it reserved."""
    reserved: dict[str, list[dict]] = defaultdict(list)
    for alloc in allocations:
        reserved[alloc.order_ref] += [{"node": alloc.node, "sku": sku, "lot": lot, "qty": qty}
                                      for sku, lot, qty in alloc.lines]
    audit.append_many(session, [
        audit.Entry(actor, f"order.{e['type']}", "order", refs[e["order_id"]],
                    {**_audit_data(e), **({"reserved": reserved[refs[e["order_id"]]]} if e["type"] == "allocated"
                                          else {})}, why=_why(e["data"]), at=e["at"])
        for e in events])


def suggest_transfers_for(session: Session, day: date) -> list[dict]:
    """Flagship → hub transfer proposals for the day's unallocated orders (proposals only)."""
    from fulfillment import allocation as alg
    from fulfillment.transfers import suggest_transfers

    net = network_inputs(session, day)
    orders = list(session.scalars(select(Order).where(Order.delivery_date == day, Order.status == "unallocated")
                                  .order_by(Order.placed_at, Order.ref)))
    pure = [alg.Order(ref=o.ref, mode=o.mode, delivery_date=o.delivery_date, lat=o.lat, lon=o.lon,
                      lines=tuple((net.skus[ln.product_id], ln.qty) for ln in o.lines),
                      pickup_node=net.codes.get(o.pickup_node_id), allow_split=o.allow_split) for o in orders]
    result = alg.AllocationResult(unallocated=[alg.Unallocated(o.ref, o.status_reason or "") for o in orders],
                                  lots_left={(lt.node, lt.sku, lt.lot): lt.qty for lt in net.lots},
                                  capacity_left={n.code: {c: getattr(n, f"{c}_l") for c in TEMP_CLASSES}
                                                 for n in net.nodes})
    return [t.to_dict() for t in suggest_transfers(net.nodes, net.products, net.lots, pure, result,
                                                   radius_km=get_settings().default_service_radius_km)]


def day_allocations(session: Session, day: date) -> dict:
    """CONTRACTS.md section 5's allocations and unallocated, read back from the database."""
    rows = session.execute(
        select(Order.ref, Node.code, Product.sku, StockLot.lot, Reservation.qty)
        .join(OrderLine, OrderLine.order_id == Order.id)
        .join(Reservation, Reservation.line_id == OrderLine.id)
        .join(StockLot, Reservation.lot_id == StockLot.id)
        .join(Node, Reservation.node_id == Node.id)
        .join(Product, OrderLine.product_id == Product.id)
        .where(Order.delivery_date == day, Order.status != "cancelled")
        .order_by(Order.ref, Node.code, OrderLine.line_no, StockLot.expires, StockLot.lot)
    )
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for ref, node, sku, lot, qty in rows:
        grouped[(ref, node)].append({"sku": sku, "lot": lot, "qty": qty})
    unallocated = session.execute(select(Order.ref, Order.status_reason)
                                  .where(Order.delivery_date == day, Order.status == "unallocated")
                                  .order_by(Order.ref))
    return {
        "allocations": [{"order_ref": ref, "node": node, "lines": lines} for (ref, node), lines in grouped.items()],
        "unallocated": [{"order_ref": ref, "reason": reason or "not allocated"} for ref, reason in unallocated],
    }


def cancel_order(session: Session, order: Order, actor: str, reason: str | None = None) -> Order:
    """Cancel an order and give its reserved stock back."""
    if order.status in ("delivered", "cancelled", "out_for_delivery"):
        raise Conflict(f"order {order.ref} is {order.status} and cannot be cancelled")
    for line in order.lines:
        for res in list(line.reservations):
            session.execute(update(StockLot).where(StockLot.id == res.lot_id)
                            .values(reserved=StockLot.reserved - res.qty))
            session.delete(res)
    record_event(session, order, "cancelled", actor, to_status="cancelled", data={"reason": reason})
    session.flush()
    return order


def create_order(session: Session, data, actor: str, source: str = "api",  # noqa: ANN001
                 placed_at: datetime | None = None) -> tuple[Order, str | None]:
    """Place one order (fulfillment.schemas.OrderIn). Unknown SKUs or nodes raise Invalid with a pointer."""
    now = placed_at or utcnow()
    if session.scalar(select(Order.id).where(Order.ref == data.order_ref)) is not None:
        raise Conflict(f"order {data.order_ref} already exists", pointer="/order_ref")
    skus = [ln.sku for ln in data.lines]
    products = {p.sku: p for p in session.scalars(select(Product).where(Product.sku.in_(skus)))}
    for i, line in enumerate(data.lines):
        if line.sku not in products:
            raise Invalid(f"unknown sku {line.sku}", pointer=f"/lines/{i}/sku")
    pickup_id = None
    if data.pickup_node:
        pickup_id = session.scalar(select(Node.id).where(Node.code == data.pickup_node))
        if pickup_id is None:
            raise Invalid(f"unknown node {data.pickup_node}", pointer="/pickup_node")
    day, moved = delivery_date_for(now, data.delivery_date)
    order = Order(ref=data.order_ref, delivery_date=day, mode=data.mode, lat=data.lat, lon=data.lon,
                  window_start=data.window_start, window_end=data.window_end, pickup_node_id=pickup_id,
                  customer=data.customer, phone=data.phone, address=data.address, allow_split=data.allow_split,
                  note="; ".join(filter(None, [data.note, moved])) or None, placed_at=now, source=source,
                  status="received")
    order.lines = [OrderLine(line_no=i + 1, product_id=products[ln.sku].id, qty=ln.qty)
                   for i, ln in enumerate(data.lines)]
    session.add(order)
    session.flush()
    record_event(session, order, "received", actor, data={"source": source, "moved": moved})
    return order, moved


def order_view(order: Order) -> dict:
    """An order as the API shows it."""
    return {
        "order_ref": order.ref, "status": order.status, "reason": order.status_reason,
        "delivery_date": order.delivery_date.isoformat(), "mode": order.mode, "lat": order.lat, "lon": order.lon,
        "window": [f"{order.window_start:%H:%M}", f"{order.window_end:%H:%M}"],
        "node": order.node.code if order.node else None,
        "pickup_node": order.pickup_node.code if order.pickup_node else None,
        "customer": order.customer, "phone": order.phone, "address": order.address, "note": order.note,
        "allow_split": order.allow_split, "placed_at": order.placed_at.isoformat(),
        "lines": [{"sku": ln.product.sku, "qty": ln.qty,
                   "lots": [{"lot": r.lot.lot, "node": r.lot.node.code, "qty": r.qty} for r in ln.reservations]}
                  for ln in order.lines],
    }


TRANSFER_KEYS = ("from", "to", "sku", "lot", "qty")


def accept_transfer(session: Session, day: date, proposal: dict, actor: str) -> dict:
    """Carry out one of the day's transfer proposals: move ``qty`` of the lot from the flagship to the hub
    (same lot and expiry there). Only a proposal that :func:`suggest_transfers_for` still makes is carried
    out, so a stale page or a forged request cannot move stock anywhere else; allocate the day again to
    let the hub serve the orders. Custody of the moved stock is the caller's (traceability.flows)."""
    wanted = {k: proposal.get(k) for k in TRANSFER_KEYS}
    match = next((t for t in suggest_transfers_for(session, day) if all(t[k] == wanted[k] for k in TRANSFER_KEYS)),
                 None)
    if match is None:
        raise Conflict(f"no transfer of {wanted['qty']} x {wanted['sku']} lot {wanted['lot']} from {wanted['from']} "
                       f"to {wanted['to']} is proposed for {day} any more: reload the proposals")
    nodes = {n.code: n for n in session.scalars(select(Node).where(Node.code.in_([match["from"], match["to"]])))}
    product = session.scalar(select(Product).where(Product.sku == match["sku"]))
    source = session.scalar(select(StockLot).where(StockLot.node_id == nodes[match["from"]].id,
                                                   StockLot.product_id == product.id, StockLot.lot == match["lot"])
                            .with_for_update())
    if source is None or source.on_hold or source.available < match["qty"]:
        raise Conflict(f"lot {match['lot']} at {match['from']} no longer has {match['qty']} x {match['sku']} free")
    target = session.scalar(select(StockLot).where(StockLot.node_id == nodes[match["to"]].id,
                                                   StockLot.product_id == product.id, StockLot.lot == match["lot"]))
    if target is None:
        target = StockLot(node_id=nodes[match["to"]].id, product_id=product.id, lot=match["lot"], qty=0, reserved=0,
                          expires=source.expires)
        session.add(target)
    source.qty -= match["qty"]
    target.qty += match["qty"]
    session.flush()
    audit.append(session, actor, "stock.transferred", "lot", match["lot"], match,
                 why=f"for orders {', '.join(match['order_refs'])}")
    return match
