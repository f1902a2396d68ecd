"""Background job progress, as Celery workers report it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.deps import Caller, require

router = APIRouter(tags=["jobs"])


@router.get("/jobs/{job_id}", name="get_job")
def get_job(job_id: str, _caller: Annotated[Caller, Depends(require("dispatcher", "quality"))]) -> dict:
    from celery.result import AsyncResult

    from core.celery_app import celery_app

    result = AsyncResult(job_id, app=celery_app)
    state = result.state
    body: dict = {"job": job_id, "state": state}
    info = result.info
    if state == "PROGRESS" and isinstance(info, dict):
        body["progress"] = info
    elif state == "SUCCESS":
        body["result"] = info
    elif state == "FAILURE":
        body["error"] = str(info)
    return body
