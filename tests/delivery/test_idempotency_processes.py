"""Idempotency across API processes: `coldchain serve --workers 2` as a subprocess on a database of its own.

The key row is committed before the work starts, so a repeat that reaches either worker while the
first request is still being handled answers 409, and once it is done gets the first answer byte for
byte; a report sent in parallel many times is done once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from delivery.models import DeliveryEvent, IdempotencyKey, StopDamage
from fulfillment.models import Order
from routing.models import Plan, Route, RouteStop
from tests.delivery.helpers import login, planned_database, serving
from warehouses.models import Vehicle


@dataclass
class Served:
    url: str
    engine: Engine
    day: date
    tokens: dict[str, dict[str, str]]
    postgres: bool

    def stops(self, van: str, eggs: bool = False) -> list[tuple[int, str]]:
        """(route id, stop id) of the van's stops in order; ``eggs``: only orders of 8 boxes of eggs (B…)."""
        with Session(self.engine) as s:
            return [(route_id, stop_id) for route_id, stop_id, ref in s.execute(
                select(Route.id, RouteStop.stop_id, Order.ref).join(RouteStop, RouteStop.route_id == Route.id)
                .join(Order, Order.id == RouteStop.order_id)
                .join(Plan, Plan.id == Route.plan_id).join(Vehicle, Vehicle.id == Route.vehicle_id)
                .where(Plan.status == "current", Plan.day == self.day, Vehicle.code == van)
                .order_by(RouteStop.seq)) if not eggs or ref.startswith("B")]

    def count(self, model, *where) -> int:  # noqa: ANN001
        with Session(self.engine) as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))


