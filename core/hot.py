"""The driver API's hottest statements run on PostgreSQL's own cursor, compiled once.

``Connection.execute`` spends, on every call, as much CPU as the driver itself: it builds the statement's
cache key (a walk over the whole statement), looks the compiled form up, sets up an execution context and a
result with its row processors. For the few statements that every driver request runs, that was about half
of their CPU in this process (benchmarks/api_cpu.py). :class:`Hot` does that work once per dialect and then
hands psycopg the SQL text with the parameters, prepared on the server (``prepare=True``), applying the same
bind and result processors SQLAlchemy would (an aware UTC datetime in and out, JSON, bytes), and firing
``before_cursor_execute`` as SQLAlchemy does, so that what counts statements still counts these.

SQLite (the laptop's embedded default) runs the statement through SQLAlchemy as before: the same answer.

An ``IN`` over a list the caller gives is written out per length, as SQLAlchemy does (one text per length).
"""

from __future__ import annotations

import re
import threading
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql import Executable

# what SQLAlchemy renders only when it executes: an IN over a list, a value written into the SQL
_POSTCOMPILE = re.compile(r"(NOT )?IN \(__\[POSTCOMPILE_(\w+)\]\)|__\[POSTCOMPILE_(\w+)\]")


def _render(compiled: Any, dialect: Dialect) -> tuple[list[str | tuple[str, bool]], list[str]]:
    """The text of ``compiled`` with SQLAlchemy's execution-time parts written out: the statement's own values
    (``kind IN ('temperature', 'shock')``, a separator) as literals, as SQLAlchemy writes them, so that the
    planner sees them (a partial index is matched on literals only); and, between the pieces of text, the lists
    the caller gives, as (name, negated), to be written out per length (:meth:`_Compiled.text`). Also the
    lists' names."""
    pieces: list[str | tuple[str, bool]] = []
    lists: list[str] = []
    sql, at = str(compiled), 0
    literal = dialect.statement_compiler(dialect, None).render_literal_value
    for match in _POSTCOMPILE.finditer(sql):
        negated, listed = match.group(1) is not None, match.group(2) is not None
        name = match.group(2) or match.group(3)
        bind = next(b for b, n in compiled.bind_names.items() if n == name)
        pieces.append(sql[at:match.start()])
        at = match.end()
        if bind.required:
            if not listed:
                raise ValueError(f"Hot: parameter {name!r} is written into the SQL and must be given as a value")
            pieces.append((name, negated))
            lists.append(name)
        elif listed:
            values = ", ".join(literal(v, bind.type) for v in bind.effective_value)
            pieces.append(f"{'NOT ' if negated else ''}IN ({values})")
        else:
            pieces.append(literal(bind.effective_value, bind.type))
    pieces.append(sql[at:])
    return pieces, lists


def _returned(statement: Executable) -> Sequence[Any]:
    """The columns a statement returns, in order: a SELECT's, or an INSERT, UPDATE or DELETE's RETURNING."""
    selected = getattr(statement, "selected_columns", None)
    if selected is not None:
        return list(selected)
    return list(getattr(statement, "returning_column_descriptions", None) and
                [d["expr"] for d in statement.returning_column_descriptions] or ())


