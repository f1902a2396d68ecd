"""Day plans: build a routing problem per depot from the database, solve it, store it, export it.

The solver (routing/solver.py) knows nothing of the database; this module is the only
bridge. A delivery order is served from the node it was allocated to, by that node's vans.

The objective is the scenario's own: serve as many orders as possible first (a dropped order
costs more than any plan's vans and kilometres), then the least of each used van's
``fixed_cost`` plus ``cost_per_km`` times its kilometres. A van may go out several times
(``MAX_TRIPS``), back at the depot for ``COLDCHAIN_RELOAD_MINUTES`` between trips, when the day
needs it (:func:`trips_needed`), or short trips in slots of the shift when time on board needs them
(:func:`on_board_trips`); its fixed cost counts once. Each trip is stored as a route of its
own (``Route.trip``).

The time limit is a wall (README "Time limit"): :func:`plan_depot` gives the solver what is left
of ``time_limit`` after reading the depot and building its matrices, so the plan is back within
the limit plus the storing step; its result says where the time went (``timing``) and how many
matrices it built or found in the shared cache (``matrices``).
"""

from __future__ import annotations

import hashlib
import secrets
import time as clock
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date, time

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core import audit
from core.settings import get_settings
from core.timeutil import local_at, local_hhmm, utcnow
from fulfillment.models import Order, OrderLine, Reservation
from fulfillment.service import record_event
from routing import solver
from routing.models import Plan, Route, RouteStop, UnservedOrder
from routing.travel import CachedTravel, FileMatrixStore, MatrixStore, RedisMatrixStore, travel_model
from warehouses.models import TEMP_CLASSES, Node, Product, Vehicle

SERVICE_S = 5 * 60  # CONTRACTS.md section 5: 5 minutes of service per stop
MAX_TRIPS = 3  # loads from the depot a van may make in a day plan
TRIP_MARGIN = 0.9  # offer second trips once the day needs more than this share of one load per van
SLOT_HUB_ORDERS = 60  # a hub with more orders than this plans its time-on-board trips in slots (build_problem)
MIN_SOLVE_S = 0.3  # the solver's least budget when reading the depot took the whole time limit
# what a plan may take beyond its time limit (storing it, telling the rules, the solver's last round
# ending): measured, README "Time limit"; tests/routing/test_time_wall.py allows only this plus a margin
WALL_OVERHEAD_S = 0.5
_travel: tuple[tuple, CachedTravel] | None = None


def matrix_store() -> MatrixStore:
    """Where the processes of a day share their matrices: the broker's Redis when it is Redis, else files
    under COLDCHAIN_DATA_DIR (embedded defaults: every worker runs on this machine)."""
    settings = get_settings()
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisMatrixStore(settings.broker_url)
    return FileMatrixStore(settings.data_dir / "matrices")


def travel() -> CachedTravel:
    """The configured travel model (OSRM when COLDCHAIN_OSRM_URL is set), cached in this process's memory
    and in the shared store (:func:`matrix_store`), namespaced by database."""
    global _travel
    settings = get_settings()
    config = (settings.osrm_url, settings.broker_url, str(settings.data_dir), settings.sqlalchemy_url)
    if _travel is None or _travel[0] != config:
        namespace = hashlib.sha1(settings.sqlalchemy_url.encode()).hexdigest()[:12]
        _travel = (config, CachedTravel(travel_model(settings.osrm_url or None), store=matrix_store(),
                                        namespace=namespace))
    return _travel[1]


