"""Background job progress, as Celery workers report it, for the staff who asked for it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from api.deps import Caller, SessionDep, require
from api.schemas import STAFF, JobOut
from core.errors import DomainError
from core.jobs import job_for

router = APIRouter(tags=["jobs"], responses=STAFF)
_DOMAIN_ERRORS = {"DomainError", "Invalid", "NotFound", "Conflict", "Forbidden", "Unauthorized", "Refused"}


def _error_text(info: object) -> str:
    """A domain error's own words (meant for people); anything else only by its kind, since its text may
    carry SQL, file paths or other internals (OWASP API8): the worker's log has the rest."""
    if isinstance(info, BaseException):
        kind = type(info).__name__
        if isinstance(info, DomainError) or kind in _DOMAIN_ERRORS:
            return f"{kind}: {info}"
        return f"{kind}: the job failed; the worker's log has the details"
    return "the job failed; the worker's log has the details"


@router.get("/jobs/{job_id}", name="get_job", response_model=JobOut)
def get_job(job_id: Annotated[str, Path(max_length=64)], session: SessionDep,
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
        out.error = _error_text(info)
    return out
