"""Quality staff: an order's or a lot's trace, the day's orders at risk, and quality holds on lots
(CONTRACTS.md section 3; issue 11 items 3 to 5). Admin passes every role check.

The trace's shape is traceability/trace.py's (the exporters take the same dict); the models below
declare it for the OpenAPI document, with the open-ended parts (a custody event's data, a risk's
figures) as free-form objects.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StringConstraints

from api.deps import Caller, SessionDep, require
from api.pagination import After, Code, Limit, page
from api.schemas import STAFF, Instant, Number, Page, Reading, problems
from traceability.exports import export_lot, export_order, period_bounds, period_chunks
from traceability.service import hold_lot, holds_query, release_lot
from traceability.trace import at_risk, hold_view, lot_trace, order_trace
from warehouses.models import LotHold

router = APIRouter(tags=["trace"], responses=STAFF)  # 400, 401, 403, 404, 413, 422, 429
Quality = Annotated[Caller, Depends(require("quality"))]
Watchers = Annotated[Caller, Depends(require("dispatcher", "quality"))]
Level = Literal["ok", "watch", "at_risk", "reject"]
RiskCursor = Annotated[str | None, Query(pattern=r"^[0-3]{3}-[0-9]{1,12}$", max_length=16,
                                         description="cursor from the previous page's next link")]


class CustodyOut(BaseModel):
    type: Literal["received", "picked", "loaded", "delivered", "failed", "returned", "disposed"]
    at: Instant
    vehicle: str | None
    compartment: str | None
    sku: str | None
    lot: str
    qty: int
    node: str | None
    position: list[Number] | None
    order_ref: str | None
    line_no: int | None
    stop_id: str | None
    actor: str
    reason: str | None
    data: dict[str, Any] | None


class LegLine(BaseModel):
    line_no: int | None
    sku: str | None
    lot: str
    qty: int


class LegSummary(BaseModel):
    readings: int
    min_c: Number | None
    max_c: Number | None
    mean_c: Number | None


class DoorOpening(BaseModel):
    opened: Instant
    closed: Instant | None
    minutes: Number


class Leg(BaseModel):
    vehicle: str | None
    device: str | None
    compartment: str
    from_: Instant = Field(alias="from", serialization_alias="from")
    to: Instant | None = Field(description="null while the line is still aboard")
    open: bool
    ended_by: str | None = Field(description="delivered, returned, disposed, or loaded (moved to another van)")
    failed_at: list[Instant] = Field(description="failed attempts during the leg (the goods stayed aboard)")
    lines: list[LegLine]
    readings: list[Reading] = Field(description="the compartment's temperatures inside the leg, oldest first")
    summary: LegSummary
    door_openings: list[DoorOpening]
    shocks: list[Reading] = Field(description="shocks inside the leg at or above the hard-jolt level")
    max_shock_g: Number | None

    model_config = {"populate_by_name": True}


class ProductRisk(BaseModel):
    sku: str
    name: str | None
    level: Level
    reasons: list[str]
    figures: dict[str, Any]


class RiskOut(BaseModel):
    level: Level
    reasons: list[str]
    products: list[ProductRisk] = Field(default_factory=list)


class OrderTrace(BaseModel):
    order_ref: str
    delivery_date: date
    status: str
    customer: str | None
    address: str | None
    assessed_at: Instant
    custody: list[CustodyOut]
    legs: list[Leg]
    spoilage_risk: RiskOut
    breakage_risk: RiskOut


class LotOrderLine(BaseModel):
    line_no: int
    sku: str
    qty: int = Field(description="how much of this lot the line holds")
    state: str = Field(description="reserved, or the line's last custody step with this lot")
    vehicle: str | None
    at: Instant | None


class LotOrder(BaseModel):
    order_ref: str
    delivery_date: date
    status: str
    customer: str | None
    phone: str | None
    address: str | None
    lines: list[LotOrderLine]


class OnHand(BaseModel):
    node: str
    sku: str
    name: str
    received: int
    on_hand: int
    reserved: int = Field(description="promised to orders and not yet taken away")
    free: int
    expires: date
    on_hold: bool


class Aboard(BaseModel):
    vehicle: str | None
    compartment: str | None
    qty: int
    order_ref: str | None
    since: Instant
    state: str


class Totals(BaseModel):
    received: int
    on_hand: int
    reserved: int
    aboard: int
    delivered: int
    disposed: int


class Remainder(BaseModel):
    on_hand: list[OnHand]
    aboard: list[Aboard]
    totals: Totals


class HoldOut(BaseModel):
    id: int
    lot: str
    reason: str
    held_by: str
    held_at: Instant
    active: bool
    released_by: str | None
    released_at: Instant | None
    release_reason: str | None


class LotTrace(BaseModel):
    lot: str
    skus: list[str]
    on_hold: bool
    holds: list[HoldOut]
    orders: list[LotOrder]
    remainder: Remainder
    custody: list[CustodyOut]


class AtRiskOrder(BaseModel):
    order_ref: str
    delivery_date: date
    status: str
    spoilage_risk: RiskOut
    breakage_risk: RiskOut


class ReasonIn(BaseModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] = Field(
        description="why (1 to 2000 characters): kept with the hold and in the audit log")


@router.get("/trace/orders/{order_ref}", response_model=OrderTrace)
def get_order_trace(order_ref: Code, session: SessionDep, _caller: Quality) -> dict:
    """Custody events, the temperature history (with door openings and shocks) of each interval the order's
    lines spent in a compartment, and spoilage and breakage risk with their reasons."""
    return order_trace(session, order_ref)


_EXPORT_TYPES = {"application/ld+json": {"schema": {"type": "object"}},
                 "text/csv": {"schema": {"type": "string"}},
                 "application/pdf": {"schema": {"type": "string", "format": "binary"}}}


@router.get("/trace/orders/{order_ref}/export", response_class=Response,
            responses={200: {"content": _EXPORT_TYPES,
                             "description": "epcis: GS1 EPCIS 2.0 JSON-LD; fsma: the FSMA 204 sortable spreadsheet "
                                            "(CSV, UTF-8 with BOM); pdf: the order's report"}})
def export_order_trace(order_ref: Code, request: Request, session: SessionDep, _caller: Quality,
                       fmt: Annotated[Literal["epcis", "fsma", "pdf"], Query(alias="format")]) -> Response:
    """An order's trace in the format auditors use (CONTRACTS section 3); rawData links point at this API."""
    data, media, filename = export_order(session, order_ref, fmt, api_base=str(request.base_url).rstrip("/"))
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/trace/lots/{lot}/export", response_class=Response,
            responses={200: {"content": _EXPORT_TYPES,
                             "description": "epcis: GS1 EPCIS 2.0 JSON-LD of the lot's custody and legs; fsma: the "
                                            "FSMA 204 sortable spreadsheet of every custody row of the lot (CSV, "
                                            "UTF-8 with BOM); pdf: the lot's report for a recall"}})
