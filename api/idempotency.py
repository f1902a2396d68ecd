"""The HTTP plumbing of the driver routes: who is calling, Idempotency-Key, bounded bodies, streamed uploads.

`DriverRoute` wraps each driver route's handler. For a POST, in this order:

1. no (or an unreadable) ``Idempotency-Key`` → 400, before anything else is looked at;
2. the caller: a valid token of a user who is a driver of drivers.csv (401 / 403 otherwise);
3. the body, read here from the stream with a byte counter (a declared or streamed size over
   the route's limit → 413 without reading the rest); an upload is parsed as it streams
   (python-multipart), its file held in memory (at most 5 MB);
4. the key is claimed in a short transaction of its own, committed before the work starts
   (delivery/idempotency.py): a finished repeat gets the stored answer byte for byte, a repeat
   with another request 422, a repeat while the first runs 409;
5. the route runs with the request's session (``DriverSession``); its answer is stored with the key in that
   same transaction, so the work and its answer commit together. A 4xx (validation or a domain error) stores
   the answer: the driver services refuse before they write, and the one path that writes before it may
   refuse (damage, delivery/service.py) undoes itself in a savepoint of its own, so no savepoint is taken
   per request (two statements each). A 5xx or a crash forgets the key and rolls the whole transaction
   back, and so does a failed commit, so a retry starts afresh.

api/deps.py is left to the lead's transaction work: this module only asks it for the session
(`get_session`, with scope="function" so the commit happens before the answer is sent).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from api.deps import get_session, oauth2
from api.problems import problem
from core.db import session_scope
from core.errors import BadRequest, DomainError, Forbidden, Unauthorized, UnsupportedMedia
from core.errors import PayloadTooLarge as TooLarge
from core.security import read_token
from core.timeutil import utcnow
from delivery import idempotency, proofs
from delivery.service import DriverRef, Login, driver_of, login_of

JSON_LIMIT = 64 * 1024
UPLOAD_LIMIT = proofs.MAX_BYTES + 64 * 1024  # the file plus the multipart envelope around it
_KEPT_HEADERS = ("content-type", "location")



def key_sessions() -> AbstractContextManager[Session]:
    """The short transactions of the key bookkeeping, separate from the request's (tests may override it in
    ``app.dependency_overrides`` to keep them inside their own transaction). On PostgreSQL they commit
    without waiting for the WAL flush (core.db.get_quick_commit_engine): a claim lost in a crash stands for no
    work, and other processes see it at commit all the same."""
    return session_scope(quick=True)


# ----------------------------------------------------------------------------- the caller


def _token_claims(authorization: str | None) -> dict:
    """The access token's claims, checked without the database: a request with no valid driver token is
    refused before it opens a transaction (on SQLite, before it waits for the write lock)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("not authenticated", headers={"WWW-Authenticate": "Bearer"})
    claims = read_token(token.strip())
    if claims.get("role") not in ("driver", "admin"):
        raise Forbidden(f"this needs the role driver; you are {claims.get('role')}")
    return claims


def _authenticate(session: Session, authorization: str | None) -> DriverRef:
    username = str(_token_claims(authorization)["sub"])
    return driver_of(login_of(session, username), username)


async def driver_session(request: Request,
                         session: Annotated[Session, Depends(get_session, scope="function")]) -> Session:
    """The request's session (async: no I/O here, so no hop to the thread pool)."""
    request.state.work_session = session
    return session


DriverSession = Annotated[Session, Depends(driver_session)]


async def current_driver(request: Request, session: DriverSession,
                         _token: Annotated[str | None, Depends(oauth2)]) -> DriverRef:
    """The calling driver (already known for a POST, which had to be checked before its key was claimed:
    async, so that case costs no hop to the thread pool)."""
    known = getattr(request.state, "driver", None)
    if known is not None:
        return known
    return await run_in_threadpool(_authenticate, session, request.headers.get("authorization"))


CurrentDriver = Annotated[DriverRef, Depends(current_driver)]


async def driver_username(request: Request, _token: Annotated[str | None, Depends(oauth2)]) -> str:
    """The username of a valid driver token, checked without the database (no hop to the thread pool): for a route
    that checks the user itself in its first statement (delivery.service.route_for), as current_driver would."""
    return str(_token_claims(request.headers.get("authorization"))["sub"])


DriverUsername = Annotated[str, Depends(driver_username)]


# ----------------------------------------------------------------------------------- bodies


async def _read_limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise TooLarge(f"the body has {int(declared)} bytes; at most {limit} are taken here")
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"the body passed {limit} bytes; at most {limit} are taken here")
        yield chunk


async def read_json_body(request: Request) -> bytes:
    chunks = [chunk async for chunk in _read_limited(request, JSON_LIMIT)]
    body = b"".join(chunks)
    request._body = body  # what Request.body() caches: FastAPI's validation reads it from there
    return body


@dataclass
class Upload:
    """The multipart field ``file`` (None when there is none), read as it streamed in."""

    data: bytes | None
    filename: str | None
    declared_type: str | None


