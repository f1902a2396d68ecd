"""What the audit log costs: one append in its own transaction, a bulk of 1,000, and verification.

    python -m benchmarks.audit                                       # SQLite file in a temp folder
    python -m benchmarks.audit --database postgresql://postgres@127.0.0.1:5432/test

On PostgreSQL a database of its own is made and dropped. A single append is measured against
the same transaction without it (both write one row of a scratch table, so the commit's flush
to disk is in both); the difference is what the audit log adds to a small request.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from core import audit, migrate
from core.db import make_engine


def _writer(engine) -> Session:  # noqa: ANN001
    session = Session(engine)
    if engine.dialect.name == "sqlite":
        session.connection(execution_options={"sqlite_immediate": True})
    return session


def _entry(i: int) -> audit.Entry:
    return audit.Entry("bench", "order.allocated", "order", f"B{i:06d}",
                       {"from": "received", "to": "allocated", "data": {"node": "HUB-07"},
                        "reserved": [{"node": "HUB-07", "sku": "EGG-30", "lot": "L881", "qty": 2}]})


def run(engine, singles: int, bulks: int) -> dict:  # noqa: ANN001
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_scratch (id INTEGER PRIMARY KEY, v TEXT)"))
    times: dict[str, list[float]] = {"plain": [], "audited": []}
    for i in range(singles):
        for kind in ("plain", "audited"):
            t = time.perf_counter()
            with _writer(engine) as s:
                s.execute(text("INSERT INTO bench_scratch (id, v) VALUES (:i, 'x')"),
                          {"i": 2 * i + (kind == "audited")})
                if kind == "audited":
                    audit.append_many(s, [_entry(i)])
                s.commit()
            times[kind].append(time.perf_counter() - t)
    bulk = []
    for b in range(bulks):
        entries = [_entry(b * 1000 + i) for i in range(1000)]
        t = time.perf_counter()
        with _writer(engine) as s:
            audit.append_many(s, entries)
            s.commit()
        bulk.append(time.perf_counter() - t)
    with Session(engine) as s:
        t = time.perf_counter()
        verdict = audit.verify(s)
        verify_s = time.perf_counter() - t
    plain, audited = statistics.median(times["plain"]), statistics.median(times["audited"])
    return {"database": engine.dialect.name, "single_txn_ms": round(plain * 1e3, 3),
            "single_txn_with_append_ms": round(audited * 1e3, 3),
            "append_cost_us": round((audited - plain) * 1e6, 1),
            "bulk_1000_ms": round(statistics.median(bulk) * 1e3, 2),
            "bulk_per_record_us": round(statistics.median(bulk) * 1e3, 2),
            "verify_records": verdict.records, "verify_ok": verdict.ok,
            "verify_records_per_s": round(verdict.records / verify_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", help="a PostgreSQL server URL (a database is made there and dropped)")
    ap.add_argument("--singles", type=int, default=300)
    ap.add_argument("--bulks", type=int, default=10)
    args = ap.parse_args()
    admin = None
    if args.database:
        name = f"coldchain_bench_audit_{uuid.uuid4().hex[:8]}"
        server = make_url(args.database.replace("postgresql://", "postgresql+psycopg://", 1))
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'audit-bench.db'}"
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        print(run(engine, args.singles, args.bulks))
    finally:
        engine.dispose()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
