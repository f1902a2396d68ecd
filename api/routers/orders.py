"""Dispatchers: take orders (one at a time or a CSV upload), allocate a day, see transfers."""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select

from api.deps import Caller, SessionDep, require
from api.pagination import After, Code, Limit, page
from api.schemas import (
    STAFF,
    AllocationOutcome,
    DayAllocations,
    ImportReport,
    OrderOut,
    OrderPlaced,
    Page,
    TransferAccept,
    TransferOut,
    Transfers,
    problems,
)
from core.errors import Invalid, NotFound
from core.settings import get_settings
from delivery.flows import cancel_order as cancel_with_custody
from fulfillment.models import Order
from fulfillment.schemas import OrderIn
from fulfillment.service import (
    allocate_day,
    create_order,
    day_allocations,
    load_orders_csv,
    order_view,
    suggest_transfers_for,
)
from traceability.flows import accept_transfer_flow
from warehouses.service import LoadReport

router = APIRouter(tags=["orders"], responses=STAFF)
Dispatcher = Annotated[Caller, Depends(require("dispatcher"))]
OrderStatus = Annotated[str, Query(max_length=40, description="an order status (fulfillment/lifecycle.py)")]


def _order(session, ref: str) -> Order:  # noqa: ANN001
    order = session.scalar(select(Order).where(Order.ref == ref))
    if order is None:
        raise NotFound(f"no order {ref}")
    return order


def _import_csv(session, data: bytes, filename: str | None, actor: str) -> dict:  # noqa: ANN001
    limit = get_settings().upload_max_bytes
    if len(data) > limit:
        raise Invalid(f"CSV larger than {limit} bytes (COLDCHAIN_UPLOAD_MAX_BYTES); split it")
    name = Path(filename or "orders.csv").name
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        report = LoadReport()
        refs = load_orders_csv(session, path, report, actor=actor, source="import", apply_cutoff=True)
    return {"orders": len(refs), "lines": report.file(name).as_dict(), "notes": report.notes,
            "rejected": [e.as_dict() for e in report.errors]}


@router.post("/orders", status_code=201, response_model=OrderPlaced, responses={
    200: {"description": "a CSV upload: what was taken, each refused row named",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ImportReport"}}}},
    **problems(409)}, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/OrderIn"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                                  "format": "binary"}}}}}}})
async def place_order(request: Request, session: SessionDep, caller: Dispatcher) -> JSONResponse:
    """One order as JSON (201), or a CSV upload as multipart field `file` (200, each refused row named)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise Invalid("multipart upload needs a file field named 'file'", pointer="/file")
        data = await upload.read(get_settings().upload_max_bytes + 1)
        report = _import_csv(session, data, upload.filename, caller.username)
        return JSONResponse(ImportReport.model_validate(report).model_dump(mode="json"))
    try:
        body = OrderIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
    order, moved = create_order(session, body, actor=caller.username)
    placed = OrderPlaced.model_validate({**order_view(order), "moved": moved})
    return JSONResponse(placed.model_dump(mode="json"), status_code=201)


@router.post("/orders/import", response_model=ImportReport)
async def import_orders(session: SessionDep, caller: Dispatcher,
                        file: Annotated[UploadFile, File(description="orders CSV")]) -> dict:
    """A CSV of orders placed now; each refused row is named by file:line, field and reason."""
    return _import_csv(session, await file.read(get_settings().upload_max_bytes + 1), file.filename,
                       caller.username)


@router.get("/orders", response_model=Page[OrderOut])
def list_orders(request: Request, session: SessionDep, _caller: Dispatcher, limit: Limit = 100, after: After = None,
                day: Annotated[date | None, Query(alias="date")] = None, status: OrderStatus | None = None) -> dict:
    query = select(Order)
    if day:
        query = query.where(Order.delivery_date == day)
    if status:
        query = query.where(Order.status == status)
    return page(session, request, query, Order.id, limit, after, order_view)


@router.get("/orders/{ref}", response_model=OrderOut)
def get_order(ref: Code, session: SessionDep, _caller: Dispatcher) -> dict:
    return order_view(_order(session, ref))


class CancelIn(BaseModel):
    reason: str | None = Field(None, max_length=2000)


@router.post("/orders/{ref}/cancel", response_model=OrderOut, responses=problems(409))
def cancel(ref: Code, body: CancelIn, session: SessionDep, caller: Dispatcher) -> dict:
    """Cancel an order until its van leaves (409 after): reservations released, and what was already picked
    for it recorded in custody as returned to stock, and a started route left with nothing to visit finished
    (delivery.flows.cancel_order)."""
    return order_view(cancel_with_custody(session, _order(session, ref), caller.username, body.reason))


class AllocateIn(BaseModel):
    date: date


@router.post("/allocations", response_model=AllocationOutcome)
def allocate(body: AllocateIn, session: SessionDep, caller: Dispatcher) -> dict:
    outcome = allocate_day(session, body.date, actor=caller.username)
    return {"date": body.date.isoformat(), "allocated": outcome.allocated, "unallocated": outcome.unallocated,
            "seconds": round(outcome.seconds, 3), **day_allocations(session, body.date)}


@router.get("/allocations", response_model=DayAllocations)
def get_allocations(session: SessionDep, _caller: Dispatcher, day: Annotated[date, Query(alias="date")]) -> dict:
    return {"date": day.isoformat(), **day_allocations(session, day)}


@router.get("/transfers", response_model=Transfers)
def transfers(session: SessionDep, _caller: Dispatcher, day: Annotated[date, Query(alias="date")]) -> dict:
    return {"date": day.isoformat(), "transfers": suggest_transfers_for(session, day)}


@router.post("/transfers/accept", response_model=TransferOut, responses=problems(409))
def accept_transfer(body: TransferAccept, session: SessionDep, caller: Dispatcher) -> dict:
    """Carry out one proposal that GET /transfers still makes (traceability.flows.accept_transfer_flow: the stock
    moves, the hub's custody records what it received); 409 for a proposal no longer made (done, or forged).
    Allocating the day again then lets the hub serve the orders."""
    proposal = {"from": body.from_, "to": body.to, "sku": body.sku, "lot": body.lot, "qty": body.qty}
    return accept_transfer_flow(session, body.date, proposal, actor=caller.username)
