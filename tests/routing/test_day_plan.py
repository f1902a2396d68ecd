"""Day plans from the database: routes served from the allocated node, stored, exported, independently checked;
and `coldchain plan` running depots as Celery tasks on real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from sqlalchemy import select

from fulfillment.models import Order
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day, day_allocations
from routing.models import Plan, RouteStop
from routing.service import day_routes, plan_depot
from tests import scenario_files
from tests.support import DAY, after, allocate_in, check, coldchain_cmd, load_into, same
from tests.support import PLAN_MORE as MORE


def test_plan_routes_every_servable_order_and_explains_the_rest(session, tmp_path: Path) -> None:
    folder = scenario_files.write(tmp_path / "scen", append={"orders.csv": MORE})
    load_scenario(session, folder)
    allocate_day(session, DAY)
    summary = plan_depot(DAY, "FS-01", time_limit=2, sessions=same(session))
    assert summary["stops"] == 3 and summary["unserved"] == 1
    routes = day_routes(session, DAY)
    assert {r["vehicle"] for r in routes["routes"]} == {"VAN-01"}
    assert [u["order_ref"] for u in routes["unserved"]] == ["B3"]
    assert routes["unserved"][0]["reason"].startswith("time window 07:00-07:10 ends before the earliest arrival")
    stops = routes["routes"][0]["stops"]
    assert {s["order_ref"] for s in stops} == {"A1", "B1", "B2"}
    assert all(s["stop_id"].startswith("s-") for s in stops)
    b1 = session.scalar(select(Order).where(Order.ref == "B1"))
    assert b1.status == "planned"
    result = check(folder, {"date": DAY.isoformat(), **day_allocations(session, DAY), **routes}, tmp_path)
    assert result.returncode == 0, result.stdout


def test_replanning_supersedes_and_keeps_one_current_plan(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path / "scen", append={"orders.csv": MORE}))
    allocate_day(session, DAY)
    plan_depot(DAY, "FS-01", time_limit=1, sessions=same(session))
    plan_depot(DAY, "FS-01", time_limit=1, sessions=same(session))
    plans = session.scalars(select(Plan).order_by(Plan.version)).all()
    assert [(p.version, p.status) for p in plans] == [(1, "superseded"), (2, "current")]
    ids = session.scalars(select(RouteStop.stop_id)).all()
    assert len(ids) == len(set(ids)) == 6
    assert len(day_routes(session, DAY)["routes"][0]["stops"]) == 3


def test_cli_plans_depots_on_real_workers_and_exports_json(databases, tmp_path: Path) -> None:  # noqa: ANN001
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": databases.new("plan"), "COLDCHAIN_DATA_DIR": str(tmp_path),
           "COLDCHAIN_CELERY_QUEUE": f"test-plan-{uuid.uuid4().hex[:8]}"}
    folder = scenario_files.write(tmp_path / "scen", append={"orders.csv": MORE})
    load_into(env["COLDCHAIN_DATABASE_URL"], folder)  # `coldchain scenario load` and `allocate`, in this process:
    allocate_in(env["COLDCHAIN_DATABASE_URL"], DAY)  # the command under test is `coldchain plan`
    run = subprocess.run([*coldchain_cmd(), "plan", "--date", str(DAY), "--time-limit", "1",
                          "--local-workers", "2", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    plan = json.loads(run.stdout)
    assert [r["vehicle"] for r in plan["routes"]] == ["VAN-01"]
    assert "FS-01" in run.stderr and "1 vans, 3 stops" in run.stderr
    result = check(folder, plan, tmp_path)
    assert result.returncode == 0, result.stdout


def test_an_order_split_across_nodes_is_delivered_in_one_visit(session, tmp_path: Path) -> None:
    """Its primary (nearest) node delivers it whole; the other part is moved there before the vans leave."""
    split = f"SP1,{DAY},delivery,30.640,104.055,10:00,14:00,EGG-30,70,,,,,1\n"
    orders = scenario_files.FILES["orders.csv"].replace("address\n", "address,allow_split\n") + split
    folder = scenario_files.write(tmp_path / "scen", {"orders.csv": orders},
                                  append={"stock.csv": f"HUB-01,EGG-30,L-E7,40,{after(16)}\n"})
    load_scenario(session, folder)
    allocate_day(session, DAY)
    nodes = {a["node"] for a in day_allocations(session, DAY)["allocations"] if a["order_ref"] == "SP1"}
    assert nodes == {"FS-01", "HUB-01"}
    for depot in ("FS-01", "HUB-01"):
        plan_depot(DAY, depot, time_limit=1, sessions=same(session))
    routes = day_routes(session, DAY)
    visits = [(r["vehicle"], s["order_ref"]) for r in routes["routes"] for s in r["stops"] if s["order_ref"] == "SP1"]
    assert len(visits) == 1
    result = check(folder, {"date": DAY.isoformat(), **day_allocations(session, DAY), **routes}, tmp_path)
    assert result.returncode == 0, result.stdout
