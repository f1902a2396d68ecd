"""Driver API load: many simulated drivers fetch their route and report stop events, at a fixed rate.

    python -m benchmarks.api_load [--rate 300] [--duration 30] [--drivers 150] [--stops 16] [--workers 2]
                                  [--database URL] [--get-share 0.5] [--retry-share 0.05]
                                  [--telemetry-every 60]

`coldchain serve --workers N` runs as a subprocess on a PostgreSQL database made for the run
(dropped afterwards; without --database: $COLDCHAIN_BENCH_DATABASE_URL, else the machine's
PostgreSQL). Each driver has a started route of ``--stops`` stops. An asyncio httpx generator
in this process sends requests open-loop at ``--rate`` per second (a request is not held back
because an earlier one is slow): GET /driver/route, or the driver's next stop event (arrived,
then delivered, stop after stop), each with a new Idempotency-Key; a share of the POSTs is
sent again with the same key (an app retrying). Meanwhile every van sends a reading every
``--telemetry-every`` seconds, stored as the ingestor stores them, so that route reads see live
vans. Latency is timed from when each request was due, so a generator that falls behind shows up
in it. Prints p50, p95, p99, max, errors, the achieved requests/s and the machine's load average
(the machine may be shared). ``--warmup`` runs each rate unmeasured first: long enough that every
API worker has read every route (a worker's first read of a route assesses it, once a day).

Because the machine is shared, it also prints what does not depend on the neighbours: the CPU
seconds the server's processes (uvicorn and its workers) and the database's backends spent
during the measured load, as requests per CPU-second, and the SQL statements each endpoint
runs (counted in this process with an event listener on the engine, one request of each kind by
a driver held out of the load). ``--rates 50,100,200,300`` measures several rates one after the
other and prints the highest achieved rate whose p99 stays within ``--p99-goal`` ms.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _build(engine, drivers: int, stops: int):  # noqa: ANN001, ANN202
    """A depot, one van, driver and route per driver, ``stops`` one-line orders each, reserved from a lot so that
    route start records custody (tests.delivery.helpers.many_stops: rows written directly, the benchmark
    measures the API, not the planner)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from core.security import hash_password
    from core.timeutil import local_tomorrow
    from tests.delivery.helpers import many_stops
    from warehouses.models import Vehicle

    day = local_tomorrow()
    password = hash_password("bench-password")  # one hash for every user: logins are not measured
    with Session(engine) as s, s.begin():
        stop_ids = many_stops(s, day, [stops] * drivers, prefix="bench", password_hash=password)
        for van in s.scalars(select(Vehicle)):
            van.device = f"TL-{van.code}"  # a logger in every van, for --telemetry-every
    return day, stop_ids