class _Compiled:
    """The statement as PostgreSQL's text, its constant parameters and the processors of its values."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self._pieces, self._lists = _render(compiled, dialect)
        self._texts: dict[tuple[int, ...], str] = {}
        self.constants: dict[str, Any] = {}  # the statement's own values ("current" in status = 'current')
        self.binds: dict[str, Callable] = {}  # the caller's parameters' processors
        for bind, name in compiled.bind_names.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)  # what execute applies
            if bind.required:
                if processor is not None:
                    self.binds[name] = processor
            elif not (bind.expanding or bind.literal_execute):  # those are written into the text (_render)
                value = bind.effective_value
                self.constants[name] = processor(value) if processor is not None and value is not None else value
        self._columns = _returned(statement)
        self._dialect = dialect
        self.shape: tuple[type, list[tuple[int, Callable]]] | None = None

    def text(self, lengths: tuple[int, ...]) -> str:
        """The SQL for lists of these lengths: ``IN (%(ids__1)s, %(ids__2)s)``, as SQLAlchemy expands them, one
        text (and one prepared statement) per length. (One ``= ANY(array)`` for every length was tried: PostgreSQL
        then planned the route read's statements anew on every run, its generic plan costed for a longer list.)"""
        got = self._texts.get(lengths)
        if got is None:
            out, n = [], iter(lengths)
            for piece in self._pieces:
                if isinstance(piece, str):
                    out.append(piece)
                    continue
                name, negated = piece
                length = next(n)
                if not length:  # what SQLAlchemy's empty IN means: never (NOT IN: always)
                    out.append("<> ALL('{}')" if negated else "= ANY('{}')")
                else:
                    places = ", ".join(f"%({name}__{i})s" for i in range(1, length + 1))
                    out.append(f"{'NOT ' if negated else ''}IN ({places})")
            got = self._texts[lengths] = "".join(out)
        return got

    def values(self, params: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
        """The SQL and its values for these parameters, processed as SQLAlchemy would."""
        params = params or {}
        out = dict(self.constants)
        for name, value in params.items():
            processor = self.binds.get(name)
            if name in self._lists:
                for i, item in enumerate(value, 1):
                    out[f"{name}__{i}"] = processor(item) if processor is not None and item is not None else item
                continue
            out[name] = processor(value) if processor is not None and value is not None else value
        return self.text(tuple(len(params[name]) for name in self._lists)), out

    def describe(self, description: Sequence[Any]) -> tuple[type, list[tuple[int, Callable]]]:
        """The row class of the result columns and the processors SQLAlchemy would apply to them (some depend
        on the type the server sent, as execute's do)."""
        processors = []
        for i, (column, described) in enumerate(zip(self._columns, description, strict=False)):
            processor = column.type.dialect_impl(self._dialect).result_processor(self._dialect, described.type_code)
            if processor is not None:
                processors.append((i, processor))
        self.shape = (namedtuple("HotRow", [c.name for c in description], rename=True), processors)  # noqa: PYI024
        return self.shape


@contextmanager
def _executed(conn: Connection, sql: str, values: Mapping[str, Any]) -> Iterator[Any]:
    """A cursor of the connection's psycopg connection, ``sql`` executed on it (prepared), in the connection's
    transaction (begun here if it was not yet, as execute's autobegin would: the caller's commit commits it)."""
    if not conn.in_transaction():
        conn.begin()
    driver = conn.connection.driver_connection
    with driver.cursor() as cursor:
        for listener in conn.dispatch.before_cursor_execute:  # as execute fires it: what counts statements counts these
            listener(conn, cursor, sql, values, None, False)
        try:
            cursor.execute(sql, values, prepare=True)
        except conn.dialect.loaded_dbapi.Error as exc:  # as execute reports it: SQLAlchemy's exception classes
            if conn.dialect.is_disconnect(exc, driver, cursor):
                conn.invalidate(exc)  # the pool does not hand out a dead connection again
            raise DBAPIError.instance(sql, values, exc, conn.dialect.loaded_dbapi.Error) from exc
        yield cursor


def driver_rows(conn: Connection, sql: str, values: Mapping[str, Any]) -> list[tuple]:
    """PostgreSQL only: ``sql``, already in psycopg's form, executed on the connection's cursor; its rows as the
    driver gives them (no processing: for a statement whose values need none)."""
    with _executed(conn, sql, values) as cursor:
        result = cursor.pgresult
        return cursor.fetchall() if result is not None and result.nfields else []


class Hot:
    """One statement, compiled once per dialect; :meth:`rows` runs it."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()

    def _for(self, dialect: Dialect) -> _Compiled:
        got = self._compiled.get(dialect.name)
        if got is None:
            with self._lock:
                got = self._compiled.get(dialect.name) or _Compiled(self.statement, dialect)
                self._compiled[dialect.name] = got
        return got

    def sql(self, dialect: Dialect, params: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """The text PostgreSQL is sent for these parameters (psycopg's ``%(name)s`` placeholders) and its values:
        the statement's own and ``params``, processed as SQLAlchemy would."""
        return self._for(dialect).values(params)

    def rows(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Sequence[Any]:
        """Every row (named tuples on PostgreSQL, SQLAlchemy's rows elsewhere); none for a statement that
        returns none. In the connection's transaction, begun here if it was not yet (as execute would)."""
        if conn.dialect.name != "postgresql":
            result = conn.execute(self.statement, params)
            return result.all() if result.returns_rows else []
        compiled = self._for(conn.dialect)
        sql, values = compiled.values(params)
        with _executed(conn, sql, values) as cursor:
            result = cursor.pgresult
            if result is None or not result.nfields:
                return []
            raw = cursor.fetchall()
            # a prepared statement's columns do not change: described once (psycopg builds each description anew)
            cls, processors = compiled.shape or compiled.describe(cursor.description)
        if processors:
            raw = [list(r) for r in raw]
            for i, processor in processors:
                for row in raw:
                    if row[i] is not None:
                        row[i] = processor(row[i])
        return list(map(cls._make, raw))

    def session_rows(self, session: Session, params: Mapping[str, Any] | None = None) -> Sequence[Any]:
        """:meth:`rows` on the session's connection, after the flush ``session.execute`` would make (its
        autoflush): what the session holds unwritten is seen, as before."""
        if session.autoflush:
            session.flush()
        return self.rows(session.connection(), params)

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any | None:
        rows = self.rows(conn, params)
        return rows[0] if rows else None


__all__ = ["Hot", "driver_rows"]
