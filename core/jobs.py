"""Background jobs: a row per job, sent to Celery only after the transaction that asked for it commits.

Why a row: the caller gets a job id at once, `GET /api/v1/jobs/{id}` can tell an unknown id
(404) from a job not yet picked up, and it knows who asked for the job, so a job's result is
shown only to the roles that may see it. Why after commit (Polar's habit): a worker may
start the instant a task is sent; sent inside the transaction, it could read the database
before the rows the job needs are committed, or run for a request that then rolled back.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, event, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.db import Base, UTCDateTime
from core.errors import NotFound
from core.timeutil import utcnow

log = logging.getLogger("coldchain.jobs")
_PENDING = "coldchain.jobs_after_commit"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the Celery task id
    kind: Mapped[str] = mapped_column(String(40))
    requested_by: Mapped[str] = mapped_column(String(80))
    roles: Mapped[list] = mapped_column(JSON)  # who may read the job and its result
    params: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


def enqueue(session: Session, task: Any, *args: Any, kind: str, requested_by: str, roles: tuple[str, ...],
            params: dict | None = None, **kwargs: Any) -> Job:
    """Record a job and send `task` with `args` once the session's transaction commits.

    A rollback drops the pending send with the row; a session that never commits never
    sends. The task id is chosen here, so the caller can answer with it straight away.
    """
    job = Job(id=str(uuid.uuid4()), kind=kind, requested_by=requested_by, roles=list(roles),
              params=params or {}, created_at=utcnow())
    session.add(job)
    session.info.setdefault(_PENDING, []).append((task, args, kwargs, job.id))
    return job


@event.listens_for(Session, "after_commit")
def _send_pending(session: Session) -> None:
    """Fires on the outermost commit only (SQLAlchemy's after_commit); savepoints do not send."""
    for task, args, kwargs, job_id in session.info.pop(_PENDING, []):
        task.apply_async(args=args, kwargs=kwargs, task_id=job_id)


@event.listens_for(Session, "after_soft_rollback")
def _drop_pending(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is not None or previous_transaction.nested:
        return  # a savepoint rolled back; the outer transaction may still commit
    if session.info.pop(_PENDING, None):
        log.info("transaction rolled back: pending jobs not sent")


def pending_jobs(session: Session) -> int:
    """How many jobs wait for this session's commit (tests and diagnostics)."""
    return len(session.info.get(_PENDING, []))


def job_for(session: Session, job_id: str, role: str) -> Job:
    """The job, if the caller's role may see it; an unknown or foreign job answers NotFound alike."""
    job = session.scalar(select(Job).where(Job.id == job_id))
    if job is None or (role != "admin" and role not in job.roles):
        raise NotFound(f"no job {job_id}")
    return job