class Telemetry(threading.Thread):
    """Every van sends a reading every ``every`` seconds, spread evenly, stored as the ingestor stores them
    (telemetry.service.store_batch, the messages of each second in one committed transaction): the risk checks of
    a route read after a reading see it, as on a day with live vans. Runs in this process (its CPU is the
    generator's; its database work is the backends')."""

    def __init__(self, db_url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.db_url, self.every = db_url, every
        self.halt = threading.Event()
        self.stored = 0

    def run(self) -> None:
        import orjson
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from core.db import make_engine
        from telemetry.service import Fleet, Message, default_engine, store_batch
        from warehouses.models import Vehicle

        engine = make_engine(self.db_url)
        fleet, rules = Fleet(), default_engine()
        with Session(engine) as s:
            vans = [(code, device) for code, device in s.execute(select(Vehicle.code, Vehicle.device)
                                                                  .order_by(Vehicle.code))]
            fleet.load(s)
        seq, due = 0, time.perf_counter()
        per_tick = len(vans) / self.every  # readings a second, sent as one batch (the ingestor's batching)
        owed, rng = 0.0, random.Random(11)
        while not self.halt.is_set():
            owed += per_tick
            messages, now = [], datetime.now(UTC)
            while owed >= 1:
                code, device = vans[seq % len(vans)]
                seq += 1
                owed -= 1
                sample = {"device": device, "seq": seq, "ts": now.isoformat().replace("+00:00", "Z"),
                          "temp_c": {"chilled": round(rng.uniform(2.5, 5.5), 1), "frozen": -19.0},
                          "door": {"chilled": "closed", "frozen": "closed"}, "shock_g": 0.3}
                messages.append(Message(f"coldchain/v1/vehicles/{code}/telemetry", orjson.dumps([sample]), now))
            if messages:
                with Session(engine) as s, s.begin():
                    self.stored += store_batch(s, messages, fleet, rules, now=now).stored
            due += 1.0
            self.halt.wait(max(0.0, due - time.perf_counter()))
        engine.dispose()


class Driver:
    """One simulated phone: its token, its stops, and what it reports next."""

    def __init__(self, username: str, stops: list[str], token: str) -> None:
        self.username, self.stops = username, stops
        self.headers = {"Authorization": f"Bearer {token}"}
        self.next = 0  # index into the 2 * len(stops) events: arrived, delivered, arrived, ...
        self.last: tuple[str, dict, str] | None = None
        self.busy = False  # a phone sends its reports one after the other

    def event(self) -> tuple[str, dict, str] | None:
        if self.next >= 2 * len(self.stops):
            return None
        stop = self.stops[self.next // 2]
        body = {"type": "arrived"} if self.next % 2 == 0 else {"type": "delivered", "recipient": "本人"}
        self.next += 1
        self.last = (f"/api/v1/driver/stops/{stop}/events", body, uuid.uuid4().hex)
        return self.last


class RawClient:
    """A minimal HTTP/1.1 keep-alive client for the generator: a request is a few writes and reads on an
    asyncio stream. httpx's pool cost about 1.5 ms of CPU per request here (quadratic in queued requests
    under overload), as much as the server's own work, on the same two cores; this one costs a few tens of
    microseconds, so the generator takes less of the machine it measures. Answers must carry
    Content-Length (uvicorn's always do here)."""

    def __init__(self, base: str, max_connections: int = 256, timeout: float = 30.0) -> None:
        from urllib.parse import urlparse

        url = urlparse(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.hostline = f"Host: {url.netloc}\r\n".encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)
        self.timeout = timeout

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes | None = None) -> int:
        async with self.slots:
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            try:
                status, keep = await asyncio.wait_for(self._exchange(conn, method, target, headers, body),
                                                      self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError):
                conn[1].close()
                if not reused:
                    raise
                # the server closed an idle keep-alive connection: once more on a new one, as clients do
                conn = await asyncio.open_connection(self.host, self.port)
                try:
                    status, keep = await asyncio.wait_for(self._exchange(conn, method, target, headers, body),
                                                          self.timeout)
                except BaseException:
                    conn[1].close()
                    raise
            except BaseException:
                conn[1].close()
                raise
            if keep:
                self.idle.append(conn)
            else:
                conn[1].close()
            return status

    async def _exchange(self, conn, method: str, target: str, headers: dict[str, str],  # noqa: ANN001
                        body: bytes | None) -> tuple[int, bool]:
        reader, writer = conn
        head = [f"{method} {target} HTTP/1.1\r\n".encode(), self.hostline]
        head += [f"{k}: {v}\r\n".encode() for k, v in headers.items()]
        if body is not None:
            head.append(f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode())
        head.append(b"\r\n")
        writer.write(b"".join(head) + (body or b""))
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, keep = 0, True
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if length:
            await reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        for _reader, writer in self.idle:
            writer.close()


async def _load(base: str, day, drivers: list[Driver], rate: float, duration: float, get_share: float,  # noqa: ANN001
                retry_share: float, seed: int) -> dict:
    import orjson

    rng = random.Random(seed)
    results: list[tuple[str, float, int | None]] = []  # kind, latency s, status (None: exception)
    lag: list[float] = []
    client = RawClient(base)
    query = f"?date={day.isoformat()}"
    try:

        async def one(kind: str, due: float, method: str, url: str, headers: dict, body: dict | None,
                      driver: Driver | None = None) -> None:
            lag.append(time.perf_counter() - due)
            try:
                status: int | None = await client.request(
                    method, url + query if method == "GET" else url, headers,
                    orjson.dumps(body) if body is not None else None)
            except (TimeoutError, OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                status = None
            finally:
                if driver is not None:
                    driver.busy = False
            results.append((kind, time.perf_counter() - due, status))

        tasks = []
        n = int(rate * duration)
        start = time.perf_counter() + 0.2
        for i in range(n):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            d = drivers[i % len(drivers)]
            roll = rng.random()
            if roll >= get_share and d.busy:  # this phone is still waiting for its last answer: another one
                d = next((x for x in drivers if not x.busy), d)
            if roll < get_share or d.busy:
                tasks.append(asyncio.create_task(one("GET route", due, "GET", "/api/v1/driver/route", d.headers,
                                                     None)))
                continue
            if roll < get_share + retry_share and d.last is not None:
                url, body, key = d.last
                kind = "POST retry"
            else:
                ev = d.event()
                if ev is None:
                    tasks.append(asyncio.create_task(one("GET route", due, "GET", "/api/v1/driver/route",
                                                         d.headers, None)))
                    continue
                url, body, key = ev
                kind = "POST event"
            d.busy = True
            tasks.append(asyncio.create_task(one(kind, due, "POST", url, {**d.headers, "Idempotency-Key": key},
                                                 body, d)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    finally:
        client.close()
    return {"results": results, "elapsed": elapsed, "lag": lag}


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), None when the process has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _ticks(pid: int, reaped: bool = False) -> int:
    """utime + stime of one process, in clock ticks (0 when it has gone); ``reaped``: cutime + cstime instead, the
    CPU of its children that ended and that it waited for."""
    fields = _stat(pid)
    if fields is None:
        return 0
    return int(fields[13]) + int(fields[14]) if reaped else int(fields[11]) + int(fields[12])


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _tree(pid: int) -> list[int]:
    """The process and all its descendants (the uvicorn supervisor and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := _parent(int(entry.name))) is not None:
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _backends(engine, database: str) -> list[int]:  # noqa: ANN001
    """PIDs of the PostgreSQL backends serving the benchmark's database (readable when the server runs here)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :d "
                                                "AND pid <> pg_backend_pid()"), {"d": database})]


