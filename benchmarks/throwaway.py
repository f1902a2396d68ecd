"""A PostgreSQL database made for one benchmark run, migrated, and dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url


@contextmanager
def throwaway_database(server_url: str, label: str = "bench") -> Iterator[tuple[str, Engine]]:
    """Yield (url, engine) of a fresh, migrated database on the server at `server_url`."""
    from core import migrate
    from core.db import make_engine

    name = f"coldchain_{label}_{uuid.uuid4().hex[:8]}"
    server = make_url(server_url).set(drivername="postgresql+psycopg")
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        yield url, engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
