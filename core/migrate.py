"""Run the Alembic migrations shipped inside the package (they install with `pip install .`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

import migrations

# Every service of the real stack (API, workers, beat, ingestors) migrates before it starts, so on
# a fresh database several processes upgrade at once; this lock makes the others wait and then
# find the schema at head instead of racing to create the same tables.
MIGRATION_LOCK_KEY = 0x636F6C64_6D696772  # "coldmigr"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade, one process at a time: a PostgreSQL advisory lock, SQLite's write lock at BEGIN."""
    cfg = alembic_config()
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
