"""Request-scoped dependencies: the session (committed at the request boundary) and the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from core.db import get_engine, session_scope
from core.errors import Forbidden, Unauthorized
from core.security import read_token
from warehouses.models import User

oauth2 = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", refreshUrl="/api/v1/auth/refresh", auto_error=False)


_READS = frozenset(("GET", "HEAD", "OPTIONS"))


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request is the unit of work; reads run deferred, a request that may write takes SQLite's
    write lock up front. It commits when the route function returns, before the answer is sent
    (scope="function"): a client that is told 202 finds the job's row, and a failed commit is the
    answer, not a log line after a success was already sent.

    Async, so that a session is made on the event loop (that does no I/O: the connection is taken at its
    first statement) instead of in a hop to the thread pool; taking SQLite's write lock, the commit or
    rollback and the close do I/O, and run in the pool (but for PostgreSQL's autocommit reads, where they do
    none). ``request.state.before_commit`` (a function of the session), when set, runs in that same hop just
    before the commit: api/idempotency.py stores the key's answer there, so the work, its answer and the commit
    cost one hop."""
    write = request.method not in _READS
    route = request.scope.get("route")
    autocommit = not write and getattr(getattr(route, "endpoint", None), "autocommit_reads", False)
    scope = session_scope(write=write, autocommit=autocommit)
    dialect = get_engine().dialect.name
    locks = write and dialect == "sqlite"  # only SQLite's BEGIN IMMEDIATE does I/O up front
    # PostgreSQL's autocommit reads: nothing is left to commit or roll back (psycopg sends neither on an idle
    # connection), so their end does no I/O and costs no hop to the thread pool (GET /driver/route)
    quiet_end = autocommit and dialect == "postgresql"
    session = await run_in_threadpool(scope.__enter__) if locks else scope.__enter__()
    request.state.own_session = session  # this request's own unit of work, which a route may commit itself
    try:
        yield session
    except BaseException as exc:
        if not await run_in_threadpool(scope.__exit__, type(exc), exc, exc.__traceback__):
            raise
    else:
        failed = getattr(request.state, "failed", None)  # answered as a 500 by api.idempotency: undo, not commit
        exc_info = (type(failed), failed, failed.__traceback__) if failed is not None else (None, None, None)

        def _end() -> bool | None:
            if failed is None:
                try:
                    before_commit(request, session)
                except BaseException as exc:  # noqa: BLE001 - rolled back like the route's own failure
                    if not scope.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                    return None
            return scope.__exit__(*exc_info)

        # nothing left to send either when the route committed in its own hop (api.idempotency.commit_answer)
        quiet = quiet_end or (dialect == "postgresql" and getattr(request.state, "committed", False))
        if quiet and getattr(request.state, "before_commit", None) is None:
            _end()
        else:
            await run_in_threadpool(_end)


def autocommit_reads(endpoint: Callable) -> Callable:
    """Mark a read route whose statements may each commit on their own (core.db.session_scope's ``autocommit``):
    it needs no snapshot common to its statements and writes at most single statements. It then costs no BEGIN
    and COMMIT round trips on PostgreSQL (GET /driver/route, the API's most requested answer). Not for a route
    that appends to the audit log: the chain's lock is held by its transaction."""
    endpoint.autocommit_reads = True  # type: ignore[attr-defined]
    return endpoint


def before_commit(request: Request, session: Session) -> None:
    """What the request left to write into its own transaction just before the commit
    (``request.state.before_commit``, a function of the session: the Idempotency-Key's answer). Whatever
    provides a request's session calls it (tests that share their transaction with the app too)."""
    hook = getattr(request.state, "before_commit", None)
    if hook is not None:
        request.state.before_commit = None
        hook(session)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    id: int
    username: str
    role: str


def current_caller(session: SessionDep, token: Annotated[str | None, Depends(oauth2)]) -> Caller:
    if not token:
        raise Unauthorized("not authenticated", headers={"WWW-Authenticate": "Bearer"})
    claims = read_token(token)
    user = session.scalar(select(User).where(User.username == claims["sub"]))
    if user is None or not user.active:
        raise Unauthorized("unknown or disabled user")
    return Caller(user.id, user.username, user.role)


def require(*roles: str) -> Callable[..., Caller]:
    """A dependency that lets through only the given roles (admin always passes). Every route but the
    public ones (health, ready, token, refresh) takes one: tests/api/test_openapi_contract.py checks it."""

    def _check(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        if caller.role not in roles and caller.role != "admin":
            raise Forbidden(f"this needs the role {' or '.join(roles)}; you are {caller.role}")
        return caller

    return _check
