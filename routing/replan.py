"""Re-planning a depot's day while the vans are out: a breakdown, an added order, a cancelled order.

What stays, what moves:

* Stops already **delivered or failed** stay on their route, untouched (same row, ``stop_id``,
  ``seq``, status and times).
* Goods already **loaded** stay on their van: the remaining stops of a started route are pinned
  to that van (an ``arrived`` stop is locked first: the driver is at the door). The van goes on
  from where it is (the position given, else its last arrived/delivered/failed stop, else the
  depot) at ``now``; its pinned stops may be re-ordered.
* A van that **broke down** is excluded from the rest of the day (its route is kept with status
  ``broken`` and only its finished stops, so later re-plans still know it is out). Its undelivered
  orders go back into the depot's pool. Chosen model: *reloaded from depot stock* - the goods
  stranded on the broken van are recovered separately (traceability's custody events, not
  routing), the depot picks the same SKUs again, so another van takes them from the depot. An
  order whose SKUs the depot no longer holds free (unreserved, unexpired, not on hold) is
  reported unserved with that reason. Orders that were out for delivery on the broken van go
  ``failed`` (reason: the breakdown) then ``reattempt``, then ``planned`` on their new van: the
  lifecycle allows no other way back from ``out_for_delivery``. A transfer from the broken van's
  position would need pickup-and-delivery precedence, which the solver does not model.
* **Pool** stops (not loaded anywhere: unstarted vans' stops, the broken van's orders, added
  orders, earlier unserved ones) may go to any van at the depot: an unstarted van leaves at
  max(now, shift start); a started van can take them on a **second trip** after it has delivered
  what it carries, come back and reloaded (``RELOAD_S``); any van back from a trip may go again
  (at most ``MAX_TRIPS`` loads from the depot). ``diff["trips"]`` lists each van's stop ids per
  load (``aboard`` or ``depot``), so the route sheet and the map show the returns to the depot.

Solves with the pure solver: (A) every started van with its loaded stops, from its current
position back to the depot, which gives when it is back; (B) the pool with the vans at the depot
(started vans from their return time plus reloading), repeated for vans back from a trip. The
results are merged into one route per van and stored as a new plan version whose ``diff`` says
what moved, the ETAs before and after, and what can no longer be served and why.

Like ``plan_depot``: read, solve, store in three transactions, none held while solving; the store
step re-reads the plan and starts over (at most ``ATTEMPTS`` times) when a driver changed a stop
in between.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import date, datetime, time

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from core import audit
from core.errors import Conflict, Invalid, NotFound
from core.settings import get_settings
from core.timeutil import utcnow
from fulfillment import service as fulfillment
from fulfillment.models import Order, OrderLine, Reservation
from routing import solver
from routing.models import Plan, Route, RouteStop, UnservedOrder
from routing.replan_merge import (  # noqa: F401 - the events are routing.replan's public interface too
    DONE,
    AddOrder,
    Breakdown,
    CancelOrder,
    Event,
    Merged,
    Position,
    _Order,
    _Snapshot,
    _Solved,
    _Stop,
    _Van,
    add_order,
    breakdown,
    cancel_order,
    event_dict,
    event_from_dict,
    merge,
)
from routing.service import SERVICE_S, local_hhmm, new_stop_id, travel
from warehouses.models import TEMP_CLASSES, Node, Product, StockLot, Vehicle

RELOAD_S = 15 * 60  # a started van back at the depot: unload returns, load the second trip
MAX_TRIPS = 3  # trips from the depot per van and re-plan
ATTEMPTS = 3
OPEN = ("allocated", "planned", "reattempt", "out_for_delivery")  # orders still to deliver


def _secs(t: time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second


def _since_midnight(day: date, moment: datetime) -> float:
    midnight = datetime.combine(day, time(0), tzinfo=get_settings().tz)
    return (moment - midnight).total_seconds()


def _current_plan(session: Session, day: date, depot: Node) -> Plan | None:
    return session.scalar(select(Plan).where(Plan.day == day, Plan.depot_id == depot.id, Plan.status == "current")
                          .options(selectinload(Plan.routes).selectinload(Route.stops).selectinload(RouteStop.order),
                                   selectinload(Plan.unserved).selectinload(UnservedOrder.order)))


def _fingerprint(plan: Plan) -> tuple:
    return (plan.id, tuple(sorted((r.id, r.status) for r in plan.routes)),
            tuple(sorted((s.stop_id, s.status) for r in plan.routes for s in r.stops)))


def _open_orders(session: Session, day: date, depot: Node) -> dict[str, _Order]:
    rows = session.execute(
        select(Order, Reservation.qty, Product.id, Product.sku, Product.temp_class, Product.unit_l, Product.unit_kg,
               Product.max_on_board_min)
        .join(OrderLine, OrderLine.order_id == Order.id)
        .join(Reservation, Reservation.line_id == OrderLine.id)
        .join(Product, OrderLine.product_id == Product.id)
        .where(Order.delivery_date == day, Order.mode == "delivery", Order.node_id == depot.id,
               Order.status.in_(OPEN))
        .order_by(Order.ref, OrderLine.line_no)).all()
    out: dict[str, _Order] = {}
    for order, qty, pid, sku, tclass, unit_l, unit_kg, max_min in rows:
        o = out.get(order.ref)
        if o is None:
            o = out[order.ref] = _Order(order.id, order.ref, order.status, order.lat, order.lon,
                                        (_secs(order.window_start), _secs(order.window_end)),
                                        dict.fromkeys(TEMP_CLASSES, 0.0), 0.0, None, [])
        o.demand[tclass] += qty * unit_l
        o.weight += qty * unit_kg
        o.lines.append((pid, sku, qty))
        if max_min:
            o.max_on_board = min(o.max_on_board or max_min * 60, max_min * 60)
    for o in out.values():
        o.demand = {c: q for c, q in o.demand.items() if q > 0}
    return out


def _free_stock(session: Session, day: date, depot: Node) -> dict[int, int]:
    return {pid: int(q or 0) for pid, q in session.execute(
        select(StockLot.product_id, func.sum(StockLot.qty - StockLot.reserved))
        .where(StockLot.node_id == depot.id, StockLot.on_hold.is_(False), StockLot.expires >= day)
        .group_by(StockLot.product_id))}


def _read(session: Session, day: date, depot_code: str, event: Event | None, now: datetime | None,
          positions: dict[str, Position]) -> _Snapshot:
    depot = session.scalar(select(Node).where(Node.code == depot_code))
    if depot is None:
        raise NotFound(f"unknown depot {depot_code}")
    plan = _current_plan(session, day, depot)
    if plan is None:
        raise Conflict(f"no plan for {depot_code} on {day}: plan the depot before re-planning it")
    if now is None:
        now = event.at if isinstance(event, Breakdown) else utcnow()
    if now.tzinfo is None:
        raise Invalid("now needs a time zone")
    vans: list[_Van] = []
    for v in session.scalars(select(Vehicle).where(Vehicle.depot_id == depot.id).order_by(Vehicle.code)
                             .options(selectinload(Vehicle.compartments))):
        cap: dict[str, float] = defaultdict(float)
        for c in v.compartments:
            cap[c.temp_class] += c.capacity_l
        vans.append(_Van(v.code, v.id, (_secs(v.shift_start), _secs(v.shift_end)), v.speed_kmh, dict(cap), v.max_kg,
                         v.cost_per_km, v.fixed_cost))
    by_id = {v.id: v for v in vans}
    trips_of: dict[int, list[Route]] = defaultdict(list)  # a day plan stores each trip as a route
    for route in sorted(plan.routes, key=lambda r: (r.trip or 1, r.id)):
        trips_of[route.vehicle_id].append(route)
    for vehicle_id, trips in trips_of.items():
        van = by_id.get(vehicle_id)
        if van is None:
            continue
        statuses = [r.status for r in trips]
        # the van as one route: out (started) while a trip is out or once one came back; goods aboard
        # only on the trip that is out (later trips' goods wait at the depot, so they join the pool)
        status = next((x for x in ("broken", "started", "done") if x in statuses), statuses[0])
        out = next((r for r in trips if r.status in ("started", "broken")), None)
        first = out or trips[0]
        van.route_status, van.started_at, van.start_at = status, first.started_at, trips[0].start_at
        van.end_at, van.load = trips[-1].end_at, first.load
        van.broken = status == "broken"
        van.stops = [_Stop(s.stop_id, s.seq, s.order_id, s.order.ref, s.status, s.order.lat, s.order.lon,
                           s.arrive_at, s.leg_m, aboard=(len(trips) == 1 or r is out))
                     for r in trips for s in r.stops]
    orders = _open_orders(session, day, depot)
    on_route = {s.ref: v.code for v in vans for s in v.stops if s.status not in DONE}
    code_of = {v.code: v for v in vans}

    reload_short: dict[str, str] = {}
    if isinstance(event, Breakdown):
        van = code_of.get(event.vehicle_code)
        if van is None:
            raise NotFound(f"{event.vehicle_code} is not a van of {depot_code}")
        if van.broken:
            raise Conflict(f"{event.vehicle_code} already broke down")
        was_loaded = van.route_status in ("started", "done")
        van.broken = True
        van.position = event.position
        if was_loaded:
            # its goods are stranded: the depot must pick them again
            free = _free_stock(session, day, depot)
            for s in sorted(van.stops, key=lambda s: s.seq):
                o = orders.get(s.ref)
                if s.status in DONE or o is None or not s.aboard:
                    continue
                short = [(sku, qty, free.get(pid, 0)) for pid, sku, qty in o.lines if free.get(pid, 0) < qty]
                if short:
                    sku, qty, have = short[0]
                    reload_short[s.ref] = (f"no free stock at {depot_code} to reload {sku} after the breakdown "
                                           f"of {van.code} (needs {qty}, {have} free)")
                    continue
                for pid, _sku, qty in o.lines:
                    free[pid] = free.get(pid, 0) - qty
    elif isinstance(event, AddOrder):
        order = session.scalar(select(Order).where(Order.ref == event.order_ref))
        if order is None:
            raise NotFound(f"unknown order {event.order_ref}")
        if order.delivery_date != day or order.mode != "delivery" or order.node_id != depot.id:
            raise Invalid(f"order {order.ref} is not a delivery allocated to {depot_code} on {day}",
                          pointer="/order_ref")
        if event.order_ref in on_route:
            raise Conflict(f"order {order.ref} is already on {on_route[event.order_ref]}'s route")
        if event.order_ref not in orders:
            raise Conflict(f"order {order.ref} is {order.status}: only allocated orders can be added")
    elif isinstance(event, CancelOrder):
        order = session.scalar(select(Order).where(Order.ref == event.order_ref))
        if order is None:
            raise NotFound(f"unknown order {event.order_ref}")
        if order.delivery_date != day or order.node_id != depot.id:
            raise Invalid(f"order {order.ref} is not allocated to {depot_code} on {day}", pointer="/order_ref")
        if order.status in ("delivered", "cancelled", "out_for_delivery"):
            raise Conflict(f"order {order.ref} is {order.status} and cannot be cancelled")
        orders.pop(event.order_ref, None)

    depot_pos = (depot.lat, depot.lon)
    for van in vans:
        if not van.started:
            continue
        if van.code in positions:
            van.position = tuple(positions[van.code])
            continue
        been = [s for s in van.stops if s.status in (*DONE, "arrived")]
        last = max(been, key=lambda s: s.seq) if been else None
        van.position = (last.lat, last.lon) if last else depot_pos
    reason = event.describe() if event else "re-planned"
    if not isinstance(event, Breakdown):
        reason = f"{reason} at {local_hhmm(now)}"
    return _Snapshot(depot.id, depot_pos, plan.id, plan.version, _fingerprint(plan), vans, orders, now,
                     _since_midnight(day, now), reason, {u.order.ref for u in plan.unserved}, reload_short)


# ---------------------------------------------------------------------------------- solve


def _solve(snap: _Snapshot, day: date, depot_code: str, time_limit: float, workers: int) -> _Solved:
    vans = [v for v in snap.vans if not v.broken]
    started = [v for v in vans if v.started]
    loaded: dict[str, list[_Stop]] = {}
    for v in started:
        mine = [s for s in sorted(v.stops, key=lambda s: s.seq)
                if s.status not in DONE and s.ref in snap.orders and s.aboard]
        mine.sort(key=lambda s: s.status != "arrived")  # the stop the driver is at comes first
        loaded[v.code] = mine
    loaded_refs = {s.ref for ss in loaded.values() for s in ss}
    pool = [ref for ref in snap.orders if ref not in loaded_refs and ref not in snap.reload_short]

    points: list[Position] = [snap.depot_pos]
    start_node: dict[str, int] = {}
    for v in started:
        start_node[v.code] = len(points)
        points.append(v.position or snap.depot_pos)
    node_of: dict[str, int] = {}
    for ref, o in snap.orders.items():
        node_of[ref] = len(points)
        points.append((o.lat, o.lon))
    speeds = sorted({v.speed for v in vans}) or [25.0]
    matrices = {s: travel().matrix(points, s, day=day.isoformat(), depot=depot_code) for s in speeds}
    base, metres = matrices[speeds[0]]

    def tt(v: _Van) -> np.ndarray:
        return matrices[v.speed][0]

    def make_stop(ref: str, van: str | None, arrived: bool, elapsed: float) -> solver.Stop:
        o = snap.orders[ref]
        window, on_board = o.window, o.max_on_board
        if arrived:  # being served now, whatever the window said
            window, on_board = (0.0, solver.INF), None
        elif on_board is not None:
            on_board = max(0.0, on_board - elapsed)
        return solver.Stop(id=ref, node=node_of[ref], demand=o.demand, weight=o.weight, window=window,
                           service=SERVICE_S, max_on_board=on_board, allowed_vehicles=[van] if van else None)

    def make_van(v: _Van, start: int, begin: float, fixed: float) -> solver.Vehicle:
        return solver.Vehicle(id=v.code, start=start, end=0, shift=(begin, max(begin, v.shift[1])),
                              capacity=v.capacity, max_weight=v.max_kg, cost_per_km=v.cost_per_km, fixed_cost=fixed,
                              travel_time=None if v.speed == speeds[0] else tt(v))

    t0 = time_limit
    unserved: dict[str, str] = dict(snap.reload_short)
    seconds = 0.0
    # stage A: what the started vans carry, from where they are
    sol_a = None
    back: dict[str, float] = {}
    back_m: dict[str, float] = {}
    if loaded_refs:
        share = max(0.5, time_limit * 0.3) if pool else time_limit
        t0 -= share
        a_vans, a_stops, a_init = [], [], []
        for v in started:
            if not loaded[v.code]:
                continue
            begin = max(snap.now_s, v.shift[0])
            a_vans.append(make_van(v, start_node[v.code], begin, 0.0))
            elapsed = max(0.0, (snap.now - v.started_at).total_seconds()) if v.started_at else 0.0
            for s in loaded[v.code]:
                a_stops.append(make_stop(s.ref, v.code, s.status == "arrived", elapsed))
            a_init.append(solver.InitialRoute(v.code, [s.ref for s in loaded[v.code]],
                                              locked=int(loaded[v.code][0].status == "arrived"), pinned=True))
        problem = solver.Problem(vehicles=a_vans, stops=a_stops, travel_time=base, distance=metres,
                                 time_limit=share, depots=[0], initial_routes=a_init)
        sol_a = solver.solve(problem, workers=workers)
        seconds += sol_a.seconds
        unserved.update({u.stop_id: u.reason for u in sol_a.unserved})
        for r in sol_a.routes:
            back[r.vehicle_id] = r.end
    for v in started:
        if v.code not in back:
            begin = max(snap.now_s, v.shift[0])
            back[v.code] = begin + float(tt(v)[start_node[v.code], 0])
            back_m[v.code] = float(metres[start_node[v.code], 0])
    # stage B: the pool, from the depot, in trips: a van back from one trip reloads and may go again
    trips: list[solver.Solution] = []
    ready: dict[str, float] = {}  # van -> when it can leave the depot with a load
    for v in vans:
        ready[v.code] = back[v.code] + RELOAD_S if v.started else max(snap.now_s, v.shift[0])
    used = {v.code for v in started}  # no fixed cost for a van that is already out
    left = list(pool)
    by_code = {v.code: v for v in vans}
    for n in range(MAX_TRIPS):
        b_vans = [make_van(by_code[c], 0, t, 0.0 if c in used else by_code[c].fixed_cost)
                  for c, t in ready.items() if t < by_code[c].shift[1]]
        if not left or (n and not b_vans):
            break
        b_init = []
        if n == 0:
            for v in vans:
                mine = [s.ref for s in sorted(v.stops, key=lambda s: s.seq) if s.ref in left]
                if mine and not v.started:
                    b_init.append(solver.InitialRoute(v.code, mine))
        share = max(0.5, t0 * (0.6 if n == 0 else 0.2))
        problem = solver.Problem(vehicles=b_vans, stops=[make_stop(ref, None, False, 0.0) for ref in left],
                                 travel_time=base, distance=metres, time_limit=share, depots=[0],
                                 initial_routes=b_init)
        sol = solver.solve(problem, workers=workers)
        seconds += sol.seconds
        unserved.update({u.stop_id: u.reason for u in sol.unserved})
        if not sol.routes:
            break
        trips.append(sol)
        routed = {x.stop_id for r in sol.routes for x in r.visits}
        left = [ref for ref in left if ref not in routed]
        for ref in routed:
            unserved.pop(ref, None)
        ready = {r.vehicle_id: r.end + RELOAD_S for r in sol.routes}  # only vans that were useful go again
        used |= set(ready)
    out_of_service = [v.code for v in snap.vans if v.broken]
    for ref, why in unserved.items():
        if why == "no van at the depot":
            unserved[ref] = (f"no van left at {depot_code}" + (f" ({', '.join(out_of_service)} broke down)"
                                                                if out_of_service else ""))
        elif why.startswith("fleet capacity exhausted") or why.startswith("shift time exhausted"):
            unserved[ref] = f"{why} (after {MAX_TRIPS} loads per van)" if len(trips) >= MAX_TRIPS else why
    return _Solved(sol_a, trips, back, back_m, unserved, seconds)


# ---------------------------------------------------------------------------------- store


class _Stale(Exception):
    """The plan changed between reading and storing."""


def _with_version(diff: dict, version: int) -> dict:
    """The merge's diff with the new version after the previous one (the order Plan.diff always had)."""
    out: dict = {}
    for key, value in diff.items():
        out[key] = value
        if key == "previous_version":
            out["version"] = version
    return out


