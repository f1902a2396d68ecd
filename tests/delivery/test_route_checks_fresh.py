"""The "check on delivery" on GET /driver/route is kept per API process (traceability.trace.order_risks), but
never shows less than what is stored: a reading stored late by another process, a damage report handled by
the other worker, shows in the very next answer of either worker. And an assessment of goods still aboard
is reused for at most COLDCHAIN_RISK_OPEN_TTL_S when nothing was stored (time alone moves it).

The first test runs `coldchain serve --workers 2` as a subprocess on a database of its own; every GET is
sent on a new connection, so the answers come from both workers.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, delete, select, text
from sqlalchemy.orm import Session

from core.settings import get_settings
from core.timeutil import utcnow
from delivery.schemas import RouteStartIn, StopEventIn
from delivery.service import driver_ref, route_of, start_route, stop_event
from fulfillment.models import Order
from routing.models import Plan, Route, RouteStop
from tests.delivery.helpers import build_day, login, planned_database, serving
from tests.support import zulu
from tests.traceability.helpers import store_readings
from traceability import trace
from traceability.models import KeptRisk
from warehouses.models import Vehicle

ROUTE = "/api/v1/driver/route"


def samples(start: datetime, end: datetime, chilled: float, first_seq: int) -> list[dict]:
    """VAN-01's telemetry every minute in [start, end): chilled at ``chilled`` °C, frozen -19 °C, 0.3 g."""
    out, t, seq = [], start, first_seq
    while t < end:
        out.append({"device": "TL-0001", "seq": seq, "ts": zulu(t), "temp_c": {"chilled": chilled, "frozen": -19.0},
                    "door": {"chilled": "closed", "frozen": "closed"}, "shock_g": 0.3})
        t += timedelta(minutes=1)
        seq += 1
    return out


def egg_refs(engine: Engine, day: date) -> list[str]:
    """VAN-01's orders of eggs only (chilled, 0-8 °C) on the current plan, in stop order."""
    with Session(engine) as s:
        return [ref for (ref,) in s.execute(
            select(Order.ref).join(RouteStop, RouteStop.order_id == Order.id)
            .join(Route, Route.id == RouteStop.route_id).join(Plan, Plan.id == Route.plan_id)
            .join(Vehicle, Vehicle.id == Route.vehicle_id)
            .where(Plan.status == "current", Plan.day == day, Vehicle.code == "VAN-01", Order.ref.like("B%"))
            .order_by(RouteStop.seq))]


@dataclass
class Served:
    url: str
    engine: Engine
    day: date
    token: dict[str, str]
    left: datetime
    scope: Callable[[], AbstractContextManager[Session]]

    def checks(self) -> list[dict]:
        """Eight answers, each on a new connection (so from both workers): each stop's check, by order."""
        answers = []
        for _ in range(8):
            resp = httpx.get(f"{self.url}{ROUTE}", params={"date": self.day.isoformat()}, headers=self.token,
                             timeout=30)
            assert resp.status_code == 200, resp.text
            answers.append({s["order_ref"]: s["check"] for s in resp.json()["stops"]})
        return answers


