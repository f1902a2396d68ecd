"""Planning a day at scale: 5,000 orders across 40 depots, one Celery task per depot, with 1 and with 2
worker processes, on real PostgreSQL and Redis.

    python -m benchmarks.plan_workers [--orders 5000] [--depots 40] [--time-limit 2] [--workers 1 2]
                                      [--database postgresql://postgres@127.0.0.1:5432/postgres]
                                      [--redis redis://127.0.0.1:6379/0]

What it does: makes a database of its own on the server, writes a synthetic city
(``warehouses.samplegen.synthetic``: flagships and hubs, their vans and stock, the orders), loads and
allocates it with the ``coldchain`` command, then for each worker count starts ``coldchain worker
--concurrency N`` on a queue of its own, sends one ``traceability.plan_depot`` task per depot that has
vans and allocated deliveries (as ``coldchain plan`` and ``POST /api/v1/plans`` do), and waits for
every result. It prints the wall time of each run (first task sent to last result back), the speed-up,
and, from each task's own ``timing``, how far past the time limit the tasks returned (the wall's
overhead, README "Time limit"). Each run re-plans the same day (a new plan version per depot); the
second run finds the depots' matrices in the shared cache (a few ms each: they are small).

The machine is shared: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path


def _cmd() -> list[str]:
    return [sys.executable, "-m", "scripts.cli"]


def _run(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([*_cmd(), *args], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"coldchain {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def _worker(env: dict[str, str], n: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*_cmd(), "worker", "--concurrency", str(n)], env=env, stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))
    deadline = time.monotonic() + 120
    while "ready." not in log.read_text(errors="replace"):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("the worker did not get ready:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.2)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=5000)
    ap.add_argument("--depots", type=int, default=40, help="nodes of the synthetic city")
    ap.add_argument("--time-limit", type=float, default=2.0, help="seconds per depot")
    ap.add_argument("--workers", nargs="*", type=int, default=[1, 2], help="worker processes of each run")
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/postgres",
                    help="a PostgreSQL server (the benchmark makes and drops a database of its own there)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the Celery broker and result backend")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the database")
    args = ap.parse_args(argv)

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)",
          flush=True)
    name = f"coldchain_planbench_{uuid.uuid4().hex[:8]}"
    admin_url = make_url(args.database).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    tmp = Path(tempfile.mkdtemp(prefix="planbench-"))
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_BROKER_URL": args.redis,
           "COLDCHAIN_DATA_DIR": str(tmp), "COLDCHAIN_CELERY_QUEUE": f"planbench-{uuid.uuid4().hex[:8]}"}
    os.environ.update(env)  # this process sends the tasks: the same settings as the workers
    try:
        return _bench(args, env, tmp)
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _bench(args: argparse.Namespace, env: dict[str, str], tmp: Path) -> int:
    from core.timeutil import local_tomorrow
    from warehouses.samplegen import synthetic, write_scenario

    day: date = local_tomorrow() + timedelta(days=1)
    folder = tmp / "city"
    write_scenario(synthetic(args.depots, args.orders, day, seed=args.seed), folder)
    load_s = _run(["scenario", "load", str(folder)], env)
    alloc_s = _run(["allocate", "--date", day.isoformat()], env)

    from core.db import session_scope
    from routing.service import depots_of_day
    from traceability.tasks import plan_depot_task

    with session_scope() as session:
        depots = depots_of_day(session, day)
    print(f"{args.orders} orders over {args.depots} nodes on {day}: scenario load {load_s:.1f} s, allocation "
          f"{alloc_s:.1f} s (both on PostgreSQL, not counted); {len(depots)} depots with vans and allocated "
          f"deliveries, {args.time_limit:g} s per depot", flush=True)
    walls: dict[int, float] = {}
    for n in args.workers:
        proc = _worker(env, n, tmp / f"worker-{n}.log")
        try:
            t0 = time.perf_counter()
            jobs = [plan_depot_task.apply_async(args=(day.isoformat(), d, args.time_limit, "bench")) for d in depots]
            results = [j.get(timeout=600, propagate=True) for j in jobs]
            walls[n] = time.perf_counter() - t0
        finally:
            _stop(proc)
        late = [r for r in results if "after the time limit" in (r.get("strategy") or "")]
        over = sorted(r["timing"]["total"] - args.time_limit for r in results if r not in late)
        worst = max(results, key=lambda r: r["timing"]["total"])
        stops = sum(r["stops"] for r in results)
        unserved = sum(r["unserved"] for r in results)
        print(f"  {n} worker process{'es' if n > 1 else ''}: wall {walls[n]:.1f} s for {len(depots)} depots "
              f"({stops} stops planned, {unserved} unserved); past the time limit per task: median "
              f"{statistics.median(over):+.2f} s, max {over[-1]:+.2f} s "
              f"(store median {statistics.median(r['timing']['store'] for r in results):.2f} s, rules "
              f"{statistics.median(r['timing']['rules'] for r in results):.2f} s, matrices built "
              f"{sum(r['matrices']['built'] for r in results)}, from the cache "
              f"{sum(r['matrices']['shared'] + r['matrices']['memory'] for r in results)})", flush=True)
        named = ", ".join(f"{r['depot']} {r['stops'] + r['unserved']} orders {r['timing']['total']:.1f} s"
                          for r in late)
        print(f"    slowest task: {worst['depot']} ({worst['stops'] + worst['unserved']} orders) "
              f"{worst['timing']}; {len(late)} depot(s) had no first plan within the limit ({named}), "
              "not counted above", flush=True)
    if 1 in walls and 2 in walls:
        print(f"  speed-up with 2 worker processes: {walls[1] / walls[2]:.2f}x", flush=True)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