def _store(session: Session, day: date, depot_code: str, snap: _Snapshot, solved: _Solved, event: Event | None,
           actor: str, time_limit: float, cancel: Callable[..., object] | None = None) -> dict:
    """Write what :func:`merge` decided as the depot's next plan version, unless the plan changed since it was read.

    The merge decided from the statuses it read: an order whose status moved since (cancelled
    elsewhere, say) makes the snapshot stale like a changed stop does.
    """
    depot = session.scalar(select(Node).where(Node.code == depot_code))
    plan = _current_plan(session, day, depot)
    if plan is None or _fingerprint(plan) != snap.fingerprint:
        raise _Stale
    refs = set(snap.orders) | {s.ref for v in snap.vans for s in v.stops}
    if isinstance(event, CancelOrder):
        refs.add(event.order_ref)
    orders = {o.ref: o for o in session.scalars(select(Order).where(Order.ref.in_(refs)))}
    if any(ref not in orders or orders[ref].status != o.status for ref, o in snap.orders.items()):
        raise _Stale
    merged = merge(snap, solved, event, day, depot_code, new_stop_id)

    # the event itself
    for ev in merged.event_effects:
        if ev.type == "cancelled":
            (cancel or fulfillment.cancel_order)(session, orders[ev.ref], actor, reason=ev.data["reason"])
        else:
            fulfillment.record_event(session, orders[ev.ref], ev.type, actor, to_status=ev.to_status, data=ev.data,
                                     at=ev.at)

    # the new version
    version = 1 + max(session.scalars(select(Plan.version).where(Plan.day == day, Plan.depot_id == depot.id)))
    plan.status = "superseded"
    session.flush()
    new = Plan(day=day, depot_id=depot.id, version=version, status="current", created_at=utcnow(), created_by=actor,
               time_limit=time_limit, seconds=solved.seconds, distance_m=merged.distance_m, cost=merged.cost,
               reason=snap.reason, strategy=merged.strategy, diff=_with_version(merged.diff, version))
    session.add(new)
    rows = {s.stop_id: s for r in plan.routes for s in r.stops}
    for draft in merged.routes:
        route = Route(vehicle_id=draft.vehicle_id, start_at=draft.start_at, end_at=draft.end_at,
                      distance_m=draft.distance_m, cost=draft.cost, status=draft.status, started_at=draft.started_at,
                      load=draft.load)
        new.routes.append(route)
        for stop in draft.stops:
            if stop.reuse:
                row = rows[stop.stop_id]
            else:
                row = RouteStop(stop_id=stop.stop_id, seq=stop.seq, order_id=stop.order_id, status="planned")
            route.stops.append(row)
            if stop.times is not None:
                row.seq = stop.seq
                row.arrive_at, row.service_at = stop.times.arrive_at, stop.times.service_at
                row.depart_at, row.leg_m = stop.times.depart_at, stop.times.leg_m
    for u in merged.unserved:
        new.unserved.append(UnservedOrder(order_id=u.order_id, reason=u.reason))
    session.flush()  # the new version is written (new.id): what records it goes after this
    diff = merged.diff
    audit.append(session, actor, "plan.replanned", "plan", new.id,
                 {"day": day, "depot": depot_code, "version": version, "superseded": plan.id,
                  "moved": diff["moved"], "added": diff["added"], "cancelled": diff["cancelled"],
                  "unserved": diff["unserved"], "event": diff["event"]}, why=snap.reason)

    # order events
    for ev in merged.order_events:
        fulfillment.record_event(session, orders[ev.ref], ev.type, actor, to_status=ev.to_status, data=ev.data,
                                 at=ev.at)
    session.flush()
    return {"depot": depot_code, "date": day.isoformat(), "plan": new.id, **new.diff,
            "routes": sum(1 for r in merged.routes if r.stops),
            "stops": merged.stops, "unserved_total": len(solved.unserved),
            "distance_km": round(new.distance_m / 1000, 2), "seconds": round(solved.seconds, 2)}


