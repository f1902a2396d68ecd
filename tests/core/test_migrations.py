"""The same Alembic migrations upgrade and downgrade on SQLite and on PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect

from core import migrate
from core.db import Base, make_engine
from core.models_registry import MODEL_MODULES  # noqa: F401


def test_upgrade_creates_every_model_table_and_downgrade_removes_them(databases) -> None:  # noqa: ANN001
    engine = make_engine(databases.new("migrations"))
    try:
        migrate.upgrade(engine)
        assert migrate.current(engine) is not None
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        migrate.downgrade(engine, "base")
        assert migrate.current(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_models_and_migrations_agree(databases) -> None:  # noqa: ANN001
    """Autogenerate against a migrated database finds nothing to add: no model change lacks a migration."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(databases.new("drift"))
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": False})
            diff = [d for d in compare_metadata(ctx, Base.metadata)
                    if not (isinstance(d, tuple) and d[0] in ("add_table", "remove_table")
                            and getattr(d[1], "name", "").startswith("telemetry_readings_p"))]
        assert diff == []
    finally:
        engine.dispose()


def test_services_starting_together_on_a_fresh_database_all_migrate(databases, tmp_path) -> None:  # noqa: ANN001
    """The real stack's services each migrate at start: four at once must all succeed, with one head."""
    import os
    import subprocess

    from tests.support import coldchain_cmd

    url = databases.new("race")
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_DATA_DIR": str(tmp_path)}
    procs = [subprocess.Popen([*coldchain_cmd(), "db", "upgrade"], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    failed = [(p.returncode, e[-400:]) for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    assert failed == []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            heads = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert len(heads) == 1 and heads[0][0] == migrate.current(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
