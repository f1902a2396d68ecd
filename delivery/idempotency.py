"""Idempotency-Key bookkeeping for driver POSTs (IETF draft-ietf-httpapi-idempotency-key-header).

A phone on a bad network sends the same report again; the first answer must come back and
nothing may happen twice. Each key is scoped to its driver and lives COLDCHAIN_IDEMPOTENCY_HOURS.

* :func:`claim` runs in a short transaction of its own that the caller commits *before* the
  work starts: the committed "running" row is what another API process finds, so a repeat
  that arrives while the first is still being handled answers 409 instead of doing it again.
* :func:`complete` writes the answer in the work's own transaction, so the answer is stored
  exactly when the work is; a request that failed with a 4xx stores its answer the same way.
* :func:`release` forgets a key whose request crashed (a 5xx): a retry may try again.

A running row older than ``LEASE`` is taken to belong to a process that died mid-request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import and_, delete, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.settings import get_settings
from delivery.models import IdempotencyKey

LEASE = timedelta(minutes=2)
MAX_KEY = 255


def fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 of method, path and body; a JSON body is canonicalised first (key order and spacing do not
    make another request)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        body = canonical.encode("utf-8")
    except (ValueError, UnicodeDecodeError):
        pass
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


def claim(session: Session, driver_id: int, key: str, fp: str, method: str, path: str, now: datetime) -> Claim:
    """Take the key for this request, or say what happened to it before. The caller commits at once."""
    expired = now - timedelta(hours=get_settings().idempotency_hours)
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        # No need to wait for this commit's WAL flush: the work's own (durable) commit comes later in the WAL
        # and flushes it; a claim lost in a crash stands for no work. Other processes see it at commit anyway.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    # this driver's expired keys, and this key if a process died holding it
    session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.driver_id == driver_id,
        or_(IdempotencyKey.created_at < expired,
            and_(IdempotencyKey.key == key, IdempotencyKey.status == "running",
                 IdempotencyKey.created_at < now - LEASE))))
    dialect = postgresql if postgres else sqlite
    new_id = session.scalar(
        dialect.insert(IdempotencyKey)
        .values(driver_id=driver_id, key=key, fingerprint=fp, method=method, path=path[:500], status="running",
                created_at=now)
        .on_conflict_do_nothing(index_elements=["driver_id", "key"])
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
