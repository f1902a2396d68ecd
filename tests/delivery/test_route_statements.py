"""A driver's GET /driver/route runs a fixed number of SQL statements, however many stops the route has
(no statement per stop, order or line), before and after the route starts, both when the process has
nothing kept (the stops and the risk checks are read and assessed) and when it has (only the statuses and
the risk checks' inputs are read), and when another API worker assessed the orders (PostgreSQL: their
kept_risks rows are read, nothing is assessed again). Over real HTTP (the live uvicorn), counted with an event
listener on the engine the API uses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import delete, event

from core.db import get_engine, get_quick_commit_engine
from core.timeutil import local_tomorrow
from delivery.service import forget_routes
from tests.delivery.helpers import keep_keys_in, many_stops
from traceability import trace
from traceability.models import KeptRisk
from traceability.trace import forget_assessments, forget_reference

ROUTE = "/api/v1/driver/route"


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def _count(_conn, _cursor, statement, *_rest) -> None:  # noqa: ANN001, ANN002
        seen.append(statement)

    engines = {id(e): e for e in (get_engine(), get_quick_commit_engine())}.values()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", _count)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", _count)


def test_the_drivers_route_takes_the_same_statements_for_5_and_40_stops(api, session, live_app, token) -> None:  # noqa: ANN001
    keep_keys_in(session, live_app)
    day = local_tomorrow()
    stops = many_stops(session, day, [5, 40], prefix="sq")
    small, large = token("driver", "sq000"), token("driver", "sq001")
    params = {"date": day.isoformat()}

    def count(headers: dict) -> tuple[int, dict]:
        with statements() as seen:
            resp = api.get(ROUTE, params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        return len(seen), resp.json()

    api.get(ROUTE, params=params, headers=small)  # the first request of a process warms its own caches
    counts, kept, stored = {}, {}, {}
    def cold(phase: str) -> None:
        if phase != "a stop delivered":  # after the delivery: one order's risk is redone (its custody), the rest kept
            forget_routes()
            forget_assessments()  # and what assessing keeps of products, lines, vans and lots, shared by routes
            session.execute(delete(KeptRisk))  # and what another API worker would have stored (PostgreSQL)
        else:  # each route reads its stops and, for its one order assessed again, the reference rows itself
            forget_routes()
            forget_reference()

    def elsewhere() -> tuple[int, int]:
        """Statements when another worker assessed the orders (kept_risks) and this one holds nothing."""
        got = []
        for who in (small, large):
            count(who)  # assessed here if need be, and stored
            forget_routes()
            forget_assessments()
            got.append(count(who))
        assert [r for _n, r in got] == [r5, r40]
        return got[0][0], got[1][0]

    for phase in ("planned", "started", "a stop delivered"):
        redone = trace.redone
        cold(phase)
        (n5, r5), (k5, again5) = count(small), count(small)
        cold(phase)
        (n40, r40), (k40, again40) = count(large), count(large)
        if phase == "a stop delivered":  # each route's delivered order, from what its last assessment read
            assert trace.redone - redone == 2, trace.redone - redone
        assert (len(r5["stops"]), len(r40["stops"])) == (5, 40)
        counts[phase] = (n5, n40)
        assert (again5, again40) == (r5, r40)
        kept[phase] = (k5, k40)
        stored[phase] = elsewhere()
        if phase == "planned":
            for who in (small, large):
                started = api.post("/api/v1/driver/route/start", params=None, json=params,
                                   headers={**who, "Idempotency-Key": uuid.uuid4().hex})
                assert started.status_code == 200, started.text
        elif phase == "started":
            forget_assessments()
            session.execute(delete(KeptRisk))
            for who in (small, large):  # both assessed in this process: the delivered order is redone from that
                count(who)
            for who, user in ((small, "sq000"), (large, "sq001")):
                for body in ({"type": "arrived"}, {"type": "delivered", "recipient": "本人"}):
                    done = api.post(f"/api/v1/driver/stops/{stops[user][0]}/events", json=body,
                                    headers={**who, "Idempotency-Key": uuid.uuid4().hex})
                    assert done.status_code == 200, done.text
    assert r40["stops"][0]["status"] == "delivered" and r40["status"] == "started"
    for phase, (n5, n40) in counts.items():
        assert n5 == n40, f"{phase}: {n5} statements for 5 stops, {n40} for 40"
        # and, on PostgreSQL, kept_risks read and written
        assert n5 <= 16 + 2 * (session.get_bind().dialect.name == "postgresql"), f"{phase}: {n5} statements"
    for phase, (k5, k40) in kept.items():
        assert k5 == k40, f"{phase}, kept: {k5} statements for 5 stops, {k40} for 40"
        assert k5 <= 4, f"{phase}, kept: {k5} statements for one route"
        assert k5 < counts["planned"][0], f"{phase}: nothing kept ({k5} statements)"
    for phase, (s5, s40) in stored.items():
        assert s5 == s40, f"{phase}, assessed by another worker: {s5} statements for 5 stops, {s40} for 40"
        if session.get_bind().dialect.name == "postgresql":  # kept_risks is read on PostgreSQL only
            assert s5 < counts[phase][0], f"{phase}: {s5} statements, no fewer than assessing ({counts[phase][0]})"


def test_route_start_takes_the_same_statements_for_5_and_40_stops(api, session, live_app, token,  # noqa: ANN001
                                                                  monkeypatch) -> None:  # noqa: ANN001
    """No statement per stop, order or custody line when the van leaves (it was one per stop and more)."""
    from core import audit

    # the audit log writes more than a few records with COPY, which no engine event sees: count its INSERT
    monkeypatch.setattr(audit, "_FEW", 10_000)
    keep_keys_in(session, live_app)
    day = local_tomorrow()
    many_stops(session, day, [5, 40], prefix="rs")
    counts = []
    for user, stops in (("rs000", 5), ("rs001", 40)):
        who = token("driver", user)
        with statements() as seen:
            started = api.post("/api/v1/driver/route/start", json={"date": day.isoformat()},
                               headers={**who, "Idempotency-Key": uuid.uuid4().hex})
        assert started.status_code == 200, started.text
        assert started.json()["stops"] == stops and started.json()["orders_out_for_delivery"] == stops
        counts.append(len(seen))
    assert counts[0] == counts[1], f"route start: {counts[0]} statements for 5 stops, {counts[1]} for 40"
    assert counts[0] <= 30, f"route start: {counts[0]} statements"


def test_stop_events_take_a_few_statements(api, session, live_app, token) -> None:  # noqa: ANN001
    """arrived and delivered: one locked read of the stop, one write per table; a replayed retry one or two
    statements (PostgreSQL: the caller's check and the claim are one statement; SQLite: two, and the key's row read)."""
    keep_keys_in(session, live_app)
    day = local_tomorrow()
    stops = many_stops(session, day, [3], prefix="se")["se000"]
    who = token("driver", "se000")
    assert api.post("/api/v1/driver/route/start", json={"date": day.isoformat()},
                    headers={**who, "Idempotency-Key": uuid.uuid4().hex}).status_code == 200
    postgres = session.get_bind().dialect.name == "postgresql"
    counts = {}
    for name, body, key in (("arrived", {"type": "arrived"}, "k-a"),
                            ("delivered", {"type": "delivered", "recipient": "本人"}, "k-d"),
                            ("replayed", {"type": "delivered", "recipient": "本人"}, "k-d")):
        with statements() as seen:
            resp = api.post(f"/api/v1/driver/stops/{stops[0]}/events", json=body,
                            headers={**who, "Idempotency-Key": key})
        assert resp.status_code == 200, resp.text
        counts[name] = len(seen)
    assert resp.headers.get("idempotent-replayed") == "true"
    # in this harness the key's claim is a savepoint of the test's transaction (2 more) and nothing commits,
    # so the audit log's 3 statements at commit are not among these
    # PostgreSQL: the locked read, then the event, the order's moves and the stop's status in one statement (and
    # this harness's savepoint for the request's session);
    # delivered adds the custody lines' read and their INSERT. SQLite: one statement per table written.
    claim, arrived, delivered = (3, 3, 5) if postgres else (5, 5, 8)
    assert counts["replayed"] <= claim, counts
    assert counts["arrived"] <= claim + arrived, counts
    assert counts["delivered"] <= claim + delivered, counts
