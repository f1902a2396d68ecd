"""The dispatcher's console (/console/dispatch): the day's map and the day's work.

The buttons call what the API's dispatcher routes call: the same router functions (api.routers
orders, plans, jobs) with the signed-in user as the caller, so the rules (what may be planned,
what a re-plan needs, the upload limits) live once. This module adds the page, the map's data in
one round trip (routing.daymap), and a server-sent event stream (alerts, van positions, plan changes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Body, Depends, File, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sse_starlette import EventSourceResponse

from api.console.web import ConsoleUser, check_csrf, console_user, page
from api.deps import Caller, SessionDep
from api.pagination import Code
from api.routers import jobs as jobs_routes
from api.routers import orders as order_routes
from api.routers import plans as plan_routes
from api.schemas import (
    AllocationOutcome,
    DayPlan,
    ImportReport,
    JobLink,
    JobOut,
    PlanJobs,
    TransferAccept,
    TransferOut,
    Transfers,
)
from core.db import session_scope
from core.errors import Invalid
from core.settings import get_settings
from core.timeutil import local_datetime, local_tomorrow, parse_hhmm, to_local, utcnow
from routing.daymap import day_map
from routing.models import Plan
from telemetry.service import alert_view, alerts_query
from traceability.service import cargo_aboard, day_positions

router = APIRouter()
Dispatcher = Annotated[ConsoleUser, console_user("dispatcher")]
CSRF = [Depends(check_csrf)]
Day = Annotated[date | None, Query(alias="date", description="the delivery day; default tomorrow (local)")]
POSITION_MAX_AGE = timedelta(hours=2)
ALERTS_SHOWN = 200


def _caller(user: ConsoleUser) -> Caller:
    return Caller(user.id, user.username, user.role)


@router.get("/dispatch", response_class=HTMLResponse)
def dispatch_home(request: Request, user: Dispatcher, day: Day = None) -> HTMLResponse:
    return page(request, "dispatch.html", user, day=(day or local_tomorrow()).isoformat())


# ---------------------------------------------------------------------------------------------- the map's data


class MapNode(BaseModel):
    code: str
    kind: str
    name: str
    lat: float
    lon: float
    parent: str | None = None
    area: list[list[list[float]]] | None = Field(None, description="service area rings as [lat, lon] points")
    radius_km: float | None = Field(None, description="without a polygon: the node serves within this radius")


class Placed(BaseModel):
    """An order that is not on a route, with why and where (when its address has a position)."""

    order_ref: str
    reason: str
    depot: str | None = None
    lat: float | None = None
    lon: float | None = None
    customer: str | None = None


class MapData(DayPlan):
    nodes: list[MapNode]
    unallocated_at: list[Placed]
    unserved_at: list[Placed]


@router.get("/dispatch/data", response_model=MapData)
def dispatch_data(session: SessionDep, _user: Dispatcher, day: Day = None) -> dict:
    """The day's nodes, service areas, routes with their stops and ETAs, and the orders left out with why
    (routing.daymap.day_map: the builder the demo's map shares; its script draws both)."""
    return day_map(session, day or local_tomorrow())


class VanPosition(BaseModel):
    vehicle: str
    lat: float
    lon: float
    ts: datetime


def positions(session: SessionDep, day: date, now: datetime | None = None) -> list[dict]:
    """The last fix (at most two hours old; tracker or driver's phone) of each van with a route on ``day``."""
    fixes = day_positions(session, day, now or utcnow(), POSITION_MAX_AGE)
    return [{"vehicle": code, "lat": lat, "lon": lon, "ts": ts} for code, (lat, lon, ts) in sorted(fixes.items())]


@router.get("/dispatch/positions", response_model=list[VanPosition])
def dispatch_positions(session: SessionDep, _user: Dispatcher, day: Day = None) -> list[dict]:
    return positions(session, day or local_tomorrow())


class AtRisk(BaseModel):
    sku: str
    name: str
    qty: int
    order_refs: list[str]


class OpenAlert(BaseModel):
    id: int
    vehicle: str
    compartment: str | None
    kind: str
    status: str
    started_at: str | None
    peak: float | None
    minutes_out: float
    at_risk: list[AtRisk] = Field(description="what the van still carries in that compartment")


def _local_day(iso: str) -> str:
    return to_local(datetime.fromisoformat(iso.replace("Z", "+00:00"))).date().isoformat()


def open_alerts(session: SessionDep) -> list[dict]:
    """Open alerts, newest first, each with the products aboard that compartment (traceability.cargo_aboard)."""
    rows = session.scalars(alerts_query("open").limit(ALERTS_SHOWN)).all()
    views = sorted((alert_view(a) for a in rows), key=lambda v: (v["started_at"] or "", v["id"]), reverse=True)
    cargo = cargo_aboard(session, {(v["vehicle"], _local_day(v["started_at"])) for v in views if v["started_at"]})
    out = []
    for v in views:
        aboard = cargo.get(v["vehicle"], {})
        classes = [v["compartment"]] if v["compartment"] else sorted(aboard)
        at_risk = [item for cls in classes for item in aboard.get(cls, [])]
        out.append({**v, "at_risk": at_risk})
    return out


@router.get("/dispatch/alerts", response_model=list[OpenAlert])
def dispatch_alerts(session: SessionDep, _user: Dispatcher) -> list[dict]:
    return open_alerts(session)


def _snapshot(day: date) -> dict[str, Any]:
    with session_scope(write=False) as session:
        plans = session.execute(
            select(Plan.id, Plan.version).where(Plan.day == day, Plan.status == "current").order_by(Plan.id)
        ).all()
        return {
            "plan": [list(p) for p in plans],
            "positions": json.loads(json.dumps(positions(session, day), default=str)),
            "alerts": open_alerts(session),
        }


@router.get("/dispatch/events", response_class=EventSourceResponse)
async def dispatch_events(request: Request, _user: Dispatcher, day: Day = None) -> EventSourceResponse:
    """Server-sent events: ``alerts`` (the open alerts), ``positions`` (the vans' last fixes) and ``plan``
    (the day's current plans changed: reload the map), each sent when it changes. The stream looks every
    COLDCHAIN_CONSOLE_POLL_SECONDS: alerts come from the ingestor, another process, through the database."""
    the_day = day or local_tomorrow()
    poll = get_settings().console_poll_seconds

    async def stream() -> AsyncIterator[dict]:
        sent: dict[str, str] = {}
        while not await request.is_disconnected():
            snapshot = await anyio.to_thread.run_sync(_snapshot, the_day)
            for kind, payload in snapshot.items():
                text = json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str)
                if sent.get(kind) != text:
                    sent[kind] = text
                    yield {"event": kind, "data": text}
            await anyio.sleep(poll)

    return EventSourceResponse(stream(), ping=15)


