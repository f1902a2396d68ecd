"""The dispatcher's console (/console/dispatch): the day's map and the day's work.

The buttons call the same use cases the API's routers call (fulfillment.service, routing,
core.jobs); this module only turns a signed-in browser's request into those calls.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from api.console.web import ConsoleUser, check_csrf, console_user, page
from api.deps import SessionDep
from api.schemas import AllocationOutcome
from fulfillment.service import allocate_day, day_allocations

router = APIRouter()
Dispatcher = Annotated[ConsoleUser, console_user("dispatcher")]
CSRF = [Depends(check_csrf)]


@router.get("/dispatch", response_class=HTMLResponse)
def dispatch_home(request: Request, user: Dispatcher) -> HTMLResponse:
    return page(request, "dispatch.html", user)


class DayIn(BaseModel):
    date: date


@router.post("/dispatch/allocate", response_model=AllocationOutcome, dependencies=CSRF)
def allocate(body: Annotated[DayIn, Body()], session: SessionDep, user: Dispatcher) -> dict:
    """Allocate the day's orders to nodes (fulfillment.service.allocate_day, as POST /api/v1/allocations)."""
    outcome = allocate_day(session, body.date, actor=user.username)
    return {
        "date": body.date.isoformat(),
        "allocated": outcome.allocated,
        "unallocated": outcome.unallocated,
        "seconds": round(outcome.seconds, 3),
        **day_allocations(session, body.date),
    }