def _secs(t: time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second


@dataclass
class DepotStops:
    """What a depot has to deliver on a day: per order, the litres per class and kg it carries from here."""

    orders: list[Order]
    demand: dict[int, dict[str, float]]
    weight: dict[int, float]
    max_on_board: dict[int, float | None]


def depot_stops(session: Session, day: date, depot: Node) -> DepotStops:
    """The delivery orders whose (primary) node is this depot, with everything they carry.

    An order split across nodes is delivered in one visit from its primary node (the nearest one,
    Order.node_id): the other nodes' parts are transferred to it before the vans leave, so the
    customer gets one delivery and the van carries the whole order.
    """
    rows = session.execute(
        select(Order, Reservation.qty, Product.temp_class, Product.unit_l, Product.unit_kg, Product.max_on_board_min)
        .join(OrderLine, OrderLine.order_id == Order.id)
        .join(Reservation, Reservation.line_id == OrderLine.id)
        .join(Product, OrderLine.product_id == Product.id)
        .where(Order.delivery_date == day, Order.mode == "delivery", Order.node_id == depot.id,
               Order.status.in_(("allocated", "planned", "reattempt")))
        .order_by(Order.ref)
    ).all()
    orders: dict[int, Order] = {}
    demand: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(TEMP_CLASSES, 0.0))
    weight: dict[int, float] = defaultdict(float)
    on_board: dict[int, float | None] = {}
    for order, qty, tclass, unit_l, unit_kg, max_min in rows:
        orders[order.id] = order
        demand[order.id][tclass] += qty * unit_l
        weight[order.id] += qty * unit_kg
        if max_min:
            current = on_board.get(order.id)
            on_board[order.id] = min(current, max_min * 60) if current else max_min * 60
    return DepotStops(list(orders.values()), dict(demand), dict(weight), on_board)


def trips_needed(vans: list[solver.Vehicle], stops: list[solver.Stop]) -> int:
    """How many loads per van the depot's day is modelled with: ``MAX_TRIPS`` when one load per van
    cannot carry the day's orders (per class or by weight, with a margin: routes rarely fill every van
    to the last litre) or when a depot of one or two vans has orders with a time-on-board limit (a later
    departure keeps them fresh), else 1. Trips cost search time (one routing vehicle per trip, and the
    time-on-board constraints multiply with them: on the sample city's FS-01, 4 vans x 3 trips, the
    first solution took about 0.9 s), so a day that fits one load per van is solved as before.
    """
    if not vans or not stops:
        return 1
    if len(vans) <= 2 and any(s.max_on_board is not None for s in stops):
        return MAX_TRIPS  # a hub's one or two vans: later loads keep perishables fresh
    classes = {c for s in stops for c in s.demand}
    for c in classes:
        if sum(s.demand.get(c, 0.0) for s in stops) > TRIP_MARGIN * sum(v.capacity.get(c, 0.0) for v in vans):
            return MAX_TRIPS
    if all(v.max_weight is not None for v in vans) and \
            sum(s.weight for s in stops) > TRIP_MARGIN * sum(v.max_weight or 0.0 for v in vans):
        return MAX_TRIPS
    return 1


def on_board_trips(vans: list[solver.Vehicle], stops: list[solver.Stop], reload: float) -> int:
    """How many short trips per van keep the perishables within their time on board: 1 when one trip
    per van could serve every order with a limit (leaving at the shift's start, the drive ignored), else
    the fewest trips (2..``MAX_TRIPS``) in equal slots of the shift (``solver.Vehicle.trip_slots``) whose
    trips, leaving at their slot's start, could serve them all, or that leave the fewest out. An estimate:
    a trip may leave later within its slot, and the solver decides which trips run. On the generated
    city-2x200's FS-01 (3 vans, 10-hour shifts, limits of 4-8 hours, windows until 18:00) one trip per van
    served 120 of 152 orders at 10 s, two slots 150, three (this estimate) 149; a day without such orders
    keeps its one trip (no extra routing vehicles, no slower plans)."""

    def reachable(s: solver.Stop, n: int) -> bool:
        for v in vans:
            span = (v.shift[1] - v.shift[0]) / n
            for j in range(n):
                a = v.shift[0] + j * span + (reload if j else 0.0)
                if max(s.window[0], a) <= min(s.window[1], a + (s.max_on_board or 0.0), v.shift[0] + (j + 1) * span):
                    return True
        return False

    limited = [s for s in stops if s.max_on_board is not None]
    if not vans or not limited:
        return 1
    left = [s for s in limited if not reachable(s, 1)]
    if not left:
        return 1
    best, fewest = 1, len(left)
    for n in range(2, MAX_TRIPS + 1):
        out = sum(not reachable(s, n) for s in left)
        if out < fewest:
            best, fewest = n, out
        if not out:
            break
    return best


