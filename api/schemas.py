"""What every route answers, as pydantic models: the OpenAPI document shows each answer's shape, and
FastAPI serialises through them, so a field not declared here never leaves the API (OWASP API3).

Fields that CONTRACTS.md and the tests rely on are all here; open-ended parts (an alert's
details, a van's cargo, a job's parameters and result) stay free-form objects.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

T = TypeVar("T")
PROBLEM = "application/problem+json"
HHMM = Annotated[str, Field(description="local time HH:MM", examples=["08:00"])]
# Times pass through as the rooms render them (RFC 3339, UTC as Z), documented as date-time.
Instant = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Number = int | float


class Problem(BaseModel):
    """RFC 9457 problem details; validation problems add `errors` (pointer, detail), some add `pointer`."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


_WHY = {400: "the request cannot be used (its reason in detail)", 401: "no valid access token",
        403: "the caller's role may not use this route", 404: "no such resource (or not the caller's)",
        409: "conflicts with the resource's current state", 413: "request body too large",
        415: "the body is not of a type this route takes",
        422: "a field is not valid (pointer and reason in errors)", 429: "rate limit: retry after Retry-After seconds",
        503: "a dependency is unreachable"}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for problem+json answers (the Problem schema is added to the document)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": _WHY[status],
                                 "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        if status == 429:
            entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
        out[status] = entry
    return out


PUBLIC = problems(400, 413, 422, 429)
STAFF = problems(400, 401, 403, 404, 413, 422, 429)


def media(kind: str, description: str) -> dict[int | str, dict[str, Any]]:
    """A 200 answer that is a file, not JSON."""
    schema = {"type": "string", "format": "binary"} if not kind.endswith("json") else {"type": "object"}
    return {200: {"description": description, "content": {kind: {"schema": schema}}}}


class Page(BaseModel, Generic[T]):
    """A list page (CONTRACTS.md section 3): follow `next` until it is null."""

    items: list[T]
    next: str | None = Field(description="the next page's URL, or null on the last page")


# --- health, auth -------------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Check(BaseModel):
    ok: bool
    dialect: str | None = None
    detail: str | None = None


class Ready(BaseModel):
    status: Literal["ready"]
    checks: dict[str, Check]


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds the access token lives")
    refresh_token: str = Field(description="spend it once at /api/v1/auth/refresh for a new pair")
    refresh_expires_in: int = Field(description="seconds the refresh token lives")
    role: str


class Me(BaseModel):
    username: str
    role: str


# --- network, jobs ------------------------------------------------------------------------------------------


class Capacity(BaseModel):
    frozen: Number
    chilled: Number
    ambient: Number


class NodeOut(BaseModel):
    code: str
    kind: str
    name: str
    lat: Number
    lon: Number
    parent: str | None
    opens: HHMM
    closes: HHMM
    capacity_l: Capacity
    service_area_wkt: str | None


class VehicleOut(BaseModel):
    code: str
    depot: str
    device: str | None
    max_kg: Number
    shift: list[HHMM]
    speed_kmh: Number
    compartments: dict[str, Number]


class JobStarted(BaseModel):
    job: str = Field(description="the job id")
    href: str = Field(description="poll this for progress and the result")


class JobOut(BaseModel):
    job: str
    kind: str = Field(description="plan, replan, scenario_load, ...")
    state: str = Field(description="Celery's state: PENDING (queued), STARTED, PROGRESS, SUCCESS, FAILURE")
    requested_by: str
    created_at: datetime
    params: dict[str, Any]
    progress: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None


# --- orders, allocation -------------------------------------------------------------------------------------


class LotOut(BaseModel):
    lot: str
    node: str
    qty: int


class OrderLineOut(BaseModel):
    sku: str
    qty: int
    lots: list[LotOut]


class OrderOut(BaseModel):
    """An order as dispatchers see it (only dispatchers reach the order routes: it carries the customer's
    name, phone and address)."""

    order_ref: str
    status: str
    reason: str | None
    delivery_date: date
    mode: str
    lat: Number | None
    lon: Number | None
    window: list[HHMM]
    node: str | None
    pickup_node: str | None
    customer: str | None
    phone: str | None
    address: str | None
    note: str | None
    allow_split: bool
    placed_at: Instant
    lines: list[OrderLineOut]


class OrderPlaced(OrderOut):
    moved: str | None = Field(description="why the order moved to a later day (the cut-off), or null")


