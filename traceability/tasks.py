"""Periodic traceability jobs for Celery beat: keep the telemetry rules told what each van carries."""

from __future__ import annotations

from core.celery_app import celery_app
from core.db import session_scope
from traceability.service import sync_vans


@celery_app.task(name="traceability.sync_vans", ignore_result=True)
def sync_vans_task() -> int:
    with session_scope() as session:
        return sync_vans(session)
