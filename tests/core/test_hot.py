"""core.hot: a statement run on PostgreSQL's own cursor answers what SQLAlchemy's execute answers, on both
databases: the same rows with the same Python types (aware UTC datetimes, JSON, bytes), lists of any length
in IN and NOT IN, the statement's own values, the caller's transaction, the statement counters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, StatementError

from core.db import UTCDateTime, make_engine
from core.hot import Hot

_META = MetaData()
_T = Table("hot_things", _META, Column("id", Integer, primary_key=True), Column("name", String(20)),
           Column("kind", String(10)), Column("at", UTCDateTime), Column("data", JSON), Column("blob", LargeBinary))
_C = _T.c
_START = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def conn(databases) -> Iterator[Connection]:  # noqa: ANN001
    engine = make_engine(databases.new("hot"), pool_size=1, max_overflow=0)
    _META.create_all(engine)
    with engine.begin() as c:
        c.execute(insert(_T), [{"id": i, "name": f"n{i}", "kind": ("a", "b", "c")[i % 3],
                                "at": _START + timedelta(minutes=i), "data": {"i": i, "名": "冷链"},
                                "blob": bytes([i])} for i in range(1, 11)])
    try:
        with engine.connect() as c:
            yield c
    finally:
        engine.dispose()


def _types(row) -> list[tuple[type, type]]:  # noqa: ANN001
    """Each value's type, and a datetime's zone's (SQLAlchemy answers UTC as datetime.timezone.utc)."""
    return [(type(v), type(getattr(v, "tzinfo", None))) for v in row]


def _same(conn: Connection, statement, params: dict | None = None) -> list[tuple]:  # noqa: ANN001
    """Hot's rows, checked against SQLAlchemy's own (values and their types, and the column names)."""
    expected = conn.execute(statement, params).all()
    got = Hot(statement).rows(conn, params)
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
    assert [_types(r) for r in got] == [_types(r) for r in expected]
    if got:
        assert tuple(got[0]._fields) == tuple(expected[0]._fields)
    return [tuple(r) for r in got]


def test_rows_and_types_are_sqlalchemys(conn: Connection) -> None:
    rows = _same(conn, select(_T).where(_C.id <= bindparam("top")).order_by(_C.id), {"top": 3})
    assert [r[0] for r in rows] == [1, 2, 3]
    at, data, blob = rows[1][3], rows[1][4], rows[1][5]
    assert at == _START + timedelta(minutes=2) and at.utcoffset() == timedelta(0)
    assert data == {"i": 2, "名": "冷链"} and blob == b"\x02"


def test_lists_of_any_length_and_negated(conn: Connection) -> None:
    wanted = select(_C.id).where(_C.id.in_(bindparam("ids", expanding=True))).order_by(_C.id)
    assert _same(conn, wanted, {"ids": [3, 1, 7]}) == [(1,), (3,), (7,)]
    assert _same(conn, wanted, {"ids": [4]}) == [(4,)]
    assert _same(conn, wanted, {"ids": []}) == []
    unwanted = select(_C.id).where(_C.id.not_in(bindparam("ids", expanding=True))).order_by(_C.id)
    assert _same(conn, unwanted, {"ids": list(range(2, 11))}) == [(1,)]
    assert len(_same(conn, unwanted, {"ids": []})) == 10


def test_the_statements_own_values(conn: Connection) -> None:
    own = (select(_C.kind, func.count(), func.max(_C.at))
           .where(_C.kind.in_(["a", "b"]), _C.name != "n1", _C.at >= bindparam("since"))
           .group_by(_C.kind).order_by(_C.kind))
    assert _same(conn, own, {"since": _START}) == [("a", 3, _START + timedelta(minutes=9)),
                                                    ("b", 3, _START + timedelta(minutes=10))]
    assert _same(conn, select(func.aggregate_strings(_C.name, ",")).where(_C.id < 3)) in ([("n1,n2",)], [("n2,n1",)])


def test_parameters_are_processed_as_sqlalchemy_does(conn: Connection) -> None:
    eastern = timezone(timedelta(hours=8))
    since = (_START + timedelta(minutes=5)).astimezone(eastern)  # the same instant, written in +08:00
    assert _same(conn, select(_C.id).where(_C.at >= bindparam("since")).order_by(_C.id),
                 {"since": since})[0] == (5,)
    with pytest.raises((ValueError, StatementError), match="naive"):  # SQLAlchemy wraps it (SQLite)
        Hot(select(_C.id).where(_C.at >= bindparam("since"))).rows(conn, {"since": datetime(2026, 1, 1)})


def test_writes_join_the_callers_transaction(conn: Connection) -> None:
    change = Hot(update(_T).where(_C.id == bindparam("pk")).values(data=bindparam("data"), name="changed")
                 .returning(_C.id, _C.data))
    conn.rollback()  # nothing begun: Hot begins as execute would
    assert change.rows(conn, {"pk": 1, "data": {"x": [1, 2]}}) == [(1, {"x": [1, 2]})]
    conn.rollback()
    assert conn.execute(select(_C.name, _C.data).where(_C.id == 1)).one() == ("n1", {"i": 1, "名": "冷链"})
    assert change.rows(conn, {"pk": 2, "data": None})[0][0] == 2
    conn.commit()
    assert conn.execute(select(_C.name).where(_C.id == 2)).scalar_one() == "changed"
    assert Hot(text("UPDATE hot_things SET kind = 'z' WHERE id = :pk")).rows(conn, {"pk": 3}) == []
    conn.commit()
    assert conn.execute(select(_C.kind).where(_C.id == 3)).scalar_one() == "z"


def test_statement_counters_see_them(conn: Connection) -> None:
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_rest) -> None:  # noqa: ANN001, ANN002
        seen.append(statement)

    event.listen(conn.engine, "before_cursor_execute", count)
    try:
        Hot(select(_C.id).where(_C.kind == literal_column("'a'"))).rows(conn)
    finally:
        event.remove(conn.engine, "before_cursor_execute", count)
    assert len([s for s in seen if "hot_things" in s]) == 1, seen  # (SQLite's BEGIN is a statement too)


def test_database_errors_are_sqlalchemys(conn: Connection) -> None:
    with pytest.raises(IntegrityError):  # what callers catch, from execute as from here
        Hot(insert(_T).values(id=bindparam("pk"), name="again")).rows(conn, {"pk": 1})
    conn.rollback()
    assert conn.execute(select(func.count()).select_from(_T)).scalar_one() == 10