class FileCountsOut(BaseModel):
    inserted: int
    updated: int
    unchanged: int
    rejected: int


class RowErrorOut(BaseModel):
    file: str
    line: int
    field: str
    reason: str


class ImportReport(BaseModel):
    orders: int = Field(description="orders taken")
    lines: FileCountsOut
    notes: list[str]
    rejected: list[RowErrorOut]


class AllocatedLine(BaseModel):
    sku: str
    lot: str
    qty: int


class Allocation(BaseModel):
    order_ref: str
    node: str
    lines: list[AllocatedLine]


class Unallocated(BaseModel):
    order_ref: str
    reason: str


class DayAllocations(BaseModel):
    date: date
    allocations: list[Allocation]
    unallocated: list[Unallocated]


class AllocationOutcome(DayAllocations):
    allocated: int
    seconds: Number


class TransferAccept(BaseModel):
    """One transfer proposal as GET /transfers lists it, to be carried out."""

    model_config = ConfigDict(populate_by_name=True)

    date: date
    from_: str = Field(alias="from", max_length=64)
    to: str = Field(max_length=64)
    sku: str = Field(max_length=64)
    lot: str = Field(max_length=64)
    qty: int = Field(gt=0)


class TransferOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    sku: str
    lot: str
    qty: int
    expires: date
    order_refs: list[str]


class Transfers(BaseModel):
    date: date
    transfers: list[TransferOut]


# --- plans --------------------------------------------------------------------------------------------------


class JobLink(BaseModel):
    depot: str
    job: str = Field(description="the job id")
    href: str = Field(description="poll this for progress and the result")


class PlanJobs(BaseModel):
    date: date
    jobs: list[JobLink]


class PlannedStop(BaseModel):
    order_ref: str
    lat: Number | None
    lon: Number | None
    arrive: HHMM | None
    depart: HHMM | None
    stop_id: str
    status: str


class PlannedRoute(BaseModel):
    vehicle: str
    trip: int = 1  # the van's n-th trip of the day (CONTRACTS.md section 5)
    depot: str
    start: HHMM | None
    end: HHMM | None
    distance_km: Number
    stops: list[PlannedStop]


class Unserved(BaseModel):
    order_ref: str
    reason: str
    depot: str


class HeldOnRoute(BaseModel):
    """Stock under a quality hold that is already on a route: the dispatcher decides (pull it, swap it)."""

    date: date
    vehicle: str
    stop_id: str
    stop_status: str
    order_ref: str
    sku: str
    lot: str
    qty: int
    reason: str = Field(description="the hold's reason")


class DayPlan(DayAllocations):
    """CONTRACTS.md section 5, plus each stop's id and status, and held stock on the day's routes."""

    routes: list[PlannedRoute]
    unserved: list[Unserved]
    held: list[HeldOnRoute] = Field(default_factory=list,
                                    description="lots on quality hold already on the day's routes (stops not "
                                                "yet delivered)")


# --- telemetry ----------------------------------------------------------------------------------------------


class Reading(BaseModel):
    device: str
    seq: int
    ts: Instant
    compartment: str | None
    kind: str
    value: Number | list[Number | None] | None = Field(description="a number; [lat, lon] for a position")


class Reject(BaseModel):
    id: int
    received_at: Instant
    topic: str
    payload: str = Field(description="the raw payload: text when UTF-8, else base64 (payload_encoding)")
    payload_encoding: Literal["utf-8", "base64"]
    reason: str
    batch_index: int | None


class AlertOut(BaseModel):
    id: int
    vehicle: str
    compartment: str | None
    kind: str
    status: str
    started_at: Instant
    ended_at: Instant | None
    peak: Number | None
    minutes_out: Number
    late: bool
    details: dict[str, Any]
    raised_at: Instant | None
    acknowledged_by: str | None
    acknowledged_at: Instant | None
    ack_note: str | None


class Limits(BaseModel):
    max: Number | None
    min: Number | None
    max_set_by: list[str]
    min_set_by: list[str]


class Watch(BaseModel):
    vehicle: str
    active: bool
    last_sample_at: Instant | None
    cargo: dict[str, Any]
    limits_c: dict[str, Limits]
    held_lots: list[HeldOnRoute] = Field(default_factory=list,
                                         description="lots on quality hold aboard or due aboard this van (its "
                                                     "unfinished routes from today on)")