class CpuMeter:
    """CPU seconds spent by the server's process tree and by the database's backends between two readings.

    A backend that ends between the two (an overflow connection of the pool, closed when given back: many under
    overload) is read from the postmaster, which waits for its children: the growth of its children's CPU is
    counted too (with whatever else of this PostgreSQL ended meanwhile, autovacuum workers included)."""

    def __init__(self, server_pid: int, engine, database: str) -> None:  # noqa: ANN001
        self.server_pid, self.engine, self.database = server_pid, engine, database
        self.hz = os.sysconf("SC_CLK_TCK")
        self.postmaster: int | None = None

    def read(self) -> tuple[dict[int, int], dict[int, int]]:
        server = {p: _ticks(p) for p in _tree(self.server_pid)}
        try:
            backends = _backends(self.engine, self.database)
        except Exception:  # noqa: BLE001 - a remote database: its CPU is not ours to read
            backends = []
        db = {p: _ticks(p) for p in backends}
        if self.postmaster is None and backends and Path(f"/proc/{backends[0]}").exists():
            self.postmaster = _parent(backends[0])
        if self.postmaster is not None:
            db[-self.postmaster] = _ticks(self.postmaster, reaped=True)  # a key no live process has
        return server, db

    def since(self, before: tuple[dict[int, int], dict[int, int]]) -> tuple[float, float]:
        after = self.read()
        return tuple(sum(t - b.get(p, 0) for p, t in a.items()) / self.hz  # type: ignore[return-value]
                     for a, b in zip(after, before, strict=True))


