"""The driver's app (CONTRACTS.md section 3, driver routes) and proof files for staff.

Thin: who calls, the Idempotency-Key, the bounded body and the upload are api/idempotency.py's;
what a report means is delivery/service.py's. A driver reaches only the driver's own van's
routes, stops and proofs (404 otherwise, the same body as for an id that does not exist);
dispatchers and quality staff get 403 here, and see proofs through /proofs.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import TypeAdapter

from api.deps import Caller, SessionDep, autocommit_reads, require
from api.idempotency import CurrentDriver, DriverRoute, DriverSession, DriverUsername, commit_answer, read_upload
from api.pagination import Limit, page
from api.schemas import problems
from core.errors import NotFound
from core.timeutil import local_today
from delivery import proofs, service
from delivery.models import DeliveryProof
from delivery.schemas import (
    PositionIn,
    PositionOut,
    ProofOut,
    ProofPage,
    RouteOut,
    RouteStartIn,
    RouteStartOut,
    StopEventIn,
    StopEventOut,
)

router = APIRouter(prefix="/driver", tags=["driver"], route_class=DriverRoute)
staff = APIRouter(tags=["proofs"], route_class=DriverRoute)  # its 404s carry no id either

StopId = Annotated[str, Path(max_length=64, description="the stop's opaque id from the route")]
_KEY = {"parameters": [{"name": "Idempotency-Key", "in": "header", "required": True,
                        "schema": {"type": "string", "maxLength": 255},
                        "description": "unique per report; the same key again when retrying (IETF draft)"}]}


def _errors(*statuses: int, **why: str) -> dict:
    """Problem answers of a driver route, with this route's own words where they say more."""
    out = problems(401, 403, 422, 429, *statuses)
    for status, text in why.items():
        out[int(status.removeprefix("s"))]["description"] = text
    return out


_POST_ERRORS = _errors(400, 404, 409, 413, s400="no Idempotency-Key",
                       s404="no such stop on your routes (also another driver's)",
                       s409="not allowed in the current state (body shows it), or the same key is still being handled",
                       s422="invalid body, or the key was used for another request")


@lru_cache(maxsize=16)
def _adapter(model: type) -> TypeAdapter:
    return TypeAdapter(model)


def _answer(model: type, content: dict, status_code: int = 200) -> Response:
    """``content`` validated as ``model`` and serialised here, in the route's own hop to the thread pool: FastAPI
    does exactly this (the model's TypeAdapter, validate then dump_json, by alias) with what a sync route returns,
    but in one more hop to the pool, which cost more CPU than the validation itself. The route still declares
    ``model`` as its response_model, for the OpenAPI document."""
    adapter = _adapter(model)
    return Response(adapter.dump_json(adapter.validate_python(content), by_alias=True), status_code=status_code,
                    media_type="application/json")


def route_json(route: dict) -> bytes:
    """The route as RouteOut's JSON, byte for byte what FastAPI's validation and Pydantic's serializer would send
    (tests/delivery/test_route_checks_fresh.py compares them), without validating again what route_of built in
    that very shape: the most requested answer of the API skips a model validation of every stop and item."""
    return orjson.dumps(route, option=orjson.OPT_UTC_Z)


@router.get("/route", response_model=RouteOut, responses=_errors(404, s404="no route that day"))
@autocommit_reads
def my_route(username: DriverUsername, session: DriverSession,
             day: Annotated[date | None, Query(alias="date", description="local day; default today")] = None,
             ) -> Response:
    """The calling driver's route that day: stops in order with ETA, window, address, contact and items."""
    return Response(route_json(service.route_for(session, username, day or local_today())),
                    media_type="application/json")


@router.post("/route/start", response_model=RouteStartOut, responses=_POST_ERRORS, openapi_extra=_KEY)
def start_route(body: RouteStartIn, driver: CurrentDriver, session: DriverSession, request: Request) -> Response:
    """The van is loaded and leaves the depot: the route starts and its orders are out for delivery."""
    return commit_answer(request, session, _answer(RouteStartOut, service.start_route(session, driver, body)))


@router.post("/stops/{stop_id}/events", response_model=StopEventOut, responses=_POST_ERRORS, openapi_extra=_KEY)
def stop_event(stop_id: StopId, body: StopEventIn, driver: CurrentDriver, session: DriverSession,
               request: Request) -> Response:
    """arrived, delivered (recipient), failed (reason; note for other), damaged (items)."""
    return commit_answer(request, session, _answer(StopEventOut, service.stop_event(session, driver, stop_id, body)))


@router.post("/stops/{stop_id}/proof", status_code=201, response_model=ProofOut,
             responses={**_POST_ERRORS, **_errors(415, s415="not a JPEG or PNG by its bytes")},
             openapi_extra={**_KEY, "requestBody": {"required": True, "content": {"multipart/form-data": {
                 "schema": {"type": "object", "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}}}}}}})
def upload_proof(stop_id: StopId, request: Request, driver: CurrentDriver, session: DriverSession) -> Response:
    """A photo or signature (JPEG or PNG, at most 5 MB) for a stop the driver is at or has done."""
    return commit_answer(request, session, _answer(
        ProofOut, service.add_proof(session, driver, stop_id, request.state.upload.data), 201))


upload_proof.body_reader = read_upload  # type: ignore[attr-defined]


@router.post("/position", response_model=PositionOut, responses=_POST_ERRORS, openapi_extra=_KEY)
def position(body: PositionIn, driver: CurrentDriver, session: DriverSession, request: Request) -> Response:
    """Where the phone is, for a van without a tracker; re-planning takes the newest of this and the van's GPS."""
    return commit_answer(request, session, _answer(PositionOut, service.record_position(session, driver, body)))


# ---------------------------------------------------------------------- proofs, by role

ProofReaders = Annotated[Caller, Depends(require("dispatcher", "quality", "driver"))]


def _scope(session: SessionDep, caller: Caller) -> service.DriverRef | None:
    """Staff see every proof; a driver only the driver's own (None: no restriction)."""
    if caller.role != "driver":
        return None
    driver = service.driver_ref(session, caller.username)
    return driver or service.DriverRef(-1, caller.username, None, None)


@staff.get("/proofs", response_model=ProofPage, responses=_errors())
def list_proofs(request: Request, session: SessionDep, caller: ProofReaders, limit: Limit = 100,
                after: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
                stop_id: Annotated[str | None, Query(max_length=64)] = None,
                order_ref: Annotated[str | None, Query(max_length=64)] = None) -> dict:
    """Proofs of delivery, oldest first; filter by stop or order."""
    query = service.proofs_query(_scope(session, caller), stop_id, order_ref)
    return page(session, request, query, DeliveryProof.id, limit, after,
                lambda row: service.proof_view(row[0], row[1], row[2]))


@staff.get("/proofs/{proof_id}", response_class=Response,
           responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                                        "image/png": {"schema": {"type": "string", "format": "binary"}}},
                            "description": "the file"},
                      **_errors(404, s404="no such proof (or not yours)")})
def get_proof(proof_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
              caller: ProofReaders) -> Response:
    """The photo or signature itself, from the proof store (a directory or an S3-compatible store)."""
    proof = service.proof_of(session, proof_id, _scope(session, caller))
    data = proofs.fetch(proof.sha256)
    if data is None:
        raise NotFound(f"the file of proof {proof_id} is missing from the proof store")
    return Response(content=data, media_type=proof.content_type,
                    headers={"Cache-Control": "private, max-age=86400", "ETag": f'"{proof.sha256}"'})


__all__ = ["ProofOut", "router", "staff"]
