"""The stop and route lifecycles (pure tables) and the Idempotency-Key helpers."""

from __future__ import annotations

import pytest

from delivery import idempotency, lifecycle
from delivery.lifecycle import IllegalMove, route_finishes, stop_target


@pytest.mark.parametrize(("event", "stop", "target"), [
    ("arrived", "planned", "arrived"), ("failed", "planned", "failed"), ("delivered", "arrived", "delivered"),
    ("failed", "arrived", "failed"), ("damaged", "planned", "planned"), ("damaged", "arrived", "arrived"),
    ("damaged", "delivered", "delivered")])
def test_allowed_stop_moves(event: str, stop: str, target: str) -> None:
    assert stop_target(event, stop, "started") == target


@pytest.mark.parametrize(("event", "stop", "route"), [
    ("delivered", "planned", "started"), ("delivered", "delivered", "started"), ("arrived", "arrived", "started"),
    ("failed", "delivered", "started"), ("arrived", "failed", "started"), ("damaged", "failed", "started"),
    ("arrived", "planned", "planned"), ("damaged", "planned", "planned"), ("arrived", "planned", "finished"),
    ("damaged", "delivered", "finished"), ("arrived", "planned", "broken")])
def test_illegal_moves_name_the_current_state(event: str, stop: str, route: str) -> None:
    with pytest.raises(IllegalMove) as caught:
        stop_target(event, stop, route)
    assert (caught.value.stop, caught.value.route) == (stop, route)
    assert stop in str(caught.value) or route in str(caught.value)


def test_route_moves_and_finish() -> None:
    lifecycle.check_route_move("planned", "started")
    for state in ("started", "finished", "broken"):
        with pytest.raises(IllegalMove):
            lifecycle.check_route_move(state, "started")
    assert route_finishes(["delivered", "failed"])
    assert not route_finishes(["delivered", "arrived"]) and not route_finishes([])
    assert lifecycle.route_state("done") == "finished" and lifecycle.route_stored("finished") == "done"
    assert lifecycle.route_state("started") == "started"


def test_fingerprint_and_key_header() -> None:
    fp = idempotency.fingerprint
    assert fp("POST", "/a", b'{"x": 1, "y": [1, 2]}') == fp("post", "/a", b'{"y":[1,2],"x":1}')
    assert fp("POST", "/a", b'{"x": 1}') != fp("POST", "/a", b'{"x": 2}')
    assert fp("POST", "/a", b"{}") != fp("POST", "/b", b"{}")
    assert fp("POST", "/ab", b"c") != fp("POST", "/a", b"bc")  # parts are length-prefixed
    assert fp("POST", "/a", b"\xff\xd8 not json") != fp("POST", "/a", b"\xff\xd9 not json")
    assert idempotency.parse_key('"8e03978e-40d5-43e8-bc93-6894a57f9324"') == "8e03978e-40d5-43e8-bc93-6894a57f9324"
    assert idempotency.parse_key("abc") == "abc"
    for bad in (None, "", '""', "x" * 256, "a\x00b"):
        assert idempotency.parse_key(bad) is None
