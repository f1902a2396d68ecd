"""Order intake: scenario files, CSV imports and API calls all pass through here."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.csvio import CsvFileError, RowError, read_rows, validate_row
from core.timeutil import utcnow
from fulfillment.models import Order, OrderEvent, OrderLine
from fulfillment.schemas import ORDER_OPTIONAL, ORDER_REQUIRED, OrderRow
from warehouses.models import Node, Product
from warehouses.service import LoadReport

EDITABLE = ("received", "unallocated")


def record_event(session: Session, order: Order, type_: str, actor: str, to_status: str | None = None,
                 data: dict | None = None, at: datetime | None = None) -> OrderEvent:
    """Change an order's status (if given) and keep the change as an event."""
    event = OrderEvent(order_id=order.id, at=at or utcnow(), actor=actor, type=type_,
                       from_status=order.status, to_status=to_status or order.status, data=data)
    if to_status:
        order.status = to_status
    session.add(event)
    return event


def load_orders_csv(session: Session, path: Path, report: LoadReport, *, actor: str = "scenario",
                    source: str = "scenario", placed_at: datetime | None = None) -> list[str]:
    """Load orders.csv; rows with the same order_ref are one order.

    An order with any bad row is refused whole (a partial order would ship the wrong
    goods) and each of its rows is named, so nothing is lost silently. Returns the refs loaded.
    """
    name = path.name
    report.file(name)
    rows: dict[str, list[tuple[int, OrderRow]]] = defaultdict(list)
    bad_refs: dict[str, int] = {}
    raw_refs: dict[int, str] = {}
    try:
        for row in read_rows(path, ORDER_REQUIRED, ORDER_OPTIONAL):
            rec, errors = validate_row(OrderRow, row, name)
            ref = row.values.get("order_ref", "")
            raw_refs[row.line] = ref
            if errors:
                for e in errors:
                    report.reject(e, count=False)
                report.file(name).rejected += 1
                if ref:
                    bad_refs.setdefault(ref, row.line)
                continue
            rows[rec.order_ref].append((row.line, rec))
    except CsvFileError as exc:
        report.reject(exc.error, count=False)
        return []

    products = {p.sku: p for p in session.scalars(select(Product))}
    nodes = {n.code: n for n in session.scalars(select(Node))}
    existing = {o.ref: o for o in session.scalars(select(Order).where(Order.ref.in_(list(rows))))} if rows else {}
    counts = report.file(name)
    loaded: list[str] = []
    now = placed_at or utcnow()
    for ref, group in rows.items():
        first_line, first = group[0]
        problems: list[RowError] = []
        for line, rec in group:
            if rec.sku not in products:
                problems.append(RowError(name, line, "sku", f"unknown sku {rec.sku}"))
            if rec.pickup_node and rec.pickup_node not in nodes:
                problems.append(RowError(name, line, "pickup_node", f"unknown node {rec.pickup_node}"))
            if line != first_line:
                diff = [k for k, v in rec.order_fields().items() if v != first.order_fields()[k]]
                if diff:
                    problems.append(RowError(name, line, diff[0],
                                             f"differs from line {first_line} of the same order {ref}"))
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
        order_values = first.order_fields()
        pickup = order_values.pop("pickup_node")
        order_values["pickup_node_id"] = nodes[pickup].id if pickup else None
        lines = [(rec.sku, rec.qty) for _, rec in group]
        current = existing.get(ref)
        if current is None:
            order = Order(ref=ref, placed_at=now, source=source, status="received", **order_values)
            order.lines = [OrderLine(line_no=i + 1, product_id=products[s].id, qty=q) for i, (s, q) in enumerate(lines)]
            session.add(order)
            session.flush()
            record_event(session, order, "received", actor, data={"source": source})
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
    return loaded
