"""Background job progress, as Celery workers report it, for the staff who asked for it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from api.deps import Caller, SessionDep, require
from core.jobs import job_for

router = APIRouter(tags=["jobs"])


class JobOut(BaseModel):
    job: str
    kind: str = Field(description="plan, replan, scenario_load, ...")
    state: str = Field(description="Celery's state: PENDING (queued), STARTED, PROGRESS, SUCCESS, FAILURE")
    requested_by: str
    created_at: datetime
    params: dict[str, Any]
    progress: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None


@router.get("/jobs/{job_id}", name="get_job", response_model=JobOut)
def get_job(job_id: str, session: SessionDep,
            caller: Annotated[Caller, Depends(require("dispatcher", "quality"))]) -> JobOut:
    """A job's state; an unknown job, or one the caller's role may not see, answers 404 alike."""
    from celery.result import AsyncResult

    from core.celery_app import celery_app

    job = job_for(session, job_id, caller.role)
    result = AsyncResult(job_id, app=celery_app)
    state, info = result.state, result.info
    out = JobOut(job=job.id, kind=job.kind, state=state, requested_by=job.requested_by, created_at=job.created_at,
                 params=job.params)
    if state == "PROGRESS" and isinstance(info, dict):
        out.progress = info
    elif state == "SUCCESS":
        out.result = info
    elif state == "FAILURE":
        out.error = f"{type(info).__name__}: {info}" if isinstance(info, BaseException) else str(info)
    return out
