"""The audit log: its canonical form, the chain, the append-only triggers, tampering named by
`coldchain audit verify` (run as a command against a throwaway database), and concurrent appends
from several processes leaving one unbroken chain."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, time, timedelta

import pytest
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core import audit, migrate
from core.audit import AuditLog
from core.db import make_engine
from core.settings import get_settings
from core.timeutil import local_tomorrow
from tests.support import coldchain_in_process


def _writer(engine: Engine) -> Session:
    """A session as the application's writers open it (SQLite: BEGIN IMMEDIATE)."""
    session = Session(engine)
    if engine.dialect.name == "sqlite":
        session.connection(execution_options={"sqlite_immediate": True})
    return session


# ----------------------------------------------------------------------------- canonical form


def test_canonical_form_is_the_documented_json() -> None:
    """The hash covers sorted-key compact UTF-8 JSON with UTC microsecond times: what an auditor recomputes."""
    day = local_tomorrow()
    at = datetime.combine(day, time(8, 15, 2, 120000), tzinfo=get_settings().tz)  # 00:15:02.12 UTC in Shanghai
    data = {"z": 1, "lines": [{"sku": "EGG-30", "qty": 2, "lot": "L1"}], "temp": 3.25, "名称": "赣南脐橙",
            "when": at, "day": day, "tags": {"b", "a"}}
    record = {"id": 7, "at": at, "actor": "cli", "action": "order.allocated", "entity": "order", "entity_id": "A1",
              "data": audit.plain(data), "why": None, "prev_hash": audit.GENESIS}
    utc = (at - timedelta(hours=8)).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    body = {**record, "at": utc}
    expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert audit.canonical(record) == expected.encode("utf-8")
    assert f'"at":"{utc}"' in expected and '"名称":"赣南脐橙"' in expected  # UTF-8, not \\u escapes
    assert record["data"]["when"] == utc and record["data"]["tags"] == ["a", "b"]
    assert audit.record_hash(record) == hashlib.sha256(expected.encode("utf-8")).hexdigest()


def test_values_without_a_canonical_form_are_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="nan|NaN|Out of range"):
        audit.append(session, "t", "test.nan", "test", 1, {"peak": float("nan")})
    with pytest.raises(ValueError, match="naive"):
        audit.append(session, "t", "test.naive", "test", 1, at=datetime.now())  # noqa: DTZ005
    with pytest.raises(TypeError, match="cannot go into the audit log"):
        audit.append(session, "t", "test.object", "test", 1, {"x": object()})
    assert audit.flush(session) == []


# ----------------------------------------------------------------------------- the chain in one database


def test_records_chain_at_commit_and_rolled_back_savepoints_leave_none(session: Session) -> None:
    audit.append(session, "t", "test.kept", "test", "a", {"n": 1})
    with session.begin_nested():
        audit.append(session, "t", "test.released", "test", "b")
    with pytest.raises(RuntimeError), session.begin_nested():
        audit.append(session, "t", "test.undone", "test", "c")
        raise RuntimeError("undo")
    assert session.scalar(select(AuditLog.id).where(AuditLog.entity == "test")) is None  # queued, not written
    session.commit()  # the fixture's commit releases a savepoint: the before_commit hook writes them
    rows = session.scalars(select(AuditLog).where(AuditLog.entity == "test").order_by(AuditLog.id)).all()
    assert [r.action for r in rows] == ["test.kept", "test.released"]
    assert rows[1].id == rows[0].id + 1 and rows[1].prev_hash == rows[0].hash
    previous = session.scalar(select(AuditLog.hash).where(AuditLog.id == rows[0].id - 1))
    assert rows[0].prev_hash == (previous or audit.GENESIS)
    assert audit.verify(session).ok


def test_the_table_refuses_update_and_delete(session: Session) -> None:
    audit.append(session, "t", "test.fixed", "test", "x", {"qty": 1})
    (row,) = audit.flush(session)
    for statement in (update(AuditLog).where(AuditLog.id == row["id"]).values(actor="mallory"),
                      delete(AuditLog).where(AuditLog.id == row["id"])):
        with pytest.raises(DBAPIError, match="append-only"), session.begin_nested():
            session.execute(statement)
    assert session.scalar(select(AuditLog.actor).where(AuditLog.id == row["id"])) == "t"


# ----------------------------------------------------------------------------- tampering, named by the CLI

SQLITE_TRIGGERS = [f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                   f"BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: {verb} refused'); END"
                   for verb in ("UPDATE", "DELETE")]


