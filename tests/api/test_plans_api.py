"""Dispatchers plan a day over HTTP: jobs per depot run on a real Celery worker; progress and result are polled."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from tests import scenario_files
from tests.support import DAY, add_user_in, after, allocate_in, coldchain_cmd, free_port, load_into

MORE = f"B1,{DAY},delivery,30.660,104.060,10:00,12:00,EGG-30,1,,,,\n"


def test_plan_jobs_progress_and_result(databases, tmp_path: Path) -> None:  # noqa: ANN001
    """A separate database and queue: the worker process must see committed data."""
    url = databases.new("plansapi")
    queue = f"test-plans-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_DATA_DIR": str(tmp_path),
           "COLDCHAIN_CELERY_QUEUE": queue}
    folder = scenario_files.write(tmp_path / "scen", append={"orders.csv": MORE})
    # `coldchain scenario load`, `allocate` and `user add`, in this process (tests.support): the processes under
    # test are the worker and the server
    load_into(url, folder)
    allocate_in(url, DAY)
    add_user_in(url, "disp", "dispatcher", "dispatcher-pw")
    worker = subprocess.Popen([*coldchain_cmd(), "worker", "--concurrency", "1"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen([*coldchain_cmd(), "serve", "--port", str(port := free_port())], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60  # as tests.stack.Stack waits: a loaded machine starts it slowly
        while True:
            try:
                httpx.get(f"{base}/api/v1/health", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "coldchain serve did not answer within 60 s"
                time.sleep(0.1)
        # the first login on a fresh server (an argon2 check) outlasts httpx's 5 s default on a machine at load 20
        tok = httpx.post(f"{base}/api/v1/auth/token", data={"username": "disp", "password": "dispatcher-pw"},
                         timeout=30).json()
        headers = {"Authorization": f"Bearer {tok['access_token']}"}
        bad = httpx.post(f"{base}/api/v1/plans", json={"date": str(after(7))}, headers=headers)
        assert bad.status_code == 422 and "allocate" in bad.json()["detail"]
        started = httpx.post(f"{base}/api/v1/plans", json={"date": str(DAY), "time_limit": 1}, headers=headers)
        assert started.status_code == 202, started.text
        jobs = started.json()["jobs"]
        assert [j["depot"] for j in jobs] == ["FS-01"]
        states = set()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job = httpx.get(jobs[0]["href"], headers=headers).json()
            states.add(job["state"])
            if job["state"] in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.1)
        assert job["state"] == "SUCCESS", job
        assert job["result"]["stops"] == 2 and job["result"]["routes"] == 1
        plan = httpx.get(f"{base}/api/v1/plans", params={"date": str(DAY)}, headers=headers).json()
        assert [s["order_ref"] for s in plan["routes"][0]["stops"]] in (["A1", "B1"], ["B1", "A1"])
    finally:
        for proc in (server, worker):
            proc.send_signal(signal.SIGTERM)
        for proc in (server, worker):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
