"""Background jobs of the flows that span rooms (planning, re-planning, scenario loads with their stock
received) and Celery beat's periodic sync of what each van carries (which also prunes kept risk checks too old
to be taken)."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

from core.celery_app import celery_app, progress
from core.db import session_scope
from traceability.flows import plan_depot_flow
from traceability.service import sync_vans
from traceability.trace import prune_kept_risks


@celery_app.task(name="traceability.sync_vans", ignore_result=True)
def sync_vans_task() -> int:
    with session_scope() as session:  # its own transaction: its row locks end here
        prune_kept_risks(session)
    with session_scope() as session:
        return sync_vans(session)


@celery_app.task(bind=True, name="traceability.plan_depot", acks_late=True)
def plan_depot_task(self, day: str, depot: str, time_limit: float, actor: str = "system") -> dict:  # noqa: ANN001
    """Plan one depot's day within time_limit seconds from the task's start (plus the store step; the
    result's ``timing`` says where the time went); progress is the elapsed share of the limit."""
    started = time.monotonic()
    last = [0.0]

    def report(fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or fraction >= 1.0:
            last[0] = now
            self.update_state(state="PROGRESS", meta={"depot": depot, "fraction": round(fraction, 3)})

    report(0.0)
    # in a prefork worker the solver runs in-process: daemonic children cannot start pools
    return plan_depot_flow(date.fromisoformat(day), depot, time_limit, actor=actor, workers=1, progress=report,
                           started=started)


@celery_app.task(bind=True, name="traceability.load_scenario")
def load_scenario_task(self, directory: str) -> dict:  # noqa: ANN001
    """fulfillment.load_scenario's job, plus custody: the stock loaded is received at its nodes."""
    from fulfillment.scenario import count_rows
    from traceability.flows import load_scenario

    total = count_rows(Path(directory))
    state = {"done": 0, "last": 0}

    def tick(_name: str, n: int) -> None:
        state["done"] += n
        if state["done"] - state["last"] >= max(total // 50, 1):
            state["last"] = state["done"]
            progress(self, min(state["done"], total), total)

    with session_scope() as session:
        report = load_scenario(session, Path(directory), tick)
    progress(self, total, total)
    return report.as_dict()
