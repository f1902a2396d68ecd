"""The network as dispatchers and quality staff see it, and scenario loading as a background job."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from starlette.exceptions import HTTPException

from api import scenario_upload
from api.deps import Caller, SessionDep, require
from api.pagination import After, Code, Limit, page
from api.schemas import STAFF, JobStarted, NodeOut, Page, VehicleOut, problems
from core.errors import NotFound
from core.jobs import enqueue
from core.settings import get_settings
from fulfillment.scenario import SCENARIO_FILES
from warehouses.models import Node, Vehicle

router = APIRouter(tags=["network"], responses=STAFF)
Staff = Annotated[Caller, Depends(require("dispatcher", "quality"))]
Dispatcher = Annotated[Caller, Depends(require("dispatcher"))]


def _node(n: Node) -> dict:
    return {"code": n.code, "kind": n.kind, "name": n.name, "lat": n.lat, "lon": n.lon,
            "parent": n.parent.code if n.parent else None, "opens": f"{n.opens:%H:%M}",
            "closes": f"{n.closes:%H:%M}", "capacity_l": {"frozen": n.frozen_l, "chilled": n.chilled_l,
                                                          "ambient": n.ambient_l},
            "service_area_wkt": n.service_area_wkt}


@router.get("/network/nodes", response_model=Page[NodeOut])
def list_nodes(request: Request, session: SessionDep, _caller: Staff, limit: Limit = 100,
               after: After = None) -> dict:
    return page(session, request, select(Node), Node.id, limit, after, _node)


@router.get("/network/nodes/{code}", response_model=NodeOut)
def get_node(code: Code, session: SessionDep, _caller: Staff) -> dict:
    node = session.scalar(select(Node).where(Node.code == code))
    if node is None:
        raise NotFound(f"no node {code}")
    return _node(node)


@router.get("/network/vehicles", response_model=Page[VehicleOut])
def list_vehicles(request: Request, session: SessionDep, _caller: Staff, limit: Limit = 100,
                  after: After = None) -> dict:
    def render(v: Vehicle) -> dict:
        return {"code": v.code, "depot": v.depot.code, "device": v.device, "max_kg": v.max_kg,
                "shift": [f"{v.shift_start:%H:%M}", f"{v.shift_end:%H:%M}"], "speed_kmh": v.speed_kmh,
                "compartments": {c.temp_class: c.capacity_l for c in v.compartments}}

    return page(session, request, select(Vehicle), Vehicle.id, limit, after, render)


class ScenarioLoadRequest(BaseModel):
    directory: str = Field(max_length=1000, description="a folder inside COLDCHAIN_SCENARIO_DIR, by its name there")


_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ScenarioLoadRequest"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary", "description": "a zip of the scenario's CSV files"},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                  "description": "the CSV files themselves (nodes.csv, products.csv, ...)"}}}}}}}


@router.post("/scenarios/load", status_code=202, response_model=JobStarted, openapi_extra=_UPLOAD_BODY,
             responses=problems(409))
async def load_scenario(request: Request, session: SessionDep, caller: Dispatcher) -> JobStarted:
    """Queue a scenario load (sent once this request commits); poll the job link. The body is a JSON
    `{"directory"}` naming a folder inside COLDCHAIN_SCENARIO_DIR, or a multipart upload: a zip as field
    `file`, or the CSV files as fields. The job loads a copy made now, in a folder of its own."""
    from traceability.tasks import load_scenario_task  # the load with its stock received (custody)

    folder = scenario_upload.job_folder()
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            source = await _stage_upload(request, folder)
        else:
            try:
                body = ScenarioLoadRequest.model_validate_json(await request.body())
            except ValidationError as exc:
                raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from exc
            await run_in_threadpool(scenario_upload.from_directory, body.directory, folder)
            source = {"directory": body.directory}
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    job = enqueue(session, load_scenario_task, str(folder), kind="scenario_load",
                  requested_by=caller.username, roles=("dispatcher",), params=source)
    return JobStarted(job=job.id, href=str(request.url_for("get_job", job_id=job.id)))


async def _stage_upload(request: Request, folder: Path) -> dict:
    limit = get_settings().upload_max_bytes
    try:
        form = await request.form(max_files=len(SCENARIO_FILES) + 1, max_fields=10, max_part_size=limit)
    except HTTPException as exc:  # starlette's refusal of a malformed or oversized form
        raise scenario_upload.Refused(f"multipart form not usable: {exc.detail}") from None
    uploads = [(key, v) for key, v in form.multi_items() if not isinstance(v, str)]
    if not uploads:
        raise scenario_upload.Refused("upload a zip as field 'file' or the CSV files as fields", pointer="/file")
    zips = [u for key, u in uploads if key == "file" and not (u.filename or "").lower().endswith(".csv")]
    if zips:
        if len(uploads) > 1:
            raise scenario_upload.Refused("upload either one zip or the CSV files, not both", pointer="/file")
        taken = await run_in_threadpool(scenario_upload.from_zip, zips[0].file, folder)
        return {"upload": Path(zips[0].filename or "scenario.zip").name[:200], "files": taken}
    taken = await run_in_threadpool(scenario_upload.from_files, [(u.filename or "", u.file) for _k, u in uploads],
                                    folder)
    return {"upload": "files", "files": taken}
