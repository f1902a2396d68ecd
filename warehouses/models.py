"""The physical network: flagship stores, community hubs, products, stock lots, vans, drivers, users."""

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
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime

TEMP_CLASSES = ("frozen", "chilled", "ambient")


class Node(Base):
    """A flagship store (直营旗舰店) or a community hub (社区加盟店)."""

    __tablename__ = "nodes"
    __table_args__ = (CheckConstraint("kind in ('flagship', 'hub')", name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id"), nullable=True)
    opens: Mapped[time] = mapped_column(Time)
    closes: Mapped[time] = mapped_column(Time)
    frozen_l: Mapped[float] = mapped_column(Float, default=0)
    chilled_l: Mapped[float] = mapped_column(Float, default=0)
    ambient_l: Mapped[float] = mapped_column(Float, default=0)
    service_area_wkt: Mapped[str | None] = mapped_column(Text, nullable=True)

    parent: Mapped[Node | None] = relationship(remote_side="Node.id")
    vehicles: Mapped[list[Vehicle]] = relationship(back_populates="depot")

    def capacity_l(self, temp_class: str) -> float:
        return float(getattr(self, f"{temp_class}_l"))


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (CheckConstraint("temp_class in ('frozen', 'chilled', 'ambient')", name="temp_class"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    temp_class: Mapped[str] = mapped_column(String(16))
    fragile: Mapped[bool] = mapped_column(Boolean, default=False)
    unit_l: Mapped[float] = mapped_column(Float)
    unit_kg: Mapped[float] = mapped_column(Float)
    shelf_life_days: Mapped[int] = mapped_column(Integer)
    min_c: Mapped[float] = mapped_column(Float)
    max_c: Mapped[float] = mapped_column(Float)
    max_on_board_min: Mapped[int | None] = mapped_column(Integer, nullable=True)


class StockLot(Base):
    """A lot of one SKU held at one node. `reserved` is what allocations have promised out of `qty`."""

    __tablename__ = "stock_lots"
    __table_args__ = (
        UniqueConstraint("node_id", "product_id", "lot"),
        CheckConstraint("qty >= 0", name="qty_nonneg"),
        CheckConstraint("reserved >= 0 AND reserved <= qty", name="reserved_within_qty"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    lot: Mapped[str] = mapped_column(String(64))
    qty: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    expires: Mapped[date] = mapped_column(Date)
    on_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    node: Mapped[Node] = relationship()
    product: Mapped[Product] = relationship()

    @property
    def available(self) -> int:
        return self.qty - self.reserved


class Vehicle(Base):
    """A refrigerated van based at a depot node, with up to three compartments."""

    __tablename__ = "vehicles"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    depot_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    max_kg: Mapped[float] = mapped_column(Float)
    shift_start: Mapped[time] = mapped_column(Time)
    shift_end: Mapped[time] = mapped_column(Time)
    speed_kmh: Mapped[float] = mapped_column(Float)
    cost_per_km: Mapped[float] = mapped_column(Float)
    fixed_cost: Mapped[float] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)

    depot: Mapped[Node] = relationship(back_populates="vehicles")
    compartments: Mapped[list[Compartment]] = relationship(
        back_populates="vehicle", cascade="all, delete-orphan", order_by="Compartment.temp_class"
    )

    def capacity_l(self, temp_class: str) -> float:
        return sum(c.capacity_l for c in self.compartments if c.temp_class == temp_class)


class Compartment(Base):
    """One temperature zone of a van; custody records say which compartment a line rode in."""

    __tablename__ = "compartments"
    __table_args__ = (UniqueConstraint("vehicle_id", "temp_class"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id", ondelete="CASCADE"))
    temp_class: Mapped[str] = mapped_column(String(16))
    capacity_l: Mapped[float] = mapped_column(Float)

    vehicle: Mapped[Vehicle] = relationship(back_populates="compartments")


class Driver(Base):
    __tablename__ = "drivers"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    vehicle_id: Mapped[int | None] = mapped_column(ForeignKey("vehicles.id"), nullable=True)

    vehicle: Mapped[Vehicle | None] = relationship()


class User(Base):
    """A login. A driver user is the driver of the same username (CONTRACTS.md section 1)."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role in ('dispatcher', 'driver', 'quality', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class ScenarioLoad(Base):
    """A record of each `scenario load`, so operators can see what came in and what was refused."""

    __tablename__ = "scenario_loads"

    id: Mapped[int] = mapped_column(primary_key=True)
    directory: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    counts: Mapped[dict] = mapped_column(JSON)
    rejected: Mapped[list] = mapped_column(JSON)


class LotHold(Base):
    """A quality hold on a lot code (every node's stock of it): who put it on, why, and who released it.

    Here, not in traceability, so that allocation (fulfillment) reads it without importing the room above
    it; traceability.service puts holds on and takes them off (and appends each to the audit log). One
    active hold per lot (the partial unique index); released holds stay as the lot's history.
    """

    __tablename__ = "lot_holds"
    __table_args__ = (
        Index("uq_lot_holds_active_lot", "lot", unique=True, sqlite_where=text("released_at IS NULL"),
              postgresql_where=text("released_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    lot: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    held_by: Mapped[str] = mapped_column(String(64))
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    release_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
