"""Test fixtures shared by every room.

The suite runs twice in CI: on embedded defaults (SQLite files in a temporary folder)
and with COLDCHAIN_DATABASE_URL / COLDCHAIN_MQTT_URL / COLDCHAIN_BROKER_URL pointing at
the machine's PostgreSQL, Mosquitto and Redis. Nothing depends on what earlier runs
left: each run makes its own PostgreSQL database and drops it, and unit/API tests run
inside a transaction that is rolled back.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Request  # the `api` fixture's session override takes the request (a resolvable name)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tests.browser import browser  # noqa: F401 - the system chromium, for every browser test
from tests.support import ROOT, SHARED, check_plan_path, coldchain_cmd, free_port  # noqa: F401  (also for older imports)

SERVER_URL = os.environ.get("COLDCHAIN_DATABASE_URL")  # the server CI points us at, if any


def _pg_admin_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


class Databases:
    """Makes throwaway databases: PostgreSQL databases on the configured server, or SQLite files."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.made: list[str] = []
        self.run = uuid.uuid4().hex[:8]

    def new(self, label: str = "db") -> str:
        name = f"coldchain_t_{self.run}_{label}_{len(self.made)}"
        if SERVER_URL and SERVER_URL.startswith("postgresql"):
            admin = create_engine(_pg_admin_url(SERVER_URL), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            admin.dispose()
            self.made.append(name)
            return make_url(_pg_admin_url(SERVER_URL)).set(database=name).render_as_string(hide_password=False)
        path = self.tmp / f"{name}.db"
        self.made.append(str(path))
        return f"sqlite:///{path}"

    def drop_all(self) -> None:
        if not (SERVER_URL and SERVER_URL.startswith("postgresql")):
            return
        from concurrent.futures import ThreadPoolExecutor

        # each DROP DATABASE waits for a checkpoint; one after the other, a run's sixty databases took over a
        # minute, side by side their checkpoints coincide
        admin = create_engine(_pg_admin_url(SERVER_URL), isolation_level="AUTOCOMMIT", pool_size=8)

        def drop(name: str) -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(drop, self.made))
        admin.dispose()


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    dbs = Databases(tmp_path_factory.mktemp("databases"))
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session", autouse=True)
def configured(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Point the whole process at a migrated database made for this run."""
    url = databases.new("main")
    data_dir = tmp_path_factory.mktemp("data")
    os.environ["COLDCHAIN_DATABASE_URL"] = url
    os.environ["COLDCHAIN_DATA_DIR"] = str(data_dir)
    os.environ.setdefault("COLDCHAIN_SECRET_KEY", "test-secret-key-0123456789-abcdefghijklmnop")
    from core import migrate
    from core.db import get_engine, reset_caches

    reset_caches()
    migrate.upgrade(get_engine())
    yield url
    reset_caches()


@pytest.fixture
def engine(configured: str):  # noqa: ANN201
    from core.db import get_engine

    return get_engine()


@pytest.fixture
def session(engine) -> Iterator[Session]:  # noqa: ANN001
    """A session inside a transaction that is rolled back at the end of the test.

    Code under test may commit: with join_transaction_mode="create_savepoint" its
    commits release savepoints and the outer transaction still rolls back. What the process keeps of
    earlier tests' rolled-back rows (routes, risk assessments: SQLite hands out their ids again) is dropped.
    """
    from delivery.service import forget_routes
    from traceability.trace import forget_day_risks

    forget_routes()
    forget_day_risks()
    conn = engine.connect()
    outer = conn.begin()
    sess = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield sess
    finally:
        sess.close()
        outer.rollback()
        conn.close()


class LiveServer:
    """The real app under uvicorn on a loopback port: API tests speak real HTTP."""

    def __init__(self, app, port: int) -> None:  # noqa: ANN001
        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture(scope="session")
def live_app():  # noqa: ANN201
    """One uvicorn for the run; each test binds the app's session to its own rolled-back transaction."""
    from api.app import create_app

    app = create_app()
    with LiveServer(app, free_port()) as server:
        server.app = app
        yield server


@pytest.fixture
def api(live_app, session: Session):  # noqa: ANN001, ANN201
    """An httpx client against the live server, whose requests share this test's transaction."""
    import httpx

    from api.deps import before_commit, get_session

    lock = threading.Lock()

    def _session(request: Request) -> Iterator[Session]:
        with lock:
            yield session
            before_commit(request, session)
            session.flush()

    live_app.app.dependency_overrides[get_session] = _session
    with httpx.Client(base_url=live_app.url, timeout=30) as client:
        yield client
    live_app.app.dependency_overrides.clear()


@pytest.fixture
def make_user(session: Session):  # noqa: ANN201
    from warehouses.service import upsert_user

    def _make(username: str, role: str, password: str = "correct horse battery") -> str:
        upsert_user(session, username, role, password)
        return password

    return _make


@pytest.fixture
def token(api, make_user):  # noqa: ANN001, ANN201
    """Log in through the real token route and return the bearer header for a role."""

    def _token(role: str, username: str | None = None) -> dict[str, str]:
        username = username or f"{role}-{uuid.uuid4().hex[:6]}"
        password = make_user(username, role)
        resp = api.post("/api/v1/auth/token", data={"username": username, "password": password})
        assert resp.status_code == 200, resp.text
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}

    return _token


@pytest.fixture
def check_plan() -> Path:
    """check_plan_path() for a test that is nothing but the independent checker's verdict."""
    return check_plan_path()
