"""What one driver request costs the API process, in process and without HTTP: CPU per request, or with
``--callgrind`` the instructions per request, which do not move with the machine's speed.

    python -m benchmarks.api_cpu [--requests 300] [--drivers 40] [--stops 30] [--rounds 3] [--database URL]
    python -m benchmarks.api_cpu --callgrind [--requests 60] [--drivers 20]     (needs valgrind)

benchmarks/api_load.py measures the API the way phones use it (uvicorn, a load generator, PostgreSQL, all on
this machine), and on this machine the same code's server CPU a request moves by up to 1.6 times from one
run to the next: a change worth 10 % cannot be seen there in a few runs. This one calls the FastAPI app
itself (an ASGI call per request, the whole middleware chain and the thread-pool hand-offs included) on a
PostgreSQL database made for the run, with the rows api_load builds (started routes of ``--stops`` stops),
and measures, round after round: GET /health (the framework's floor), GET /driver/route (risk checks
kept), POST arrived, POST delivered and a POST replayed under the same Idempotency-Key. It prints the CPU of
this process (all its threads) per request; under ``--callgrind`` it runs itself under valgrind with
instrumentation on only while a kind is being measured, and prints instructions per request (the same
count run after run, so two versions of the code can be compared with one run each). PostgreSQL's own work
is not in either figure (api_load prints it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

KINDS = ("GET /health", "GET /driver/route", "POST arrived", "POST delivered", "POST replayed")


class AsgiCaller:
    """One request at a time straight into the ASGI app: what a server hands it, without the server's cost."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, method: str, path: str, headers: dict[str, str], body: bytes = b"",
                       query: bytes = b"") -> tuple[int, bytes]:
        raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        raw += [(b"host", b"127.0.0.1:8000"), (b"content-length", str(len(body)).encode())]
        if body:
            raw.append((b"content-type", b"application/json"))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query,
                 "root_path": "", "headers": raw, "client": ("127.0.0.1", 50000),
                 "server": ("127.0.0.1", 8000), "state": {}}
        sent, status, chunks = False, 0, []

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the answer is awaited
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)


