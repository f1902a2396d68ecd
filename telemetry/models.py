"""Stored telemetry: one row per sample (the dedup key), readings (partitioned by day on
PostgreSQL), rejected messages, alerts, and the rule state shared by every ingestor."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime
from warehouses.models import Vehicle


class TelemetrySample(Base):
    """(device, seq) identifies a sample: a QoS 1 redelivery or a replay inserts nothing."""

    __tablename__ = "telemetry_samples"

    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)


class TelemetryReading(Base):
    """One value of one sample. On PostgreSQL the table is partitioned by day on ts (migration 0002).

    No primary key in the database (migration 0005): telemetry_samples' key already lets each
    sample's readings in exactly once, and a second unique index on every reading cost the
    ingestor's inserts about 20 µs a sample in PostgreSQL. The mapper still identifies a
    reading by (ts, device, seq, kind, compartment), which the API's cursor pages by.
    """

    __tablename__ = "telemetry_readings"
    __table_args__ = (
        Index("ix_telemetry_readings_vehicle_kind_ts", "vehicle_id", "kind", "compartment", "ts"),
    )
    __mapper_args__ = {"primary_key": ["ts", "device", "seq", "kind", "compartment"]}  # noqa: RUF012

    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    device: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    # '' when the reading belongs to no compartment (shock, position, battery)
    compartment: Mapped[str] = mapped_column(String(16), default="")
    vehicle_id: Mapped[int] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    value2: Mapped[float | None] = mapped_column(Float, nullable=True)


class TelemetryReject(Base):
    """A message (or one element of a batch) that could not be used, kept with its reason."""

    __tablename__ = "telemetry_rejects"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    topic: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    batch_index: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_status_started", "status", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"), index=True)
    compartment: Mapped[str | None] = mapped_column(String(16), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="open")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    peak: Mapped[float | None] = mapped_column(Float, nullable=True)
    minutes_out: Mapped[float] = mapped_column(Float, default=0)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ack_note: Mapped[str | None] = mapped_column(Text, nullable=True)

    vehicle: Mapped[Vehicle] = relationship()


class VehicleRuleState(Base):
    """The rule engine's state per van, in the database so that several ingestors share it."""

    __tablename__ = "vehicle_rule_state"

    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"), primary_key=True)
    state: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_sample_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    # what the van carries, per compartment class: {"min_c", "max_c", "skus"} of the products aboard
    # (set by traceability from the day's routes); tightens the class's temperature limits
    cargo: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class DriverPosition(Base):
    """Where a driver's phone was, for vans without a tracker: a van's position by another sensor, kept per
    van beside its tracker's fixes (re-planning takes the newer; the delivery room records it)."""

    __tablename__ = "driver_positions"
    __table_args__ = (Index("ix_driver_positions_vehicle_id_at", "vehicle_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    driver_id: Mapped[int] = mapped_column(ForeignKey("drivers.id"), index=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
