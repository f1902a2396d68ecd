"""A small delivery day for the driver API tests, dated from the day the tests run (never a fixed date).

Three vans: VAN-01 and VAN-03 at the flagship FS-01 (100 l chilled each, so seven egg orders need
both), VAN-02 at the hub HUB-01 (strawberries). Drivers driver01, driver02, driver03 drive them
(drivers.csv). Planning is the real allocation and OR-Tools code.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import date, timedelta
from datetime import time as dtime
from pathlib import Path

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from core.timeutil import local_tomorrow
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day
from routing.models import Plan, Route
from routing.service import plan_depot
from tests import scenario_files

PASSWORD = "correct horse battery"

VANS = ("code,depot,frozen_l,chilled_l,ambient_l,max_kg,shift_start,shift_end,speed_kmh,cost_per_km,fixed_cost,device\n"
        "VAN-01,FS-01,120,100,600,800,07:30,17:30,28,2.5,150,TL-0001\n"
        "VAN-02,HUB-01,0,300,300,500,08:00,18:00,25,2.0,100,TL-0002\n"
        "VAN-03,FS-01,120,100,600,800,07:30,17:30,28,2.5,150,\n")
DRIVERS = "username,name,vehicle\ndriver01,王师傅,VAN-01\ndriver02,李师傅,VAN-02\ndriver03,张师傅,VAN-03\n"
SPOTS = [(30.680, 104.040), (30.640, 104.085), (30.670, 104.060), (30.635, 104.045), (30.685, 104.085),
         (30.645, 104.065)]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(64))


def scenario(tmp_path: Path, day: date) -> Path:
    d = day.isoformat()
    stock = ("node,sku,lot,qty,expires\n"
             f"FS-01,EGG-30,L-E1,50,{day + timedelta(days=20)}\n"
             f"FS-01,EGG-30,L-E2,100,{day + timedelta(days=25)}\n"
             f"FS-01,DUMP-1,L-D1,80,{day + timedelta(days=90)}\n"
             f"HUB-01,STRAW-1,L-S1,20,{day + timedelta(days=2)}\n")
    orders = ("order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node,customer,phone,"
              "address\n"
              f"A1,{d},delivery,30.650,104.070,09:00,11:00,EGG-30,2,,张三,13800000001,锦江区春熙路1号\n"
              f"A1,{d},delivery,30.650,104.070,09:00,11:00,DUMP-1,1,,张三,13800000001,锦江区春熙路1号\n"
              f"C1,{d},delivery,30.628,104.052,09:00,17:00,STRAW-1,2,,赵六,13800000009,武侯区玉林路9号\n")
    orders += "".join(f"B{i},{d},delivery,{lat},{lon},09:00,17:00,EGG-30,8,,客户{i},1390000000{i},地址{i}号\n"
                      for i, (lat, lon) in enumerate(SPOTS, start=1))
    return scenario_files.write(tmp_path / f"scen-{uuid.uuid4().hex[:6]}", overrides={
        "vehicles.csv": VANS, "drivers.csv": DRIVERS, "stock.csv": stock, "orders.csv": orders})


def committing(session: Session) -> Callable[[], AbstractContextManager[Session]]:
    @contextmanager
    def scope() -> Iterator[Session]:
        yield session
        session.flush()

    return scope


def build_day(session: Session, tmp_path: Path, depots: tuple[str, ...] = ("FS-01", "HUB-01"),
              sessions: Callable[[], AbstractContextManager[Session]] | None = None) -> date:
    """Load, allocate and plan tomorrow (local) with the real code; returns the day."""
    day = local_tomorrow()
    report = load_scenario(session, scenario(tmp_path, day))
    assert not report.errors, report.errors
    allocate_day(session, day)
    session.flush()
    for depot in depots:
        plan_depot(day, depot, time_limit=1, sessions=sessions or committing(session))
    return day


def build_day_received(session: Session, tmp_path: Path) -> date:
    """:func:`build_day`, with the scenario's stock received in custody three hours before the first van leaves
    (what a cancel gives back to, or a failed delivery brings back)."""
    from traceability.flows import receive_stock

    day = build_day(session, tmp_path)
    first = min(r.start_at for r in routes_by_van(session, day).values())
    receive_stock(session, at=first - timedelta(hours=3), actor="receiver")
    return day


def routes_by_van(session: Session, day: date) -> dict[str, Route]:
    session.expire_all()
    plans = session.scalars(select(Plan).where(Plan.day == day, Plan.status == "current")).all()
    return {r.vehicle.code: r for p in plans for r in p.routes}


def keep_keys_in(session: Session, live_app) -> None:  # noqa: ANN001
    """Keep the live API's Idempotency-Key bookkeeping inside this test's transaction too (the `api` fixture
    already binds the request session to it)."""
    from api.idempotency import key_sessions

    @contextmanager
    def scope() -> Iterator[Session]:
        with session.begin_nested():
            yield session

    live_app.app.dependency_overrides[key_sessions] = scope


def key() -> dict[str, str]:
    return {"Idempotency-Key": uuid.uuid4().hex}


def many_stops(session: Session, day: date, stops: Sequence[int], prefix: str = "md",
               password_hash: str | None = None) -> dict[str, list[str]]:
    """A depot and, per entry of ``stops``, a van, its driver (``{prefix}000``...) and a planned route of that
    many one-line egg orders, each reserved from one lot so that route start records custody. Rows are written
    directly (for the statement-count test and benchmarks/api_load.py: the API is measured, not the planner);
    logins only with ``password_hash``. Returns each driver's stop_ids in order."""
    from core.timeutil import utcnow
    from fulfillment.models import Order, OrderLine, Reservation
    from routing.models import RouteStop
    from routing.service import local_at, new_stop_id
    from warehouses.models import Compartment, Driver, Node, Product, StockLot, User, Vehicle

    now = utcnow()
    tag = prefix.upper()
    depot = Node(code=f"FS-{tag}", kind="flagship", name="基准旗舰店", lat=30.657, lon=104.08, opens=dtime(7),
                 closes=dtime(22), frozen_l=10_000, chilled_l=10_000, ambient_l=10_000)
    egg = Product(sku=f"EGG-{tag}", name="土鸡蛋30枚", temp_class="chilled", fragile=True, unit_l=3, unit_kg=1.8,
                  shelf_life_days=21, min_c=0, max_c=8)
    session.add_all([depot, egg])
    session.flush()
    lot = StockLot(node_id=depot.id, product_id=egg.id, lot=f"L-{tag}", qty=4 * max(1, sum(stops)),
                   reserved=4 * sum(stops), expires=day + timedelta(days=20))
    plan = Plan(day=day, depot_id=depot.id, version=1, status="current", created_at=now, created_by="test",
                time_limit=0, seconds=0, distance_m=0, cost=0)
    session.add_all([lot, plan])
    session.flush()
    out: dict[str, list[str]] = {}
    for d, count in enumerate(stops):
        username = f"{prefix}{d:03d}"
        van = Vehicle(code=f"VAN-{tag}{d:03d}", depot_id=depot.id, max_kg=800, shift_start=dtime(7, 30),
                      shift_end=dtime(17, 30), speed_kmh=28, cost_per_km=2.5, fixed_cost=150)
        van.compartments = [Compartment(temp_class="chilled", capacity_l=400),
                            Compartment(temp_class="frozen", capacity_l=120)]
        session.add(van)
        session.flush()
        session.add(Driver(username=username, name=f"司机{d}", vehicle_id=van.id))
        if password_hash is not None:
            session.add(User(username=username, password_hash=password_hash, role="driver", active=True,
                             created_at=now))
        route = Route(plan_id=plan.id, vehicle_id=van.id, start_at=local_at(day, 8 * 3600),
                      end_at=local_at(day, 17 * 3600), distance_m=0, cost=0, status="planned")
        session.add(route)
        session.flush()
        orders = []
        for i in range(count):
            order = Order(ref=f"{tag}-{d:03d}-{i:03d}", delivery_date=day, mode="delivery",
                          lat=30.60 + (d % 20) * 0.005, lon=104.00 + i * 0.004, window_start=dtime(9),
                          window_end=dtime(17), customer=f"客户{i}", phone="13800000000", address=f"成都市某路{i}号",
                          status="planned", placed_at=now, node_id=depot.id)
            order.lines = [OrderLine(line_no=1, product_id=egg.id, qty=4)]
            orders.append(order)
        session.add_all(orders)
        session.flush()
        session.add_all([Reservation(line_id=o.lines[0].id, lot_id=lot.id, node_id=depot.id, qty=4) for o in orders])
        ids = []
        for i, order in enumerate(orders):
            t = 9 * 3600 + i * 900
            ids.append(new_stop_id())
            session.add(RouteStop(stop_id=ids[-1], route_id=route.id, seq=i + 1, order_id=order.id,
                                  arrive_at=local_at(day, t), service_at=local_at(day, t),
                                  depart_at=local_at(day, t + 300), leg_m=1000))
        out[username] = ids
    session.flush()
    return out