def build_problem(session: Session, day: date, depot: Node, time_limit: float,
                  exclude: set[int] | None = None) -> tuple[solver.Problem, dict[str, Order], dict[str, Vehicle]]:
    """The depot's vans and the orders allocated to it, as a pure solver problem."""
    vans = list(session.scalars(select(Vehicle).where(Vehicle.depot_id == depot.id).order_by(Vehicle.code)
                                .options(selectinload(Vehicle.compartments))))
    ds = depot_stops(session, day, depot)
    orders = [o for o in ds.orders if not exclude or o.id not in exclude]
    points = [(depot.lat, depot.lon)] + [(o.lat, o.lon) for o in orders]
    speeds = sorted({v.speed_kmh for v in vans}) or [25.0]
    matrices = {s: travel().matrix(points, s, day=day.isoformat(), depot=depot.code) for s in speeds}
    base_seconds, metres = matrices[speeds[0]]
    vehicles = [
        solver.Vehicle(id=v.code, start=0, end=0, shift=(_secs(v.shift_start), _secs(v.shift_end)),
                       capacity={c.temp_class: c.capacity_l for c in v.compartments}, max_weight=v.max_kg,
                       cost_per_km=v.cost_per_km, fixed_cost=v.fixed_cost,
                       travel_time=None if v.speed_kmh == speeds[0] else matrices[v.speed_kmh][0])
        for v in vans
    ]
    stops = [
        solver.Stop(id=o.ref, node=i + 1, demand={c: q for c, q in ds.demand[o.id].items() if q > 0},
                    weight=ds.weight[o.id], window=(_secs(o.window_start), _secs(o.window_end)), service=SERVICE_S,
                    max_on_board=ds.max_on_board.get(o.id))
        for i, o in enumerate(orders)
    ]
    trips = trips_needed(vehicles, stops)
    # a big hub's trips for time on board run in slots too: chained trips need the solver's generic
    # propagation for every insertion (the 5,000-order city's HUB-27, one van, 98 orders: 1.9-2.3 s to a first
    # solution chained, 0.01 s in slots, serving 53 instead of 51). Small hubs keep the freedom of chained
    # trips (the sample city's: the same orders served either way, slots cost up to one more van)
    slots = (trips > 1 and len(vehicles) <= 2 and len(stops) > SLOT_HUB_ORDERS
             and any(s.max_on_board is not None for s in stops))
    if trips == 1:  # enough room: short trips only when time on board needs them
        trips = on_board_trips(vehicles, stops, reload_seconds())
        slots = trips > 1
    for v in vehicles:
        v.trips, v.trip_slots = trips, slots
    problem = solver.Problem(vehicles=vehicles, stops=stops, travel_time=base_seconds, distance=metres,
                             time_limit=time_limit, depots=[0], reload_time=reload_seconds())
    return problem, {o.ref: o for o in orders}, {v.code: v for v in vans}


def reload_seconds() -> float:
    """COLDCHAIN_RELOAD_MINUTES in seconds: a van at its depot between two trips."""
    return float(get_settings().reload_minutes) * 60.0


def new_stop_id() -> str:
    return "s-" + secrets.token_hex(6)