def export_lot_trace(lot: Code, request: Request, session: SessionDep, _caller: Quality,
                     fmt: Annotated[Literal["epcis", "fsma", "pdf"], Query(alias="format")]) -> Response:
    """A lot's trace in the format auditors use: every order and customer it went into, where the rest of it
    is, each order's risk with reasons and the temperatures of every leg it rode (EPCIS, PDF)."""
    data, media, filename = export_lot(session, lot, fmt, api_base=str(request.base_url).rstrip("/"))
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


_PERIOD_TYPES = {k: v for k, v in _EXPORT_TYPES.items() if k != "application/pdf"}


@router.get("/trace/export", response_class=StreamingResponse,
            responses={200: {"content": _PERIOD_TYPES,
                             "description": "every custody row (each critical tracking event) of the local days "
                                            "from..to, streamed: epcis: one EPCIS 2.0 JSON-LD document; fsma: the "
                                            "FSMA 204 sortable spreadsheet (CSV, UTF-8 with BOM)"}})
def export_period(request: Request, session: SessionDep, _caller: Quality,
                  first: Annotated[date, Query(alias="from", description="the first local day")],
                  last: Annotated[date, Query(alias="to", description="the last local day (at most 366 days on)")],
                  fmt: Annotated[Literal["epcis", "fsma"], Query(alias="format")]) -> StreamingResponse:
    """A period's custody in the format auditors use (FDA asks for the sortable spreadsheet by date range),
    written batch by batch as it is read, so a long period never sits whole in memory. A period that ends
    before it starts or spans more than 366 days answers 422 before anything is sent. The request's read
    session stays open until the last byte is sent (FastAPI >= 0.118 ends dependencies with yield after the
    response), so the batches are read while the body streams."""
    period_bounds(first, last)
    media = "text/csv; charset=utf-8" if fmt == "fsma" else "application/ld+json"
    name = f"fsma204-{first}-{last}.csv" if fmt == "fsma" else f"epcis-{first}-{last}.jsonld"
    body = period_chunks(session, first, last, fmt, api_base=str(request.base_url).rstrip("/"))
    return StreamingResponse(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/trace/lots/{lot}", response_model=LotTrace)
def get_lot_trace(lot: Code, session: SessionDep, _caller: Quality) -> dict:
    """Every order and order line (and customer) the lot went into, for a recall, and where the rest of it
    is: on hand per node, promised to orders, aboard vans; its holds and custody."""
    return lot_trace(session, lot)


@router.get("/trace/at-risk", response_model=Page[AtRiskOrder])
def get_at_risk(request: Request, session: SessionDep, _caller: Quality,
                day: Annotated[date, Query(alias="date", description="the delivery day")],
                limit: Limit = 100, after: RiskCursor = None) -> dict:
    """The day's orders whose spoilage or breakage risk is not ok, worst first (the worse of the two levels,
    then spoilage, then breakage, then by order), each with its levels and reasons (the driver's route shows
    these stops as "check on delivery"). The day is assessed once and kept while nothing it depends on
    changed, so paging through it does not assess it again; the cursor keeps the order stable."""
    items, following = at_risk(session, day, limit=limit, after=after)
    next_url = (str(request.url.include_query_params(after=following, limit=limit))
                if following is not None else None)
    return {"items": items, "next": next_url}


@router.post("/trace/lots/{lot}/hold", status_code=201, response_model=HoldOut, responses=problems(409))
def put_on_hold(lot: Code, body: ReasonIn, session: SessionDep, caller: Quality) -> dict:
    """Put a lot (every node's stock of that lot code) on quality hold: allocation never takes it while held.
    A lot already on hold answers 409."""
    return hold_view(hold_lot(session, lot, body.reason, caller.username))


@router.post("/trace/lots/{lot}/release", response_model=HoldOut, responses=problems(409))
def release_hold(lot: Code, body: ReasonIn, session: SessionDep, caller: Quality) -> dict:
    """Release the lot's hold: allocation may take it again. A lot not on hold answers 409."""
    return hold_view(release_lot(session, lot, body.reason, caller.username))


@router.get("/holds", response_model=Page[HoldOut])
def list_holds(request: Request, session: SessionDep, _caller: Watchers, limit: Limit = 100,
               after: After = None) -> dict:
    """Active quality holds, oldest first (dispatchers see them too: held stock on a route is theirs to act on)."""
    return page(session, request, holds_query(active=True), LotHold.id, limit, after, hold_view)