def _statement_counts(db_url: str, day, username: str, stop_id: str) -> list[tuple[str, int, int, int]]:  # noqa: ANN001
    """(endpoint, status, SQL statements, round trips) for one request of each kind, run in this process against the
    same database with a statement counter on the engine and libpq's trace on every connection (a round trip is
    one ReadyForQuery from the server: a statement, a BEGIN, a COMMIT, a pool's ping; each costs both sides a
    wake-up and two system calls). The probe driver takes no part in the load."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from api.app import create_app
    from core.db import get_engine, get_quick_commit_engine, reset_caches
    from core.security import issue_token

    os.environ["COLDCHAIN_DATABASE_URL"] = db_url
    reset_caches()
    count = [0]

    def _count(*_args) -> None:  # noqa: ANN002
        count[0] += 1

    from tests.delivery.helpers import PqTrace

    trace = PqTrace(Path(tempfile.mkdtemp(prefix="coldchain-pqtrace-")))
    engines = {id(e): e for e in (get_engine(), get_quick_commit_engine())}.values()  # the key claims' own too
    for engine in engines:
        event.listen(engine, "before_cursor_execute", _count)
        trace.attach(engine)
    headers = {"Authorization": f"Bearer {issue_token(username, 'driver', minutes=10)}"}
    leave = _left()
    events = f"/api/v1/driver/stops/{stop_id}/events"
    steps = [
        ("GET /driver/route (planned)", "GET", "/api/v1/driver/route", None, None),
        ("POST /driver/route/start", "POST", "/api/v1/driver/route/start",
         {"date": day.isoformat(), "at": leave.isoformat()}, "k-start"),
        ("GET /driver/route (started)", "GET", "/api/v1/driver/route", None, None),
        ("POST events arrived", "POST", events, {"type": "arrived"}, "k-arrived"),
        ("POST events delivered", "POST", events, {"type": "delivered", "recipient": "本人"}, "k-delivered"),
        ("POST events (a retry, replayed)", "POST", events, {"type": "delivered", "recipient": "本人"}, "k-delivered"),
        ("GET /driver/route (a stop done)", "GET", "/api/v1/driver/route", None, None),
    ]
    out = []
    with TestClient(create_app()) as client:
        for name, method, url, body, key in steps:
            client.request(method, url, headers=headers, json=body, params={"date": day.isoformat()})  # warm
            count[0], trips = 0, trace.trips()
            if method == "GET":
                resp = client.get(url, headers=headers, params={"date": day.isoformat()})
            else:
                resp = client.post(url, headers={**headers, "Idempotency-Key": key}, json=body)
            out.append((name, resp.status_code, count[0], trace.trips() - trips))
    for engine in engines:
        event.remove(engine, "before_cursor_execute", _count)
    trace.detach()
    shutil.rmtree(trace.path.parent, ignore_errors=True)
    reset_caches()
    return out


def _exit_on_term(_signum: int, _frame: object) -> None:
    raise SystemExit(143)  # a SIGTERM (timeout, CI) still stops the server and drops the database in `finally`


def main(argv: list[str] | None = None) -> int:
    from benchmarks.throwaway import throwaway_database

    signal.signal(signal.SIGTERM, _exit_on_term)

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=300.0, help="requests per second, fixed")
    ap.add_argument("--rates", default=None, help="comma-separated rates measured one after the other "
                                                  "(instead of --rate), e.g. 50,100,200,300")
    ap.add_argument("--p99-goal", type=float, default=50.0, help="ms; the sweep reports the best rate within it")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    ap.add_argument("--drivers", type=int, default=150)
    ap.add_argument("--stops", type=int, default=16, help="stops per driver (raised so drivers do not run out)")
    ap.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    ap.add_argument("--get-share", type=float, default=0.5, help="share of GET /driver/route")
    ap.add_argument("--retry-share", type=float, default=0.05, help="share of POSTs repeated with the same key")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds at the rate before measuring (not counted)")
    ap.add_argument("--database", default=os.environ.get("COLDCHAIN_BENCH_DATABASE_URL",
                                                          "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--telemetry-every", type=float, default=60.0,
                    help="seconds between two readings of each van during the load (0: no telemetry)")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    posts = sum(r * (args.duration + args.warmup) for r in rates) * (1 - args.get_share)
    stops = max(args.stops, math.ceil(posts / (2 * args.drivers)) + 1)

    work = Path(tempfile.mkdtemp(prefix="coldchain-api-bench-"))
    secret = "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
    os.environ["COLDCHAIN_SECRET_KEY"] = secret
    os.environ["COLDCHAIN_DATA_DIR"] = str(work)
    from core.db import reset_caches

    reset_caches()
    from core.security import issue_token

    server = None
    telemetry: Telemetry | None = None
    try:
        with throwaway_database(args.database, "bench_api") as (db_url, engine):
            t0 = time.perf_counter()
            day, stop_ids = _build(engine, args.drivers + 1, stops)
            print(f"built {args.drivers} drivers x {stops} stops (and a probe driver) in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
            probe = max(stop_ids)
            probe_stops = stop_ids.pop(probe)
            counts = _statement_counts(db_url, day, probe, probe_stops[0])
            from tests.conftest import free_port  # the same free-port and start-up helpers the tests use
            from tests.delivery.helpers import wait_serving

            port = free_port()
            env = {**os.environ, "COLDCHAIN_DATABASE_URL": db_url, "COLDCHAIN_DATA_DIR": str(work),
                   "COLDCHAIN_SECRET_KEY": secret}
            exe = Path(sys.executable).with_name("coldchain")
            cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "scripts.cli"]
            log = (work / "serve.log").open("wb")
            server = subprocess.Popen([*cmd, "serve", "--port", str(port), "--workers", str(args.workers),
                                       "--no-access-log"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
            base = f"http://127.0.0.1:{port}"
            wait_serving(base, server, work / "serve.log")
            drivers = [Driver(u, s, issue_token(u, "driver", minutes=120)) for u, s in sorted(stop_ids.items())]
            _start_routes(base, day, drivers)
            _analyze(engine)
            if args.telemetry_every > 0:
                telemetry = Telemetry(db_url, args.telemetry_every)
                telemetry.start()
            meter = CpuMeter(server.pid, engine, make_url_database(db_url))
            try:
                rows = _sweep(args, rates, base, day, drivers, meter)
            finally:  # before the database is dropped under it
                if telemetry is not None:
                    telemetry.halt.set()
                    telemetry.join(10)
            _summary(rows, counts, args.p99_goal)
            if telemetry is not None:
                print(f"telemetry: a reading of each van every {args.telemetry_every:g} s, {telemetry.stored} stored "
                      "during the run (its database work counts in the backends' CPU)")
    finally:
        if telemetry is not None:
            telemetry.halt.set()
            telemetry.join(10)
        if server is not None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _sweep(args, rates: list[float], base: str, day, drivers: list[Driver], meter: CpuMeter) -> list[dict]:  # noqa: ANN001
    """Each rate in turn: its warm-up, then its measured load."""
    rows = []
    for n, rate in enumerate(rates):
        if args.warmup > 0:
            asyncio.run(_load(base, day, drivers, rate, args.warmup, args.get_share, args.retry_share,
                              args.seed + 100 + n))
        load_before = os.getloadavg()
        cpu_before, gen_before = meter.read(), time.process_time()
        out = asyncio.run(_load(base, day, drivers, rate, args.duration, args.get_share, args.retry_share,
                                args.seed + n))
        server_cpu, db_cpu = meter.since(cpu_before)
        out["cpu"] = (server_cpu, db_cpu, time.process_time() - gen_before)
        rows.append(_report(args, rate, out, load_before, os.getloadavg()))
    return rows


def make_url_database(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).database or ""


def _left() -> datetime:
    """When the vans left: an hour ago, before every stop event the load sends (those take the server's clock). A
    start later than the deliveries, as the day's 08:00 was, made each delivery the order's first custody step
    and moved what its van's risk checks count from (traceability.trace._inputs), which no day does."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _start_routes(base: str, day, drivers: list[Driver]) -> None:  # noqa: ANN001
    import httpx

    leave = _left()
    with httpx.Client(base_url=base, timeout=30) as client:
        for d in drivers:
            resp = client.post("/api/v1/driver/route/start", json={"date": day.isoformat(), "at": leave.isoformat()},
                               headers={**d.headers, "Idempotency-Key": uuid.uuid4().hex})
            if resp.status_code != 200:
                raise SystemExit(f"route start of {d.username} failed: {resp.status_code} {resp.text}")


def _analyze(engine) -> None:  # noqa: ANN001
    """Planner statistics for the tables just filled: a database in service has them (autovacuum), a database
    made a minute ago has those of empty tables, and its plans scan whole tables that have indexes."""
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))


