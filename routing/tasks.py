"""Planning jobs: each depot of a day is an independent Celery task, so several workers plan in parallel."""

from __future__ import annotations

import time
from datetime import date

from core.celery_app import celery_app
from routing.service import plan_depot


@celery_app.task(bind=True, name="routing.plan_depot", acks_late=True)
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
    return plan_depot(date.fromisoformat(day), depot, time_limit, actor=actor, workers=1, progress=progress)
