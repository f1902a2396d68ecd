"""Use cases that span rooms: plan or re-plan a depot, then tell the telemetry rules what each van carries.

Written once here, the highest room they touch (routing below, the rules' cargo view in this
room), and called alike by the Celery jobs the API sends and by the command line (Netflix
Dispatch keeps such sequences in a domain's flows module). Each step opens its own
transaction: none is open while the solver runs, so on SQLite the ingestor and the API keep
writing during a minute-long solve.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from core.db import session_scope
from core.timeutil import utcnow
from routing.replan import Event, depot_of, replan
from routing.service import plan_depot
from traceability.service import sync_vans, van_positions


def tell_the_rules() -> int:
    """After a plan changes, the rules learn at once which vans carry what (not on beat's next tick)."""
    with session_scope() as session:
        return sync_vans(session)


def plan_depot_flow(day: date, depot: str, time_limit: float, actor: str = "system", workers: int = 1,
                    progress: Callable[[float], None] | None = None) -> dict:
    """Plan one depot's day, then update the vans' cargo limits."""
    out = plan_depot(day, depot, time_limit, actor=actor, workers=workers, progress=progress)
    tell_the_rules()
    return out


def depot_for_event(day: date, event: Event) -> str:
    """The depot an event belongs to (raises NotFound / Invalid before any job is sent)."""
    with session_scope(write=False) as session:
        return depot_of(session, day, event)


def replan_flow(day: date, event: Event | None, time_limit: float = 5.0, actor: str = "system",
                now: datetime | None = None, depot: str | None = None, workers: int = 1) -> dict:
    """Re-plan the depot of ``event``: vans on the road go on from their newest known position (their
    telemetry's last fix), the solver runs outside any transaction, and the rules learn the new cargo."""
    if depot is None:
        if event is None:
            raise ValueError("re-planning without an event needs the depot")
        depot = depot_for_event(day, event)
    moment = now or getattr(event, "at", None) or utcnow()
    with session_scope(write=False) as session:
        positions = van_positions(session, depot, moment)
    out = replan(day, depot, event, time_limit=time_limit, actor=actor, now=now, positions=positions,
                 workers=workers)
    tell_the_rules()
    return out
