"""Dispatchers: take orders (one at a time or a CSV upload), allocate a day, see transfers."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import Caller, SessionDep, require
from api.pagination import After, Limit, page
from core.errors import Invalid, NotFound
from fulfillment.models import Order
from fulfillment.schemas import OrderIn
from fulfillment.service import (
    allocate_day,
    cancel_order,
    create_order,
    day_allocations,
    load_orders_csv,
    order_view,
    suggest_transfers_for,
)
from warehouses.service import LoadReport

router = APIRouter(tags=["orders"])
Dispatcher = Annotated[Caller, Depends(require("dispatcher"))]
MAX_CSV_BYTES = 20 * 1024 * 1024


def _order(session, ref: str) -> Order:  # noqa: ANN001
    order = session.scalar(select(Order).where(Order.ref == ref))
    if order is None:
        raise NotFound(f"no order {ref}")
    return order


@router.post("/orders", status_code=201)
def place_order(body: OrderIn, session: SessionDep, caller: Dispatcher) -> dict:
    order, moved = create_order(session, body, actor=caller.username)
    return {**order_view(order), "moved": moved}


@router.post("/orders/import")
async def import_orders(session: SessionDep, caller: Dispatcher,
                        file: Annotated[UploadFile, File(description="orders CSV")]) -> dict:
    """A CSV of orders placed now; each refused row is named by file:line, field and reason."""
    data = await file.read(MAX_CSV_BYTES + 1)
    if len(data) > MAX_CSV_BYTES:
        raise Invalid("CSV larger than 20 MB; split it")
    name = Path(file.filename or "orders.csv").name
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        report = LoadReport()
        refs = load_orders_csv(session, path, report, actor=caller.username, source="import", apply_cutoff=True)
    counts = report.file(name)
    return {"orders": len(refs), "lines": counts.as_dict(), "notes": report.notes,
            "rejected": [e.as_dict() for e in report.errors]}


@router.get("/orders")
def list_orders(request: Request, session: SessionDep, _caller: Dispatcher, limit: Limit = 100, after: After = None,
                day: Annotated[date | None, Query(alias="date")] = None, status: str | None = None) -> dict:
    query = select(Order)
    if day:
        query = query.where(Order.delivery_date == day)
    if status:
        query = query.where(Order.status == status)
    return page(session, request, query, Order.id, limit, after, order_view)


@router.get("/orders/{ref}")
def get_order(ref: str, session: SessionDep, _caller: Dispatcher) -> dict:
    return order_view(_order(session, ref))


class CancelIn(BaseModel):
    reason: str | None = None


@router.post("/orders/{ref}/cancel")
def cancel(ref: str, body: CancelIn, session: SessionDep, caller: Dispatcher) -> dict:
    return order_view(cancel_order(session, _order(session, ref), caller.username, body.reason))


class AllocateIn(BaseModel):
    date: date


@router.post("/allocations")
def allocate(body: AllocateIn, session: SessionDep, caller: Dispatcher) -> dict:
    outcome = allocate_day(session, body.date, actor=caller.username)
    return {"date": body.date.isoformat(), "allocated": outcome.allocated, "unallocated": outcome.unallocated,
            "seconds": round(outcome.seconds, 3), **day_allocations(session, body.date)}


@router.get("/allocations")
def get_allocations(session: SessionDep, _caller: Dispatcher, day: Annotated[date, Query(alias="date")]) -> dict:
    return {"date": day.isoformat(), **day_allocations(session, day)}


@router.get("/transfers")
def transfers(session: SessionDep, _caller: Dispatcher, day: Annotated[date, Query(alias="date")]) -> dict:
    return {"date": day.isoformat(), "transfers": suggest_transfers_for(session, day)}
