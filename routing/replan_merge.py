"""The pure half of re-planning (routing.replan): the events, the snapshot the read step makes, the
solver's result, and :func:`merge`, which decides from them alone what stays, what moves and what the
diff says.

Plain data in, plain data out, and no database, HTTP or MQTT import (the import-linter contract "Pure
modules" in pyproject.toml checks it), so the merge is tested on hand-built snapshots
(tests/routing/test_replan_merge.py) and the store step in routing.replan only writes what it decided.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime

from core.errors import Invalid
from core.timeutil import local_at, local_hhmm
from routing import solver

DONE = ("delivered", "failed")  # stop statuses that never change again
Position = tuple[float, float]
TEMP_CLASSES = solver.CLASSES  # the compartment classes, as warehouses.models names them

# --------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Breakdown:
    vehicle_code: str
    at: datetime
    position: Position | None = None

    def describe(self) -> str:
        return f"breakdown of {self.vehicle_code} at {local_hhmm(self.at)}"


@dataclass(frozen=True)
class AddOrder:
    order_ref: str

    def describe(self) -> str:
        return f"order {self.order_ref} added"


@dataclass(frozen=True)
class CancelOrder:
    order_ref: str
    reason: str | None = None

    def describe(self) -> str:
        return f"order {self.order_ref} cancelled"


Event = Breakdown | AddOrder | CancelOrder


def breakdown(vehicle_code: str, at: datetime, position: Position | None = None) -> Breakdown:
    """A van broke down at `at` (aware datetime) where it stands (lat, lon)."""
    if at.tzinfo is None:
        raise Invalid("the breakdown time needs a time zone", pointer="/at")
    return Breakdown(vehicle_code, at, tuple(position) if position is not None else None)


def add_order(order_ref: str) -> AddOrder:
    """An order already allocated to the depot, on no route yet, to fit into the day."""
    return AddOrder(order_ref)


def cancel_order(order_ref: str, reason: str | None = None) -> CancelOrder:
    """Cancel an order (fulfillment.service.cancel_order: stock goes back) and drop its stop."""
    return CancelOrder(order_ref, reason)


_EVENT_TYPES = {"Breakdown": "breakdown", "AddOrder": "add_order", "CancelOrder": "cancel_order"}


def event_dict(event: Event | None) -> dict | None:
    if event is None:
        return None
    out = {"type": _EVENT_TYPES[type(event).__name__], **asdict(event)}
    if isinstance(event, Breakdown):
        out["at"] = event.at.isoformat()
        out["position"] = list(event.position) if event.position else None
    return out


def event_from_dict(data: dict | None) -> Event | None:
    """The inverse of :func:`event_dict`: how a re-planning job receives its event (JSON over Celery)."""
    if data is None:
        return None
    kind = data.get("type")
    if kind == "breakdown":
        position = data.get("position")
        return breakdown(data["vehicle_code"], datetime.fromisoformat(data["at"]),
                         tuple(position) if position else None)
    if kind == "add_order":
        return add_order(data["order_ref"])
    if kind == "cancel_order":
        return cancel_order(data["order_ref"], data.get("reason"))
    raise Invalid(f"unknown re-planning event {kind!r}", pointer="/type")


# ------------------------------------------------------------------------- read snapshot


@dataclass
class _Stop:
    stop_id: str
    seq: int
    order_id: int
    ref: str
    status: str
    lat: float
    lon: float
    arrive_at: datetime
    leg_m: float = 0.0  # metres of the leg to it: a done stop's counts in its route's distance
    aboard: bool = True  # False: on a later trip of the first plan, its goods still at the depot


@dataclass
class _Van:
    code: str
    id: int
    shift: tuple[float, float]
    speed: float
    capacity: dict[str, float]
    max_kg: float
    cost_per_km: float
    fixed_cost: float
    route_status: str | None = None  # None: no route in the current plan
    started_at: datetime | None = None
    start_at: datetime | None = None
    end_at: datetime | None = None  # of the current route: a van broken earlier keeps it
    load: dict[str, float] | None = None  # of the current route: a van broken earlier keeps it
    stops: list[_Stop] = field(default_factory=list)
    broken: bool = False
    position: Position | None = None  # where it goes on from (started vans)

    @property
    def started(self) -> bool:
        return self.route_status in ("started", "done") and not self.broken


@dataclass
class _Order:
    id: int
    ref: str
    status: str
    lat: float
    lon: float
    window: tuple[float, float]
    demand: dict[str, float]
    weight: float
    max_on_board: float | None
    lines: list[tuple[int, str, int]]  # (product id, sku, qty)


@dataclass
class _Snapshot:
    depot_id: int
    depot_pos: Position
    plan_id: int
    plan_version: int
    fingerprint: tuple
    vans: list[_Van]
    orders: dict[str, _Order]
    now: datetime
    now_s: float
    reason: str
    unserved_before: set[str]
    reload_short: dict[str, str] = field(default_factory=dict)  # ref -> reason


# ---------------------------------------------------------------------------------- solved


@dataclass
class _Solved:
    loaded: solver.Solution | None  # stage A: started vans with what they carry
    trips: list[solver.Solution]  # stage B: the pool, from the depot, trip after trip
    back: dict[str, float]  # started van -> seconds when it is back at the depot
    back_m: dict[str, float]  # started van with nothing left aboard -> metres back to the depot
    unserved: dict[str, str]  # ref -> reason
    seconds: float


# ---------------------------------------------------------------------------------- merge


@dataclass(frozen=True)
class Times:
    """When a stop still to do is reached, served and left, and the metres of the leg to it."""

    arrive_at: datetime
    service_at: datetime
    depart_at: datetime
    leg_m: float


@dataclass
class StopDraft:
    """One stop of a new route.

    ``reuse``: the stored row ``stop_id`` goes on with this ``seq`` and ``times`` (same van, goods not
    moved: the driver keeps the stop id); else a new row with a new id. ``times`` None: a done stop,
    its row untouched (seq, status and times as they were).
    """

    stop_id: str
    ref: str
    order_id: int
    seq: int
    status: str
    reuse: bool
    times: Times | None = None


@dataclass
class RouteDraft:
    """One van's route in the new version, its stops in order."""

    vehicle: str
    vehicle_id: int
    status: str
    start_at: datetime
    end_at: datetime
    distance_m: float
    cost: float
    started_at: datetime | None
    load: dict[str, float] | None
    stops: list[StopDraft] = field(default_factory=list)


