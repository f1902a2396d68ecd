"""Orders, their lines, lot reservations and the lifecycle events traceability builds on."""

from __future__ import annotations

from datetime import date, datetime, time

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime
from warehouses.models import Node, Product, StockLot

ORDER_STATUSES = (
    "received",
    "allocated",
    "unallocated",
    "planned",
    "out_for_delivery",
    "delivered",
    "failed",
    "reattempt",
    "returned",
    "cancelled",
)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (CheckConstraint("mode in ('delivery', 'pickup')", name="mode"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    delivery_date: Mapped[date] = mapped_column(Date, index=True)
    mode: Mapped[str] = mapped_column(String(16))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    window_start: Mapped[time] = mapped_column(Time)
    window_end: Mapped[time] = mapped_column(Time)
    pickup_node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"), nullable=True)
    customer: Mapped[str | None] = mapped_column(String(200), nullable=True)
    phone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    address: Mapped[str | None] = mapped_column(Text, nullable=True)
    allow_split: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(24), default="received", index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"), nullable=True, index=True)
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(32), default="scenario")

    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="OrderLine.line_no"
    )
    # appended to only while the order is new (no load then); existing orders' events are added by order_id
    events: Mapped[list[OrderEvent]] = relationship(cascade="all, delete-orphan", order_by="OrderEvent.id")
    pickup_node: Mapped[Node | None] = relationship(foreign_keys=[pickup_node_id])
    node: Mapped[Node | None] = relationship(foreign_keys=[node_id])


class OrderLine(Base):
    __tablename__ = "order_lines"
    __table_args__ = (
        UniqueConstraint("order_id", "line_no"),
        CheckConstraint("qty > 0", name="qty_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    line_no: Mapped[int] = mapped_column(Integer)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    qty: Mapped[int] = mapped_column(Integer)

    order: Mapped[Order] = relationship(back_populates="lines")
    product: Mapped[Product] = relationship()
    reservations: Mapped[list[Reservation]] = relationship(back_populates="line", cascade="all, delete-orphan")


class Reservation(Base):
    """qty of one lot promised to one order line; released on cancel."""

    __tablename__ = "reservations"
    __table_args__ = (CheckConstraint("qty > 0", name="qty_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("order_lines.id", ondelete="CASCADE"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("stock_lots.id"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    qty: Mapped[int] = mapped_column(Integer)

    line: Mapped[OrderLine] = relationship(back_populates="reservations")
    lot: Mapped[StockLot] = relationship()


_DAMAGED = "'damaged'"  # the partial index's predicate and DAMAGE_REPORTS name it alike


class OrderEvent(Base):
    """Every status change with its time and actor: the order's own history."""

    __tablename__ = "order_events"
    # damage reports by order (risk checks look up the newest one of a van's orders on every route read):
    # few rows, so a lookup never walks the day's other events, migration 0014
    __table_args__ = (Index("ix_order_events_damaged", "order_id", postgresql_where=text(f"type = {_DAMAGED}"),
                            sqlite_where=text(f"type = {_DAMAGED}")),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(24), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(24), nullable=True)
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)


DAMAGE_REPORTS = OrderEvent.__table__.c.type == literal_column(_DAMAGED)
"""The damage reports among order events, as the partial index ix_order_events_damaged states them: a literal.
Written ``type == "damaged"``, the value is a bound parameter, and a prepared statement's generic plan cannot use
a partial index for ``type = $1``: PostgreSQL kept planning such a statement afresh on every run (the risk
inputs' aggregate of every route read: 0.87 ms of backend CPU a run at 150 vans, 0.05 ms with the literal)."""
