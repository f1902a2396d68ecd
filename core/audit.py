"""The audit log: one append-only, hash-chained history of every change (CONTRACTS.md section 7).

Every room writes its history through :func:`append` (or :func:`append_many` on bulk paths);
the primitive lives in core because fulfillment, warehouses and telemetry all write history
and may not import traceability, which owns the views and exports built on this table.

How the chain is made, so that an auditor can recompute it with any RFC 8785 library:

* each record's ``hash`` is the SHA-256 (hex) of the canonical JSON of ``{"id", "at", "actor",
  "action", "entity", "entity_id", "data", "why", "prev_hash"}``: keys sorted (by code point) at
  every level, no whitespace (``,`` and ``:``), UTF-8 with non-ASCII characters unescaped,
  floats in Python's shortest round-trip form (``repr``), no NaN or infinity, ``at`` as UTC
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` -- in Python, ``json.dumps(body, sort_keys=True,
  separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()``. It is RFC 8785-like
  (JCS) but not JCS: JCS writes numbers as ECMAScript does (``1`` for ``1.0``, ``1e+21``), and
  its pure-Python implementation cost ~30 µs a record against ~4 µs for the stdlib encoder,
  which matters on bulk paths (20,000 allocation events);
* ``prev_hash`` is the previous record's ``hash`` (``GENESIS``, 64 zeros, for record 1), and
  ids run 1, 2, 3, … without gaps, so altering, deleting or reordering any past record
  breaks the chain at that record or its successor; removing the newest records leaves a
  shorter intact chain, which only a head noted elsewhere (``coldchain audit verify`` prints
  it) can reveal.

Why records are written at commit: :func:`append` only queues a record in the session; the
session's ``before_commit`` hook flushes the ORM, takes the chain lock (PostgreSQL:
``pg_advisory_xact_lock``; SQLite: the database write lock, which writer sessions already hold
from BEGIN IMMEDIATE), reads the last id and hash once, chains the queued records in memory
and writes them in one COPY / executemany. The chain lock is therefore the last lock any
transaction takes (no deadlock with the row locks of allocation, ingestion or driver events)
and is held only through the commit; ids are handed out under it, so concurrent writers
never fork the chain and a rolled-back transaction leaves no gap. Code that must read its
own records before committing calls :func:`flush`.

Append-only: triggers refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) on ``audit_log``
(migration 0007); :func:`verify` finds whatever someone with the rights to bypass them did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, BigInteger, Column, Index, MetaData, String, Table, Text, event, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, SessionTransaction, mapped_column

from core.db import Base, UTCDateTime
from core.hot import Hot
from core.timeutil import utcnow

GENESIS = "0" * 64
LOCK_KEY = 0x636F6C64_61756469  # "coldaudi": the one advisory lock that serialises appends on PostgreSQL
_STATE = "coldchain.audit"
HASHED = ("id", "at", "actor", "action", "entity", "entity_id", "data", "why", "prev_hash")


class AuditLog(Base):
    """One record of history. Written only by this module, never updated or deleted."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_entity_entity_id", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(128))
    data: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    why: Mapped[str | None] = mapped_column(Text, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


# ----------------------------------------------------------------------------- canonical form


def utc_text(moment: datetime) -> str:
    """A time as the chain writes it: UTC with microseconds and Z (naive times are refused)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime given where an aware one is required")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _native(value: Any) -> Any:
    """What the JSON encoder is told for a value it does not know: one spelling per value."""
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=data_text)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot go into the audit log")


def data_text(value: Any) -> str:
    """`value` in canonical JSON (module docstring): what ``data`` holds and the hash covers.

    Times become UTC text (:func:`utc_text`), dates ISO text, tuples lists, sets sorted lists.
    NaN and infinities have no JSON form and raise ValueError: a caller's bug, caught before
    anything is written. The C encoder does the walking (a record costs a few µs).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_native)


def plain(value: Any) -> Any:
    """`value` as the JSON data stored for it (and read back by :func:`verify`)."""
    return json.loads(data_text(value))


_encode_str = json.encoder.encode_basestring  # the C function json.dumps(ensure_ascii=False) uses for text


def _s(value: str | None) -> str:
    return "null" if value is None else _encode_str(value)


