"""What PostgreSQL spends on a route read's risk inputs, before and after the day's readings partition has
planner statistics.

    python -m benchmarks.risk_inputs [--drivers 150] [--stops 16] [--samples 5] [--database URL]

Every GET /driver/route reads its orders' risk inputs in one aggregate statement (traceability.trace._inputs:
the vans' reading count and newest time, the newest damage report). Each morning's partition of
telemetry_readings starts with no statistics until autovacuum analyses it, and a plan built on guesses can
cost a hundred times one built on statistics. This benchmark builds ``drivers`` started routes of ``stops``
stops (the rows api_load builds), stores ``samples`` samples of every van in today's partition, analyses every
other table, and runs the statement for every route three times on one connection: first with the partition
never analysed (the morning), then analysed. It prints the CPU of the database backend (read from /proc: the
server must run on this machine) and of this process per statement.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

ROUTE_READS = 3  # passes over every route per case


def main(argv: list[str] | None = None) -> int:
    import orjson
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from benchmarks.api_load import _build, _ticks
    from benchmarks.throwaway import throwaway_database
    from core.timeutil import utcnow
    from delivery.schemas import RouteStartIn
    from delivery.service import driver_ref, start_route
    from telemetry.service import Fleet, Message, default_engine, store_batch
    from traceability import trace

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drivers", type=int, default=150)
    ap.add_argument("--stops", type=int, default=16)
    ap.add_argument("--samples", type=int, default=5, help="samples of each van in today's partition")
    ap.add_argument("--database", default=os.environ.get("COLDCHAIN_BENCH_DATABASE_URL",
                                                          "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args(argv)
    hz = os.sysconf("SC_CLK_TCK")
    with throwaway_database(args.database, "bench_inputs") as (_url, engine):
        day, stop_ids = _build(engine, args.drivers, args.stops)
        now = utcnow().replace(microsecond=0)
        left = now - timedelta(hours=1)
        with Session(engine) as s, s.begin():
            for username in sorted(stop_ids):
                start_route(s, driver_ref(s, username), RouteStartIn(date=day, at=left), now=now)
        with engine.begin() as conn:  # the first case measures the partition as autovacuum has not yet seen it
            for (partition,) in conn.execute(text("SELECT inhrelid::regclass::text FROM pg_inherits "
                                                  "WHERE inhparent = 'telemetry_readings'::regclass")):
                conn.exec_driver_sql(f"ALTER TABLE {partition} SET (autovacuum_enabled = off)")
        with Session(engine) as s, s.begin():
            fleet = Fleet()
            fleet.load(s)
            messages = []
            for k in range(args.samples):
                ts = (left + timedelta(minutes=5 * k + 1)).isoformat().replace("+00:00", "Z")
                for code, device in s.execute(text("SELECT code, device FROM vehicles ORDER BY id")):
                    sample = {"device": device, "seq": k, "ts": ts, "temp_c": {"chilled": 4.0, "frozen": -19.0},
                              "door": {"chilled": "closed", "frozen": "closed"}, "shock_g": 0.3}
                    messages.append(Message(f"coldchain/v1/vehicles/{code}/telemetry", orjson.dumps([sample]), now))
            stored = store_batch(s, messages, fleet, default_engine(), now=now).stored
        with engine.connect() as conn:
            for table in ("custody_events", "route_stops", "routes", "orders", "order_events", "vehicles"):
                conn.exec_driver_sql(f"ANALYZE {table}")
            conn.commit()
            routes = [r for (r,) in conn.execute(text("SELECT id FROM routes ORDER BY id"))]
        print(f"{len(routes)} started routes of {args.stops} stops, {stored} samples in today's partition")
        statement = trace._SHARED["trips"][0]
        since = left - timedelta(hours=2)
        for case in ("partition never analysed (the morning)", "partition analysed"):
            with engine.connect() as conn:
                if case == "partition analysed":
                    conn.exec_driver_sql("ANALYZE telemetry_readings")
                    conn.commit()
                analysed = conn.execute(text("SELECT count(*) FROM pg_stat_user_tables WHERE relname LIKE "
                                             "'telemetry_readings_p%' AND (last_analyze IS NOT NULL "
                                             "OR last_autoanalyze IS NOT NULL)")).scalar_one()
                backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                for route in routes[:20]:  # psycopg prepares a statement on its fifth execution
                    statement.rows(conn, {"trip_ids": [route], "since": since})
                b0, c0 = _ticks(backend), time.process_time()
                for _ in range(ROUTE_READS):
                    for route in routes:
                        statement.rows(conn, {"trip_ids": [route], "since": since})
                n = ROUTE_READS * len(routes)
                print(f"{case} ({analysed} partitions analysed): "
                      f"PostgreSQL backend {1000 * (_ticks(backend) - b0) / hz / n:.3f} ms, "
                      f"this process {1000 * (time.process_time() - c0) / n:.3f} ms per statement ({n} statements)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