@contextmanager
def planned_database(databases, tmp: Path, name: str,  # noqa: ANN001
                     drivers: Sequence[str]) -> Iterator[tuple[str, Engine, date, Callable]]:
    """A database of its own at head with the sample day planned for FS-01 and these drivers' logins (password
    :data:`PASSWORD`): (url, engine, day, a session scope that commits), for tests that run `coldchain serve`."""
    from core import migrate
    from core.db import make_engine
    from warehouses.service import upsert_user

    url = databases.new(name)
    engine = make_engine(url)
    migrate.upgrade(engine)
    made = sessionmaker(bind=engine, expire_on_commit=False)

    @contextmanager
    def scope() -> Iterator[Session]:
        with made() as s, s.begin():
            yield s

    with made() as session, session.begin():
        day = build_day(session, tmp, depots=(), sessions=scope)
        for username in drivers:
            upsert_user(session, username, "driver", PASSWORD)
    plan_depot(day, "FS-01", time_limit=1, sessions=scope)
    try:
        yield url, engine, day, scope
    finally:
        engine.dispose()


def wait_serving(base: str, proc, log: Path, seconds: float = 60) -> None:  # noqa: ANN001
    """Until `coldchain serve` at ``base`` answers its health route; RuntimeError with the end of its ``log`` when it
    exits or does not answer in time (the tests' servers and benchmarks/api_load.py's)."""
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("coldchain serve did not come up: " + log.read_text()[-3000:])
        time.sleep(0.2)


