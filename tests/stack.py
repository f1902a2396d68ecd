"""The real request boundary: `coldchain serve` and `coldchain worker` as processes on a database of their own.

The in-thread `api` fixture shares a test's rolled-back transaction, which never commits and
so cannot show what happens at the commit (jobs sent after it, SQLite's write lock held across
a request). Tests that are about that boundary run the stack as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import date
from pathlib import Path

import httpx

from tests.conftest import coldchain_cmd, free_port
from tests.support import add_user_in, allocate_in, load_into


class Stack:
    """An API server and Celery workers as child processes, on a fresh database and a queue of their own."""

    def __init__(self, databases, tmp_path: Path, label: str = "stack") -> None:  # noqa: ANN001
        self.tmp = tmp_path
        self.env = {**os.environ, "COLDCHAIN_DATABASE_URL": databases.new(label), "COLDCHAIN_DATA_DIR": str(tmp_path),
                    "COLDCHAIN_CELERY_QUEUE": f"test-{label}-{uuid.uuid4().hex[:8]}"}
        self.procs: list[subprocess.Popen] = []
        self.base = ""

    def cli(self, *args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        run = subprocess.run([*coldchain_cmd(), *args], env=self.env, input=stdin, capture_output=True, text=True,
                             timeout=timeout)
        assert run.returncode == 0, f"coldchain {' '.join(args)}: exit {run.returncode}\n{run.stderr[-3000:]}"
        return run

    def load(self, folder: Path) -> None:
        """`coldchain scenario load FOLDER` on the stack's database, in this process (tests.support.load_into)."""
        load_into(self.env["COLDCHAIN_DATABASE_URL"], folder)

    def allocate(self, day: date) -> None:
        """`coldchain allocate --date DAY` on the stack's database, in this process."""
        allocate_in(self.env["COLDCHAIN_DATABASE_URL"], day)

    def user(self, username: str, role: str, password: str = "a-long-enough-password") -> dict[str, str]:
        """Create the user (what `coldchain user add` does, in this process: tests/core/test_cli_users.py runs the
        command itself), log in through the token route, return the bearer header."""
        add_user_in(self.env["COLDCHAIN_DATABASE_URL"], username, role, password)
        resp = httpx.post(f"{self.base}/api/v1/auth/token", data={"username": username, "password": password})
        assert resp.status_code == 200, resp.text
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}

    def start(self, workers: int = 1) -> Stack:
        """Start the worker and the server side by side (both migrate at start, one at a time:
        tests/core/test_migrations.py), and return once the worker has declared its queue and the server
        answers, so that no job is sent before there is a queue to hold it."""
        if workers:
            self.procs.append(subprocess.Popen([*coldchain_cmd(), "worker", "--concurrency", str(workers)],
                                               env=self.env, stdout=subprocess.DEVNULL,
                                               stderr=(self.tmp / "worker.log").open("wb")))
        port = free_port()
        self.procs.append(subprocess.Popen([*coldchain_cmd(), "serve", "--port", str(port)], env=self.env,
                                           stdout=subprocess.DEVNULL, stderr=(self.tmp / "serve.log").open("wb")))
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while workers and "ready." not in self.log("worker"):  # the worker has declared its queue
            if time.monotonic() > deadline:
                raise RuntimeError("coldchain worker did not get ready within 90 s:\n" + self.log("worker"))
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/api/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("coldchain serve did not answer within 60 s")

    def wait_job(self, href: str, headers: dict[str, str], timeout: float = 120) -> dict:
        """Poll a job until it ends; returns its last state (SUCCESS or FAILURE)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = httpx.get(href, headers=headers).json()
            if job.get("state") in ("SUCCESS", "FAILURE"):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {href} did not end within {timeout} s: {job}")

    def log(self, name: str = "serve") -> str:
        """The tail of a process's stderr (serve or worker), for assertion messages."""
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
