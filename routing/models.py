"""Stored day plans: one plan per depot and day, its routes, their stops, and what could not be served."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Date, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, UTCDateTime
from fulfillment.models import Order
from warehouses.models import Node, Vehicle


class Plan(Base):
    __tablename__ = "plans"
    __table_args__ = (UniqueConstraint("day", "depot_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    depot_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="current")  # current | superseded
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    time_limit: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    distance_m: Mapped[float] = mapped_column(Float)
    cost: Mapped[float] = mapped_column(Float)
    strategy: Mapped[str] = mapped_column(String(200), default="")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why re-planned
    diff: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    depot: Mapped[Node] = relationship()
    routes: Mapped[list[Route]] = relationship(back_populates="plan", cascade="all, delete-orphan",
                                               order_by="Route.id")  # a van's trips in order
    unserved: Mapped[list[UnservedOrder]] = relationship(back_populates="plan", cascade="all, delete-orphan")


class Route(Base):
    __tablename__ = "routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"), index=True)
    vehicle_id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"), index=True)
    trip: Mapped[int] = mapped_column(Integer, default=1, server_default="1")  # the van's n-th load that day
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime] = mapped_column(UTCDateTime)
    distance_m: Mapped[float] = mapped_column(Float)
    cost: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="planned")  # planned | started | done | broken
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    load: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    plan: Mapped[Plan] = relationship(back_populates="routes")
    vehicle: Mapped[Vehicle] = relationship()
    stops: Mapped[list[RouteStop]] = relationship(back_populates="route", cascade="all, delete-orphan",
                                                  order_by="RouteStop.seq")


class RouteStop(Base):
    __tablename__ = "route_stops"

    id: Mapped[int] = mapped_column(primary_key=True)
    stop_id: Mapped[str] = mapped_column(String(32), unique=True)  # opaque, unique across all routes
    route_id: Mapped[int] = mapped_column(ForeignKey("routes.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    arrive_at: Mapped[datetime] = mapped_column(UTCDateTime)
    service_at: Mapped[datetime] = mapped_column(UTCDateTime)
    depart_at: Mapped[datetime] = mapped_column(UTCDateTime)
    leg_m: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="planned")  # planned | arrived | delivered | failed

    route: Mapped[Route] = relationship(back_populates="stops")
    order: Mapped[Order] = relationship()


class UnservedOrder(Base):
    __tablename__ = "unserved_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    reason: Mapped[str] = mapped_column(Text)

    plan: Mapped[Plan] = relationship(back_populates="unserved")
    order: Mapped[Order] = relationship()
