"""Background jobs of the use cases in delivery.flows."""

from __future__ import annotations

from datetime import date, datetime

from core.celery_app import celery_app
from core.db import session_scope
from delivery.flows import replan_flow, sweep_emptied_routes
from routing.replan import event_from_dict


# the name it had when traceability.flows was the highest room a re-plan touched: jobs already queued keep working
@celery_app.task(bind=True, name="traceability.replan", acks_late=True)
def replan_task(self, day: str, depot: str, event: dict | None, time_limit: float, actor: str,  # noqa: ANN001
                now: str | None = None) -> dict:
    """Re-plan one depot after an event; the job's result is the new plan's diff."""
    self.update_state(state="PROGRESS", meta={"depot": depot, "stage": "solving", "time_limit": time_limit})
    return replan_flow(date.fromisoformat(day), event_from_dict(event), time_limit=time_limit, actor=actor,
                       now=datetime.fromisoformat(now) if now else None, depot=depot)


@celery_app.task(name="delivery.sweep_emptied_routes", ignore_result=True)
def sweep_emptied_routes_task() -> int:
    with session_scope() as session:
        return len(sweep_emptied_routes(session))