def canonical_text(id_: int, at: str, actor: str, action: str, entity: str, entity_id: str, data: str | None,
                   why: str | None, prev_hash: str) -> str:
    """The canonical body from its parts, ``data`` already canonical text: the same bytes as
    ``data_text`` of the whole body (keys in sorted order), without walking ``data`` twice."""
    return (f'{{"action":{_s(action)},"actor":{_s(actor)},"at":"{at}","data":{data or "null"},'
            f'"entity":{_s(entity)},"entity_id":{_s(entity_id)},"id":{id_},"prev_hash":"{prev_hash}",'
            f'"why":{_s(why)}}}')


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers (module docstring), from a record as stored: ``at`` a
    datetime or its UTC text, ``data`` JSON data."""
    at = record["at"]
    data = record["data"]
    return canonical_text(record["id"], utc_text(at) if isinstance(at, datetime) else at, record["actor"],
                          record["action"], record["entity"], record["entity_id"],
                          None if data is None else data_text(data), record["why"],
                          record["prev_hash"]).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


# ----------------------------------------------------------------------------- appending


@dataclass(frozen=True, slots=True)
class Entry:
    """One record to append, for :func:`append_many`."""

    actor: str
    action: str
    entity: str
    entity_id: str | int
    data: Any = None
    why: str | None = None
    at: datetime | None = None


@dataclass
class _State:
    """Per session: records queued, whether this transaction holds the chain lock, the head it saw."""

    pending: list[tuple[SessionTransaction | None, dict]] = field(default_factory=list)
    locked: bool = False
    head: tuple[int, str] | None = None


def _state(session: Session) -> _State:
    state = session.info.get(_STATE)
    if state is None:
        state = session.info[_STATE] = _State()
    return state


def _row(entry: Entry, now: datetime) -> dict:
    """A queued record; ``data`` is kept as canonical text (the hash's and PostgreSQL COPY's form)."""
    at = entry.at or now
    return {"id": None, "at": at, "actor": entry.actor, "action": entry.action, "entity": entry.entity,
            "entity_id": str(entry.entity_id), "data": None if entry.data is None else data_text(entry.data),
            "why": entry.why, "prev_hash": None, "hash": None, "_at": utc_text(at)}


def append(session: Session, actor: str, action: str, entity: str, entity_id: str | int, data: Any = None,
           why: str | None = None, *, at: datetime | None = None) -> dict:
    """Add one record of history to this transaction; it is chained and written when the transaction commits.

    ``action`` names what happened (``order.allocated``, ``plan.stored``, ``alert.acknowledged``),
    ``entity``/``entity_id`` what it happened to (``order``/``A1``), ``data`` the facts
    (JSON-able: see :func:`plain`; never a password or its hash), ``why`` the reason a person
    gave. Returns the queued row, whose ``id`` and ``hash`` are filled in when it is written
    (its ``data`` is the canonical JSON text).
    """
    return append_many(session, [Entry(actor, action, entity, entity_id, data, why, at)])[0]


def append_many(session: Session, entries: Iterable[Entry]) -> list[dict]:
    """Queue many records in one go (bulk paths: one chain lock, one read of the head, one COPY)."""
    now = utcnow()
    rows = [_row(e, now) for e in entries]
    if rows:
        tag = session.get_nested_transaction()
        _state(session).pending.extend((tag, r) for r in rows)
    return rows


def flush(session: Session) -> list[dict]:
    """Write the queued records now (takes the chain lock until the transaction ends); returns them."""
    state = session.info.get(_STATE)
    if state is None or not state.pending:
        return []
    session.flush()  # the ORM's row locks first: the chain lock is the last lock a transaction takes
    conn = session.connection()
    if not state.locked:
        if conn.dialect.name == "postgresql":
            _PG_LOCK.rows(conn, {"key": LOCK_KEY})
        else:  # a write statement takes SQLite's write lock (a no-op for writer sessions, which hold it)
            conn.execute(_SQLITE_LOCK)
        state.locked = True
    if state.head is None:
        last = _HEAD.first(conn)
        state.head = (last[0], last[1]) if last else (0, GENESIS)
    last_id, last_hash = state.head
    rows = [r for _tag, r in state.pending]
    sha256 = hashlib.sha256
    for row in rows:
        last_id += 1
        row["id"], row["prev_hash"] = last_id, last_hash
        body = canonical_text(last_id, row.pop("_at"), row["actor"], row["action"], row["entity"],
                              row["entity_id"], row["data"], row["why"], last_hash)
        row["hash"] = last_hash = sha256(body.encode("utf-8")).hexdigest()
    _insert(session, rows, conn)
    state.head = (last_id, last_hash)
    state.pending.clear()
    return rows


_PG_LOCK = Hot(text("SELECT pg_advisory_xact_lock(:key)"))
_SQLITE_LOCK = text("UPDATE audit_log SET id = id WHERE id < 0")
_HEAD = Hot(select(AuditLog.__table__.c.id, AuditLog.__table__.c.hash).order_by(AuditLog.__table__.c.id.desc())
            .limit(1))
_COLUMNS = ("id", "at", "actor", "action", "entity", "entity_id", "data", "why", "prev_hash", "hash")
_FEW = 20
_PG_INSERT = Hot(text(f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) VALUES "
                      f"({', '.join('CAST(:data AS json)' if c == 'data' else ':' + c for c in _COLUMNS)})"))


def _insert(session: Session, rows: list[dict], conn: Connection) -> None:
    """PostgreSQL: one COPY, ``data`` going in as the canonical text already made (a json column keeps
    text as given). SQLite: executemany, in process. (Statements on the connection itself: a request's few
    records skip the ORM session's execute path.)"""
    if conn.dialect.name == "postgresql":
        if len(rows) == 1:  # a request's usual one
            _PG_INSERT.rows(conn, {c: rows[0][c] for c in _COLUMNS})
            return
        if len(rows) <= _FEW:  # one INSERT is one round trip; COPY takes three
            conn.execute(_PG_INSERT.statement, [{c: row[c] for c in _COLUMNS} for row in rows])
            return
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY audit_log ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in _COLUMNS])
        return
    conn.execute(_TEXT_TABLE.insert(), rows)


