"""Each node's pick list for the day and the consolidated demand per SKU.

Pick lists go order by order, lot by lot, grouped by temperature class (frozen first:
it is picked last-in-first-out of the freezer right before loading); the demand sheet
says what the day needs per SKU and how much of it the node holds, which is what the
buyers order in or transfer.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.pdf import document, escape, paragraph_style, styles, table_style
from fulfillment.models import Order, OrderLine, Reservation
from warehouses.models import TEMP_CLASSES, Node, Product, StockLot


def pick_lists(session: Session, day: date, node_code: str | None = None) -> list[dict]:
    """[{node, name, date, classes: {frozen: [{order_ref, window, sku, name, lot, expires, qty, fragile}]}}]"""
    query = (
        select(Node.code, Node.name, Order.ref, Order.window_start, Order.window_end, Order.mode, Product.sku,
               Product.name, Product.temp_class, Product.fragile, StockLot.lot, StockLot.expires, Reservation.qty,
               Product.unit_l)
        .join(OrderLine, Reservation.line_id == OrderLine.id)
        .join(Order, OrderLine.order_id == Order.id)
        .join(Product, OrderLine.product_id == Product.id)
        .join(StockLot, Reservation.lot_id == StockLot.id)
        .join(Node, Reservation.node_id == Node.id)
        .where(Order.delivery_date == day, Order.status != "cancelled")
        .order_by(Node.code, Order.window_start, Order.ref, OrderLine.line_no, StockLot.expires, StockLot.lot)
    )
    if node_code:
        query = query.where(Node.code == node_code)
    lists: dict[str, dict] = {}
    for row in session.execute(query):
        code, name, ref, ws, we, mode, sku, pname, tclass, fragile, lot, expires, qty, unit_l = row
        entry = lists.setdefault(code, {"node": code, "name": name, "date": day.isoformat(),
                                        "classes": {c: [] for c in TEMP_CLASSES},
                                        "litres": dict.fromkeys(TEMP_CLASSES, 0.0)})
        entry["classes"][tclass].append({"order_ref": ref, "mode": mode, "window": f"{ws:%H:%M}-{we:%H:%M}",
                                         "sku": sku, "name": pname, "lot": lot, "expires": expires.isoformat(),
                                         "qty": qty, "fragile": fragile})
        entry["litres"][tclass] += qty * unit_l
    return list(lists.values())


def demand(session: Session, day: date) -> list[dict]:
    """Per SKU: units ordered for the day (all open orders), units reserved, units usable on hand, shortfall."""
    ordered = dict(session.execute(
        select(Product.sku, func.sum(OrderLine.qty)).join(OrderLine, OrderLine.product_id == Product.id)
        .join(Order, OrderLine.order_id == Order.id)
        .where(Order.delivery_date == day, Order.status != "cancelled").group_by(Product.sku)).all())
    reserved = dict(session.execute(
        select(Product.sku, func.sum(Reservation.qty)).join(OrderLine, Reservation.line_id == OrderLine.id)
        .join(Product, OrderLine.product_id == Product.id).join(Order, OrderLine.order_id == Order.id)
        .where(Order.delivery_date == day, Order.status != "cancelled").group_by(Product.sku)).all())
    usable = dict(session.execute(
        select(Product.sku, func.sum(StockLot.qty - StockLot.reserved)).join(Product, StockLot.product_id == Product.id)
        .where(StockLot.expires >= day, StockLot.on_hold.is_(False)).group_by(Product.sku)).all())
    names = dict(session.execute(select(Product.sku, Product.name)).all())
    rows = []
    for sku in sorted(ordered):
        short = max(int(ordered[sku]) - int(reserved.get(sku) or 0) - int(usable.get(sku) or 0), 0)
        rows.append({"sku": sku, "name": names.get(sku), "ordered": int(ordered[sku]),
                     "reserved": int(reserved.get(sku) or 0), "free_on_hand": int(usable.get(sku) or 0),
                     "to_buy": short})
    return rows


def render_pdf(lists: list[dict], path: Path) -> Path:
    """One page per node, a table per temperature class; Chinese text in core.pdf's embedded CJK font."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import PageBreak, Paragraph, Spacer, Table

    sheet = styles()
    cell = paragraph_style("cell", sheet["Normal"], fontSize=8, leading=9.5)
    flag = paragraph_style("flag", cell, textColor=colors.red)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = document(path, pagesize=A4, leftMargin=12 * mm, rightMargin=12 * mm, topMargin=12 * mm,
                   bottomMargin=12 * mm, title="pick lists")
    # 186 mm across: the codes of the sample city fit their columns on one line; product names (up to
    # 70 mm) wrap in theirs, and FRAGILE 易碎 over two lines
    widths = [24 * mm, 18 * mm, 33 * mm, 46 * mm, 19 * mm, 17 * mm, 8 * mm, 13 * mm, 8 * mm]
    story: list = []
    for i, pl in enumerate(lists):
        if i:
            story.append(PageBreak())
        story.append(Paragraph(f"Pick list 拣货单 {escape(pl['node'])} {escape(pl['name'])} — {pl['date']}",
                               sheet["Title"]))
        for tclass in TEMP_CLASSES:
            rows = pl["classes"][tclass]
            if not rows:
                continue
            story.append(Paragraph(f"{tclass} ({pl['litres'][tclass]:.1f} l)", sheet["Heading2"]))
            data = [["order", "window", "sku", "product", "lot", "expires", "qty", "", "✓"]]
            data += [[r["order_ref"], r["window"], r["sku"], Paragraph(escape(r["name"]), cell), r["lot"],
                      r["expires"], str(r["qty"]), Paragraph("FRAGILE 易碎", flag) if r["fragile"] else "", "□"]
                     for r in rows]
            table = Table(data, repeatRows=1, colWidths=widths)
            table.setStyle(table_style(
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde7f0")),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 3),
                ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                ("FONTSIZE", (8, 1), (8, -1), 12),  # the box to tick
                ("ALIGN", (8, 0), (8, -1), "CENTER"),
            ))
            story += [table, Spacer(1, 4 * mm)]
    if not story:
        story.append(Paragraph("No allocated orders.", sheet["Normal"]))
    doc.build(story)
    return path
