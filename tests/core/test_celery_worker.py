"""A real Celery worker process (embedded SQLite transport, or Redis in CI) runs a job and reports it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.db import make_engine
from tests import scenario_files
from tests.support import coldchain_cmd
from warehouses.models import Node, StockLot


@pytest.fixture
def worker_env(databases, tmp_path: Path):  # noqa: ANN001, ANN201
    """A database and (on embedded defaults) a broker file made for this test; a queue name of its own."""
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": databases.new("celery"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    return env, f"test-{uuid.uuid4().hex[:8]}"


def test_worker_runs_a_scenario_load_and_reports_the_result(worker_env, tmp_path: Path) -> None:  # noqa: ANN001
    env, queue = worker_env
    proc = subprocess.Popen([*coldchain_cmd(), "worker", "--concurrency", "2", "--queues", queue], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = scenario_files.write(tmp_path / "scenario")
    try:
        code = (
            "import sys, json, time\n"
            "from traceability.tasks import load_scenario_task\n"
            f"r = load_scenario_task.apply_async(args=[{str(folder)!r}], queue={queue!r})\n"
            "seen = set()\n"
            "deadline = time.time() + 90\n"
            "while not r.ready() and time.time() < deadline:\n"
            "    seen.add(r.state); time.sleep(0.1)\n"
            "print(json.dumps({'state': r.state, 'seen': sorted(seen), 'result': r.get(timeout=5)}))\n"
        )
        from sys import executable

        client = subprocess.run([executable, "-c", code], env=env, capture_output=True, text=True, timeout=150)
        assert client.returncode == 0, client.stderr
        import json

        outcome = json.loads(client.stdout.strip().splitlines()[-1])
        assert outcome["state"] == "SUCCESS"
        assert outcome["result"]["counts"]["nodes.csv"]["inserted"] == 2
        assert outcome["result"]["rejected"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            log = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            log = proc.communicate()[0]
    assert "traceability.load_scenario" in log
    engine = make_engine(env["COLDCHAIN_DATABASE_URL"])
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Node)) == 2
        assert conn.scalar(select(func.sum(StockLot.qty))) == 150
    engine.dispose()
    time.sleep(0)