# ---------------------------------------------------------------------------------------------- the day's work


@router.post("/dispatch/import", response_model=ImportReport, dependencies=CSRF)
async def import_orders(
    session: SessionDep, user: Dispatcher, file: Annotated[UploadFile, File(description="orders CSV")]
) -> dict:
    """An orders CSV, as POST /api/v1/orders/import: what was taken and each refused row (file:line, field, why)."""
    return await order_routes.import_orders(session, _caller(user), file)


class DayIn(BaseModel):
    date: date


@router.post("/dispatch/allocate", response_model=AllocationOutcome, dependencies=CSRF)
def allocate(body: Annotated[DayIn, Body()], session: SessionDep, user: Dispatcher) -> dict:
    """Allocate the day's orders to nodes, as POST /api/v1/allocations."""
    return order_routes.allocate(order_routes.AllocateIn(date=body.date), session, _caller(user))


@router.get("/dispatch/transfers", response_model=Transfers)
def transfers(session: SessionDep, user: Dispatcher, day: Day = None) -> dict:
    """Flagship-to-hub transfer proposals for the day's unallocated orders, as GET /api/v1/transfers."""
    return order_routes.transfers(session, _caller(user), day or local_tomorrow())


@router.post("/dispatch/transfers/accept", response_model=TransferOut, dependencies=CSRF)
def accept_transfer(body: Annotated[TransferAccept, Body()], session: SessionDep, user: Dispatcher) -> dict:
    """Carry out one transfer proposal, as POST /api/v1/transfers/accept."""
    return order_routes.accept_transfer(body, session, _caller(user))


@router.post("/dispatch/plan", status_code=202, response_model=PlanJobs, dependencies=CSRF)
def plan(body: Annotated[plan_routes.PlanIn, Body()], request: Request, session: SessionDep,
         user: Dispatcher) -> PlanJobs:  # fmt: skip
    """Queue one planning job per depot, as POST /api/v1/plans; the page polls each job's progress."""
    return plan_routes.start_plan(body, request, session, _caller(user))


class BreakdownIn(BaseModel):
    date: date
    vehicle: str = Field(max_length=64)
    at: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="local time HH:MM on the day")
    time_limit: Annotated[float, Field(gt=0, le=60)] = 5.0


@router.post("/dispatch/replan", status_code=202, response_model=JobLink, dependencies=CSRF)
def replan(body: Annotated[BreakdownIn, Body()], request: Request, session: SessionDep, user: Dispatcher) -> JobLink:
    """A van broke down at a local time: re-plan its depot, as POST /api/v1/plans/{day}/replan; the job's result
    is the diff the page shows."""
    at = local_datetime(body.date, parse_hhmm(body.at))
    replan_in = plan_routes.ReplanIn(type="breakdown", vehicle=body.vehicle, at=at, time_limit=body.time_limit)
    return plan_routes.replan_day(body.date, replan_in, request, session, _caller(user))


@router.get("/dispatch/jobs/{job_id}", response_model=JobOut)
def job(job_id: Annotated[str, Path(max_length=64)], session: SessionDep, user: Dispatcher) -> JobOut:
    """A planning or re-planning job's state and progress, as GET /api/v1/jobs/{job_id}."""
    return jobs_routes.get_job(job_id, session, _caller(user))


@router.get("/dispatch/routes/{vehicle}/sheet.pdf", response_class=Response)
def route_sheet(vehicle: Code, session: SessionDep, user: Dispatcher, day: Day = None) -> Response:
    """The van's printable route sheet (PDF), as GET /api/v1/plans/{day}/routes/{vehicle}/sheet.pdf."""
    if day is None:
        raise Invalid("which day? add ?date=YYYY-MM-DD")
    return plan_routes.get_route_sheet(day, vehicle, session, _caller(user))
