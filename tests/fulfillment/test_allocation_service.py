"""Allocation against the database: reservations, reasons, cut-off, cancel, and no oversell
with two allocator processes at once (PostgreSQL row locks / SQLite's write lock)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from sqlalchemy import func, select

from core.db import make_engine
from fulfillment.models import Order, OrderEvent, Reservation
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day, cancel_order, day_allocations, delivery_date_for
from tests import scenario_files
from tests.support import DAY, TODAY, after, check_plan_path, coldchain_cmd, coldchain_in_process, local
from warehouses.models import StockLot


def test_allocation_reserves_lots_and_records_events(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path))
    outcome = allocate_day(session, DAY, actor="tester")
    assert (outcome.allocated, outcome.unallocated) == (2, 0)
    plan = day_allocations(session, DAY)
    assert plan["allocations"] == [
        {"order_ref": "A1", "node": "FS-01", "lines": [{"sku": "EGG-30", "lot": "L-E1", "qty": 2},
                                                      {"sku": "DUMP-1", "lot": "L-D1", "qty": 1}]},
        {"order_ref": "A2", "node": "HUB-01", "lines": [{"sku": "STRAW-1", "lot": "L-S1", "qty": 1}]},
    ]
    assert session.scalar(select(StockLot.reserved).where(StockLot.lot == "L-E1")) == 2
    a1 = session.scalar(select(Order).where(Order.ref == "A1"))
    assert a1.status == "allocated" and a1.node.code == "FS-01"
    events = session.scalars(select(OrderEvent.type).where(OrderEvent.order_id == a1.id).order_by(OrderEvent.id))
    assert list(events) == ["received", "allocated"]
    # a second run does not allocate twice
    again = allocate_day(session, DAY)
    assert (again.allocated, again.unallocated) == (0, 0)
    assert session.scalar(select(func.count()).select_from(Reservation)) == 3


def test_cancel_releases_the_reservation(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path))
    allocate_day(session, DAY)
    order = session.scalar(select(Order).where(Order.ref == "A1"))
    cancel_order(session, order, "tester", "customer called")
    assert order.status == "cancelled"
    assert session.scalar(select(StockLot.reserved).where(StockLot.lot == "L-E1")) == 0
    assert [a["order_ref"] for a in day_allocations(session, DAY)["allocations"]] == ["A2"]


def test_unallocated_orders_keep_a_reason(session, tmp_path: Path) -> None:
    far = f"Z1,{DAY},delivery,31.50,105.50,09:00,11:00,EGG-30,1,,,,\n"
    greedy = f"Z2,{DAY},delivery,30.650,104.070,09:00,11:00,EGG-30,500,,,,\n"
    load_scenario(session, scenario_files.write(tmp_path, append={"orders.csv": far + greedy}))
    allocate_day(session, DAY)
    reasons = {u["order_ref"]: u["reason"] for u in day_allocations(session, DAY)["unallocated"]}
    assert reasons["Z1"] == "outside every service area"
    assert "EGG-30" in reasons["Z2"]


def test_cutoff_moves_late_orders_to_the_next_day() -> None:
    # 19:59 local (Asia/Shanghai) on the eve still makes the day; 20:00 does not.
    on_time = local("19:59", TODAY)
    late = local("20:00", TODAY)
    assert delivery_date_for(on_time, DAY) == (DAY, None)
    moved, note = delivery_date_for(late, DAY)
    assert moved == after(1) and "after the 20:00 cut-off" in note
    assert delivery_date_for(late, None) == (after(1), None)


def _scarce_scenario(folder: Path) -> Path:
    """One lot of 60 eggs and 120 one-egg orders over two days: every allocator wants the same rows."""
    orders = "order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node\n" + "".join(
        f"S{i:03d},{DAY if i % 2 else after(1)},delivery,30.650,104.070,09:00,11:00,EGG-30,1,\n"
        for i in range(120))
    stock = f"node,sku,lot,qty,expires\nFS-01,EGG-30,L-E1,60,{after(16)}\n"
    return scenario_files.write(folder, {"orders.csv": orders, "stock.csv": stock})


def test_parallel_allocators_never_oversell(databases, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": databases.new("oversell"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    folder = _scarce_scenario(tmp_path / "scarce")
    assert subprocess.run([*coldchain_cmd(), "scenario", "load", str(folder)], env=env, capture_output=True,
                          timeout=120).returncode == 0
    runs = [subprocess.Popen([*coldchain_cmd(), "allocate", "--date", d], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for d in (str(DAY), str(after(1)), str(DAY), str(after(1)))]
    for proc in runs:
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    engine = make_engine(env["COLDCHAIN_DATABASE_URL"])
    with engine.connect() as conn:
        lot = conn.execute(select(StockLot.qty, StockLot.reserved)).one()
        reserved = conn.scalar(select(func.sum(Reservation.qty)))
        statuses = dict(conn.execute(select(Order.status, func.count()).group_by(Order.status)).all())
        per_order = conn.execute(select(func.count()).select_from(Reservation).group_by(Reservation.line_id)).all()
    engine.dispose()
    assert lot == (60, 60) and reserved == 60
    assert statuses == {"allocated": 60, "unallocated": 60}
    assert all(n == (1,) for n in per_order)


def test_export_passes_the_independent_checker(databases, tmp_path: Path) -> None:  # noqa: ANN001
    # the commands in this process (tests.support.coldchain_in_process): what they write is checked, not their start
    env = {"COLDCHAIN_DATABASE_URL": databases.new("export"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    folder = scenario_files.write(tmp_path / "scen")
    for args in (["scenario", "load", str(folder)], ["allocate", "--date", str(DAY)]):
        assert coldchain_in_process(env, *args).returncode == 0
    run = coldchain_in_process(env, "export", "plan", "--date", str(DAY), "--json")
    plan = json.loads(run.stdout)
    assert {a["order_ref"] for a in plan["allocations"]} == {"A1", "A2"}
    (tmp_path / "plan.json").write_text(run.stdout)
    import sys

    check = subprocess.run([sys.executable, str(check_plan_path()), str(folder), str(tmp_path / "plan.json"),
                            "--alloc-only"], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout
