"""Dispatchers: plan a day (one background job per depot, progress to poll) and read the plan back."""

from __future__ import annotations

import json
import tempfile
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from api.deps import Caller, SessionDep, require
from api.pagination import Code
from api.schemas import STAFF, DayPlan, JobLink, PlanJobs, media
from core.errors import Invalid
from core.jobs import Job, enqueue
from fulfillment.service import day_allocations
from routing.exports import day_map_png, route_geojson, route_sheet_pdf
from routing.replan import add_order, breakdown, cancel_order, depot_of, event_dict
from routing.service import day_routes, depots_of_day
from traceability.service import held_on_routes

router = APIRouter(tags=["plans"], responses=STAFF)
Dispatcher = Annotated[Caller, Depends(require("dispatcher"))]


class PlanIn(BaseModel):
    date: date
    time_limit: Annotated[float, Field(gt=0, le=600, description="seconds per depot")] = 10.0
    depots: Annotated[list[Annotated[str, Field(max_length=64)]] | None, Field(max_length=1000)] = None


def _link(request: Request, depot: str, job: Job) -> JobLink:
    return JobLink(depot=depot, job=job.id, href=str(request.url_for("get_job", job_id=job.id)))


@router.post("/plans", status_code=202, response_model=PlanJobs)
def start_plan(body: PlanIn, request: Request, session: SessionDep, caller: Dispatcher) -> PlanJobs:
    """Queue one planning job per depot (sent once this request commits); each job's progress is at its href."""
    from traceability.tasks import plan_depot_task

    depots = depots_of_day(session, body.date)
    if body.depots:
        unknown = sorted(set(body.depots) - set(depots))
        if unknown:
            raise Invalid(f"no allocated delivery orders with vans at {', '.join(unknown)} on {body.date}",
                          pointer="/depots")
        depots = [d for d in depots if d in body.depots]
    if not depots:
        raise Invalid(f"nothing to plan on {body.date}: allocate the day's orders first", pointer="/date")
    links = []
    for depot in depots:
        job = enqueue(session, plan_depot_task, body.date.isoformat(), depot, body.time_limit, caller.username,
                      kind="plan", requested_by=caller.username, roles=("dispatcher",),
                      params={"date": body.date.isoformat(), "depot": depot, "time_limit": body.time_limit})
        links.append(_link(request, depot, job))
    return PlanJobs(date=body.date, jobs=links)


@router.get("/plans", response_model=DayPlan)
def get_plan(session: SessionDep, _caller: Dispatcher, day: Annotated[date, Query(alias="date")]) -> dict:
    """The day's allocations, routes and unserved orders (CONTRACTS.md section 5, plus stop ids and statuses)."""
    return {"date": day.isoformat(), **day_allocations(session, day), **day_routes(session, day),
            "held": held_on_routes(session, day)}


class ReplanIn(BaseModel):
    type: Literal["breakdown", "add_order", "cancel_order"]
    vehicle: str | None = Field(None, max_length=64, description="breakdown: the van")
    at: datetime | None = Field(None, description="breakdown: when (RFC 3339 with a zone)")
    position: tuple[float, float] | None = Field(None, description="breakdown: [lat, lon]")
    order_ref: str | None = Field(None, max_length=64, description="add_order / cancel_order")
    reason: str | None = Field(None, max_length=2000)
    now: datetime | None = Field(None, description="re-plan as of this time (default: the breakdown time or now)")
    time_limit: Annotated[float, Field(gt=0, le=60, description="solver seconds")] = 5.0


@router.post("/plans/{day}/replan", status_code=202, response_model=JobLink)
def replan_day(day: date, body: ReplanIn, request: Request, session: SessionDep, caller: Dispatcher) -> JobLink:
    """Re-plan the depot an event belongs to, as a job: poll its href; the job's result is the new plan's
    diff (moves, ETAs old -> new, unserved). An unknown van or order answers at once."""
    from delivery.tasks import replan_task

    if body.type == "breakdown":
        if not body.vehicle or body.at is None:
            raise Invalid("a breakdown needs vehicle and at", pointer="/vehicle" if not body.vehicle else "/at")
        event = breakdown(body.vehicle, body.at, body.position)
    elif not body.order_ref:
        raise Invalid(f"{body.type} needs order_ref", pointer="/order_ref")
    elif body.type == "add_order":
        event = add_order(body.order_ref)
    else:
        event = cancel_order(body.order_ref, body.reason)
    depot = depot_of(session, day, event)
    now = body.now.isoformat() if body.now else None
    job = enqueue(session, replan_task, day.isoformat(), depot, event_dict(event), body.time_limit,
                  caller.username, now, kind="replan", requested_by=caller.username, roles=("dispatcher",),
                  params={"date": day.isoformat(), "depot": depot, "event": event_dict(event)})
    return _link(request, depot, job)


@router.get("/plans/{day}/routes/{vehicle}/geojson", response_class=Response,
            responses=media("application/geo+json", "the route as a GeoJSON FeatureCollection (RFC 7946)"))
def get_route_geojson(day: date, vehicle: Code, session: SessionDep, _caller: Dispatcher) -> Response:
    """One van's current route as GeoJSON (RFC 7946)."""
    return Response(json.dumps(route_geojson(session, day, vehicle), ensure_ascii=False),
                    media_type="application/geo+json")


@router.get("/plans/{day}/routes/{vehicle}/sheet.pdf", response_class=Response,
            responses=media("application/pdf", "the printable route sheet"))
def get_route_sheet(day: date, vehicle: Code, session: SessionDep, _caller: Dispatcher) -> Response:
    """The driver's printable route sheet."""
    with tempfile.TemporaryDirectory() as tmp:
        data = route_sheet_pdf(session, day, vehicle, Path(tmp) / "sheet.pdf").read_bytes()
    return Response(data, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="route-{vehicle}-{day}.pdf"'})


@router.get("/plans/{day}/map.png", response_class=Response,
            responses=media("image/png", "the day's routes on a map, coloured per van"))
def get_day_map(day: date, session: SessionDep, _caller: Dispatcher,
                depot: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """The day's routes on a map, coloured per van."""
    with tempfile.TemporaryDirectory() as tmp:
        data = day_map_png(session, day, Path(tmp) / "map.png", depot=depot).read_bytes()
    return Response(data, media_type="image/png")
