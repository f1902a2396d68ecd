"""The demo's day on a simulated clock: telemetry, drivers over the real API, and the rules, in step.

`coldchain demo` plans tomorrow. To run that day now, every process of the demo reads one
simulated clock (core.timeutil, ``COLDCHAIN_CLOCK=file:…``): this process (the publisher, the
ingestor and its rule timer, the checks), the API server it starts with uvicorn, and the Celery
workers of the planning stage. The clock stands still between steps; each step moves it a
minute on, then publishes the vans' telemetry of that minute over MQTT, sends the drivers' reports
of that minute through the driver API over HTTP, and waits until the ingestor has stored every
message before the next minute. So samples, alerts, deliveries and audit records all fall on the
planned day, in the order they happen, however loaded the machine is; ``speed`` caps how many
simulated seconds pass per wall second.

The drivers are phone apps: they log in, fetch their route, start each trip, report arrived,
delivered, a few failed and damaged stops, refresh their token when it expires, and on a flaky
network send a report again with the same Idempotency-Key (the answer must be the stored one,
byte for byte, and nothing may change). What was staged is returned with what was sent, for the
demo's checks against the database.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from scripts.console import coldchain_argv, free_port

STEP = timedelta(minutes=1)  # how far the clock moves per step while a van is on a trip, and the rule timer
IDLE_STEP = timedelta(minutes=10)  # while every van is parked at its depot
TICK_S = 60.0
DEMO_PASSWORD = "demo-driver-password"  # noqa: S105 - the demo's own throwaway logins
QUALITY_USER = "quality-demo"
FAIL_REASONS = ("not_home", "refused", "access_denied", "address_not_found")


def clock_path(output: Path) -> Path:
    return output.resolve() / "clock"


def use_simulated_clock(output: Path, start: datetime) -> Any:
    """Point this process and every process it starts at the demo's clock file, set to ``start``."""
    from core.db import reset_caches
    from core.timeutil import FileClock, simulated_clock

    path = clock_path(output)
    FileClock(path).set(start)
    os.environ["COLDCHAIN_CLOCK"] = f"file:{path}"
    reset_caches()
    clock = simulated_clock()
    assert clock is not None
    return clock


# ------------------------------------------------------------------------------ the API server


class ApiServer:
    """`coldchain serve` (uvicorn) on a free loopback port, on the demo's database and clock; its log in api.log.

    Started early (:meth:`start`), so that its imports overlap the planning, and awaited when needed
    (:meth:`ready`). Access tokens live a driver's shift here (720 minutes of the simulated clock,
    refreshed when they run out): at 15 minutes, 20 drivers refreshing every few seconds of wall
    time would meet the per-address rate limit of unauthenticated calls."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.url = ""
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> ApiServer:
        port = free_port()
        env = {**os.environ, "COLDCHAIN_TOKEN_MINUTES": "720"}
        self._log = (self.output / "api.log").open("wb")
        self.proc = subprocess.Popen([*coldchain_argv(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def ready(self, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API server exited with {self.proc.returncode}; see {self.output / 'api.log'}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not answer within {timeout:.0f} s; see "
                                   f"{self.output / 'api.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class ApiClient:
    """One user's HTTP session: password login, bearer token, refresh on expiry (as a phone app does)."""

    def __init__(self, http: httpx.Client, username: str, password: str) -> None:
        self.http, self.username, self.password = http, username, password
        self.access = self.refresh_token = ""
        self.refreshes = 0
        self.login()

    def login(self) -> None:
        r = self.http.post("/api/v1/auth/token", data={"username": self.username, "password": self.password})
        if r.status_code != 200:
            raise RuntimeError(f"{self.username} could not log in: {r.status_code} {r.text[:300]}")
        self._take(r.json())

    def _take(self, pair: dict) -> None:
        self.access, self.refresh_token = pair["access_token"], pair["refresh_token"]

    def _refresh(self) -> None:
        r = self.http.post("/api/v1/auth/refresh", json={"refresh_token": self.refresh_token})
        if r.status_code != 200:
            raise RuntimeError(f"{self.username} could not refresh the token: {r.status_code} {r.text[:300]}")
        self._take(r.json())
        self.refreshes += 1

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                key: str | None = None) -> httpx.Response:
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self.access}"}
            if key is not None:
                headers["Idempotency-Key"] = key
            r = self.http.request(method, path, json=json, params=params, headers=headers)
            if r.status_code == 401 and attempt == 1 and "expired" in r.text:
                self._refresh()
                continue
            return r
        return r

    def pages(self, path: str, params: dict | None = None) -> list[dict]:
        """Every item of a paginated list (``{"items", "next"}``)."""
        items: list[dict] = []
        r = self.request("GET", path, params=params)
        while True:
            if r.status_code != 200:
                raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:300]}")
            body = r.json()
            items += body["items"]
            if not body.get("next"):
                return items
            r = self.request("GET", body["next"])


