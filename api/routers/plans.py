"""Dispatchers: plan a day (one background job per depot, progress to poll) and read the plan back."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from api.deps import Caller, SessionDep, require
from core.errors import Invalid
from fulfillment.service import day_allocations
from routing.service import day_routes, depots_of_day

router = APIRouter(tags=["plans"])
Dispatcher = Annotated[Caller, Depends(require("dispatcher"))]


class PlanIn(BaseModel):
    date: date
    time_limit: Annotated[float, Field(gt=0, le=600, description="seconds per depot")] = 10.0
    depots: list[str] | None = None


@router.post("/plans", status_code=202)
def start_plan(body: PlanIn, request: Request, session: SessionDep, caller: Dispatcher) -> dict:
    """Queue one planning job per depot; each job's progress is at its href."""
    from routing.tasks import plan_depot_task

    depots = depots_of_day(session, body.date)
    if body.depots:
        unknown = sorted(set(body.depots) - set(depots))
        if unknown:
            raise Invalid(f"no allocated delivery orders with vans at {', '.join(unknown)} on {body.date}",
                          pointer="/depots")
        depots = [d for d in depots if d in body.depots]
    if not depots:
        raise Invalid(f"nothing to plan on {body.date}: allocate the day's orders first", pointer="/date")
    jobs = []
    for depot in depots:
        result = plan_depot_task.delay(body.date.isoformat(), depot, body.time_limit, caller.username)
        jobs.append({"depot": depot, "job": result.id, "href": str(request.url_for("get_job", job_id=result.id))})
    return {"date": body.date.isoformat(), "jobs": jobs}


@router.get("/plans")
def get_plan(session: SessionDep, _caller: Dispatcher, day: Annotated[date, Query(alias="date")]) -> dict:
    """The day's allocations, routes and unserved orders (CONTRACTS.md section 5, plus stop ids and statuses)."""
    return {"date": day.isoformat(), **day_allocations(session, day), **day_routes(session, day)}