@dataclass
class OrderEventDraft:
    """An order event to record (fulfillment.record_event); type ``cancelled`` is fulfillment.cancel_order."""

    ref: str
    type: str
    to_status: str | None = None
    data: dict | None = None
    at: datetime | None = None  # None: when it is recorded


@dataclass
class UnservedDraft:
    ref: str
    order_id: int
    reason: str


@dataclass
class Merged:
    """What the new plan version is, decided from the snapshot and the solver's result alone."""

    routes: list[RouteDraft]
    event_effects: list[OrderEventDraft]  # the event's own: cancel, failed + reattempt; applied first
    order_events: list[OrderEventDraft]  # planned / replanned / unplanned, once the new version is written
    unserved: list[UnservedDraft]  # every order the new version does not serve
    diff: dict  # Plan.diff without "version", which the store knows
    stops: int  # stops still to do on the new routes
    distance_m: float
    cost: float
    strategy: str


def _hm(moment: datetime | None) -> str | None:
    return local_hhmm(moment) if moment is not None else None


def merge(snap: _Snapshot, solved: _Solved, event: Event | None, day: date, depot_code: str,
          new_id: Callable[[], str]) -> Merged:
    """One route per van from the kept stops and the solver's trips, the order events and the diff.

    Plain data in, plain data out, so that what stays, what moves and what the diff says can be
    tested on hand-built snapshots; the store only writes it. ``new_id`` makes the stop id of a stop
    that changes van (the goods moved, so the driver gets a new stop).
    """
    reason = snap.reason
    # where every stop still to do was, before
    old_van: dict[str, str] = {}
    old_eta: dict[str, datetime] = {}
    old_stop: dict[str, str] = {}
    for v in snap.vans:
        for s in v.stops:
            if s.status not in DONE:
                old_van[s.ref], old_eta[s.ref], old_stop[s.ref] = v.code, s.arrive_at, s.stop_id
    previous = {v.code: [{"stop_id": s.stop_id, "order_ref": s.ref, "seq": s.seq, "status": s.status,
                          "eta": _hm(s.arrive_at)} for s in sorted(v.stops, key=lambda s: s.seq)]
                for v in snap.vans if v.route_status is not None}
    status = {ref: o.status for ref, o in snap.orders.items()}  # as the events below leave them

    # the event itself
    effects: list[OrderEventDraft] = []
    cancelled: list[str] = []
    if isinstance(event, CancelOrder):
        effects.append(OrderEventDraft(event.order_ref, "cancelled", "cancelled",
                                       {"reason": event.reason or reason}))
        cancelled.append(event.order_ref)
    if isinstance(event, Breakdown):
        broken = next(v for v in snap.vans if v.code == event.vehicle_code)
        for s in broken.stops:
            if s.status in DONE or status.get(s.ref) != "out_for_delivery":
                continue
            data = {"reason": reason, "vehicle": broken.code, "depot": depot_code,
                    "position": list(event.position) if event.position else None}
            effects.append(OrderEventDraft(s.ref, "failed", "failed", data, at=event.at))
            effects.append(OrderEventDraft(s.ref, "reattempt", "reattempt",
                                           {"reason": f"reloaded from {depot_code} stock after the {reason}"}))
            status[s.ref] = "reattempt"

    # the new routes
    a_routes = {r.vehicle_id: r for r in (solved.loaded.routes if solved.loaded else [])}
    b_routes: dict[str, list[solver.Route]] = defaultdict(list)
    for sol in solved.trips:
        for r in sol.routes:
            b_routes[r.vehicle_id].append(r)
    new_van: dict[str, str] = {}
    new_eta: dict[str, datetime] = {}
    new_stop: dict[str, str] = {}
    kept: list[dict] = []
    trips: dict[str, list[dict]] = {}  # van -> per load: what it carries ("aboard"), then each "depot" load
    routes: list[RouteDraft] = []
    for v in snap.vans:
        had = v.route_status is not None
        done = [s for s in sorted(v.stops, key=lambda s: s.seq) if s.status in DONE]
        kept += [{"stop_id": s.stop_id, "order_ref": s.ref, "vehicle": v.code, "status": s.status} for s in done]
        ra, rb = a_routes.get(v.code), b_routes.get(v.code, [])
        done_m = sum(s.leg_m for s in done)
        if v.broken:
            is_event = isinstance(event, Breakdown) and event.vehicle_code == v.code
            end = event.at if is_event else (v.end_at if had else snap.now)
            route = RouteDraft(v.code, v.id, "broken", v.start_at if had else end, end, done_m,
                               done_m / 1000 * v.cost_per_km, v.started_at if had else None, v.load if had else None)
        elif not done and not ra and not rb and not v.started:
            continue
        else:
            distance = done_m + (ra.distance if ra else solved.back_m.get(v.code, 0.0)) + sum(r.distance for r in rb)
            cost = (ra.cost if ra else 0.0) + sum(r.cost for r in rb)
            load = {c: max([ra.load.get(c, 0.0) if ra else 0.0] + [r.load.get(c, 0.0) for r in rb])
                    for c in TEMP_CLASSES}  # the most aboard at once, trip by trip
            if v.started:
                end = rb[-1].end if rb else ra.end if ra else solved.back[v.code]
                state = "started" if (ra or rb or v.route_status == "started") else "done"
                route = RouteDraft(v.code, v.id, state, v.start_at, local_at(day, end), distance, cost,
                                   v.started_at, load)
            else:
                route = RouteDraft(v.code, v.id, "planned", local_at(day, rb[0].start), local_at(day, rb[-1].end),
                                   distance, cost, None, load)
        routes.append(route)
        # done stops first, the same rows: stop_id, seq, status and times untouched
        route.stops += [StopDraft(s.stop_id, s.ref, s.order_id, s.seq, s.status, reuse=True) for s in done]
        seq = max((s.seq for s in done), default=0)
        mine = {s.ref: s for s in v.stops if s.status not in DONE}
        for trip in (ra, *rb):
            if trip is None:
                continue
            trips.setdefault(v.code, []).append({"load": "aboard" if trip is ra else "depot", "stop_ids": []})
            for visit in trip.visits:
                ref = visit.stop_id
                seq += 1
                times = Times(local_at(day, visit.arrival), local_at(day, visit.service_start),
                              local_at(day, visit.departure), visit.distance)
                if ref in mine and (trip is ra or not v.started or not mine[ref].aboard):  # same van, goods not moved
                    was = mine[ref]
                    stop = StopDraft(was.stop_id, ref, was.order_id, seq, was.status, reuse=True, times=times)
                else:
                    stop = StopDraft(new_id(), ref, snap.orders[ref].id, seq, "planned", reuse=False, times=times)
                route.stops.append(stop)
                new_van[ref], new_eta[ref], new_stop[ref] = v.code, times.arrive_at, stop.stop_id
                trips[v.code][-1]["stop_ids"].append(stop.stop_id)

    # order events
    events: list[OrderEventDraft] = []
    for ref, code in new_van.items():
        data = {"vehicle": code, "depot": depot_code, "reason": reason}
        if ref in old_van and old_van[ref] != code:
            data["from"] = old_van[ref]
        if status[ref] in ("allocated", "reattempt"):
            events.append(OrderEventDraft(ref, "planned", "planned", data))
            status[ref] = "planned"
        elif "from" in data:
            events.append(OrderEventDraft(ref, "replanned", None, data))
    unserved: list[UnservedDraft] = []
    newly_unserved = []
    for ref, why in sorted(solved.unserved.items()):
        unserved.append(UnservedDraft(ref, snap.orders[ref].id, why))
        if ref in old_van or ref not in snap.unserved_before:
            newly_unserved.append({"order_ref": ref, "reason": why, "was": old_van.get(ref)})
            events.append(OrderEventDraft(ref, "unplanned", "allocated" if status[ref] == "planned" else None,
                                          {"reason": why, "replan": reason}))

    diff = {
        "reason": reason, "event": event_dict(event), "now": snap.now.astimezone(UTC).isoformat(),
        "previous_version": snap.plan_version,
        "kept": kept,
        "moved": [{"order_ref": ref, "from": old_van[ref], "to": code, "old_stop_id": old_stop[ref],
                   "stop_id": new_stop[ref]} for ref, code in sorted(new_van.items())
                  if ref in old_van and old_van[ref] != code],
        "etas": [{"order_ref": ref, "vehicle": code, "old_vehicle": old_van.get(ref), "old": _hm(old_eta.get(ref)),
                  "new": _hm(new_eta[ref])} for ref, code in sorted(new_van.items())],
        "added": sorted(ref for ref in new_van if ref not in old_van),
        "cancelled": cancelled,
        "unserved": newly_unserved,
        "trips": trips,
        "previous_routes": previous,
    }
    distance_m = cost = 0.0
    for r in routes:
        distance_m += r.distance_m
        cost += r.cost
    strategy = ("re-plan: " + " / ".join(s.strategy for s in (solved.loaded, *solved.trips) if s))[:200]
    return Merged(routes, effects, events, unserved, diff, len(new_van), distance_m, cost, strategy)
