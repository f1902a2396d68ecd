"""The operator's status over real HTTP and on the command line: lag, stale vans, rejects, alerts, audit."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from core.audit import AuditLog
from core.timeutil import utcnow
from fulfillment.scenario import load_scenario
from telemetry.service import Fleet, Message, default_engine, set_active, store_batch
from tests import scenario_files
from tests.support import assert_problem, zulu

TOPIC = "coldchain/v1/vehicles/{}/telemetry"


def _stack(session, tmp_path: Path):  # noqa: ANN001, ANN202
    """VAN-01 reporting 30 s ago, VAN-02 on its route and silent, one garbled message."""
    load_scenario(session, scenario_files.write(tmp_path))
    now = utcnow()
    fleet = Fleet()
    fleet.load(session)
    samples = [{"device": "TL-0001", "seq": i, "ts": zulu(now - timedelta(seconds=90 - 30 * i)),
                "temp_c": {"chilled": 4.0}} for i in range(3)]
    store_batch(session, [Message(TOPIC.format("VAN-01"), json.dumps(samples).encode(), now),
                          Message(TOPIC.format("VAN-01"), b"{not json", now)], fleet, default_engine(), now=now)
    set_active(session, "VAN-01", True, now)
    set_active(session, "VAN-02", True, now)
    session.flush()
    return now


def test_status_names_the_silent_van_the_lag_and_the_reject(api, token, session, tmp_path) -> None:  # noqa: ANN001
    _stack(session, tmp_path)
    resp = api.get("/api/v1/status", headers=token("dispatcher"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["active_vans"] == 2 and body["stale_vans"] == ["VAN-02"] and body["healthy"] is False
    assert 25 <= body["lag_s"] <= 60  # the newest sample was stamped 30 s before the batch
    assert body["rejected_last_hour"] == 1 and "json" in body["last_reject"]["reason"].lower()
    assert body["audit_records"] == session.scalar(select(func.count()).select_from(AuditLog))
    # a generous threshold: VAN-02 has never reported, so it stays stale; a driver may not look
    assert api.get("/api/v1/status", params={"max_lag_s": 3600},
                   headers=token("quality")).json()["stale_vans"] == ["VAN-02"]
    assert_problem(api.get("/api/v1/status", headers=token("driver")), 403)
    assert_problem(api.get("/api/v1/status", params={"max_lag_s": 0}, headers=token("dispatcher")), 422)


def test_status_is_healthy_when_every_van_on_a_route_reports(session, tmp_path) -> None:  # noqa: ANN001
    from telemetry.operations import status

    now = _stack(session, tmp_path)
    assert status(session, now=now).stale_vans == ["VAN-02"]
    set_active(session, "VAN-02", False, now)
    session.flush()
    st = status(session, now=now)
    assert st.healthy and st.active_vans == 1 and st.stale_vans == []
    assert status(session, now=now + timedelta(minutes=5)).stale_vans == ["VAN-01"]  # silent for 5 min


def test_status_command_exits_1_while_a_van_on_a_route_is_silent(databases, tmp_path) -> None:  # noqa: ANN001
    from sqlalchemy.orm import Session

    from core.db import make_engine
    from tests.support import coldchain_in_process  # the command's exit code and output, in this process

    url = databases.new("status")
    env = {"COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_DATA_DIR": str(tmp_path)}
    quiet = coldchain_in_process(env, "status", "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["active_vans"] == 0
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            _stack(session, tmp_path)
            session.commit()
    finally:
        engine.dispose()
    silent = coldchain_in_process(env, "status")
    assert silent.returncode == 1 and "VAN-02" in silent.stderr