@contextmanager
def as_attacker(engine: Engine) -> Iterator:
    """A connection that gets past the triggers, as someone with DBA rights would."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        yield conn
        if engine.dialect.name != "postgresql":
            for ddl in SQLITE_TRIGGERS:
                conn.execute(text(ddl))


@pytest.fixture(scope="module")
def chain_db(databases) -> Iterator[tuple[str, Engine]]:  # noqa: ANN001
    url = databases.new("audit_chain")
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield url, engine
    engine.dispose()


def fresh_chain(engine: Engine, n: int = 12) -> None:
    """Empty the table (as an attacker) and write n records, one transaction each."""
    with as_attacker(engine) as conn:
        conn.execute(text("DELETE FROM audit_log"))
    for i in range(1, n + 1):
        with _writer(engine) as s:
            audit.append(s, f"user-{i % 3}", "order.allocated", "order", f"A{i}",
                         {"node": "HUB-07", "lines": [{"sku": "EGG-30", "lot": f"L{i}", "qty": i}], "peak": i / 3,
                          "名称": "土鸡蛋"}, why="test" if i % 2 else None)
            s.commit()


def run_verify(url: str) -> subprocess.CompletedProcess:
    """`coldchain audit verify` on ``url``, in this process: its verdict, exit code and output are what is tested."""
    return coldchain_in_process({"COLDCHAIN_DATABASE_URL": url}, "audit", "verify")


def test_an_intact_chain_verifies(chain_db) -> None:  # noqa: ANN001
    url, engine = chain_db
    fresh_chain(engine)
    done = run_verify(url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact: 12 records" in done.stdout
    assert "verifying audit_log" in done.stderr  # the progress bar goes to stderr


def test_an_altered_field_is_named(chain_db) -> None:  # noqa: ANN001
    url, engine = chain_db
    fresh_chain(engine)
    with as_attacker(engine) as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = 5"))
    done = run_verify(url)
    assert done.returncode == 1 and "first bad record: 5: " in done.stdout, done.stdout + done.stderr
    assert "altered" in done.stdout


def test_an_altered_number_inside_data_is_named(chain_db) -> None:  # noqa: ANN001
    url, engine = chain_db
    fresh_chain(engine)
    with engine.connect() as conn:
        data = conn.execute(text("SELECT data FROM audit_log WHERE id = 3")).scalar_one()
    data = data if isinstance(data, dict) else json.loads(data)
    data["lines"][0]["qty"] = 300
    with as_attacker(engine) as conn:
        conn.execute(text("UPDATE audit_log SET data = :d WHERE id = 3"), {"d": json.dumps(data)})
    done = run_verify(url)
    assert done.returncode == 1 and "first bad record: 3: " in done.stdout, done.stdout + done.stderr


def test_a_deleted_row_is_named_by_its_successor(chain_db) -> None:  # noqa: ANN001
    url, engine = chain_db
    fresh_chain(engine)
    with as_attacker(engine) as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id = 6"))
    done = run_verify(url)
    assert done.returncode == 1 and "first bad record: 7: record 6 missing" in done.stdout, done.stdout


def test_a_swapped_pair_is_named(chain_db) -> None:  # noqa: ANN001
    """Rows 4 and 8 trade their whole contents (hashes included) but keep their ids."""
    url, engine = chain_db
    fresh_chain(engine)
    cols = ["at", "actor", "action", "entity", "entity_id", "data", "why", "prev_hash", "hash"]
    with engine.connect() as conn:
        rows = {r["id"]: dict(r) for r in conn.execute(select(AuditLog.__table__).where(AuditLog.id.in_([4, 8])))
                .mappings()}
    with as_attacker(engine) as conn:
        for mine, theirs in ((4, 8), (8, 4)):
            conn.execute(update(AuditLog.__table__).where(AuditLog.id == mine)
                         .values({c: rows[theirs][c] for c in cols}))
    done = run_verify(url)
    assert done.returncode == 1 and "first bad record: 4: " in done.stdout, done.stdout + done.stderr


def test_a_forged_record_with_a_recomputed_hash_is_named_by_its_successor(chain_db) -> None:  # noqa: ANN001
    url, engine = chain_db
    fresh_chain(engine)
    with engine.connect() as conn:
        row = dict(conn.execute(select(AuditLog.__table__).where(AuditLog.id == 9)).mappings().one())
    row["actor"], row["data"] = "mallory", {"node": "HUB-01", "lines": []}
    row["hash"] = audit.record_hash(row)  # consistent in itself, with the right prev_hash
    with as_attacker(engine) as conn:
        conn.execute(update(AuditLog.__table__).where(AuditLog.id == 9)
                     .values(actor=row["actor"], data=row["data"], hash=row["hash"]))
    done = run_verify(url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "first bad record: 10: its prev_hash is not the hash of record 9" in done.stdout


# ----------------------------------------------------------------------------- concurrency


def _append_worker(url: str, worker: int, n: int, go) -> None:  # noqa: ANN001
    engine = make_engine(url)
    go.wait(30)
    for i in range(n):
        with _writer(engine) as s:
            audit.append(s, f"proc-{worker}", "test.concurrent", "test", f"{worker}-{i}", {"worker": worker, "i": i})
            s.commit()
    engine.dispose()


@pytest.mark.slow
def test_concurrent_appends_from_four_processes_leave_one_chain(databases) -> None:  # noqa: ANN001
    url = databases.new("audit_concurrent")
    engine = make_engine(url)
    migrate.upgrade(engine)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_append_worker, args=(url, w, 200, go)) for w in range(4)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with Session(engine) as s:
        verdict = audit.verify(s, batch=64)  # several batches
        rows = s.execute(select(AuditLog.id, AuditLog.data).order_by(AuditLog.id)).all()
    engine.dispose()
    assert verdict.ok and verdict.records == 800, verdict
    assert [r.id for r in rows] == list(range(1, 801))
    per_worker: dict[int, list[int]] = {}
    for _id, data in rows:
        per_worker.setdefault(data["worker"], []).append(data["i"])
    assert per_worker == {w: list(range(200)) for w in range(4)}  # each process's appends, in its order
    workers_in_first_half = {data["worker"] for _id, data in rows[:400]}
    assert len(workers_in_first_half) > 1  # they really interleaved
