"""Database engine, declarative base and session handling.

Services never commit: the request, task or command boundary does (Polar's habit),
through `session_scope()` or the API's session dependency.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache

from sqlalchemy import DateTime, Engine, MetaData, create_engine, event, exc
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from core.settings import get_settings
from core.timeutil import reset_clock

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware one is required")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL and a busy timeout let the API, workers and the ingestor share one SQLite file.

    pysqlite's own transaction handling breaks SAVEPOINT (SQLAlchemy's documented
    recipe): we let SQLAlchemy emit BEGIN itself. A unit of work that will write asks for
    BEGIN IMMEDIATE (execution option "sqlite_immediate", see `session_scope`), so that
    reading and then writing waits for the write lock up front instead of failing with
    "database is locked" when another process committed in between; readers stay deferred
    and never wait.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, **kwargs: object) -> Engine:
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)
        _sqlite_pragmas(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "postgresql" and not kwargs.get("pool_pre_ping"):
        _check_on_checkout(engine)
    return engine


def _check_on_checkout(engine: Engine) -> None:
    """Hand out only live connections, without pool_pre_ping's round trip on every checkout (a BEGIN and a
    SELECT 1: under load, a fifth of a driver request's round trips). A server that ended the connection
    (a restart, pg_terminate_backend, idle_session_timeout) has sent its goodbye and closed the socket, so the
    socket is readable: that is checked with a zero-timeout select. A connection unused for longer than
    COLDCHAIN_DB_PING_IDLE_S may have been cut silently (a NAT or firewall forgets it) and is pinged. A dead one
    raises DisconnectionError, on which the pool throws it away and takes another (SQLAlchemy's documented
    pessimistic recipe)."""
    idle_s = get_settings().db_ping_idle_s

    @event.listens_for(engine.pool, "checkin")
    def _on_checkin(_dbapi_conn, record) -> None:  # noqa: ANN001
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _on_checkout(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        since = record.info.pop("idle_since", None)
        if since is None:  # just connected
            return
        try:
            spoken = bool(select.select([dbapi_conn.fileno()], [], [], 0)[0])
        except (OSError, ValueError) as err:  # a closed descriptor
            raise exc.DisconnectionError(str(err)) from err
        if not spoken and time.monotonic() - since < idle_s:
            return
        autocommit = dbapi_conn.autocommit
        try:
            dbapi_conn.autocommit = True  # the ping opens no transaction (the next user may want autocommit)
            dbapi_conn.execute("SELECT 1")
            dbapi_conn.autocommit = autocommit
        except Exception as err:  # noqa: BLE001 - whatever the driver raises, this connection is done
            raise exc.DisconnectionError(str(err)) from err


def _pool(url: str) -> dict:
    if url.startswith("sqlite"):
        return {}
    settings = get_settings()
    return {"pool_size": settings.db_pool_size, "max_overflow": settings.db_max_overflow}


@lru_cache
def get_engine() -> Engine:
    url = get_settings().sqlalchemy_url
    return make_engine(url, **_pool(url))


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@lru_cache
def get_quick_commit_engine() -> Engine:
    """For short bookkeeping statements whose loss in a crash loses nothing (an Idempotency-Key claimed
    before its work: the work's own durable commit comes later in the WAL and flushes it): on PostgreSQL
    its connections run with synchronous_commit off, set once per connection instead of once per
    transaction; a pool of its own, as large as the ordinary one (every request inside may be claiming a key:
    api.guards.ConcurrencyLimitMiddleware), so that a burst opens no connections that are closed when given
    back. Elsewhere the ordinary engine."""
    url = get_settings().sqlalchemy_url
    if not url.startswith("postgresql"):
        return get_engine()
    # autocommit: each of its statements is its own transaction (a claim is one statement), which saves the
    # BEGIN and COMMIT round trips
    return make_engine(url, connect_args={"options": "-c synchronous_commit=off"}, **_pool(url),
                       isolation_level="AUTOCOMMIT")


@lru_cache
def get_quick_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_quick_commit_engine(), expire_on_commit=False)


@lru_cache
def get_autocommit_sessionmaker() -> sessionmaker[Session]:
    """Sessions whose statements each commit on their own, on the ordinary engine's pool (PostgreSQL): for a read
    whose statements need no common snapshot (under READ COMMITTED each statement takes its own anyway), and
    whose few writes are single statements, so that it costs no BEGIN and no COMMIT round trip."""
    return sessionmaker(bind=get_engine().execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def writer_session() -> Session:
    """A session whose transaction takes SQLite's write lock at BEGIN (no effect on PostgreSQL)."""
    session = get_sessionmaker()()
    if get_engine().dialect.name == "sqlite":
        session.connection(execution_options={"sqlite_immediate": True})
    return session


@contextmanager
def session_scope(write: bool = True, quick: bool = False, autocommit: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error. ``quick``: on the quick-commit engine
    (:func:`get_quick_commit_engine`), for bookkeeping that may be lost in a crash. ``autocommit`` (with
    ``write=False``): on PostgreSQL, each statement its own transaction (:func:`get_autocommit_sessionmaker`)."""
    postgres = get_settings().sqlalchemy_url.startswith("postgresql")
    if quick and postgres:
        session = get_quick_sessionmaker()()
    elif autocommit and not write and postgres:
        session = get_autocommit_sessionmaker()()
    else:
        session = writer_session() if write else get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_caches() -> None:
    """Forget the engine and settings (tests and the demo change COLDCHAIN_* at run time)."""
    if get_quick_commit_engine.cache_info().currsize:
        get_quick_commit_engine().dispose()
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    get_sessionmaker.cache_clear()
    get_quick_commit_engine.cache_clear()
    get_quick_sessionmaker.cache_clear()
    get_autocommit_sessionmaker.cache_clear()
    get_settings.cache_clear()
    reset_clock()