# audit_log as SQLite is written to: ``data`` bound as the canonical text itself (no decode and re-encode)
_TEXT_TABLE = Table("audit_log", MetaData(), *(Column(c.name, Text if c.name == "data" else c.type)
                                                 for c in AuditLog.__table__.columns))


@event.listens_for(Session, "before_commit")
def _write_on_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the records wait for the real commit
        return
    flush(session)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous: SessionTransaction) -> None:
    state = session.info.get(_STATE)
    if state is None:
        return
    state.locked, state.head = False, None  # a savepoint's rollback may undo records and the lock
    if not previous.nested:
        state.pending.clear()
        return

    def inside(tag: SessionTransaction | None) -> bool:
        while tag is not None:
            if tag is previous:
                return True
            tag = tag.parent
        return False

    state.pending = [(tag, row) for tag, row in state.pending if not inside(tag)]


@event.listens_for(Session, "after_transaction_end")
def _forget_at_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and _STATE in session.info:
        del session.info[_STATE]  # the lock went with the transaction; the next one reads the head again


# ----------------------------------------------------------------------------- verifying


@dataclass
class Verdict:
    """What :func:`verify` found: intact, or the first bad record and why."""

    ok: bool
    records: int
    first_bad: int | None = None
    reason: str | None = None
    head_id: int | None = None
    head_hash: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def count(session: Session) -> int:
    from sqlalchemy import func

    return int(session.scalar(select(func.count()).select_from(AuditLog)) or 0)


def verify(session: Session, batch: int = 5000, progress: Callable[[int], None] | None = None) -> Verdict:
    """Walk the chain in id order, ``batch`` records at a time, and stop at the first bad record.

    A record is bad when its id does not follow the previous one (records removed), its
    ``prev_hash`` is not the previous record's hash (one before it altered or moved, or a
    forged predecessor), or its own hash does not match its contents (altered).
    ``progress(n)`` is told how many records each batch checked.
    """
    table = AuditLog.__table__
    expected_id, expected_prev = 1, GENESIS
    seen = 0
    after = 0
    while True:
        query = select(table).where(table.c.id > after).order_by(table.c.id).limit(batch)
        rows = session.execute(query).mappings().all()
        if not rows:
            break
        for row in rows:
            bad = None
            if row["id"] != expected_id:
                missing = (f"record {expected_id}" if row["id"] == expected_id + 1
                           else f"records {expected_id} to {row['id'] - 1}")
                bad = f"{missing} missing: ids jump from {expected_id - 1} to {row['id']}"
            elif row["prev_hash"] != expected_prev:
                bad = (f"its prev_hash is not the hash of record {expected_id - 1}: a record before it was "
                       "altered, removed or moved" if expected_id > 1
                       else "the first record does not start from the genesis hash")
            elif record_hash(row) != row["hash"]:
                bad = "its contents do not match its hash: the record was altered"
            if bad:
                return Verdict(False, seen, row["id"], bad, expected_id - 1 or None,
                               expected_prev if expected_id > 1 else None)
            seen += 1
            expected_id, expected_prev = row["id"] + 1, row["hash"]
        after = rows[-1]["id"]
        if progress:
            progress(len(rows))
    return Verdict(True, seen, None, None, expected_id - 1 or None, expected_prev if seen else None)
