"""Idempotency-Key bookkeeping for driver POSTs (IETF draft-ietf-httpapi-idempotency-key-header).

A phone on a bad network sends the same report again; the first answer must come back and
nothing may happen twice. Each key is scoped to its driver and lives COLDCHAIN_IDEMPOTENCY_HOURS.

* :func:`claim` runs in a short transaction of its own that the caller commits *before* the
  work starts: the committed "running" row is what another API process finds, so a repeat
  that arrives while the first is still being handled answers 409 instead of doing it again.
* :func:`complete` writes the answer in the work's own transaction, so the answer is stored
  exactly when the work is; a request that failed with a 4xx stores its answer the same way.
* :func:`release` forgets a key whose request crashed (a 5xx): a retry may try again.

A running row older than ``LEASE`` is taken to belong to a process that died mid-request. Claims commit
without waiting for the WAL flush on PostgreSQL (the caller's quick-commit session, core.db).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import orjson
from sqlalchemy import Boolean, Integer, String, and_, bindparam, column, delete, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.hot import Hot
from core.settings import get_settings
from delivery.models import IdempotencyKey

LEASE = timedelta(minutes=2)
MAX_KEY = 255


def fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 of method, path and body; a JSON body is canonicalised first (key order and spacing do not
    make another request)."""
    with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: its bytes as they are
        body = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode("utf-8"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def parse_key(header: str | None) -> str | None:
    """The key from the header: a structured-field string ("…") as the draft has it, or a bare token."""
    if header is None:
        return None
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not value or len(value) > MAX_KEY or not value.isprintable():
        return None
    return value


@dataclass(frozen=True)
class Claim:
    outcome: Literal["new", "replay", "running", "mismatch"]
    key_id: int
    status: int | None = None
    headers: dict | None = None
    body: bytes | None = None


_SWEEP_EVERY = 600.0  # seconds between two sweeps of one driver's expired keys, per process
_swept: dict[int, float] = {}
_KEYS = IdempotencyKey.__table__


def _claim_insert(dialect) -> object:  # noqa: ANN001
    """The claiming INSERT, built once per dialect (building it per request cost ~0.5 ms of CPU): on a conflict
    with this driver's key it takes the row over only when the row has expired or a process died holding it
    ("running" past ``LEASE``), and otherwise leaves it."""
    insert = dialect.insert(_KEYS).values(
        driver_id=bindparam("driver_id"), key=bindparam("key"), fingerprint=bindparam("fp"),
        method=bindparam("method"), path=bindparam("path"), status="running", created_at=bindparam("now"))
    return insert.on_conflict_do_update(
        index_elements=["driver_id", "key"],
        set_={"fingerprint": insert.excluded.fingerprint, "method": insert.excluded.method,
              "path": insert.excluded.path, "status": "running", "created_at": insert.excluded.created_at,
              "response_status": None, "response_headers": None, "response_body": None, "finished_at": None},
        where=or_(_KEYS.c.created_at < bindparam("expired"),
                  and_(_KEYS.c.status == "running", _KEYS.c.created_at < bindparam("lease")))
    ).returning(_KEYS.c.id)


_INSERT = {"postgresql": _claim_insert(postgresql), "sqlite": _claim_insert(sqlite)}
_FOUND = Hot(select(_KEYS.c.id, _KEYS.c.fingerprint, _KEYS.c.status, _KEYS.c.response_status,
                 _KEYS.c.response_headers, _KEYS.c.response_body)
             .where(_KEYS.c.driver_id == bindparam("driver_id"), _KEYS.c.key == bindparam("key")))
_SWEEP = delete(_KEYS).where(_KEYS.c.driver_id == bindparam("driver_id"), _KEYS.c.created_at < bindparam("expired"))

# PostgreSQL: who is calling and the claim in one round trip. ``who`` is the user with the driver of the same
# username; the INSERT takes the key only for an active driver (or admin) who is a driver of drivers.csv; the
# outer SELECT returns the caller, the new key's id (NULL when the key was not taken) and the key's row as it
# was before this statement (NULL when there was none, or when a concurrent claim committed it meanwhile: the
# caller then reads it with _FOUND). Its parameters are the same as the INSERT's, plus ``username``.
_WHO_AND_CLAIM = Hot(text("""
WITH who AS (
    SELECT u.role, u.active, d.id AS driver_id, d.vehicle_id, v.code
    FROM users u LEFT JOIN drivers d ON d.username = u.username LEFT JOIN vehicles v ON v.id = d.vehicle_id
    WHERE u.username = :username
), taken AS (
    INSERT INTO idempotency_keys (driver_id, key, fingerprint, method, path, status, created_at)
    SELECT driver_id, :key, :fp, :method, :path, 'running', :now FROM who
    WHERE who.active AND who.role IN ('driver', 'admin') AND who.driver_id IS NOT NULL
    ON CONFLICT (driver_id, key) DO UPDATE SET fingerprint = excluded.fingerprint, method = excluded.method,
        path = excluded.path, status = 'running', created_at = excluded.created_at, response_status = NULL,
        response_headers = NULL, response_body = NULL, finished_at = NULL
    WHERE idempotency_keys.created_at < :expired
       OR (idempotency_keys.status = 'running' AND idempotency_keys.created_at < :lease)
    RETURNING id
)
SELECT who.role, who.active, who.driver_id, who.vehicle_id, who.code, (SELECT id FROM taken) AS new_id,
       k.id, k.fingerprint, k.status, k.response_status, k.response_headers, k.response_body
FROM who LEFT JOIN idempotency_keys k ON k.driver_id = who.driver_id AND k.key = :key
""").columns(column("role", String), column("active", Boolean), column("driver_id", Integer),
             column("vehicle_id", Integer), column("code", String), column("new_id", Integer),
             column("id", Integer), column("fingerprint", String), column("status", String),
             column("response_status", Integer), _KEYS.c.response_headers, _KEYS.c.response_body))


@dataclass(frozen=True)
class Caller:
    """Who sent the request, as the claim statement found them (the API decides what that allows)."""

    role: str
    active: bool
    driver_id: int | None
    vehicle_id: int | None
    vehicle_code: str | None


def _params(driver_id: int | None, key: str, fp: str, method: str, path: str, now: datetime) -> dict:
    return {"driver_id": driver_id, "key": key, "fp": fp, "method": method, "path": path[:500], "now": now,
            "expired": now - timedelta(hours=get_settings().idempotency_hours), "lease": now - LEASE}


def _sweep(session: Session, driver_id: int, expired: datetime) -> None:
    """The driver's expired keys, at most every ten minutes per process (a key is judged by its own age
    whatever the sweep did, so this only bounds the table)."""
    tick = time.monotonic()
    if tick - _swept.get(driver_id, -_SWEEP_EVERY) >= _SWEEP_EVERY:
        _swept[driver_id] = tick
        session.connection().execute(_SWEEP, {"driver_id": driver_id, "expired": expired})


def _verdict(row, fp: str) -> Claim:  # noqa: ANN001
    if row.fingerprint != fp:
        return Claim("mismatch", row.id)
    if row.status != "done":
        return Claim("running", row.id)
    return Claim("replay", row.id, row.response_status, row.response_headers, row.response_body)


def claim(session: Session, driver_id: int, key: str, fp: str, method: str, path: str, now: datetime) -> Claim:
    """Take the key for this request, or say what happened to it before. The caller commits at once.

    One statement in the common case (the INSERT of ``_claim_insert``); a key already there is read by a
    second one.
    """
    conn = session.connection()
    params = _params(driver_id, key, fp, method, path, now)
    _sweep(session, driver_id, params["expired"])
    new_id = conn.execute(_INSERT[conn.dialect.name], params).scalar()
    if new_id is not None:
        return Claim("new", new_id)
    return _verdict(_FOUND.rows(conn, params)[0], fp)


def can_claim_with_caller(session: Session) -> bool:
    """Whether :func:`claim_as` finds the caller and claims in one statement here (PostgreSQL)."""
    return session.get_bind().dialect.name == "postgresql"


def claim_as(session: Session, username: str, key: str, fp: str, method: str, path: str,
             now: datetime) -> tuple[Caller | None, Claim | None]:
    """PostgreSQL only: the caller (None for an unknown user) and, when the caller is an active driver, the
    claim (None otherwise: the API refuses the request and nothing was written), in one round trip.

    The same claim as :func:`claim`; the driver's expired keys are swept after it when due.
    """
    conn = session.connection()
    params = _params(None, key, fp, method, path, now)
    params["username"] = username
    row = _WHO_AND_CLAIM.first(conn, params)
    if row is None:
        return None, None
    caller = Caller(row.role, bool(row.active), row.driver_id, row.vehicle_id, row.code)
    if row.new_id is not None:
        _sweep(session, row.driver_id, params["expired"])
        return caller, Claim("new", row.new_id)
    if not (caller.active and caller.role in ("driver", "admin") and caller.driver_id is not None):
        return caller, None
    if row.id is None:  # a concurrent claim committed after this statement's snapshot: read it now
        params["driver_id"] = row.driver_id
        return caller, _verdict(_FOUND.rows(conn, params)[0], fp)
    return caller, _verdict(row, fp)


_COMPLETE = Hot(update(_KEYS).where(_KEYS.c.id == bindparam("key_id"))
             .values(status="done", response_status=bindparam("r_status"), response_headers=bindparam("r_headers"),
                     response_body=bindparam("r_body"), finished_at=bindparam("r_now")))
_RELEASE = delete(_KEYS).where(_KEYS.c.id == bindparam("key_id"), _KEYS.c.status == "running")


def complete(session: Session, key_id: int, status: int, headers: dict, body: bytes, now: datetime) -> None:
    """Store the answer, in the transaction that did (or refused) the work."""
    _COMPLETE.rows(session.connection(), {"key_id": key_id, "r_status": status, "r_headers": headers,
                                             "r_body": body, "r_now": now})


def release(session: Session, key_id: int) -> None:
    """Forget a key whose request crashed, so that a retry is handled afresh."""
    session.connection().execute(_RELEASE, {"key_id": key_id})
