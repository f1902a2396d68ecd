"""Background jobs of the fulfillment room."""

from __future__ import annotations

from pathlib import Path

from core.celery_app import celery_app, progress
from core.db import session_scope
from fulfillment.scenario import count_rows, load_scenario


@celery_app.task(bind=True, name="fulfillment.load_scenario")
def load_scenario_task(self, directory: str) -> dict:  # noqa: ANN001
    """Load a scenario folder in the background, reporting rows done out of rows total."""
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
