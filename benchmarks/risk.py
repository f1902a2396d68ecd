"""What assessing an order costs: a whole synthetic day's orders traced and their risk assessed.

    python -m benchmarks.risk                                     # SQLite file in a temp folder
    python -m benchmarks.risk --database postgresql://postgres@127.0.0.1:5432/test
    python -m benchmarks.risk --vans 40 --stops 25 --every 30

The day (deterministic for a seed): ``vans`` vans at 4 depots, each with ``stops`` orders of one chilled
line and, for half of them, a frozen one; every line loaded at 08:00 and delivered at its stop (one every
12 min); each van's logger sends a sample every ``every`` seconds from 07:30 to the end of its route plus
an hour (chilled and frozen temperature, both doors, shock: five readings a sample). One van in ten
warms up (45 min at 10 °C), one in twenty has a hard shock, one order in fifty has driver damage. The
rows are written straight into the tables (custody without the audit log: this measures reading back).

Measured: ``order_trace`` for every order one by one (what GET /api/v1/trace/orders/{ref} does, readings
of each leg by index range and in the answer), and the whole day at once as GET /api/v1/trace/at-risk does
(``at_risk``: readings once per van, kind and compartment, sliced per leg), and paging through the
at-risk list 20 at a time (the day assessed on the first page, later pages from what was kept). On
PostgreSQL a database of its own is made and dropped.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

from sqlalchemy.orm import Session

from core import migrate
from core.bulk import copy_rows
from core.db import make_engine
from fulfillment.models import Order, OrderEvent, OrderLine, Reservation
from routing.models import Plan, Route, RouteStop
from telemetry.models import TelemetryReading
from telemetry.service import ensure_partitions
from traceability import trace as trace_mod
from traceability.models import CustodyEvent
from traceability.trace import at_risk, order_trace
from warehouses.models import Compartment, Node, Product, StockLot, Vehicle

DAY = date(2026, 11, 24)  # a fixed synthetic day: nothing here is compared with the calendar
TZ8 = timedelta(hours=8)


def _local(hhmm: str) -> datetime:
    h, m = map(int, hhmm.split(":"))
    return datetime.combine(DAY, dtime(h, m), tzinfo=UTC) - TZ8


def build(session: Session, vans: int, stops: int, every: int, seed: int) -> dict:
    rng = random.Random(seed)
    depots = [Node(code=f"FS-{i:02d}", kind="flagship", name=f"旗舰店{i}", lat=30.6 + i / 100, lon=104.0,
                   opens=dtime(7), closes=dtime(22)) for i in range(4)]
    egg = Product(sku="EGG-30", name="土鸡蛋30枚", temp_class="chilled", fragile=True, unit_l=3, unit_kg=1.8,
                  shelf_life_days=21, min_c=0, max_c=8)
    dump = Product(sku="DUMP-1", name="龙抄手", temp_class="frozen", fragile=False, unit_l=1.2, unit_kg=1,
                   shelf_life_days=180, min_c=-25, max_c=-18)
    session.add_all([*depots, egg, dump])
    session.flush()
    lots = {(d.id, p.id): StockLot(node_id=d.id, product_id=p.id, lot=f"L-{p.sku}-{d.code}", qty=100_000,
                                   reserved=0, expires=DAY + timedelta(days=10), on_hold=False)
            for d in depots for p in (egg, dump)}
    session.add_all(lots.values())
    fleet = []
    for v in range(vans):
        van = Vehicle(code=f"VAN-{v:03d}", depot_id=depots[v % 4].id, max_kg=800, shift_start=dtime(7, 30),
                      shift_end=dtime(18), speed_kmh=28, cost_per_km=2.5, fixed_cost=150, device=f"TL-{v:04d}")
        van.compartments = [Compartment(temp_class="chilled", capacity_l=400),
                            Compartment(temp_class="frozen", capacity_l=120)]
        fleet.append(van)
    session.add_all(fleet)
    plans = {d.id: Plan(day=DAY, depot_id=d.id, status="current", created_at=_local("06:00"), created_by="bench",
                        time_limit=1, seconds=1, distance_m=0, cost=0) for d in depots}
    session.add_all(plans.values())
    session.flush()
    leave = _local("08:00")
    custody, readings, events = [], [], []
    n = 0
    for v, van in enumerate(fleet):
        end = leave + timedelta(minutes=12 * stops)
        route = Route(plan_id=plans[van.depot_id].id, vehicle_id=van.id, start_at=leave, end_at=end, distance_m=0,
                      cost=0, status="done", started_at=leave)
        session.add(route)
        session.flush()
        for s in range(1, stops + 1):
            n += 1
            at = leave + timedelta(minutes=12 * s)
            order = Order(ref=f"O{n:06d}", delivery_date=DAY, mode="delivery", lat=30.6, lon=104.0,
                          window_start=dtime(8), window_end=dtime(18), status="delivered", node_id=van.depot_id,
                          placed_at=_local("06:00"), customer=f"客户{n}", address=f"地址{n}号")
            products = [egg] + ([dump] if rng.random() < 0.5 else [])
            order.lines = [OrderLine(line_no=i + 1, product_id=p.id, qty=rng.randint(1, 4))
                           for i, p in enumerate(products)]
            session.add(order)
            session.flush()
            stop = RouteStop(stop_id=f"s-{n:06d}", route_id=route.id, seq=s, order_id=order.id, arrive_at=at,
                             service_at=at, depart_at=at, leg_m=0, status="delivered")
            session.add(stop)
            session.flush()
            for line, p in zip(order.lines, products, strict=True):
                lot = lots[(van.depot_id, p.id)]
                session.add(Reservation(line_id=line.id, lot_id=lot.id, node_id=van.depot_id, qty=line.qty))
                base = {"actor": "bench", "order_id": order.id, "line_id": line.id, "product_id": p.id,
                        "lot_id": lot.id, "lot": lot.lot, "qty": line.qty, "route_id": route.id, "stop_id": stop.id,
                        "reason": None, "data": None, "lat": None, "lon": None}
                custody.append({**base, "type": "loaded", "at": leave, "node_id": van.depot_id,
                                "vehicle_id": van.id, "compartment": p.temp_class})
                custody.append({**base, "type": "delivered", "at": at, "node_id": None, "vehicle_id": van.id,
                                "compartment": p.temp_class, "lat": 30.6, "lon": 104.0})
            if rng.random() < 0.02:
                events.append({"order_id": order.id, "at": at - timedelta(minutes=2), "actor": "driver",
                               "type": "damaged", "from_status": "out_for_delivery", "to_status": "out_for_delivery",
                               "data": {"items": [{"sku": "EGG-30", "qty": 1}], "note": "一盒破了"}})
        warm = v % 10 == 3
        warm_from = leave + timedelta(minutes=60)
        shock_at = leave + timedelta(minutes=90) if v % 20 == 7 else None
        t, seq = _local("07:30"), 0
        while t < end + timedelta(hours=1):
            seq += 1
            chilled = 10.0 if warm and warm_from <= t < warm_from + timedelta(minutes=45) else 3.5 + rng.random()
            door = 1.0 if (t - leave).total_seconds() % 720 < 120 and t > leave else 0.0
            hard = shock_at is not None and abs((t - shock_at).total_seconds()) < every / 2
            shock = 4.6 if hard else rng.random() / 2
            common = {"ts": t, "device": van.device, "seq": seq, "vehicle_id": van.id, "value2": None}
            readings += [{**common, "kind": "temperature", "compartment": "chilled", "value": round(chilled, 2)},
                         {**common, "kind": "temperature", "compartment": "frozen", "value": -19.0},
                         {**common, "kind": "door", "compartment": "chilled", "value": door},
                         {**common, "kind": "door", "compartment": "frozen", "value": 0.0},
                         {**common, "kind": "shock", "compartment": "", "value": round(shock, 2)}]
            t += timedelta(seconds=every)
    copy_rows(session, CustodyEvent.__table__, custody)
    if events:
        session.execute(OrderEvent.__table__.insert(), events)
    ensure_partitions(session, sorted({r["ts"].replace(hour=0, minute=0, second=0) for r in readings}))
    copy_rows(session, TelemetryReading.__table__, readings)
    session.commit()
    return {"orders": n, "custody_rows": len(custody), "readings": len(readings), "damaged": len(events)}


def run(engine, vans: int, stops: int, every: int, seed: int) -> dict:  # noqa: ANN001
    with Session(engine) as session:
        t0 = time.perf_counter()
        built = build(session, vans, stops, every, seed)
        built["build_s"] = round(time.perf_counter() - t0, 1)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    now = _local("20:00")
    with Session(engine) as session:
        refs = [r for (r,) in session.execute(Order.__table__.select().with_only_columns(Order.ref)
                                              .order_by(Order.id))]
        levels: Counter = Counter()
        readings_out = 0
        t0 = time.perf_counter()
        for ref in refs:
            trace = order_trace(session, ref, now=now)
            levels[(trace["spoilage_risk"]["level"], trace["breakage_risk"]["level"])] += 1
            readings_out += sum(len(leg["readings"]) for leg in trace["legs"])
        single = time.perf_counter() - t0
        trace_mod.forget_day_risks()
        t0 = time.perf_counter()
        items, following = at_risk(session, DAY, limit=len(refs), now=now)
        day = time.perf_counter() - t0
        # paging through the list 20 at a time, as quality staff's screen does: the first page assesses the
        # day, the others come from what was kept (each still checks the day's fingerprint)
        trace_mod.forget_day_risks()
        before = trace_mod.computations
        pages, cursor, first_page, t0 = 0, None, 0.0, time.perf_counter()
        while True:
            _page, cursor = at_risk(session, DAY, limit=20, after=cursor, now=now)
            pages += 1
            if pages == 1:
                first_page = time.perf_counter() - t0
            if cursor is None:
                break
        paged = time.perf_counter() - t0
        assessed = trace_mod.computations - before
    risky = sum(c for (s, b), c in levels.items() if s != "ok" or b != "ok")
    assert following is None and len(items) == risky, (len(items), risky)
    return {"backend": engine.dialect.name, **built,
            "order_trace": {"orders_per_s": round(len(refs) / single, 1),
                            "ms_per_order": round(1000 * single / len(refs), 2), "readings_in_answers": readings_out},
            "day_at_risk": {"orders_per_s": round(len(refs) / day, 1),
                            "ms_per_order": round(1000 * day / len(refs), 3), "seconds": round(day, 2),
                            "at_risk": len(items)},
            "at_risk_paged_by_20": {"pages": pages, "seconds": round(paged, 3), "first_page_s": round(first_page, 3),
                                    "later_page_ms": round(1000 * (paged - first_page) / max(pages - 1, 1), 2),
                                    "day_assessments": assessed},
            "levels": {f"{s}/{b}": c for (s, b), c in sorted(levels.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", help="a PostgreSQL server URL (a database is made there and dropped)")
    ap.add_argument("--vans", type=int, default=40)
    ap.add_argument("--stops", type=int, default=25)
    ap.add_argument("--every", type=int, default=30, help="seconds between a logger's samples")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.database:
        from benchmarks.throwaway import throwaway_database

        with throwaway_database(args.database, "risk") as (_url, engine):
            print(json.dumps(run(engine, args.vans, args.stops, args.every, args.seed), ensure_ascii=False))
        return
    engine = make_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'risk-bench.db'}")
    try:
        migrate.upgrade(engine)
        print(json.dumps(run(engine, args.vans, args.stops, args.every, args.seed), ensure_ascii=False))
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
