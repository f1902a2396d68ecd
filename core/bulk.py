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


def insert_with_ids(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert rows and return their new ids in the rows' order, so that child rows can point at them.

    PostgreSQL: the ids are drawn from the table's sequence in one statement, then one COPY writes
    the rows with them. SQLite: executemany with RETURNING (SQLAlchemy's insertmanyvalues, which
    keeps the parameters' order).
    """
    if not rows:
        return []
    if session.get_bind().dialect.name != "postgresql":
        stmt = table.insert().returning(table.c.id, sort_by_parameter_order=True)
        return [r[0] for r in session.execute(stmt, list(rows))]
    ids = list(session.scalars(text(f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) "
                                    "FROM generate_series(1, :n)"), {"n": len(rows)}))
    copy_rows(session, table, [{"id": i, **row} for i, row in zip(ids, rows, strict=True)])
    return ids


def existing_keys(session: Session, column: Any, keys: Sequence[Any], chunk: int = 900) -> set[Any]:
    """Which of `keys` are already in `column` (PostgreSQL: one = ANY(array); SQLite: IN chunks)."""
    if not keys:
        return set()
    from sqlalchemy import select

    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import any_, bindparam
        from sqlalchemy.dialects.postgresql import ARRAY

        param = bindparam("keys", list(keys), type_=ARRAY(column.type))
        return set(session.scalars(select(column).where(column == any_(param))))
    found: set[Any] = set()
    keys = list(keys)
    for i in range(0, len(keys), chunk):
        found.update(session.scalars(select(column).where(column.in_(keys[i:i + chunk]))))
    return found
