"""A small delivery day for the driver API tests, dated from the day the tests run (never a fixed date).

Three vans: VAN-01 and VAN-03 at the flagship FS-01 (100 l chilled each, so seven egg orders need
both), VAN-02 at the hub HUB-01 (strawberries). Drivers driver01, driver02, driver03 drive them
(drivers.csv). Planning is the real allocation and OR-Tools code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.timeutil import local_tomorrow
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day
from routing.models import Plan, Route
from routing.service import plan_depot
from tests import scenario_files

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
