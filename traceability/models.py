"""Chain of custody: who held which quantity of which lot, where and when, for which order line.

One row per line and lot a physical step concerns (CONTRACTS.md section 3's trace shape:
type, at, vehicle, compartment, sku, lot, qty). Rows are written only by
traceability.custody, which also appends each to the audit log; they are never updated.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime
from fulfillment.models import Order, OrderLine
from warehouses.models import Node, Product, StockLot, Vehicle

CUSTODY_TYPES = ("received", "picked", "loaded", "delivered", "failed", "returned", "disposed")


class CustodyEvent(Base):
    """A physical step: received at a node, picked, loaded into a van's compartment, delivered, failed,
    returned to a node, disposed. ``lot`` keeps the lot code as it was (a recall searches by it)."""

    __tablename__ = "custody_events"
    __table_args__ = (
        CheckConstraint("type in ('received', 'picked', 'loaded', 'delivered', 'failed', 'returned', 'disposed')",
                        name="type"),
        CheckConstraint("qty > 0", name="qty_positive"),
        Index("ix_custody_events_lot_at", "lot", "at"),
        Index("ix_custody_events_at_id", "at", "id"),  # a period's custody in time order (exports), migration 0012
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    # where: a node, or a position (the door, the roadside), and the van and compartment when aboard
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"), nullable=True)
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    vehicle_id: Mapped[int | None] = mapped_column(ForeignKey("vehicles.id"), nullable=True, index=True)
    compartment: Mapped[str | None] = mapped_column(String(16), nullable=True)  # the compartment's class
    route_id: Mapped[int | None] = mapped_column(ForeignKey("routes.id"), nullable=True, index=True)
    stop_id: Mapped[int | None] = mapped_column(ForeignKey("route_stops.id"), nullable=True)
    # what: the order line, the lot and the quantity
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), nullable=True, index=True)
    line_id: Mapped[int | None] = mapped_column(ForeignKey("order_lines.id"), nullable=True, index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("stock_lots.id"), nullable=True, index=True)
    lot: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    node: Mapped[Node | None] = relationship()
    vehicle: Mapped[Vehicle | None] = relationship()
    order: Mapped[Order | None] = relationship()
    line: Mapped[OrderLine | None] = relationship()
    product: Mapped[Product] = relationship()
    stock_lot: Mapped[StockLot | None] = relationship()


class KeptRisk(Base):
    """An order's risk check as last assessed, with what it was assessed from (traceability.trace.order_risks):
    what one API worker assessed, the others take instead of assessing it again, while its inputs hold. Only
    a cache: a row whose inputs differ from what is stored now is ignored and written over; no foreign key,
    so that writing it never waits on the order's own transaction."""

    __tablename__ = "kept_risks"

    order_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    inputs: Mapped[str] = mapped_column(String(400))  # traceability.trace._digest of the inputs
    spoilage: Mapped[dict] = mapped_column(JSON)  # {"level", "reasons"}
    breakage: Mapped[dict] = mapped_column(JSON)
    aboard: Mapped[bool] = mapped_column(Boolean)
    assessed_at: Mapped[datetime] = mapped_column(UTCDateTime)
