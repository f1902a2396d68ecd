"""The one Celery app.

Redis (or any broker URL) when COLDCHAIN_BROKER_URL is set; otherwise kombu's
SQLAlchemy transport on a SQLite file, so the demo runs real workers in parallel,
with progress a client can poll, on a machine with no broker server at all.
Eager mode is deliberately not used here (Celery's guide: unsuitable for testing tasks).
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init

from core.settings import get_settings

# Task modules, named by path only: core imports no domain (ARCHITECTURE.md).
TASK_MODULES = ["telemetry.tasks", "traceability.tasks", "delivery.tasks"]


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("coldchain", broker=settings.celery_broker, backend=settings.celery_backend)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone=settings.timezone,
        enable_utc=True,
        task_track_started=True,
        task_default_queue=settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_extended=True,
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        broker_polling_interval=0.2,
        broker_transport_options={} if settings.celery_broker.startswith("sqla+") else {"visibility_timeout": 3600},
        imports=[m for m in TASK_MODULES if _exists(m)],
        beat_schedule={"telemetry-rules-clock": {"task": "telemetry.tick", "schedule": 30.0},
                       "vans-cargo-and-routes": {"task": "traceability.sync_vans", "schedule": 60.0},
                       "emptied-routes": {"task": "delivery.sweep_emptied_routes", "schedule": 60.0}},
    )
    return app


def _exists(module: str) -> bool:
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ModuleNotFoundError:
        return False


celery_app = make_celery()


@worker_process_init.connect
def _own_connections(**_kwargs: object) -> None:
    """A prefork child starts without the parent's pooled database connections (SQLAlchemy's advice for
    forked processes: ``dispose(close=False)``): the worker opens some before forking (migrations), and
    two children reading on one inherited PostgreSQL socket get each other's rows (seen with
    ``--concurrency 2``: NotImplementedError deep in SQLAlchemy's result processing)."""
    from core.db import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)


def progress(task, done: int, total: int, **extra: object) -> None:  # noqa: ANN001
    """Record a task's progress so GET /api/v1/jobs/{id} and the CLI can show it."""
    task.update_state(state="PROGRESS", meta={"done": done, "total": total, **extra})