async def read_upload(request: Request) -> tuple[bytes, Upload]:
    """Parse multipart/form-data as it streams, keeping only the field ``file``; 413 once it passes 5 MB."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UnsupportedMedia("send the proof as multipart/form-data with a field named file")
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "part": None, "ended": False}
    found: dict[str, Any] = {"data": None, "filename": None, "type": None}
    file_parts: list[bytes] = []
    size = [0]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].strip().lower()] = state["value"].strip()
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _disp, opts = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name")
        state["part"] = "file" if name == b"file" and found["data"] is None and not file_parts else None
        if state["part"] == "file":
            found["filename"] = opts.get(b"filename", b"").decode("utf-8", "replace") or None
            found["type"] = state["headers"].get(b"content-type", b"").decode("latin-1") or None

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["part"] == "file":
            size[0] += end - start
            if size[0] > proofs.MAX_BYTES:
                raise TooLarge(f"the file passed {proofs.MAX_BYTES} bytes (5 MB); refused before reading the rest")
            file_parts.append(data[start:end])

    def on_part_end() -> None:
        if state["part"] == "file":
            found["data"] = b"".join(file_parts)
        state["headers"], state["part"] = {}, None

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(boundary, {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_end": on_end})
    try:
        async for chunk in _read_limited(request, UPLOAD_LIMIT):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"the multipart body cannot be read: {exc}") from None
    if not state["ended"]:
        raise BadRequest("the multipart body ended before its closing boundary (truncated upload)")
    upload = Upload(found["data"], found["filename"], found["type"])
    # the request's identity for the key: the file's bytes (a retry's multipart boundary is new each time)
    return (upload.data if upload.data is not None else b"no file"), upload


# ------------------------------------------------------------------------------ the route


def _problem_for(request: Request, exc: DomainError) -> Response:
    # "not found" answers the same body whatever the id was: no instance echoing the path
    instance = None if exc.status_code == 404 else request.url.path
    return problem(exc.status_code, exc.detail, title=exc.title, instance=instance, headers=exc.headers,
                   **exc.extra)


async def _render(request: Request, exc: Exception) -> Response:
    """An exception as the answer the app would give (problem+json)."""
    if isinstance(exc, DomainError):
        return _problem_for(request, exc)
    for cls in type(exc).__mro__:
        handler = request.app.exception_handlers.get(cls)
        if handler is not None:
            response = handler(request, exc)
            return await response if inspect.isawaitable(response) else response
    return problem(500, "internal error; it has been logged", instance=request.url.path)


def _kept_headers(response: Response) -> dict[str, str]:
    return {k: response.headers[k] for k in _KEPT_HEADERS if k in response.headers}


def _replay(claim: idempotency.Claim) -> Response:
    headers = dict(claim.headers or {})
    media = headers.pop("content-type", None)
    headers["Idempotent-Replayed"] = "true"
    return Response(content=claim.body or b"", status_code=claim.status or 200, media_type=media, headers=headers)


class DriverRoute(APIRoute):
    """An APIRoute whose POSTs are idempotent and whose callers are drivers (see the module docstring).

    A route reads its own body when its endpoint has a ``body_reader`` attribute (the proof upload);
    otherwise the JSON body is read here, bounded, and handed on to FastAPI's validation.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        if "POST" not in self.methods:
            async def read_handler(request: Request) -> Response:
                try:
                    return await original(request)
                except DomainError as exc:
                    if exc.status_code != 404:
                        raise
                    return _problem_for(request, exc)

            return read_handler
        reader = getattr(self.endpoint, "body_reader", None)

        async def handler(request: Request) -> Response:
            key = idempotency.parse_key(request.headers.get("idempotency-key"))
            if key is None:
                missing = "idempotency-key" not in request.headers
                return _problem_for(request, BadRequest(
                    "every driver POST needs an Idempotency-Key header (a unique string per report; "
                    "send the same one again when retrying)" if missing else
                    "the Idempotency-Key header must be a string of 1 to 255 printable characters"))
            sessions = request.app.dependency_overrides.get(key_sessions, key_sessions)
            try:
                _token_claims(request.headers.get("authorization"))
                if reader is not None:  # authenticate before taking in megabytes
                    driver = await run_in_threadpool(_auth_only, sessions, request.headers.get("authorization"))
                    material, parsed = await reader(request)
                    request.state.upload = parsed
                    body = material
                else:
                    body = await read_json_body(request)
                    driver = None
                fp = idempotency.fingerprint(request.method, _target(request), body)
                driver, claim = await run_in_threadpool(_auth_and_claim, sessions, request, driver, key, fp)
            except DomainError as exc:
                return _problem_for(request, exc)
            except ClientDisconnect:
                return Response(status_code=400)
            if claim.outcome == "replay":
                return _replay(claim)
            if claim.outcome == "mismatch":
                return _problem_for(request, _Mismatch(
                    "this Idempotency-Key was already used for another request (method, path or body); "
                    "use a new key for a new report"))
            if claim.outcome == "running":
                return _problem_for(request, _Running(
                    "a request with this Idempotency-Key is still being handled; retry in a moment",
                    headers={"Retry-After": "1"}))
            request.state.driver = driver
            request.state.key_id = claim.key_id
            released = {"done": False}

            async def _on_exit(exc_type, exc, tb) -> bool:  # noqa: ANN001
                # runs after the request session's own exit: a commit that failed leaves the key claimed
                if exc is not None and not released["done"]:
                    await run_in_threadpool(_release, sessions, claim.key_id)
                return False

            request.scope["fastapi_function_astack"].push_async_exit(_on_exit)
            try:
                response = await original(request)
            except Exception as exc:  # noqa: BLE001 - every failure is answered, stored or released
                response = await _render(request, exc)
                if response.status_code >= 500:
                    # the request's session rolls back what the crashed request wrote (api.deps.get_session
                    # reads request.state.failed), the key is forgotten, and the 500 is answered: re-raising
                    # would make uvicorn drop the connection under the answer
                    request.state.failed = exc
                    await run_in_threadpool(_release, sessions, claim.key_id)
                    released["done"] = True
                    return response
            if response.status_code >= 500:
                await run_in_threadpool(_release, sessions, claim.key_id)
                released["done"] = True
                return response
            if not getattr(request.state, "committed", False):  # else stored and committed (commit_answer)
                _store(request, sessions, claim.key_id, response)
            return response

        return handler


