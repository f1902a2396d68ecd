"""Bulk writes that stay fast at tens of thousands of rows.

PostgreSQL: INSERT through COPY and UPDATE through one statement over unnest()ed arrays
(one round trip instead of one per row). SQLite: executemany, which is already in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.orm import Session


def _pg_raw(session: Session):  # noqa: ANN202
    return session.connection().connection.driver_connection


def copy_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (all with the same keys); COPY on PostgreSQL."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        session.execute(table.insert(), list(rows))
        return
    from psycopg.types.json import Json

    columns = list(rows[0])
    json_cols = {c for c in columns if table.c[c].type.__class__.__name__ == "JSON"}
    raw = _pg_raw(session)
    with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([Json(row[c]) if c in json_cols and row[c] is not None else row[c] for c in columns])


PG_TYPES = {"INTEGER": "int[]", "BIGINT": "int8[]", "FLOAT": "float8[]", "VARCHAR": "text[]", "TEXT": "text[]",
            "BOOLEAN": "bool[]"}


def update_rows(session: Session, table: Table, key: str, rows: Sequence[dict[str, Any]],
                increment: Sequence[str] = ()) -> None:
    """UPDATE table SET col = value (or col = col + value for `increment`) WHERE key = row[key], for every row."""
    if not rows:
        return
    columns = [c for c in rows[0] if c != key]
    sets = ", ".join(f"{c} = {table.name}.{c} + v.{c}" if c in increment else f"{c} = v.{c}" for c in columns)
    if session.get_bind().dialect.name != "postgresql":
        stmt = text(f"UPDATE {table.name} SET {sets.replace('v.', ':')} WHERE {key} = :{key}".replace(
            f"{table.name}.", ""))
        session.execute(stmt, list(rows))
        return
    names = [key, *columns]
    arrays = ", ".join(f"CAST(:{n} AS {PG_TYPES[str(table.c[n].type).split('(')[0]]})" for n in names)
    stmt = text(f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS v({', '.join(names)}) "
                f"WHERE {table.name}.{key} = v.{key}")
    session.execute(stmt, {n: [r[n] for r in rows] for n in names})
