"""The ingestor as a real process against a real broker: the machine's Mosquitto when
COLDCHAIN_MQTT_URL is set (CI's second run), else the embedded broker. Killed with SIGKILL
mid-stream and restarted, it loses no sample and stores none twice."""

from __future__ import annotations

import ast
import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from telemetry.models import Alert, TelemetryReject, TelemetrySample
from tests.support import Run, coldchain_cmd, publisher, samples, stop


def test_ingest_stores_once_keeps_rejects_and_raises_alerts(databases, tmp_path: Path, mqtt_url: str) -> None:  # noqa: ANN001
    run = Run(databases, tmp_path, mqtt_url)
    proc = run.start()
    try:
        run.wait_subscribed(proc)
        pub = publisher(mqtt_url)
        topic = f"coldchain/v1/vehicles/{run.vans[0]}/telemetry"
        base = datetime.now(UTC) - timedelta(hours=2)
        # a 20-minute excursion inside 40 minutes of samples, sent as a shuffled backlog, twice
        backlog = [{"device": run.devices[0], "seq": i, "ts": (base + timedelta(minutes=i)).isoformat(),
                    "temp_c": {"chilled": 12.0 if 5 <= i < 25 else 4.0}} for i in range(40)]
        infos = [pub.publish(topic, json.dumps(backlog[::-1]), qos=1) for _ in range(2)]
        infos += [pub.publish(topic, b"\xff\xfe", qos=1), pub.publish(topic, b"not json", qos=1)]
        for info in infos:
            info.wait_for_publish(10)
        assert run.wait_for(40) == 40, run.log()
        assert run.wait_for(2, model=TelemetryReject) == 2
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and run.count(Alert) == 0:
            time.sleep(0.2)
        with run.engine.connect() as conn:
            alerts = conn.execute(select(Alert.kind, Alert.compartment, Alert.late, Alert.peak)).all()
            reasons = sorted(conn.scalars(select(TelemetryReject.reason)))
        assert alerts == [("temperature", "chilled", True, 12.0)]
        assert reasons == ["not JSON", "not UTF-8"]
        pub.loop_stop()
        pub.disconnect()
    finally:
        log = stop(proc)
    assert "Traceback" not in log, log
    time.sleep(0.5)
    assert run.count() == 40
    counts = run.readings(backlog)
    assert (counts.sent, counts.lost, counts.twice) == (40, 0, 0) and counts.ok, counts


