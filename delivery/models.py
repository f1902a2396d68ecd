"""What drivers report: stop and route events, damage per order line, proofs, phone positions, idempotency keys.

The routes and stops themselves are routing's (routing/models.py: a stop's ``stop_id`` survives
re-plans while it stays on the same van); these tables only ever reference them, so a
re-plan never loses what a driver said.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, UTCDateTime


class DeliveryEvent(Base):
    """One thing a driver reported: the route started or finished, a stop arrived, delivered, failed or damaged."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    route_id: Mapped[int] = mapped_column(ForeignKey("routes.id", ondelete="CASCADE"), index=True)
    stop_pk: Mapped[int | None] = mapped_column(ForeignKey("route_stops.id", ondelete="CASCADE"), nullable=True,
                                                index=True)
    stop_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the opaque id the driver used
    driver_id: Mapped[int] = mapped_column(ForeignKey("drivers.id"), index=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"))
    type: Mapped[str] = mapped_column(String(16))  # started | finished | arrived | delivered | failed | damaged
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # when it happened (the phone's time)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the server heard of it
    lat: Mapped[float | None] = mapped_column(Float, nullable=True)
    lon: Mapped[float | None] = mapped_column(Float, nullable=True)
    recipient: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(16), nullable=True)


class StopDamage(Base):
    """Damage found at the door, per order line and quantity (breakage risk reads it)."""

    __tablename__ = "stop_damages"
    __table_args__ = (CheckConstraint("qty > 0", name="qty_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("delivery_events.id", ondelete="CASCADE"), index=True)
    stop_pk: Mapped[int] = mapped_column(ForeignKey("route_stops.id", ondelete="CASCADE"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("order_lines.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"))
    qty: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeliveryProof(Base):
    """A photo or signature for a stop; the file lives under COLDCHAIN_PROOF_DIR, named by its SHA-256."""

    __tablename__ = "delivery_proofs"

    id: Mapped[int] = mapped_column(primary_key=True)
    stop_pk: Mapped[int] = mapped_column(ForeignKey("route_stops.id", ondelete="CASCADE"), index=True)
    driver_id: Mapped[int] = mapped_column(ForeignKey("drivers.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_type: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdempotencyKey(Base):
    """A driver's Idempotency-Key and the first answer to it (IETF draft-ietf-httpapi-idempotency-key-header).

    The row is committed ("running") before the work starts, so a repeat in another API process
    sees it; the answer is written in the same transaction as the work ("done").
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("driver_id", "key"),
                      Index("ix_idempotency_keys_driver_id_created_at", "driver_id", "created_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    driver_id: Mapped[int] = mapped_column(ForeignKey("drivers.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of method, path and body
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_headers: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
