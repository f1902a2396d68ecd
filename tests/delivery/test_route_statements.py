"""A driver's GET /driver/route runs a fixed number of SQL statements, however many stops the route has
(no statement per stop, order or line), before and after the route starts, both when the process has
nothing kept (the stops and the risk checks are read and assessed) and when it has (only the statuses and
the risk checks' inputs are read). Over real HTTP (the live uvicorn), counted with an event listener on the
engine the API uses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from core.db import get_engine, get_quick_commit_engine
from core.timeutil import local_tomorrow
from delivery.service import forget_routes
from tests.delivery.helpers import keep_keys_in, many_stops
from traceability.trace import forget_assessments

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
    counts, kept = {}, {}
    for phase in ("planned", "started", "a stop delivered"):
        if phase != "a stop delivered":  # after the delivery: one order's risk is assessed again, the rest kept
            forget_routes()
            forget_assessments()
        (n5, r5), (n40, r40) = count(small), count(large)
        assert (len(r5["stops"]), len(r40["stops"])) == (5, 40)
        counts[phase] = (n5, n40)
        (k5, again5), (k40, again40) = count(small), count(large)
        assert (again5, again40) == (r5, r40)
        kept[phase] = (k5, k40)
        if phase == "planned":
            for who in (small, large):
                started = api.post("/api/v1/driver/route/start", params=None, json=params,
                                   headers={**who, "Idempotency-Key": uuid.uuid4().hex})
                assert started.status_code == 200, started.text
        elif phase == "started":
            for who, user in ((small, "sq000"), (large, "sq001")):
                for body in ({"type": "arrived"}, {"type": "delivered", "recipient": "本人"}):
                    done = api.post(f"/api/v1/driver/stops/{stops[user][0]}/events", json=body,
                                    headers={**who, "Idempotency-Key": uuid.uuid4().hex})
                    assert done.status_code == 200, done.text
    assert r40["stops"][0]["status"] == "delivered" and r40["status"] == "started"
    for phase, (n5, n40) in counts.items():
        assert n5 == n40, f"{phase}: {n5} statements for 5 stops, {n40} for 40"
        assert n5 <= 16, f"{phase}: {n5} statements for one route"
    for phase, (k5, k40) in kept.items():
        assert k5 == k40, f"{phase}, kept: {k5} statements for 5 stops, {k40} for 40"
        assert k5 <= 4, f"{phase}, kept: {k5} statements for one route"
        assert k5 < counts["planned"][0], f"{phase}: nothing kept ({k5} statements)"