class _Mismatch(DomainError):
    status_code = 422
    title = "Idempotency-Key reused"


class _Running(DomainError):
    status_code = 409
    title = "Request in progress"


def _target(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _auth_only(sessions: Callable[[], AbstractContextManager[Session]], authorization: str | None) -> DriverRef:
    with sessions() as session:
        return _authenticate(session, authorization)


def _auth_and_claim(sessions: Callable[[], AbstractContextManager[Session]], request: Request,
                    driver: DriverRef | None, key: str, fp: str) -> tuple[DriverRef, idempotency.Claim]:
    with sessions() as session:  # committed when this block ends, before the work starts
        if driver is None and idempotency.can_claim_with_caller(session):
            return _claim_as_caller(session, request, key, fp)
        if driver is None:
            driver = _authenticate(session, request.headers.get("authorization"))
        return driver, idempotency.claim(session, driver.id, key, fp, request.method, _target(request), utcnow())


def _claim_as_caller(session: Session, request: Request, key: str, fp: str) -> tuple[DriverRef, idempotency.Claim]:
    """PostgreSQL: the caller's check and the claim in one statement (delivery.idempotency.claim_as); the same
    refusals as :func:`_authenticate`, and a refused caller claims nothing."""
    username = str(_token_claims(request.headers.get("authorization"))["sub"])
    caller, claim = idempotency.claim_as(session, username, key, fp, request.method, _target(request), utcnow())
    login = None if caller is None else Login(caller.role, caller.active, None if caller.driver_id is None else
                                              DriverRef(caller.driver_id, username, caller.vehicle_id,
                                                        caller.vehicle_code))
    driver = driver_of(login, username)
    assert claim is not None  # claim_as claims for every caller driver_of lets through
    return driver, claim


def _store(request: Request, sessions: Callable[[], AbstractContextManager[Session]], key_id: int,
           response: Response) -> None:
    """Keep the answer with the key: in the work's transaction when there is one (api.deps.get_session runs it
    just before its commit, in the commit's hop), else in a short transaction of its own. The route's handler
    has returned by then: FastAPI ends a ``scope="function"`` dependency after the handler, before sending."""
    kept = _kept_answer(response)
    work: Session | None = getattr(request.state, "work_session", None)
    if work is None:
        with sessions() as session:
            idempotency.complete(session, key_id, *kept)
        return
    request.state.before_commit = lambda session: idempotency.complete(session, key_id, *kept)


def _kept_answer(response: Response) -> tuple[int, dict[str, str], bytes, datetime]:
    """What a key keeps of its answer, to replay it byte for byte: status, headers, body, and when."""
    return response.status_code, _kept_headers(response), bytes(getattr(response, "body", b"") or b""), utcnow()


def commit_answer(request: Request, session: Session, response: Response) -> Response:
    """A driver POST that succeeded: its answer kept with its key and the commit, in the route's own hop to the
    thread pool, after the work (what :func:`_store` and api.deps.get_session would do in one hop more). The
    session's end then has nothing left to send and runs on the event loop. On PostgreSQL only; elsewhere the
    answer goes through :func:`_store` as before."""
    key_id = getattr(request.state, "key_id", None)
    own = getattr(request.state, "own_session", None) is session  # not a session a test shares with the app
    if key_id is None or not own or session.get_bind().dialect.name != "postgresql":
        return response
    idempotency.complete(session, key_id, *_kept_answer(response))
    session.commit()
    request.state.committed = True
    return response


def _release(sessions: Callable[[], AbstractContextManager[Session]], key_id: int) -> None:
    with sessions() as session:
        idempotency.release(session, key_id)