def _report(args, rate: float, out: dict, load_before, load_after) -> dict:  # noqa: ANN001
    results, elapsed = out["results"], out["elapsed"]
    print(f"\nDriver API load: {rate:.0f} requests/s for {args.duration:.0f} s, {args.drivers} drivers, "
          f"`coldchain serve --workers {args.workers}` on PostgreSQL, generator in this process")
    print(f"{'kind':<12} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}")
    kinds = sorted({k for k, _l, _s in results}) + ["all"]
    summary: dict = {}
    for kind in kinds:
        rows = [(lat, st) for k, lat, st in results if kind in ("all", k)]
        lats = [lat * 1000 for lat, _st in rows]
        errors = sum(1 for _lat, st in rows if st is None or st >= 400)
        print(f"{kind:<12} {len(rows):>6} {_pct(lats, 50):>8.1f} {_pct(lats, 95):>8.1f} {_pct(lats, 99):>8.1f} "
              f"{max(lats):>8.1f} {errors:>7}")
        if kind == "all":
            summary = {"rate": rate, "p50": _pct(lats, 50), "p95": _pct(lats, 95), "p99": _pct(lats, 99),
                       "errors": errors, "achieved": len(results) / elapsed, "n": len(results)}
    statuses: dict[str, int] = {}
    for _k, _lat, st in results:
        statuses[str(st)] = statuses.get(str(st), 0) + 1
    lag_ms = [x * 1000 for x in out["lag"]]
    server_cpu, db_cpu, gen_cpu = out["cpu"]
    print(f"achieved {len(results) / elapsed:.1f} requests/s over {elapsed:.1f} s; statuses {statuses}")
    print(f"generator start lag p50 {statistics.median(lag_ms):.1f} ms, p99 {_pct(lag_ms, 99):.1f} ms "
          f"(time from due to sent, counted in the latencies)")
    per = len(results) / server_cpu if server_cpu else float("nan")
    print(f"CPU during the load: server processes {server_cpu:.1f} s ({per:.0f} requests per CPU-second, "
          f"{1000 * server_cpu / max(1, len(results)):.2f} ms per request), PostgreSQL backends (those that ended "
          f"included) {db_cpu:.1f} s "
          f"({1000 * db_cpu / max(1, len(results)):.2f} ms per request), generator {gen_cpu:.1f} s")
    print(f"load average (1, 5, 15 min) before {tuple(round(x, 2) for x in load_before)}, "
          f"after {tuple(round(x, 2) for x in load_after)}, on {os.cpu_count()} cores")
    summary.update(server_cpu=server_cpu, db_cpu=db_cpu, per_cpu=per, load=load_after[0])
    return summary