@contextmanager
def serving(env: dict[str, str], tmp: Path, workers: int = 2) -> Iterator[str]:
    """`coldchain serve --workers N` on a free port with this environment, up (health answers) until the block
    ends: its base URL."""
    import subprocess

    from tests.conftest import coldchain_cmd, free_port

    port = free_port()
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen([*coldchain_cmd(), "serve", "--port", str(port), "--workers", str(workers)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_serving(base, proc, tmp / "serve.log")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def login(base: str, username: str, password: str = PASSWORD) -> dict[str, str]:
    """The bearer header of a login through the real token route."""
    import httpx

    resp = httpx.post(f"{base}/api/v1/auth/token", data={"username": username, "password": password})
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


class PqTrace:
    """libpq's trace of every connection an engine opens from now on, counted (the round-trip tests and
    benchmarks/api_load.py's figures): a round trip is one ReadyForQuery from the server."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "pq.trace"
        self.path.touch()
        self._listeners: list = []

    def attach(self, engine) -> None:  # noqa: ANN001
        def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
            # a descriptor of its own per connection (libpq closes it with the connection), appending: many writers
            dbapi_conn.pgconn.trace(os.open(self.path, os.O_WRONLY | os.O_APPEND))

        event.listen(engine.pool, "connect", _on_connect)
        self._listeners.append((engine.pool, _on_connect))

    def detach(self) -> None:
        for pool, fn in self._listeners:
            event.remove(pool, "connect", fn)

    def text(self) -> str:
        return self.path.read_bytes().decode("utf-8", "replace")

    def trips(self) -> int:
        return self.text().count("\tReadyForQuery")

    def queries(self, since: int) -> list[str]:
        """The statements the client sent after the first ``since`` characters of the trace, one each: a simple
        query with its text ("Query BEGIN"), an extended one's execution ("Execute")."""
        out = []
        for line in self.text()[since:].splitlines():
            parts = line.split("\t")
            if len(parts) > 4 and parts[1] == "F" and parts[3] in ("Query", "Execute"):
                out.append(parts[3] + (" " + parts[4].strip().strip('"')[:60] if parts[3] == "Query" else ""))
        return out