class Instrumentation:
    """Callgrind's instrumentation switched on around each measured block (``callgrind_control``), one dump
    a block; off (no valgrind) it does nothing."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def _control(self, *args: str) -> None:
        if self.on:
            subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)

    def start(self) -> None:
        self._control("-z")
        self._control("-i", "on")

    def stop(self, name: str) -> None:
        self._control("-i", "off")
        self._control("-d", name)


def _measure(args: argparse.Namespace, instrumented: bool) -> dict[str, list[float]]:
    import orjson
    from sqlalchemy import text

    from benchmarks.api_load import _build
    from benchmarks.throwaway import throwaway_database
    from core.db import reset_caches
    from core.security import issue_token

    os.environ["COLDCHAIN_SECRET_KEY"] = "bench-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
    # every request is let through: the limits are counted all the same (their cost is measured), never reached
    os.environ["COLDCHAIN_RATE_LIMIT_PER_ADDRESS"] = os.environ["COLDCHAIN_RATE_LIMIT_PER_CALLER"] = "1000000/minute"
    work = Path(tempfile.mkdtemp(prefix="coldchain-api-cpu-"))
    os.environ["COLDCHAIN_DATA_DIR"] = str(work)
    cg = Instrumentation(instrumented)
    per_request: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        with throwaway_database(args.database, "bench_cpu") as (url, engine):
            os.environ["COLDCHAIN_DATABASE_URL"] = url
            reset_caches()
            day, stop_ids = _build(engine, args.drivers, args.stops)
            from api.app import create_app

            call = AsgiCaller(create_app())
            drivers = [(stops, {"Authorization": f"Bearer {issue_token(u, 'driver', minutes=120)}"})
                       for u, stops in sorted(stop_ids.items())]
            query = f"date={day.isoformat()}".encode()
            left = (datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)).isoformat()

            async def ok(method: str, path: str, headers: dict, body: bytes = b"", q: bytes = b"") -> None:
                status, answer = await call(method, path, headers, body, q)
                if status != 200:
                    raise SystemExit(f"{method} {path}: {status} {answer[:300]!r}")

            async def run() -> None:
                for _stops, headers in drivers:
                    await ok("POST", "/api/v1/driver/route/start", {**headers, "Idempotency-Key": uuid.uuid4().hex},
                             orjson.dumps({"date": day.isoformat(), "at": left}))
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("ANALYZE"))
                for _ in range(2):  # every route assessed and kept
                    for _stops, headers in drivers:
                        await ok("GET", "/api/v1/driver/route", headers, q=query)
                done = {"arrived": [0] * len(drivers), "delivered": [0] * len(drivers)}
                last: list[tuple[str, bytes, dict]] = []
                events = min(args.requests, len(drivers) * (args.stops - 1) // args.rounds)

                def event(kind: str) -> Callable[[int], Awaitable[None]]:
                    async def one(i: int) -> None:
                        d = i % len(drivers)
                        stops, headers = drivers[d]
                        stop = stops[done[kind][d]]
                        done[kind][d] += 1
                        body = orjson.dumps({"type": "arrived"} if kind == "arrived" else
                                            {"type": "delivered", "recipient": "本人"})
                        keyed = {**headers, "Idempotency-Key": uuid.uuid4().hex}
                        await ok("POST", f"/api/v1/driver/stops/{stop}/events", keyed, body)
                        last.append((f"/api/v1/driver/stops/{stop}/events", body, keyed))
                    return one

                async def health(_i: int) -> None:
                    await ok("GET", "/api/v1/health", {})

                async def route(i: int) -> None:
                    await ok("GET", "/api/v1/driver/route", drivers[i % len(drivers)][1], q=query)

                async def replayed(i: int) -> None:
                    path, body, keyed = last[i % len(last)]
                    await ok("POST", path, keyed, body)

                plan = (("GET /health", health, args.requests), ("GET /driver/route", route, args.requests),
                        ("POST arrived", event("arrived"), events), ("POST delivered", event("delivered"), events),
                        ("POST replayed", replayed, args.requests))
                for n in range(args.rounds):
                    for kind, fn, count in plan:
                        cg.start()
                        cpu = time.process_time()
                        for i in range(count):
                            await fn(i)
                        cpu = time.process_time() - cpu
                        cg.stop(f"round{n}kind{KINDS.index(kind)}n{count}")  # a hint may not start with a digit
                        per_request[kind].append(1000 * cpu / count)

            asyncio.run(run())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return per_request


def _instructions(out_dir: Path) -> dict[str, list[float]]:
    """Instructions per request of each dump ``round<n>kind<k>n<count>`` that callgrind wrote."""
    got: dict[str, list[tuple[int, float]]] = {kind: [] for kind in KINDS}
    for path in out_dir.glob("callgrind.out*"):
        head = path.read_text(errors="replace")
        name = re.search(r"Trigger: dump round(\d+)kind(\d+)n(\d+)", head)
        total = re.search(r"^totals: (\d+)", head, re.M)
        if name and total:
            rnd, kind, count = (int(g) for g in name.groups())
            got[KINDS[kind]].append((rnd, int(total.group(1)) / count))
    return {kind: [v for _r, v in sorted(rows)] for kind, rows in got.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=None,
                    help="requests of each kind a round (300; 60 under --callgrind); POST events at most what "
                         "the stops allow")
    ap.add_argument("--drivers", type=int, default=None, help="started routes (40; 20 under --callgrind)")
    ap.add_argument("--stops", type=int, default=30, help="stops a route")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every kind; the first warms up")
    ap.add_argument("--database", default=os.environ.get("COLDCHAIN_BENCH_DATABASE_URL",
                                                          "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--callgrind", action="store_true", help="count instructions under valgrind instead of CPU time")
    ap.add_argument("--instrumented", action="store_true", help=argparse.SUPPRESS)  # the run inside valgrind
    args = ap.parse_args(argv)
    args.requests = args.requests or (60 if args.callgrind else 300)
    args.drivers = args.drivers or (20 if args.callgrind else 40)
    if args.rounds < 2:
        ap.error("--rounds must be at least 2: the first round warms up")
    if args.instrumented:
        _measure(args, instrumented=True)
        return 0
    if not args.callgrind:
        figures, unit = _measure(args, instrumented=False), "ms of CPU"
    else:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            raise SystemExit("--callgrind needs valgrind (Debian: apt-get install valgrind)")
        out = Path(tempfile.mkdtemp(prefix="coldchain-callgrind-"))
        try:
            inner = ["--requests", str(args.requests), "--drivers", str(args.drivers), "--stops", str(args.stops),
                     "--rounds", str(args.rounds), "--database", args.database]
            subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                            f"--callgrind-out-file={out}/callgrind.out", sys.executable, "-m", "benchmarks.api_cpu",
                            *inner, "--instrumented"], check=True, stderr=subprocess.DEVNULL)
            figures, unit = _instructions(out), "million instructions"
        finally:
            shutil.rmtree(out, ignore_errors=True)
        figures = {kind: [v / 1e6 for v in values] for kind, values in figures.items()}
    print(f"Driver API in process on PostgreSQL, {args.drivers} started routes of {args.stops} stops, "
          f"{args.rounds} rounds ({args.requests} requests of each kind a round; the first round warms up):")
    print(f"{'request':<20} {unit + ' a request (median of the rounds after the first)':>58}")
    for kind in KINDS:
        values = figures.get(kind, [])[1:]
        shown = f"{statistics.median(values):.3f}" if values else "n/a"
        print(f"{kind:<20} {shown:>58}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
