"""Re-planning is a job like planning, and every job is sent only after the transaction that asked for it commits.

These run the real stack (`coldchain serve` and `coldchain worker` as processes on a database
of their own): the in-thread API fixture never commits, so it cannot show either boundary.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.db import make_engine
from core.jobs import Job, enqueue, pending_jobs
from core.settings import Settings
from core.timeutil import local_tomorrow
from fulfillment.service import allocate_day
from tests import scenario_files
from tests.stack import Stack

pytestmark = pytest.mark.slow

DAY = local_tomorrow()


def scenario(folder: Path) -> Path:
    """The small scenario with two more orders, on DAY, its stock good for weeks after it."""
    more = (f"B1,{DAY},delivery,30.660,104.060,10:00,12:00,EGG-30,1,,,,\n"
            f"B2,{DAY},delivery,30.640,104.085,13:00,15:00,DUMP-1,2,,,,\n")
    scenario_files.write(folder, append={"orders.csv": more})
    for name in ("orders.csv", "stock.csv"):
        path = folder / name
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        if name == "orders.csv":
            rows = [",".join([c[0], str(DAY), *c[2:]]) for c in (line.split(",") for line in lines[1:])]
        else:
            rows = [",".join([*c[:4], f"{DAY.year + 1}-12-31\n"]) for c in (line.split(",") for line in lines[1:])]
        path.write_text(lines[0] + "".join(rows), encoding="utf-8")
    return folder


def test_replan_is_a_job_and_the_database_stays_writable_while_it_solves(databases, tmp_path: Path) -> None:  # noqa: ANN001
    with Stack(databases, tmp_path, "replan") as stack:
        stack.load(scenario(tmp_path / "scen"))
        stack.allocate(DAY)
        stack.start(workers=1)
        disp = stack.user("disp", "dispatcher")
        api = f"{stack.base}/api/v1"
        planned = httpx.post(f"{api}/plans", json={"date": str(DAY), "time_limit": 1}, headers=disp)
        assert planned.status_code == 202, planned.text + stack.log()
        assert stack.wait_job(planned.json()["jobs"][0]["href"], disp)["state"] == "SUCCESS"

        # an unknown van answers at once, and no job is recorded for it
        unknown = httpx.post(f"{api}/plans/{DAY}/replan", json={"type": "breakdown", "vehicle": "VAN-99",
                                                                "at": f"{DAY}T10:00:00+08:00"}, headers=disp)
        assert unknown.status_code == 404 and "VAN-99" in unknown.json()["detail"]

        started = httpx.post(f"{api}/plans/{DAY}/replan", json={"type": "cancel_order", "order_ref": "B1",
                                                                "time_limit": 4}, headers=disp)
        assert started.status_code == 202, started.text
        link = started.json()
        assert link["depot"] == "FS-01" and link["href"].endswith(link["job"])

        # while the worker solves, a write through the API does not wait for the solver
        deadline = time.monotonic() + 30
        while httpx.get(link["href"], headers=disp).json()["state"] != "PROGRESS":
            assert time.monotonic() < deadline, "the re-planning job never started"
            time.sleep(0.05)
        order = {"order_ref": "W9", "delivery_date": str(DAY), "lat": 30.65, "lon": 104.07, "window_start": "09:00",
                 "window_end": "12:00", "lines": [{"sku": "EGG-30", "qty": 1}]}
        t0 = time.monotonic()
        placed = httpx.post(f"{api}/orders", json=order, headers=disp, timeout=60)
        write_s = time.monotonic() - t0
        assert placed.status_code == 201, placed.text
        job = httpx.get(link["href"], headers=disp).json()
        assert job["state"] == "PROGRESS", f"the solve ended before the write was measured: {job['state']}"
        assert write_s < 2.0, f"placing an order took {write_s:.1f} s while the re-plan was solving"

        job = stack.wait_job(link["href"], disp)
        assert job["state"] == "SUCCESS", job
        assert job["kind"] == "replan" and job["requested_by"] == "disp"
        diff = job["result"]
        assert diff["cancelled"] == ["B1"] and diff["version"] == 2 and diff["previous_version"] == 1
        plan = httpx.get(f"{api}/plans", params={"date": str(DAY)}, headers=disp).json()
        on_routes = {s["order_ref"] for r in plan["routes"] for s in r["stops"]}
        assert "B1" not in on_routes and {"A1", "B2"} <= on_routes

        # a job is shown only to the roles it is for; an unknown one is 404 alike
        quality = stack.user("qa", "quality")
        assert httpx.get(link["href"], headers=quality).status_code == 404
        assert httpx.get(f"{api}/jobs/00000000-0000-0000-0000-000000000000", headers=disp).status_code == 404


def _client(stack: Stack) -> tuple[Celery, str]:
    """A Celery client of the stack's own broker and queue (the test process's app points elsewhere)."""
    env = stack.env
    settings = Settings(data_dir=Path(env["COLDCHAIN_DATA_DIR"]), database_url=env["COLDCHAIN_DATABASE_URL"],
                        broker_url=env.get("COLDCHAIN_BROKER_URL") or None)
    app = Celery("test-client", broker=settings.celery_broker, backend=settings.celery_backend)
    return app, stack.env["COLDCHAIN_CELERY_QUEUE"]


def test_a_job_is_sent_only_after_its_transaction_commits(databases, tmp_path: Path) -> None:  # noqa: ANN001
    """The worker plans what the asking transaction allocated: sent before the commit, it would plan nothing."""
    with Stack(databases, tmp_path, "aftercommit") as stack:
        stack.load(scenario(tmp_path / "scen"))
        app, queue = _client(stack)
        task = app.signature("traceability.plan_depot", queue=queue)
        engine = make_engine(stack.env["COLDCHAIN_DATABASE_URL"])
        stack.start(workers=1)

        # rolled back: nothing is sent, no row is left
        with Session(engine) as session:
            dropped = enqueue(session, task, str(DAY), "FS-01", 1.0, "test", kind="plan", requested_by="test",
                              roles=("dispatcher",)).id
            assert pending_jobs(session) == 1
            session.rollback()
            assert pending_jobs(session) == 0

        # committed: sent after the commit, so the worker sees the allocations made in the same transaction
        with Session(engine) as session:
            if engine.dialect.name == "sqlite":
                session.connection(execution_options={"sqlite_immediate": True})
            allocated = allocate_day(session, DAY)
            job = enqueue(session, task, str(DAY), "FS-01", 1.0, "test", kind="plan", requested_by="test",
                          roles=("dispatcher",)).id
            time.sleep(3)  # a worker given the task now would already be planning an empty day
            assert AsyncResult(job, app=app).state == "PENDING"
            session.commit()
        assert allocated.allocated >= 3, allocated
        result = AsyncResult(job, app=app)
        outcome = result.get(timeout=120)
        assert outcome["stops"] == 3, outcome
        assert AsyncResult(dropped, app=app).state == "PENDING"
        with Session(engine) as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 1
        engine.dispose()