def store_solution(session: Session, day: date, depot: Node, solution: solver.Solution, orders: dict[str, Order],
                   vans: dict[str, Vehicle], actor: str, time_limit: float, reason: str | None = None) -> Plan:
    """Replace the depot's current plan for the day with this one; orders move to 'planned'."""
    previous = session.scalars(select(Plan).where(Plan.day == day, Plan.depot_id == depot.id,
                                                  Plan.status == "current")).all()
    version = 1 + max((p.version for p in session.scalars(select(Plan).where(Plan.day == day,
                                                                                  Plan.depot_id == depot.id))),
                      default=0)
    for p in previous:
        p.status = "superseded"
    plan = Plan(day=day, depot_id=depot.id, version=version, status="current", created_at=utcnow(),
                created_by=actor, time_limit=time_limit, seconds=solution.seconds, distance_m=solution.distance,
                cost=solution.cost, strategy=solution.strategy, reason=reason)
    session.add(plan)
    seq: dict[str, int] = defaultdict(int)  # a van's stops are numbered through all its trips
    for r in sorted(solution.routes, key=lambda r: (r.vehicle_id, r.trip)):
        route = Route(vehicle_id=vans[r.vehicle_id].id, trip=r.trip, start_at=local_at(day, r.start),
                      end_at=local_at(day, r.end), distance_m=r.distance, cost=r.cost, status="planned", load=r.load)
        for v in r.visits:
            order = orders[v.stop_id]
            seq[r.vehicle_id] += 1
            route.stops.append(RouteStop(stop_id=new_stop_id(), seq=seq[r.vehicle_id], order_id=order.id,
                                         arrive_at=local_at(day, v.arrival), service_at=local_at(day, v.service_start),
                                         depart_at=local_at(day, v.departure), leg_m=v.distance))
            if order.status != "planned":
                record_event(session, order, "planned", actor, to_status="planned",
                             data={"vehicle": r.vehicle_id, "depot": depot.code, "trip": r.trip})
        plan.routes.append(route)
    for u in solution.unserved:
        order = orders[u.stop_id]
        plan.unserved.append(UnservedOrder(order_id=order.id, reason=u.reason))
        if order.status == "planned":
            record_event(session, order, "unplanned", actor, to_status="allocated", data={"reason": u.reason})
    session.flush()
    audit.append(session, actor, "plan.stored", "plan", plan.id,
                 {"day": day, "depot": depot.code, "version": version, "superseded": [p.id for p in previous],
                  "routes": [{"vehicle": r.vehicle_id, "trip": r.trip, "stops": [v.stop_id for v in r.visits]}
                             for r in solution.routes],
                  "unserved": {u.stop_id: u.reason for u in solution.unserved},
                  "distance_m": solution.distance, "cost": solution.cost}, why=reason)
    return plan


def depots_of_day(session: Session, day: date) -> list[str]:
    """Nodes that have vans and delivery orders allocated to them that day."""
    return list(session.scalars(
        select(Node.code).distinct()
        .join(Order, Order.node_id == Node.id)
        .join(Vehicle, Vehicle.depot_id == Node.id)
        .where(Order.delivery_date == day, Order.mode == "delivery",
               Order.status.in_(("allocated", "planned", "reattempt")))
        .order_by(Node.code)))


def plan_depot(day: date, depot_code: str, time_limit: float, actor: str = "system", workers: int = 1,
               progress: Callable[[float], None] | None = None,
               sessions: Callable[[], AbstractContextManager[Session]] | None = None,
               started: float | None = None) -> dict:
    """Read, solve, store one depot's day: three steps, no transaction held while the solver runs.

    ``started`` (``time.monotonic()``, default now) is when the caller's clock for ``time_limit``
    began, e.g. when the Celery task started: the solver gets what is left of the limit after
    reading, so the plan is stored within the limit plus the store step.
    """
    from core.db import session_scope

    t0 = clock.monotonic() if started is None else started
    scope = sessions or session_scope
    cache = travel()
    before = (cache.builds, cache.shared_hits, cache.hits, cache.build_seconds)
    # the read step takes no write lock (SQLite's is taken at BEGIN by writing sessions): a task reading
    # its depot does not wait for another task storing its plan
    with (sessions() if sessions else session_scope(write=False)) as session:
        depot = session.scalar(select(Node).where(Node.code == depot_code))
        if depot is None:
            raise ValueError(f"unknown depot {depot_code}")
        problem, orders, vans = build_problem(session, day, depot, time_limit)
        order_ids = {ref: o.id for ref, o in orders.items()}
    t_read = clock.monotonic()
    problem.time_limit = max(MIN_SOLVE_S, float(time_limit) - (t_read - t0))
    solution = solver.solve(problem, workers=workers, progress=progress)
    t_solve = clock.monotonic()
    with scope() as session:
        depot = session.scalar(select(Node).where(Node.code == depot_code))
        orders = {o.ref: o for o in session.scalars(select(Order).where(Order.id.in_(order_ids.values())))}
        vans = {v.code: v for v in session.scalars(select(Vehicle).where(Vehicle.depot_id == depot.id))}
        plan = store_solution(session, day, depot, solution, orders, vans, actor, time_limit)
        out = {"depot": depot_code, "plan": plan.id, "routes": len(plan.routes),
               "vans": solution.vehicles_used, "trips": solution.trips,
               "stops": sum(len(r.visits) for r in solution.routes), "unserved": len(solution.unserved),
               "distance_km": round(solution.distance / 1000, 2), "cost": round(solution.cost, 2),
               "seconds": round(solution.seconds, 2), "strategy": solution.strategy,
               "matrices": {"built": cache.builds - before[0], "shared": cache.shared_hits - before[1],
                            "memory": cache.hits - before[2]},
               "timing": {"matrix": round(cache.build_seconds - before[3], 3),
                          "read": round(t_read - t0, 3), "solve": round(t_solve - t_read, 3)}}
    out["timing"]["store"] = round(clock.monotonic() - t_solve, 3)  # with the commit
    out["timing"]["total"] = round(clock.monotonic() - t0, 3)
    return out


