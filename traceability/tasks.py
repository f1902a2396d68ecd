"""Traceability jobs: keep the telemetry rules told what each van carries (Celery beat), and load
scenarios with their stock received (the API's scenario load)."""

from __future__ import annotations

from pathlib import Path

from core.celery_app import celery_app, progress
from core.db import session_scope
from traceability.service import sync_vans


@celery_app.task(name="traceability.sync_vans", ignore_result=True)
def sync_vans_task() -> int:
    with session_scope() as session:
        return sync_vans(session)


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
