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
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

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


def claim(session: Session, driver_id: int, key: str, fp: str, method: str, path: str, now: datetime) -> Claim:
    """Take the key for this request, or say what happened to it before. The caller commits at once.

    One statement in the common case: an INSERT that, on a conflict with this driver's key, takes the row
    over only when it has expired or a process died holding it ("running" past ``LEASE``), and otherwise
    leaves it. The driver's other expired keys are swept at most every ten minutes per process (a key is
    judged by its own age whatever the sweep did, so this only bounds the table).
    """
    expired = now - timedelta(hours=get_settings().idempotency_hours)
    postgres = session.get_bind().dialect.name == "postgresql"
    tick = time.monotonic()
    if tick - _swept.get(driver_id, -_SWEEP_EVERY) >= _SWEEP_EVERY:
        _swept[driver_id] = tick
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.driver_id == driver_id,
                                                     IdempotencyKey.created_at < expired))
    dialect = postgresql if postgres else sqlite
    insert = dialect.insert(IdempotencyKey).values(
        driver_id=driver_id, key=key, fingerprint=fp, method=method, path=path[:500], status="running",
        created_at=now)
    new_id = session.scalar(
        insert.on_conflict_do_update(
            index_elements=["driver_id", "key"],
            set_={"fingerprint": insert.excluded.fingerprint, "method": insert.excluded.method,
                  "path": insert.excluded.path, "status": "running", "created_at": insert.excluded.created_at,
                  "response_status": None, "response_headers": None, "response_body": None, "finished_at": None},
            where=or_(IdempotencyKey.created_at < expired,
                      and_(IdempotencyKey.status == "running", IdempotencyKey.created_at < now - LEASE)))
        .returning(IdempotencyKey.id))
    if new_id is not None:
        return Claim("new", new_id)
    row = session.execute(select(IdempotencyKey.id, IdempotencyKey.fingerprint, IdempotencyKey.status,
                                 IdempotencyKey.response_status, IdempotencyKey.response_headers,
                                 IdempotencyKey.response_body)
                          .where(IdempotencyKey.driver_id == driver_id, IdempotencyKey.key == key)).one()
    if row.fingerprint != fp:
        return Claim("mismatch", row.id)
    if row.status != "done":
        return Claim("running", row.id)
    return Claim("replay", row.id, row.response_status, row.response_headers, row.response_body)


def complete(session: Session, key_id: int, status: int, headers: dict, body: bytes, now: datetime) -> None:
    """Store the answer, in the transaction that did (or refused) the work."""
    session.execute(update(IdempotencyKey).where(IdempotencyKey.id == key_id)
                    .values(status="done", response_status=status, response_headers=headers, response_body=body,
                            finished_at=now))


def release(session: Session, key_id: int) -> None:
    """Forget a key whose request crashed, so that a retry is handled afresh."""
    session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == key_id, IdempotencyKey.status == "running"))