def day_routes(session: Session, day: date) -> dict:
    """CONTRACTS.md section 5's routes and unserved from the current plans of the day."""
    plans = session.scalars(select(Plan).where(Plan.day == day, Plan.status == "current")
                            .options(selectinload(Plan.depot), selectinload(Plan.routes).selectinload(Route.vehicle),
                                     selectinload(Plan.routes).selectinload(Route.stops).selectinload(RouteStop.order),
                                     selectinload(Plan.unserved).selectinload(UnservedOrder.order))
                            .order_by(Plan.depot_id)).all()
    routes, unserved = [], []
    for plan in plans:
        for route in sorted(plan.routes, key=lambda r: (r.vehicle.code, r.trip or 1, r.id)):
            if not route.stops:
                continue
            routes.append({
                "vehicle": route.vehicle.code, "trip": route.trip or 1, "depot": plan.depot.code,
                "start": local_hhmm(route.start_at),
                "end": local_hhmm(route.end_at), "distance_km": round(route.distance_m / 1000, 3),
                "stops": [{"order_ref": s.order.ref, "lat": s.order.lat, "lon": s.order.lon,
                           "arrive": local_hhmm(s.arrive_at), "depart": local_hhmm(s.depart_at),
                           "stop_id": s.stop_id, "status": s.status} for s in route.stops],
            })
        unserved += [{"order_ref": u.order.ref, "reason": u.reason, "depot": plan.depot.code}
                     for u in plan.unserved]
    return {"routes": routes, "unserved": sorted(unserved, key=lambda u: u["order_ref"])}


def drop_open_stops(session: Session, order: Order, actor: str, reason: str | None = None) -> list[str]:
    """Take a cancelled order's stops still to visit (``planned``) off the day's current routes, and say so
    in the audit log: left on, the driver would be sent to a door with nothing to hand over, and a route
    whose stop can never be delivered or failed never finishes (so its failed goods would never be
    recorded back at the depot). Visited stops (arrived, delivered, failed) stay, as history. Returns the
    stop ids dropped. A re-plan's cancel drops the stop from the new version itself (replan_merge)."""
    rows = session.scalars(select(RouteStop).join(Route, Route.id == RouteStop.route_id)
                           .join(Plan, Plan.id == Route.plan_id)
                           .where(RouteStop.order_id == order.id, RouteStop.status == "planned",
                                  Plan.status == "current").order_by(RouteStop.id)).all()
    dropped = []
    for row in rows:
        route = session.get(Route, row.route_id)
        vehicle = session.get(Vehicle, route.vehicle_id)
        audit.append(session, actor, "plan.stop_dropped", "route_stop", row.stop_id,
                     {"order": order.ref, "vehicle": vehicle.code if vehicle else None, "route": route.id,
                      "seq": row.seq}, why=reason or "order cancelled")
        dropped.append(row.stop_id)
        if row in route.stops:
            route.stops.remove(row)  # delete-orphan: the row goes, the loaded collection agrees
        else:
            session.delete(row)
    session.flush()
    return dropped