def _summary(rows: list[dict], counts: list[tuple[str, int, int, int]], goal: float) -> None:
    print("\nSQL statements and database round trips per request (one request of each kind, counted on the engine"
          " and in libpq's trace):")
    print(f"  {'':<34} {'':>3}  {'SQL':>3}  {'trips':>5}")
    for name, status, n, trips in counts:
        print(f"  {name:<34} {status}  {n:>3}  {trips:>5}")
    if len(rows) > 1:
        print(f"\n{'rate':>6} {'reached':>8} {'p50':>7} {'p95':>7} {'p99':>7} {'errors':>7} {'req/CPU-s':>10} "
              f"{'load':>5}")
        for r in rows:
            print(f"{r['rate']:>6.0f} {r['achieved']:>8.1f} {r['p50']:>7.1f} {r['p95']:>7.1f} {r['p99']:>7.1f} "
                  f"{r['errors']:>7} {r['per_cpu']:>10.0f} {r['load']:>5.2f}")
    within = [r for r in rows if r["p99"] <= goal and r["errors"] == 0]
    best = max((r["achieved"] for r in within), default=None)
    print(f"\nrequests/s reached with p99 <= {goal:.0f} ms and 0 errors: "
          + (f"{best:.1f}" if best is not None else "none of the rates measured")
          + f" (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; the machine may be shared)")


if __name__ == "__main__":
    raise SystemExit(main())
