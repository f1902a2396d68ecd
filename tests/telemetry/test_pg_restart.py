"""PostgreSQL restarted in the middle of ingestion loses nothing and stores nothing twice.

The test makes a throwaway PostgreSQL cluster of its own (initdb into a temporary folder,
trust auth on loopback, a free port, its socket in that folder): the machine's shared
server is never stopped. The ingestor runs as a real `coldchain ingest` process against
the broker (the machine's Mosquitto when COLDCHAIN_MQTT_URL is set, else the embedded
one); it retries a batch while the database is away and acknowledges it only after the
commit, so every sample published before, during and after the outage is stored once.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, func, select, text

from telemetry.models import TelemetryReject, TelemetrySample
from tests.support import Run, free_port, publisher, samples, stop


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(re.findall(r"/(\d+)/", p)[0]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Cluster:
    """A PostgreSQL cluster in a temporary folder, run as the postgres OS user when we are root."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="coldchain-pg-"))  # short: the socket path must fit
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            pg = pwd.getpwnam("postgres")
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run([*self.as_user, *args], cwd=self.root, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}{done.stderr}{self._log_tail()}"

    def _log_tail(self) -> str:
        try:
            return "\n" + self.log.read_text()[-2000:]
        except OSError:
            return ""

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        admin = create_engine(self.url().replace("postgresql://", "postgresql+psycopg://"),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return self.url(name)

    def remove(self) -> None:
        if self.running():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def test_postgres_restart_mid_stream_loses_nothing(tmp_path: Path, mqtt_url: str) -> None:
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("initdb not found (no PostgreSQL server binaries on this machine)")
    cluster = Cluster(bin_dir)
    proc = pub = run = None
    try:
        cluster.init()
        cluster.start()
        url = cluster.create_database("coldchain")
        run = Run(SimpleNamespace(new=lambda _label: url), tmp_path, mqtt_url)
        proc = run.start()
        run.wait_subscribed(proc)
        pub = publisher(mqtt_url)
        base = datetime.now(UTC) - timedelta(hours=6)
        per_message, messages = 10, 240
        infos, sent = [], []
        down_at = None

        def send(m: int) -> None:
            van, device = run.vans[m % 2], run.devices[m % 2]
            batch = samples(device, (m // 2) * per_message, per_message, base + timedelta(minutes=m))
            sent.extend(batch)
            infos.append(pub.publish(f"coldchain/v1/vehicles/{van}/telemetry", json.dumps(batch), qos=1))

        for m in range(messages // 3):  # before: the database is up
            send(m)
            time.sleep(0.005)
        deadline = time.monotonic() + 20
        while run.count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        stored_before = run.count()
        assert stored_before > 0, "nothing was stored before the restart"
        cluster.stop("fast")  # mid-stream: the ingestor's connections are cut
        down_at = time.monotonic()
        for m in range(messages // 3, 2 * messages // 3):  # during: it must hold these, unacknowledged
            send(m)
            time.sleep(0.01)
        time.sleep(max(0.0, 3 - (time.monotonic() - down_at)))
        assert proc.poll() is None, "the ingestor died while the database was away"
        cluster.start()
        for m in range(2 * messages // 3, messages):  # after
            send(m)
            time.sleep(0.005)
        for info in infos:
            info.wait_for_publish(20)
        total = messages * per_message
        assert run.wait_for(total, timeout=90) == total
        time.sleep(1.5)  # anything stored twice or late would show now
        with run.engine.connect() as conn:
            per_device = dict(conn.execute(select(TelemetrySample.device, func.count())
                                           .group_by(TelemetrySample.device)).all())
            rejects = conn.execute(select(TelemetryReject.reason)).scalars().all()
        assert per_device == {run.devices[0]: total // 2, run.devices[1]: total // 2}
        counts = run.readings(sent)  # a batch retried after a commit it never heard of would land twice here
        assert (counts.sent, counts.lost, counts.twice) == (total, 0, 0) and counts.ok, counts
        assert rejects == []
        assert stored_before < total
    finally:
        log = stop(proc) if proc is not None and proc.poll() is None else ""
        if pub is not None:
            pub.loop_stop()
            pub.disconnect()
        if run is not None:
            run.engine.dispose()
        cluster.remove()
    retries = re.search(r"'db_retries':\s+(\d+)", log)
    assert retries and int(retries.group(1)) > 0, log[-3000:]
