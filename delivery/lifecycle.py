"""The stop and route lifecycles as tables of allowed moves (pure), like fulfillment/lifecycle.py.

Stop:  planned → arrived → delivered | failed   (a driver who cannot reach the door at all may
       report failed straight from planned: address not found, access denied).
Route: planned → started → finished; it finishes when its last stop is delivered or failed.
       A re-plan may mark it broken (the van broke down): nothing more happens on it.

Damage is not a move: it is reported on a stop that is in the van or at the door (planned,
arrived), or just handed over (delivered), while the route is under way.
"""

from __future__ import annotations

STOP_MOVES: dict[str, frozenset[str]] = {
    "planned": frozenset({"arrived", "failed"}),
    "arrived": frozenset({"delivered", "failed"}),
    "delivered": frozenset(),
    "failed": frozenset(),
}
STOP_DONE = frozenset({"delivered", "failed"})
DAMAGE_ALLOWED = frozenset({"planned", "arrived", "delivered"})
PROOF_ALLOWED = frozenset({"arrived", "delivered", "failed"})

ROUTE_MOVES: dict[str, frozenset[str]] = {
    "planned": frozenset({"started"}),
    "started": frozenset({"finished"}),
    "finished": frozenset(),
    "broken": frozenset(),
}

# routing stores a finished route as "done" (routing/models.py, routing/replan.py, traceability read it)
_ROUTE_STORED = {"finished": "done"}
_ROUTE_SHOWN = {v: k for k, v in _ROUTE_STORED.items()}

EVENT_TYPES = ("arrived", "delivered", "failed", "damaged")
FAIL_REASONS = ("not_home", "refused", "address_not_found", "damaged_on_arrival", "access_denied", "other")


def route_state(stored: str) -> str:
    """The route's state as drivers see it, from routing's stored status."""
    return _ROUTE_SHOWN.get(stored, stored)


def route_stored(state: str) -> str:
    return _ROUTE_STORED.get(state, state)


class IllegalMove(ValueError):
    """A move the lifecycle does not allow; carries the current state so the answer can show it."""

    def __init__(self, message: str, stop: str | None, route: str) -> None:
        super().__init__(message)
        self.stop = stop
        self.route = route


def check_route_move(route: str, target: str) -> None:
    if target not in ROUTE_MOVES.get(route, frozenset()):
        raise IllegalMove(f"the route is {route}; it cannot become {target}", None, route)


def stop_target(event: str, stop: str, route: str) -> str:
    """The stop state an event leads to, or IllegalMove naming why not (route first: no event before the
    route starts, none after it finished or broke down)."""
    if route != "started":
        why = {"planned": "start the route first (POST /api/v1/driver/route/start)",
               "finished": "the route is finished", "broken": "the van broke down; the route was re-planned"}
        raise IllegalMove(f"no stop events on a {route} route: {why.get(route, route)}", stop, route)
    if event == "damaged":
        if stop not in DAMAGE_ALLOWED:
            raise IllegalMove(f"the stop is {stop}: damage is reported before or at the delivery", stop, route)
        return stop
    if event not in STOP_MOVES.get(stop, frozenset()):
        allowed = ", ".join(sorted(STOP_MOVES.get(stop, ()))) or "none, it is final"
        raise IllegalMove(f"the stop is {stop}; it cannot become {event} (allowed: {allowed})", stop, route)
    return event


def route_finishes(stop_states: list[str]) -> bool:
    """A started route is finished once every stop on it is delivered or failed."""
    return bool(stop_states) and all(s in STOP_DONE for s in stop_states)