# ------------------------------------------------------------------------------ the drivers' day


@dataclass
class Action:
    """One report a driver's phone sends at ``at`` (simulated time)."""

    at: datetime
    van: str
    kind: str  # start | arrived | delivered | failed | damaged
    stop_id: str | None = None
    order_ref: str | None = None
    body: dict = field(default_factory=dict)
    retry: bool = False  # the phone did not hear the answer and sends it again with the same key


@dataclass
class Staged:
    """What the drivers' day was staged to be, for the checks."""

    stops: int = 0
    delivered: set[str] = field(default_factory=set)  # order refs
    failed: dict[str, str] = field(default_factory=dict)  # order ref -> reason
    damaged: dict[str, tuple[str, int]] = field(default_factory=dict)  # order ref -> (sku, qty)
    trips: int = 0
    retries: int = 0
    actions: list[Action] = field(default_factory=list)


def stage_drivers(session, day: date, seed: int) -> tuple[Staged, dict[str, str]]:  # noqa: ANN001
    """Every driver report of the day from the current plans, in time order; a few stops staged to fail or
    arrive damaged, and a few reports to be sent twice. Returns the staging and van -> driver username."""
    from sqlalchemy import select

    from fulfillment.models import Order, OrderLine
    from routing.models import Plan, Route, RouteStop
    from warehouses.models import Driver, Product, Vehicle

    rows = session.execute(
        select(Vehicle.code, Route.trip, Route.start_at, RouteStop.stop_id, RouteStop.arrive_at, RouteStop.service_at,
               RouteStop.depart_at, Order.ref, Order.id)
        .join(Plan, Plan.id == Route.plan_id).join(Vehicle, Vehicle.id == Route.vehicle_id)
        .join(RouteStop, RouteStop.route_id == Route.id).join(Order, Order.id == RouteStop.order_id)
        .where(Plan.day == day, Plan.status == "current")
        .order_by(Vehicle.code, Route.trip, RouteStop.seq)).all()
    first_sku = {oid: sku for oid, sku in session.execute(
        select(OrderLine.order_id, Product.sku).join(Product, Product.id == OrderLine.product_id)
        .order_by(OrderLine.order_id, OrderLine.line_no.desc()))}
    drivers = dict(session.execute(select(Vehicle.code, Driver.username).join(Driver, Driver.vehicle_id == Vehicle.id)
                                   .order_by(Driver.id.desc())).all())
    rng = random.Random(f"{seed}:drivers")
    refs = [r.ref for r in rows if r.code in drivers]
    n = len(refs)
    picked = rng.sample(refs, min(n // 3, max(1, round(n * 0.012)) + max(1, round(n * 0.008)))) if n >= 3 else []
    n_failed = max(1, round(n * 0.012)) if picked else 0
    failed = {ref: FAIL_REASONS[i % len(FAIL_REASONS)] for i, ref in enumerate(picked[:n_failed])}
    damaged_refs = set(picked[n_failed:])
    staged = Staged(stops=n)
    started: set[tuple[str, int]] = set()
    for r in rows:
        if r.code not in drivers:
            continue
        if (r.code, r.trip) not in started:
            started.add((r.code, r.trip))
            staged.trips += 1
            staged.actions.append(Action(r.start_at, r.code, "start", body={"date": day.isoformat(),
                                                                             "at": r.start_at.isoformat()}))
        # at the door when the service starts (a van early for the window waits outside), gone at departure
        arrive = r.service_at or r.arrive_at
        depart = max(r.depart_at, arrive + timedelta(minutes=1))
        common = {"stop_id": r.stop_id, "order_ref": r.ref}
        staged.actions.append(Action(arrive, r.code, "arrived", **common,
                                     body={"type": "arrived", "at": arrive.isoformat()}))
        if r.ref in failed:
            staged.failed[r.ref] = failed[r.ref]
            at = arrive + (depart - arrive) / 2
            staged.actions.append(Action(at, r.code, "failed", **common, body={
                "type": "failed", "at": at.isoformat(), "reason": failed[r.ref]}))
            continue
        if r.ref in damaged_refs:
            sku = first_sku[r.id]
            staged.damaged[r.ref] = (sku, 1)
            at = arrive + timedelta(seconds=20)
            staged.actions.append(Action(at, r.code, "damaged", **common, body={
                "type": "damaged", "at": at.isoformat(), "items": [{"sku": sku, "qty": 1}],
                "note": "crushed corner of the box"}))
        staged.delivered.add(r.ref)
        staged.actions.append(Action(depart, r.code, "delivered", **common, body={
            "type": "delivered", "at": depart.isoformat(), "recipient": "顾客本人 (customer)"}))
    staged.actions.sort(key=lambda a: a.at)
    for a in staged.actions:  # a flaky network: about one report in twenty is sent twice, at least three
        a.retry = rng.random() < 0.05
    for a in rng.sample(staged.actions, min(3, len(staged.actions))):
        a.retry = True
    staged.retries = sum(a.retry for a in staged.actions)
    # the drivers of the vans that go out, and one who stays at the depot (their route answers 404)
    going = {a.van for a in staged.actions}
    idle = sorted(set(drivers) - going)[:1]
    return staged, {van: user for van, user in drivers.items() if van in going or van in idle}


@dataclass
class DriversOutcome:
    sent: int = 0
    replays: int = 0
    replays_identical: int = 0
    refreshes: int = 0
    problems: list[str] = field(default_factory=list)
    routes_fetched: int = 0


class Drivers:
    """The drivers' phones: one logged-in API client per van with a route."""

    def __init__(self, http: httpx.Client, drivers: dict[str, str], day: date) -> None:
        self.http, self.day = http, day
        self.clients = {van: ApiClient(http, user, DEMO_PASSWORD) for van, user in sorted(drivers.items())}
        self.outcome = DriversOutcome()

    def fetch_routes(self, staged: Staged) -> None:
        """Each driver fetches the day's route; its stops must be the ones the plan gave the van."""
        want: dict[str, set[str]] = {}
        for a in staged.actions:
            if a.stop_id:
                want.setdefault(a.van, set()).add(a.stop_id)
        for van, client in self.clients.items():
            r = client.request("GET", "/api/v1/driver/route", params={"date": self.day.isoformat()})
            if van not in want:
                if r.status_code != 404:
                    self.outcome.problems.append(f"{van} has no route but GET /driver/route answered {r.status_code}")
                continue
            if r.status_code != 200:
                self.outcome.problems.append(f"{van}: GET /driver/route answered {r.status_code}: {r.text[:200]}")
                continue
            self.outcome.routes_fetched += 1
            got = {s["stop_id"] for s in r.json()["stops"]}
            if got != want[van]:
                self.outcome.problems.append(f"{van}: the driver's route has stops {sorted(got ^ want[van])} "
                                             "that differ from the plan")

    def send(self, action: Action) -> None:
        client = self.clients[action.van]
        key = str(uuid.uuid4())
        path = "/api/v1/driver/route/start" if action.kind == "start" else \
            f"/api/v1/driver/stops/{action.stop_id}/events"
        first = client.request("POST", path, json=action.body, key=key)
        self.outcome.sent += 1
        what = f"{action.van} {action.kind}" + (f" at {action.order_ref}" if action.order_ref else "")
        if first.status_code not in (200, 201):
            self.outcome.problems.append(f"{what}: answered {first.status_code}: {first.text[:300]}")
            return
        if action.retry:
            again = client.request("POST", path, json=action.body, key=key)
            self.outcome.replays += 1
            if (again.status_code, again.content) == (first.status_code, first.content) \
                    and again.headers.get("Idempotent-Replayed") == "true":
                self.outcome.replays_identical += 1
            else:
                self.outcome.problems.append(
                    f"{what}: the retry with the same Idempotency-Key answered {again.status_code} "
                    f"(replayed: {again.headers.get('Idempotent-Replayed')}), not the stored answer")

    def finish(self) -> DriversOutcome:
        self.outcome.refreshes = sum(c.refreshes for c in self.clients.values())
        return self.outcome


def ensure_logins(session, drivers: dict[str, str]) -> None:  # noqa: ANN001
    """A login per driver of the day (drivers.csv names them) and one for quality staff."""
    from warehouses.service import upsert_user

    for username in sorted(set(drivers.values())):
        upsert_user(session, username, "driver", DEMO_PASSWORD)
    upsert_user(session, QUALITY_USER, "quality", DEMO_PASSWORD)


# ------------------------------------------------------------------------------ the stepped day


def wait_drained(ingestor, published: int, timeout: float = 120.0) -> bool:  # noqa: ANN001
    """Until the ingestor has received, stored (or rejected) and acknowledged every message published."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = ingestor.stats
        if s.received >= published and s.handled >= s.received and ingestor.inbox.empty():
            return True
        time.sleep(0.003)
    return False


def next_step(t: datetime, busy: list[tuple[datetime, datetime]]) -> datetime:
    """A minute on while some van is on a trip (``busy``: trips, with a margin); else up to ten minutes, never
    past the start of the next trip."""
    if any(a <= t + STEP and t <= b for a, b in busy):
        return t + STEP
    ahead = [a for a, _b in busy if a > t]
    return min(t + IDLE_STEP, max(t + STEP, min(ahead))) if ahead else t + IDLE_STEP


def run_day(clock, ingestor, publisher, messages: list, drivers: Drivers, actions: list[Action],  # noqa: ANN001
            start: datetime, end: datetime, speed: float, bar, task,  # noqa: ANN001
            busy: list[tuple[datetime, datetime]]) -> list[str]:
    """Step the clock from ``start`` to ``end`` (see the module docstring and :func:`next_step`)."""
    from core.timeutil import to_local

    problems: list[str] = []
    wall0 = time.monotonic()
    t = start
    mi = ai = 0
    steps = 0
    while t < end or ai < len(actions):
        t = next_step(t, busy)
        clock.set(t)
        while mi < len(messages) and messages[mi].at <= t:
            publisher.publish(messages[mi].topic, messages[mi].payload)
            mi += 1
        if not wait_drained(ingestor, publisher.published):
            problems.append(f"the ingestor did not keep up at {to_local(t):%H:%M}: {ingestor.stats.as_dict()}")
            break
        while ai < len(actions) and actions[ai].at <= t:
            drivers.send(actions[ai])
            ai += 1
        steps += 1
        if speed > 0:
            ahead = (t - start).total_seconds() / speed - (time.monotonic() - wall0)
            if ahead > 0:
                time.sleep(ahead)
        bar.update(task, completed=min((t - start).total_seconds(), (end - start).total_seconds()),
                   description=f"day {to_local(t):%H:%M}: {publisher.published} msgs, {drivers.outcome.sent} reports")
    while mi < len(messages):  # the span's last messages (published after its end)
        publisher.publish(messages[mi].topic, messages[mi].payload)
        mi += 1
    publisher.wait()
    if not wait_drained(ingestor, publisher.published):
        problems.append(f"the ingestor did not store the last messages: {ingestor.stats.as_dict()}")
    return problems