@pytest.fixture(scope="module")
def served(databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # noqa: ANN001
    tmp = tmp_path_factory.mktemp("checks")
    with planned_database(databases, tmp, "checks", ["driver01"]) as (url, engine, day, scope):
        left = utcnow().replace(microsecond=0) - timedelta(hours=3)  # the van left three hours ago
        with scope() as session:
            start_route(session, driver_ref(session, "driver01"), RouteStartIn(date=day, at=left))
            store_readings(session, samples(left - timedelta(minutes=30), utcnow(), 4.0, 1), utcnow())
        env = {**os.environ, "COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_DATA_DIR": str(tmp / "data"),
               "COLDCHAIN_RISK_OPEN_TTL_S": "3600"}  # whatever changes below changes because something was stored
        with serving(env, tmp) as base:
            yield Served(base, engine, day, login(base, "driver01"), left, scope)


def test_a_late_reading_and_a_damage_show_in_the_next_answer_of_either_worker(served: Served) -> None:
    eggs = egg_refs(served.engine, served.day)
    assert len(eggs) >= 2, eggs
    before = served.checks()
    assert all(answer == before[0] for answer in before), before
    assert all(before[0][ref] is None for ref in eggs), before[0]  # kept at 4 °C all along

    # the ingestor (here: this process) stores an hour at 12 °C that the van sent late, for a time already past
    warm_from = served.left + timedelta(minutes=30)
    with served.scope() as session:
        store_readings(session, samples(warm_from, warm_from + timedelta(minutes=60), 12.0, 100_000), utcnow())
    warm = served.checks()
    for answer in warm:
        for ref in eggs:
            check = answer[ref]
            assert check is not None and check["spoilage"] in ("at_risk", "reject"), (ref, answer)
            assert any("above 8 °C" in r for r in check["reasons"]), check

    # one worker handles a damage report; both answer with it next
    with Session(served.engine) as s:
        stop_id = s.scalar(select(RouteStop.stop_id).join(Order, Order.id == RouteStop.order_id)
                           .where(Order.ref == eggs[0]))
    damaged = httpx.post(f"{served.url}/api/v1/driver/stops/{stop_id}/events",
                         json={"type": "damaged", "items": [{"sku": "EGG-30", "qty": 1}], "note": "蛋碎了"},
                         headers={**served.token, "Idempotency-Key": uuid.uuid4().hex}, timeout=30)
    assert damaged.status_code == 200, damaged.text
    for answer in served.checks():
        assert answer[eggs[0]]["breakage"] == "reject" and any("蛋碎了" in r for r in answer[eggs[0]]["reasons"])
        other = answer[eggs[1]]
        assert other["breakage"] == "watch" and any("same van" in r for r in other["reasons"]), other


def aboard_an_hour(session: Session, tmp_path: Path) -> tuple[date, object, datetime, datetime]:
    """VAN-01 left an hour ago with readings at 4 °C from half an hour before: (day, driver, now, left)."""
    day = build_day(session, tmp_path, depots=("FS-01",))
    now = utcnow().replace(microsecond=0)
    left = now - timedelta(hours=1)
    driver = driver_ref(session, "driver01")
    start_route(session, driver, RouteStartIn(date=day, at=left), now=now)
    store_readings(session, samples(left - timedelta(minutes=30), now, 4.0, 1), now)
    return day, driver, now, left


def test_goods_aboard_are_assessed_again_after_the_ttl_when_nothing_was_stored(session, tmp_path: Path,  # noqa: ANN001
                                                                               monkeypatch) -> None:  # noqa: ANN001
    day, driver, now, left = aboard_an_hour(session, tmp_path)
    trace.forget_assessments()
    monkeypatch.setattr(get_settings(), "risk_open_ttl_s", 3600.0)

    def checks() -> dict[str, dict | None]:
        return {s["order_ref"]: s["check"] for s in route_of(session, driver, day)["stops"]}

    first = checks()
    eggs = [ref for ref in first if ref.startswith("B")]
    assert eggs and all(first[ref] is None for ref in eggs), first
    done = trace.assessments
    assert checks() == first and trace.assessments == done  # nothing stored, within the TTL: kept

    # 40 minutes later, and no reading since: 25 minutes no reading covers (each holds 15)
    monkeypatch.setattr(trace, "utcnow", lambda: now + timedelta(minutes=40))
    assert checks() == first and trace.assessments == done  # the TTL has not passed: still the kept answer
    monkeypatch.setattr(get_settings(), "risk_open_ttl_s", 0.0)
    later = checks()
    assert trace.assessments > done
    for ref in eggs:
        assert later[ref] is not None and later[ref]["spoilage"] == "watch", later
        assert any(re.search(r"no temperature reading for 2\d min", r) for r in later[ref]["reasons"]), later[ref]


def test_an_order_is_redone_from_what_was_kept_when_only_the_clock_or_its_own_custody_moved(  # noqa: ANN001
        session, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """Assessing again after the TTL, or after a delivery, takes the readings and damage reports kept from the last
    assessment while none was stored since (trace._redo): no readings read again, and the same answer as an
    assessment from the database at the same clock."""
    day, driver, now, _left = aboard_an_hour(session, tmp_path)
    trace.forget_assessments()
    monkeypatch.setattr(get_settings(), "risk_open_ttl_s", 0.0)
    clock = [now]
    monkeypatch.setattr(trace, "utcnow", lambda: clock[0])
    fetched: list[tuple] = []
    real_fetch = trace.Readings._fetch
    monkeypatch.setattr(trace.Readings, "_fetch", lambda self, *a: fetched.append(a) or real_fetch(self, *a))

    def route() -> dict:
        return route_of(session, driver, day)

    def checks(r: dict) -> dict[str, dict | None]:
        return {s["order_ref"]: s["check"] for s in r["stops"]}

    def afresh() -> dict[str, dict | None]:
        """The answer assessed from the database: nothing kept here, nothing stored by another worker."""
        trace.forget_assessments()
        session.execute(delete(KeptRisk))
        return checks(route())

    first = route()
    # the first assessment reads the van's readings: its temperatures and shocks over its span in one statement
    assert [(kind, compartment) for _van, kind, compartment, _start, _end in fetched] == [(None, None)], fetched
    orders = len(first["stops"])
    eggs = [s["order_ref"] for s in first["stops"] if s["order_ref"].startswith("B")]
    assert eggs and all(checks(first)[ref] is None for ref in eggs)

    # 40 minutes on, no reading since: every order aboard is redone to the new clock from what was kept
    clock[0] = now + timedelta(minutes=40)
    fetched.clear()
    redone = trace.redone
    later = checks(route())
    assert trace.redone - redone == orders and not fetched, (trace.redone - redone, fetched)
    for ref in eggs:  # the gap in readings grew with the clock: redone, not the kept answer
        assert later[ref] is not None and later[ref]["spoilage"] == "watch", later
        assert any(re.search(r"no temperature reading for 2\d min", r) for r in later[ref]["reasons"]), later[ref]
    assert afresh() == later and fetched  # the same as assessed from the database, which reads readings

    # a delivery moves one order's own custody: it is redone with its custody read again, and is no longer aboard
    stop = next(s for s in first["stops"] if s["order_ref"] == eggs[0])
    for body in (StopEventIn(type="arrived"), StopEventIn(type="delivered", recipient="本人")):
        stop_event(session, driver, stop["stop_id"], body, now=clock[0])
    fetched.clear()
    redone = trace.redone
    after = checks(route())
    assert trace.redone - redone == orders and not fetched
    assert afresh() == after

    # readings the van sent since: those alone are read and added, every order redone; twice, the second time
    # from the basis the first one left (its spans extended, its readings added to)
    t0 = clock[0]
    store_readings(session, samples(t0 + timedelta(minutes=1), t0 + timedelta(minutes=5), 9.0, 500),
                   t0 + timedelta(minutes=5))
    clock[0] = t0 + timedelta(minutes=5)
    fetched.clear()
    redone = trace.redone
    warm = checks(route())
    assert trace.redone - redone == orders and not fetched
    assert warm != after  # 4 minutes at 9 °C: the chilled goods' answer moved
    store_readings(session, samples(t0 + timedelta(minutes=6), t0 + timedelta(minutes=9), 3.0, 600),
                   t0 + timedelta(minutes=9))
    clock[0] = t0 + timedelta(minutes=9)
    warm = checks(route())
    assert trace.redone - redone == 2 * orders and not fetched
    assert afresh() == warm

    # a reading for the very instant of an assessment, stored between its count and its fetch of readings: it is
    # held, not counted; later it is counted, and must not be added a second time: assessed from the database
    trace.forget_assessments()
    session.execute(delete(KeptRisk))
    at = clock[0] = clock[0] + timedelta(minutes=1)
    real_fresh = trace._assess_fresh

    def racing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        store_readings(session, samples(at, at + timedelta(seconds=1), 4.0, 700), at)
        monkeypatch.setattr(trace, "_assess_fresh", real_fresh)
        return real_fresh(*args, **kwargs)

    monkeypatch.setattr(trace, "_assess_fresh", racing)
    checks(route())
    clock[0] = at + timedelta(minutes=1)
    redone = trace.redone
    exact = checks(route())
    assert trace.redone == redone
    assert afresh() == exact

    # a reading stored late, for a time already past: the count says so, every order is assessed from the database
    store_readings(session, samples(t0 - timedelta(minutes=20), t0 - timedelta(minutes=19), 12.0, 900), clock[0])
    fetched.clear()
    redone, assessed = trace.redone, trace.assessments
    late = checks(route())
    assert trace.redone == redone and trace.assessments - assessed == orders and fetched
    assert afresh() == late


def test_a_route_not_started_is_not_assessed_again_while_nothing_changes(session, tmp_path: Path) -> None:  # noqa: ANN001
    day = build_day(session, tmp_path, depots=("FS-01",))
    driver = driver_ref(session, "driver01")
    trace.forget_assessments()
    first = route_of(session, driver, day)
    done = trace.assessments
    assert done >= len(first["stops"]) and all(s["check"] is None for s in first["stops"])
    assert route_of(session, driver, day) == first and trace.assessments == done


def test_the_routes_json_is_what_the_model_would_send(session, tmp_path: Path) -> None:  # noqa: ANN001
    from api.routers.driver import route_json
    from delivery.schemas import RouteOut

    day = build_day(session, tmp_path, depots=("FS-01",))
    driver = driver_ref(session, "driver01")
    now = utcnow()
    start_route(session, driver, RouteStartIn(date=day, at=now - timedelta(minutes=20, microseconds=1234)), now=now)
    route = route_of(session, driver, day)  # started (with a fraction of a second), every stop "watch": no readings
    assert route["started_at"].microsecond and all(s["check"] for s in route["stops"])
    assert route_json(route) == RouteOut.model_validate(route).model_dump_json().encode()


def test_what_one_worker_assessed_the_other_takes_while_its_inputs_hold(session, tmp_path: Path,  # noqa: ANN001
                                                                        monkeypatch) -> None:  # noqa: ANN001
    """kept_risks (PostgreSQL): a process that holds nothing of its own (forget_assessments: another worker, or
    this one restarted) takes the stored assessment instead of assessing again, with the same answer; a
    reading stored since, or an assessment of goods aboard older than the TTL, is assessed again."""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("kept_risks is shared through PostgreSQL; on SQLite each process keeps its own (one worker)")
    day, driver, now, left = aboard_an_hour(session, tmp_path)
    monkeypatch.setattr(get_settings(), "risk_open_ttl_s", 600.0)
    trace.forget_assessments()

    def checks() -> dict[str, dict | None]:
        return {s["order_ref"]: s["check"] for s in route_of(session, driver, day)["stops"]}

    assessed, hits = trace.assessments, trace.stored_hits
    first = checks()
    orders = len(first)
    assert trace.assessments - assessed == orders and trace.stored_hits == hits  # nobody had: all assessed
    trace.forget_assessments()  # "the other worker": nothing kept in this process
    assert checks() == first
    assert trace.assessments - assessed == orders and trace.stored_hits - hits == orders  # all taken as stored

    # an hour at 12 °C stored late: the eggs' stored inputs no longer hold
    eggs = [ref for ref in first if ref.startswith("B")]
    assert eggs and all(first[ref] is None for ref in eggs), first
    store_readings(session, samples(left + timedelta(minutes=5), left + timedelta(minutes=65), 12.0, 100_000), now)
    trace.forget_assessments()
    warm = checks()
    assert trace.assessments - assessed == 2 * orders  # every order of the van: its readings are theirs too
    assert all(warm[ref] is not None and warm[ref]["spoilage"] in ("at_risk", "reject") for ref in eggs), warm

    # stored 11 minutes ago, goods aboard, TTL 10 minutes: assessed again, not taken
    trace.forget_assessments()
    monkeypatch.setattr(trace, "utcnow", lambda: utcnow() + timedelta(minutes=11))
    hits = trace.stored_hits
    later = checks()
    assert trace.assessments - assessed == 3 * orders and trace.stored_hits == hits
    assert later != warm  # assessed now, 11 minutes on: longer aboard than the stored answer says


def test_kept_risks_too_old_to_be_taken_are_pruned(session, tmp_path: Path) -> None:  # noqa: ANN001
    """Celery beat's minute tick (traceability.tasks.sync_vans_task) deletes kept_risks rows older than any
    process would take, and only those."""
    from sqlalchemy import func


    day = build_day(session, tmp_path, depots=("FS-01",))
    trace.forget_assessments()
    route_of(session, driver_ref(session, "driver01"), day)
    stored = session.scalar(select(func.count()).select_from(KeptRisk))
    if session.get_bind().dialect.name != "postgresql":
        assert stored == 0  # SQLite: each process keeps its own
        pytest.skip("kept_risks is written on PostgreSQL only")
    assert stored > 0
    newest = session.scalar(select(func.max(KeptRisk.assessed_at)))
    assert trace.prune_kept_risks(session, newest + timedelta(seconds=trace._MAX_AGE_S - 1)) == 0
    assert trace.prune_kept_risks(session, newest + timedelta(seconds=trace._MAX_AGE_S + 1)) == stored
    assert session.scalar(select(func.count()).select_from(KeptRisk)) == 0


def test_a_route_read_finds_readings_and_damage_reports_by_index(session, monkeypatch) -> None:  # noqa: ANN001
    """The statements of a driver's route read, assessing and redoing, as PostgreSQL plans them among 150 started
    routes on the day's readings partition before it was ever analysed (the morning's, as the ingestor made it):
    none scans the readings or the order events, which grow with the whole fleet's day. (The risk checks'
    aggregate over a van's readings was planned as a scan of every van's readings with a join per reading:
    6-7 ms a route read at 500 readings, benchmarks/api_load.py.)"""
    if session.get_bind().dialect.name != "postgresql":
        pytest.skip("the plans checked are PostgreSQL's (SQLite is the one-process laptop default)")
    from sqlalchemy import event

    from core.timeutil import local_tomorrow
    from telemetry.service import ensure_partitions
    from tests.delivery.helpers import many_stops

    day = local_tomorrow()
    many_stops(session, day, [16] * 150, prefix="ix")
    now = utcnow().replace(microsecond=0)
    left = now - timedelta(hours=1)
    drivers = [driver_ref(session, f"ix{d:03d}") for d in range(150)]
    for driver in drivers:
        start_route(session, driver, RouteStartIn(date=day, at=left), now=now)
    vans = list(session.scalars(select(Vehicle).where(Vehicle.code.like("VAN-IX%")).order_by(Vehicle.code)))
    vans[0].device = "TL-0001"
    session.flush()
    store_readings(session, samples(left, now, 4.0, 1), now, van=vans[0].code)
    # the rest of the fleet's morning: 400 readings of the other vans (at one instant, in the partition of the
    # day ``now`` falls on, made if the readings above fell on the day before), and other order events
    ensure_partitions(session, [now])
    session.execute(text("INSERT INTO telemetry_readings (ts, device, seq, kind, compartment, vehicle_id, value) "
                         "SELECT :now, 'TL-FLEET', n, 'temperature', 'chilled', "
                         "(CAST(:others AS integer[]))[1 + n % :k], 4.0 FROM generate_series(1, 400) AS n"),
                    {"now": now, "others": [van.id for van in vans[1:]], "k": len(vans) - 1})
    session.execute(text("INSERT INTO order_events (order_id, at, actor, type) SELECT o.id, :now, 'fleet', 'note' "
                         "FROM orders o, generate_series(1, 8)"), {"now": now})
    for table in ("custody_events", "route_stops", "routes", "orders", "order_events", "vehicles"):
        session.execute(text(f"ANALYZE {table}"))  # autovacuum has seen these; not the morning's partition
    trace.forget_assessments()
    monkeypatch.setattr(get_settings(), "risk_open_ttl_s", 0.0)
    ran: list[tuple[str, object]] = []

    def _seen(_conn, _cursor, statement, parameters, _context, _many) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            ran.append((statement, parameters))

    engine = session.get_bind().engine
    event.listen(engine, "before_cursor_execute", _seen)
    try:
        route_of(session, drivers[0], day)  # assessed afresh
        later = utcnow() + timedelta(minutes=1)  # after the clock the assessment was made at, however long it took
        store_readings(session, samples(later, later + timedelta(minutes=2), 4.0, 1000), later + timedelta(minutes=2),
                       van=vans[0].code)
        monkeypatch.setattr(trace, "utcnow", lambda: later + timedelta(minutes=3))
        redone = trace.redone
        route_of(session, drivers[0], day)  # redone with the two readings sent since
        assert trace.redone > redone
    finally:
        event.remove(engine, "before_cursor_execute", _seen)
    inputs = [sql for sql, _p in ran if "per_van" in sql and "telemetry_readings" in sql]
    head = str(trace._AFTER.statement.compile(dialect=engine.dialect)).split("WHERE")[0]
    after = [sql for sql, _p in ran if sql.startswith(head) and "vehicle_id IN" in sql]
    assert (len(inputs), len(after)) == (2, 1), "the inputs at each read, the readings after the basis' clock once"
    scans = []
    for sql, params in ran:
        plan = "\n".join(row[0] for row in session.connection().exec_driver_sql("EXPLAIN " + sql, params))
        scans += [(sql[:120], line.strip()) for line in plan.splitlines()
                  if re.search(r"Seq Scan on (telemetry_readings|order_events)", line)]
    assert scans == []