def test_sigkill_mid_stream_loses_nothing_and_stores_nothing_twice(databases, tmp_path: Path,  # noqa: ANN001
                                                                  mqtt_url: str) -> None:
    run = Run(databases, tmp_path, mqtt_url)
    proc = run.start()
    run.wait_subscribed(proc)
    pub = publisher(mqtt_url)
    base = datetime.now(UTC) - timedelta(hours=8)  # 400 minutes of history, all in the past
    per_message, messages = 10, 400
    infos, sent = [], []
    try:
        for m in range(messages):
            van, device = (run.vans[m % 2], run.devices[m % 2])
            batch = samples(device, (m // 2) * per_message, per_message, base + timedelta(minutes=m))
            sent += batch
            infos.append(pub.publish(f"coldchain/v1/vehicles/{van}/telemetry", json.dumps(batch), qos=1))
            if m == messages // 3:
                deadline = time.monotonic() + 60
                while run.count() == 0:
                    assert time.monotonic() < deadline, "nothing stored within 60 s: no ingestor to kill mid-stream"
                    time.sleep(0.01)
                proc.kill()  # SIGKILL: no chance to flush or ack anything
                proc.wait(10)
        for info in infos:
            info.wait_for_publish(20)
        stored_while_down = run.count()
        proc = run.start()
        total = messages * per_message
        assert run.wait_for(total, timeout=90) == total, (stored_while_down, run.per_device(), run.log())
        time.sleep(2)  # anything redelivered twice would show up now
        assert run.count() == total
        assert stored_while_down < total
        with run.engine.connect() as conn:
            per_device = dict(conn.execute(select(TelemetrySample.device, func.count())
                                           .group_by(TelemetrySample.device)).all())
            assert conn.scalar(select(func.count()).select_from(TelemetryReject)) == 0
        assert per_device == {run.devices[0]: total // 2, run.devices[1]: total // 2}
        counts = run.readings(sent)  # readings have no key: a replayed batch would land here twice
        assert (counts.sent, counts.lost, counts.twice) == (total, 0, 0) and counts.ok, counts
    finally:
        pub.loop_stop()
        pub.disconnect()
        if proc.poll() is None:
            stop(proc)


@pytest.mark.parametrize("launch", ["three commands", "one command, --processes 3"])
def test_three_ingestors_sharing_one_stream_store_once_and_alert_once(databases, tmp_path: Path,  # noqa: ANN001
                                                                      mqtt_url: str, launch: str) -> None:
    """Three ingestors on one $share subscription split a van's samples between them; every sample is
    stored once and the excursion they share is raised once, because the rule state is in the database.
    Started as three commands, or as one `coldchain ingest --processes 3` that runs them as children."""
    run = Run(databases, tmp_path, mqtt_url)
    common = ["--shared-group", f"g{run.tag}", "--tick-every", "1", "--session-expiry", "300"]
    log_files = [tmp_path / f"ingest-{k}.log" for k in range(3)]
    if launch == "three commands":
        procs = [subprocess.Popen([*coldchain_cmd(), "ingest", "--client-id", f"{run.client_id}-{k}", *common],
                                  env=run.env, stdout=subprocess.DEVNULL, stderr=log_files[k].open("w"))
                 for k in range(3)]
    else:
        log_files = log_files[:1]
        procs = [subprocess.Popen([*coldchain_cmd(), "ingest", "--client-id", run.client_id, "--processes", "3",
                                   *common], env=run.env, stdout=subprocess.DEVNULL, stderr=log_files[0].open("w"))]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(f.read_text().count("subscription granted") for f in log_files) < 3:
            assert all(proc.poll() is None for proc in procs), [f.read_text() for f in log_files]
            time.sleep(0.2)
        assert sum(f.read_text().count("subscription granted") for f in log_files) == 3
        pub = publisher(mqtt_url)
        base = datetime.now(UTC) - timedelta(hours=6)  # 300 minutes of history, all in the past
        infos, sent = [], []
        for m in range(300):  # one sample per message: consecutive samples go to different ingestors
            sample = {"device": run.devices[0], "seq": m, "ts": (base + timedelta(minutes=m)).isoformat(),
                      "temp_c": {"chilled": 12.0 if 100 <= m < 130 else 4.0}}
            sent.append(sample)
            infos.append(pub.publish(f"coldchain/v1/vehicles/{run.vans[0]}/telemetry", json.dumps(sample),
                                     qos=1))
        for info in infos:
            info.wait_for_publish(20)
        assert run.wait_for(300, timeout=60) == 300
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and run.count(Alert) == 0:
            time.sleep(0.2)
        time.sleep(3)
        with run.engine.connect() as conn:
            alerts = conn.execute(select(Alert.kind, Alert.compartment, Alert.started_at)).all()
        assert [(k, c) for k, c, _s in alerts] == [("temperature", "chilled")]
        assert abs((alerts[0][2] - (base + timedelta(minutes=100))).total_seconds()) < 1
        pub.loop_stop()
        pub.disconnect()
    finally:
        for proc in procs:
            stop(proc)
    logs = [f.read_text() for f in log_files]
    assert not any("Traceback" in log for log in logs), logs
    assert all(proc.returncode == 0 for proc in procs), logs
    assert sum(log.count("stopped") for log in logs) >= 3  # every ingestor shut down cleanly
    if launch == "three commands":  # each printed its counters on one line: the broker split the stream
        received = []  # (deploy/compose-smoke.sh reads these lines from the compose ingestors' logs)
        for log in logs:
            lines = [line for line in log.splitlines() if line.startswith("ingestor stopped: {")]
            assert len(lines) == 1, log
            received.append(ast.literal_eval(lines[0].removeprefix("ingestor stopped: "))["received"])
        assert sum(received) >= 300 and all(n > 0 for n in received), received
    assert run.count() == 300
    counts = run.readings(sent)
    assert (counts.sent, counts.lost, counts.twice) == (300, 0, 0) and counts.ok, counts


def test_pool_children_stop_when_the_pool_process_is_killed(databases, tmp_path: Path, mqtt_url: str) -> None:  # noqa: ANN001
    """SIGKILL of `coldchain ingest --processes 2` leaves no orphan ingestor holding the MQTT sessions."""
    import re

    run = Run(databases, tmp_path, mqtt_url)
    log_file = tmp_path / "pool.log"
    proc = subprocess.Popen([*coldchain_cmd(), "ingest", "--client-id", run.client_id, "--processes", "2",
                             "--shared-group", f"g{run.tag}", "--session-expiry", "60"],
                            env=run.env, stdout=subprocess.DEVNULL, stderr=log_file.open("w"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and log_file.read_text().count("subscription granted") < 2:
            time.sleep(0.2)
        pids = [int(p) for p in re.findall(r"\d+", re.search(r"pids \[([\d, ]+)\]", log_file.read_text()).group(1))]
        assert len(pids) == 2
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [p for p in pids if _running(p)]
        assert alive == [], log_file.read_text()
        assert log_file.read_text().count("pool's process is gone") == 2
    finally:
        if proc.poll() is None:
            proc.kill()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