# ------------------------------------------------------------------------------- entry


def replan(day: date, depot_code: str, event: Event | None = None, time_limit: float = 5.0, actor: str = "system",
           now: datetime | None = None, sessions: Callable[[], AbstractContextManager[Session]] | None = None,
           workers: int = 1, positions: dict[str, Position] | None = None,
           cancel: Callable[..., object] | None = None) -> dict:
    """Re-plan one depot's day after `event` (None: just re-optimise from where the vans are).

    Read, solve, store: three transactions, none open while the solver runs. Returns the new
    plan's diff (also stored in ``Plan.diff``) with a summary. ``now`` defaults to the breakdown
    time or the clock; ``positions`` overrides where started vans are (code -> (lat, lon)).
    ``cancel(session, order, actor, reason=)`` cancels a cancelled order's stock in the store's transaction
    (default fulfillment.service.cancel_order; traceability.flows passes its own, which also records the
    picked goods returned to stock in custody, a room routing may not import).
    Raises NotFound / Invalid / Conflict (core.errors) for an event that does not apply.
    """
    from core.db import session_scope

    scope = sessions or session_scope
    for attempt in range(ATTEMPTS):
        with scope() as session:
            snap = _read(session, day, depot_code, event, now, positions or {})
        solved = _solve(snap, day, depot_code, time_limit, workers)
        try:
            with scope() as session:
                return _store(session, day, depot_code, snap, solved, event, actor, time_limit, cancel)
        except _Stale:
            if attempt == ATTEMPTS - 1:
                raise Conflict(f"the plan of {depot_code} kept changing while re-planning; try again") from None
    raise AssertionError("unreachable")


def depot_of(session: Session, day: date, event: Event) -> str:
    """The depot an event belongs to: the van's depot, or the node the order is allocated to."""
    if isinstance(event, Breakdown):
        van = session.scalar(select(Vehicle).where(Vehicle.code == event.vehicle_code))
        if van is None:
            raise NotFound(f"unknown van {event.vehicle_code}")
        return van.depot.code
    order = session.scalar(select(Order).where(Order.ref == event.order_ref))
    if order is None:
        raise NotFound(f"unknown order {event.order_ref}")
    if order.node is None or order.delivery_date != day:
        raise Invalid(f"order {order.ref} is not allocated to a depot on {day}", pointer="/order_ref")
    return order.node.code


def parse_at(day: date, text: str) -> datetime:
    """`HH:MM` (local, on `day`) or an RFC 3339 time with a zone."""
    from core.timeutil import local_datetime, parse_hhmm

    if len(text) <= 5 and ":" in text:
        return local_datetime(day, parse_hhmm(text))
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise Invalid(f"{text!r} needs a time zone (or give local HH:MM)", pointer="/at")
    return moment
