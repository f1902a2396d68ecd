"""The network as dispatchers and quality staff see it, and scenario loading as a background job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from sqlalchemy import select

from api.deps import Caller, SessionDep, require
from api.pagination import After, Limit, page
from core.errors import Invalid, NotFound
from core.jobs import enqueue
from warehouses.models import Node, Vehicle

router = APIRouter(tags=["network"])
Staff = Annotated[Caller, Depends(require("dispatcher", "quality"))]
Dispatcher = Annotated[Caller, Depends(require("dispatcher"))]


def _node(n: Node) -> dict:
    return {"code": n.code, "kind": n.kind, "name": n.name, "lat": n.lat, "lon": n.lon,
            "parent": n.parent.code if n.parent else None, "opens": f"{n.opens:%H:%M}",
            "closes": f"{n.closes:%H:%M}", "capacity_l": {"frozen": n.frozen_l, "chilled": n.chilled_l,
                                                          "ambient": n.ambient_l},
            "service_area_wkt": n.service_area_wkt}


@router.get("/network/nodes")
def list_nodes(request: Request, session: SessionDep, _caller: Staff, limit: Limit = 100,
               after: After = None) -> dict:
    return page(session, request, select(Node), Node.id, limit, after, _node)


@router.get("/network/nodes/{code}")
def get_node(code: str, session: SessionDep, _caller: Staff) -> dict:
    node = session.scalar(select(Node).where(Node.code == code))
    if node is None:
        raise NotFound(f"no node {code}")
    return _node(node)


@router.get("/network/vehicles")
def list_vehicles(request: Request, session: SessionDep, _caller: Staff, limit: Limit = 100,
                  after: After = None) -> dict:
    def render(v: Vehicle) -> dict:
        return {"code": v.code, "depot": v.depot.code, "device": v.device, "max_kg": v.max_kg,
                "shift": [f"{v.shift_start:%H:%M}", f"{v.shift_end:%H:%M}"], "speed_kmh": v.speed_kmh,
                "compartments": {c.temp_class: c.capacity_l for c in v.compartments}}

    return page(session, request, select(Vehicle), Vehicle.id, limit, after, render)


class ScenarioLoadRequest(BaseModel):
    directory: str


class JobStarted(BaseModel):
    job: str
    href: str


@router.post("/scenarios/load", status_code=202, response_model=JobStarted)
def load_scenario(body: ScenarioLoadRequest, request: Request, session: SessionDep, caller: Dispatcher) -> JobStarted:
    """Queue a scenario load on the Celery workers (sent once this request commits); poll the job link."""
    from traceability.tasks import load_scenario_task  # the load with its stock received (custody)

    directory = Path(body.directory)
    if not directory.is_dir():
        raise Invalid(f"{body.directory}: not a directory on the server")
    job = enqueue(session, load_scenario_task, str(directory.resolve()), kind="scenario_load",
                  requested_by=caller.username, roles=("dispatcher",), params={"directory": body.directory})
    return JobStarted(job=job.id, href=str(request.url_for("get_job", job_id=job.id)))
