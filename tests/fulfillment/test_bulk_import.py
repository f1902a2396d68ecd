"""A big orders file through the bulk path (COPY on PostgreSQL, executemany on SQLite): exactly its
good orders are stored, with their lines, events and audit records, and exactly its bad lines are
named (issue 14, item 3). Runs on whichever backend the suite runs on (CI runs both)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from fulfillment.models import Order, OrderEvent, OrderLine
from fulfillment.scenario import load_scenario
from fulfillment.service import load_orders_csv
from warehouses.models import Product
from warehouses.service import LoadReport

from .test_order_file_shapes import HEADER, _day, _network

SKUS = ("MILK-1L", "EGG-1", "YOG-1")
LINES = 10_000


def big_file(day) -> tuple[str, dict[str, list[tuple[str, int]]], dict[int, tuple[str, str]], set[str]]:  # noqa: ANN001
    """10,000 lines in orders of 1-3 lines (order columns on the first row only for every other order),
    six of them spoiled in six ways. Returns (text, good orders' lines, {bad line: (field, reason part)},
    refs of the spoiled orders)."""
    rows: list[list[str]] = []
    orders: dict[str, list[tuple[str, int]]] = {}
    k = 0
    while len(rows) < LINES:
        ref = f"B{k:05d}"
        n = min(1 + k % 3, LINES - len(rows))
        orders[ref] = []
        for i in range(n):
            sku, qty = SKUS[(k + i) % 3], 1 + (k + i) % 5
            head = i == 0 or k % 2 == 0
            rows.append([ref, str(day) if head else "", "delivery" if head else "",
                         f"{30.60 + (k % 97) / 1000:.3f}" if head else "", "104.070" if head else "",
                         "09:00" if head else "", "11:00" if head else "", sku, str(qty), "", "", "", "", "", ""])
            orders[ref].append((sku, qty))
        k += 1

    def line_of(index: int) -> int:
        return index + 2  # the header is line 1

    def first_index(ref: str) -> int:
        return next(i for i, r in enumerate(rows) if r[0] == ref)

    bad: dict[int, tuple[str, str]] = {}
    spoiled: set[str] = set()

    def spoil(ref: str, offset: int, column: int, value: str, field: str, reason: str) -> None:
        index = first_index(ref) + offset
        rows[index][column] = value
        bad[line_of(index)] = (field, reason)
        spoiled.add(ref)

    spoil("B00100", 0, 7, "NO-SUCH-SKU", "sku", "unknown sku NO-SUCH-SKU")      # a one-line order
    spoil("B01001", 1, 8, "0", "qty", "greater than 0")                         # a later line of a 3-line order
    spoil("B02002", 0, 3, "123", "lat", "less than or equal to 90")             # the first row of a 2-line order
    spoil("B03005", 0, 6, "08:00", "-", "window_end must be after window_start")
    spoil("B04007", 1, 5, "10:00", "window_start", "differs from line")         # contradicts its first row
    spoil("B04400", 2, 7, rows[first_index("B04400")][7], "sku", "appears twice")
    text = HEADER + "".join(",".join(r) + "\n" for r in rows)
    return text, {r: lines for r, lines in orders.items() if r not in spoiled}, bad, spoiled


def test_a_big_file_imports_exactly_its_good_orders_and_names_exactly_its_bad_lines(
        session: Session, tmp_path: Path) -> None:
    day = _day()
    load_scenario(session, _network(tmp_path / "net"))
    text, good, bad, spoiled = big_file(day)
    path = tmp_path / "big.csv"
    path.write_text(text, encoding="utf-8")
    before = {r["id"] for r in audit.flush(session)}
    report = LoadReport()

    loaded = load_orders_csv(session, path, report, actor="import", source="import", apply_cutoff=True)

    # exactly the bad lines are named, each with its field and why; the other lines of their orders too
    named = {(e.line, e.field): e.reason for e in report.errors}
    for line, (field, reason) in bad.items():
        assert reason in named.get((line, field), ""), (line, field, sorted(named)[:12])
    refs_of_line = {i + 2: ln.split(",", 1)[0] for i, ln in enumerate(text.splitlines()[1:])}
    spoiled_lines = {line for line, ref in refs_of_line.items() if ref in spoiled}
    assert {e.line for e in report.errors} == spoiled_lines
    assert all(e.file == "big.csv" for e in report.errors)
    assert {(e.line, e.field) for e in report.errors if e.line not in bad} == {
        (line, "order_ref") for line in spoiled_lines - set(bad)}
    counts = report.file("big.csv")
    assert (counts.inserted, counts.rejected) == (sum(map(len, good.values())), len(spoiled_lines))
    assert counts.inserted + counts.rejected == LINES

    # exactly the good orders are stored, with their lines in file order, one event each
    assert sorted(loaded) == sorted(good)
    skus = dict(session.execute(select(Product.id, Product.sku)).all())
    stored: dict[str, list[tuple[str, int]]] = {}
    for ref, product_id, qty in session.execute(
            select(Order.ref, OrderLine.product_id, OrderLine.qty).join(OrderLine, OrderLine.order_id == Order.id)
            .where(Order.source == "import").order_by(Order.ref, OrderLine.line_no)):
        stored.setdefault(ref, []).append((skus[product_id], qty))
    assert stored == good
    orders = session.execute(select(Order.ref, Order.status, Order.delivery_date, Order.window_start,
                                    Order.lat).where(Order.source == "import")).all()
    assert {(o.status, o.delivery_date) for o in orders} == {("received", day)}
    assert next(o for o in orders if o.ref == "B00002").lat == 30.602  # order columns from the first row
    events = session.execute(select(Order.ref, OrderEvent.type, OrderEvent.actor, OrderEvent.data)
                             .join(OrderEvent, OrderEvent.order_id == Order.id).where(Order.source == "import")).all()
    assert Counter(e.ref for e in events) == Counter(list(good))
    assert {(e.type, e.actor, e.data["source"]) for e in events} == {("received", "import", "import")}

    # and one audit record each, chained: the bulk path writes history like the row-by-row one
    written = [r for r in audit.flush(session) if r["id"] not in before]
    assert sorted(r["entity_id"] for r in written if r["action"] == "order.received") == sorted(good)
    assert audit.verify(session).ok


def test_a_big_file_with_nothing_wrong_is_all_stored_and_a_second_load_changes_nothing(
        session: Session, tmp_path: Path) -> None:
    day = _day()
    load_scenario(session, _network(tmp_path / "net"))
    text, good, _bad, spoiled = big_file(day)
    lines = text.splitlines(keepends=True)
    clean = lines[0] + "".join(ln for ln in lines[1:] if ln.split(",", 1)[0] not in spoiled)
    path = tmp_path / "clean.csv"
    path.write_text(clean, encoding="utf-8")
    report = LoadReport()
    assert sorted(load_orders_csv(session, path, report)) == sorted(good)
    assert report.errors == []
    again = LoadReport()
    load_orders_csv(session, path, again)
    counts = again.file("clean.csv")
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, sum(map(len, good.values())))
    events = Counter(session.scalars(select(Order.ref).join(OrderEvent, OrderEvent.order_id == Order.id)))
    assert events == Counter(list(good))  # the unchanged second load added no event
