"""Background jobs of the flows that span rooms (planning, re-planning) and Celery beat's periodic sync."""

from __future__ import annotations

import time
from datetime import date, datetime

from core.celery_app import celery_app
from core.db import session_scope
from routing.replan import event_from_dict
from traceability.flows import plan_depot_flow, replan_flow
from traceability.service import sync_vans


@celery_app.task(name="traceability.sync_vans", ignore_result=True)
def sync_vans_task() -> int:
    with session_scope() as session:
        return sync_vans(session)


@celery_app.task(bind=True, name="traceability.plan_depot", acks_late=True)
def plan_depot_task(self, day: str, depot: str, time_limit: float, actor: str = "system") -> dict:  # noqa: ANN001
    """Plan one depot's day within time_limit seconds; progress is the elapsed share of the limit."""
    last = [0.0]

    def progress(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or fraction >= 1.0:
            last[0] = now
            self.update_state(state="PROGRESS", meta={"depot": depot, "fraction": round(fraction, 3)})

    progress(0.0)
    # in a prefork worker the solver runs in-process: daemonic children cannot start pools
    return plan_depot_flow(date.fromisoformat(day), depot, time_limit, actor=actor, workers=1, progress=progress)


@celery_app.task(bind=True, name="traceability.replan", acks_late=True)
def replan_task(self, day: str, depot: str, event: dict | None, time_limit: float, actor: str,  # noqa: ANN001
                now: str | None = None) -> dict:
    """Re-plan one depot after an event; the job's result is the new plan's diff."""
    self.update_state(state="PROGRESS", meta={"depot": depot, "stage": "solving", "time_limit": time_limit})
    return replan_flow(date.fromisoformat(day), event_from_dict(event), time_limit=time_limit, actor=actor,
                       now=datetime.fromisoformat(now) if now else None, depot=depot)