@pytest.fixture(scope="module")
def served(databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:  # noqa: ANN001
    tmp = tmp_path_factory.mktemp("served")
    with planned_database(databases, tmp, "serve", ["driver01", "driver02", "driver03"]) as (url, engine, day, _s):
        env = {**os.environ, "COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_DATA_DIR": str(tmp / "data")}
        with serving(env, tmp) as base:
            tokens = {name: login(base, name) for name in ("driver01", "driver03")}
            for name, token in tokens.items():
                start = httpx.post(f"{base}/api/v1/driver/route/start", json={"date": day.isoformat()},
                                   headers={**token, "Idempotency-Key": f"start-{name}"})
                assert start.status_code == 200, start.text
            yield Served(base, engine, day, tokens, engine.dialect.name == "postgresql")


def parallel(n: int, call: Callable[[httpx.Client], httpx.Response]) -> list[httpx.Response]:
    """n requests released together from n threads, each on its own connection."""
    barrier = threading.Barrier(n)
    out: list[httpx.Response | BaseException] = [None] * n  # type: ignore[list-item]

    def run(i: int) -> None:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            try:
                out[i] = call(client)
            except BaseException as exc:  # noqa: BLE001 - reported below
                out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    errors = [r for r in out if not isinstance(r, httpx.Response)]
    assert not errors, errors
    return out  # type: ignore[return-value]


def test_a_repeat_while_the_first_is_still_running_answers_409(served: Served) -> None:
    if not served.postgres:
        pytest.skip("holding a row lock to keep the first request running needs PostgreSQL (SQLite locks the "
                    "whole file, so the key could not be claimed either); the burst test below runs on both")
    route_id, stop = served.stops("VAN-01")[0]
    me = served.tokens["driver01"]
    url = f"{served.url}/api/v1/driver/stops/{stop}/events"
    k = {"Idempotency-Key": f"hold-{uuid.uuid4().hex[:8]}"}
    body = {"type": "arrived", "position": [30.66, 104.07]}
    first: dict[str, httpx.Response] = {}
    with served.engine.connect() as holder:
        tx = holder.begin()
        holder.execute(text("SELECT id FROM routes WHERE id = :id FOR UPDATE"), {"id": route_id})
        thread = threading.Thread(target=lambda: first.setdefault("r", httpx.post(url, json=body,
                                                                                  headers={**me, **k}, timeout=60)))
        thread.start()
        deadline = time.monotonic() + 20
        while served.count(IdempotencyKey, IdempotencyKey.key == k["Idempotency-Key"],
                           IdempotencyKey.status == "running") == 0:
            assert time.monotonic() < deadline, "the first request never claimed its key"
            time.sleep(0.05)
        repeats = parallel(6, lambda c: c.post(url, json=body, headers={**me, **k}))
        other = httpx.post(url, json={**body, "position": [30.0, 104.0]}, headers={**me, **k})
        assert not first, "the first request should still be waiting for the route's lock"
        tx.rollback()
    thread.join(30)
    for r in repeats:
        assert r.status_code == 409, r.text
        assert r.json()["title"] == "Request in progress" and r.headers["retry-after"] == "1"
    assert other.status_code == 422  # another body with the key: reuse, whatever the first's state
    assert first["r"].status_code == 200, first["r"].text
    done = httpx.post(url, json=body, headers={**me, **k})
    assert (done.status_code, done.content) == (200, first["r"].content)
    assert done.headers["idempotent-replayed"] == "true"
    assert served.count(DeliveryEvent, DeliveryEvent.stop_id == stop, DeliveryEvent.type == "arrived") == 1


def test_a_report_sent_many_times_at_once_is_done_once(served: Served) -> None:
    _route, stop = served.stops("VAN-03", eggs=True)[0]
    me = served.tokens["driver03"]
    url = f"{served.url}/api/v1/driver/stops/{stop}/events"
    arrived = parallel(8, lambda c: c.post(url, json={"type": "arrived"},
                                           headers={**me, "Idempotency-Key": "burst-arrived"}))
    assert {r.status_code for r in arrived} <= {200, 409}
    oks = [r for r in arrived if r.status_code == 200]
    assert oks and len({r.content for r in oks}) == 1
    assert all(r.json()["title"] == "Request in progress" for r in arrived if r.status_code == 409)
    seen_409 = len(arrived) - len(oks)
    for n in range(3):
        k = {"Idempotency-Key": f"burst-damage-{n}"}
        dmg = {"type": "damaged", "items": [{"sku": "EGG-30", "qty": 1}]}
        answers = parallel(8, lambda c, k=k, dmg=dmg: c.post(url, json=dmg, headers={**me, **k}))
        assert {r.status_code for r in answers} <= {200, 409}
        assert len({r.content for r in answers if r.status_code == 200}) == 1
        seen_409 += sum(r.status_code == 409 for r in answers)
    assert served.count(DeliveryEvent, DeliveryEvent.stop_id == stop, DeliveryEvent.type == "arrived") == 1
    assert served.count(StopDamage) == 3  # one per key, however many times each was sent
    print(f"409 answers while the first of a key was running: {seen_409} of {8 * 4 - 4}")


def test_a_lost_answer_is_recovered_by_retrying_with_the_same_key(served: Served) -> None:
    """The phone sends, the network drops before the answer arrives; the retry gets the first answer."""
    _route, stop = served.stops("VAN-03", eggs=True)[1]
    me = served.tokens["driver03"]
    path = f"/api/v1/driver/stops/{stop}/events"
    payload = b'{"type": "arrived"}'
    target = urlparse(served.url)
    head = (f"POST {path} HTTP/1.1\r\nHost: {target.netloc}\r\nAuthorization: {me['Authorization']}\r\n"
            f"Idempotency-Key: lost-1\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection((target.hostname, target.port)) as sock:
        sock.sendall(head + payload)
        # the server has done the work: now the network drops, before the answer is read (hanging up at once
        # could instead cut the request itself short, which is a request never made, not an answer lost)
        deadline = time.monotonic() + 20
        while served.count(DeliveryEvent, DeliveryEvent.stop_id == stop, DeliveryEvent.type == "arrived") == 0:
            assert time.monotonic() < deadline, "the first request was never handled"
            time.sleep(0.05)
    deadline = time.monotonic() + 20
    while True:
        retry = httpx.post(served.url + path, content=payload,
                           headers={**me, "Idempotency-Key": "lost-1", "Content-Type": "application/json"})
        if retry.status_code != 409 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert retry.status_code == 200, retry.text
    assert retry.headers.get("idempotent-replayed") == "true"  # done once, by the request whose answer was lost
    assert served.count(DeliveryEvent, DeliveryEvent.stop_id == stop, DeliveryEvent.type == "arrived") == 1


def test_keys_are_scoped_to_the_driver(served: Served) -> None:
    """The same key string from another driver is that driver's own; nothing leaks between them."""
    _route, stop = served.stops("VAN-01")[1]
    k = {"Idempotency-Key": "shared-key"}
    one = httpx.post(f"{served.url}/api/v1/driver/stops/{stop}/events", json={"type": "arrived"},
                     headers={**served.tokens["driver01"], **k})
    assert one.status_code == 200
    other = httpx.post(f"{served.url}/api/v1/driver/stops/{stop}/events", json={"type": "arrived"},
                       headers={**served.tokens["driver03"], **k})
    assert other.status_code == 404 and "idempotent-replayed" not in other.headers
