"""The driver's day, as use cases: fetch the route, start it, report stop events, upload proof, send a position.

Every query takes the calling driver and filters on the driver's van in SQL: a stop of another
van, of a superseded plan (a re-plan moved it away) or of no route at all is the same "not
found", so nobody learns that someone else's stop exists. Services never commit; the request
does.

What a report moves:

* route start: the route ``started`` (routing's row), each order aboard ``out_for_delivery``
  (fulfillment's lifecycle), the van active for the telemetry rules (silence alerts) and its
  cargo told to them (traceability.sync_van: this van only).
* arrived / delivered / failed: the stop along delivery/lifecycle.py; the order along its own
  lifecycle; a failed order goes ``failed`` → ``reattempt``, which is what allocation and
  re-planning take again (routing/replan.py pools ``reattempt`` orders for any van). The
  route finishes with its last stop, and the van stops being watched for silence.
* damaged: stored per order line and quantity (stop_damages) for breakage risk.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

from cachetools import LRUCache
from sqlalchemy import Select, and_, bindparam, func, literal_column, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from core import audit
from core.errors import Conflict, Forbidden, Invalid, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMedia
from core.hot import Hot, driver_rows
from core.timeutil import to_local, utcnow
from delivery import lifecycle, proofs
from delivery.lifecycle import IllegalMove, route_state, route_stored
from delivery.models import DeliveryEvent, DeliveryProof, StopDamage
from delivery.schemas import PositionIn, RouteStartIn, StopEventIn
from fulfillment.models import Order, OrderEvent, OrderLine
from fulfillment.service import OrderMoves, order_moves, record_event, write_order_moves
from routing.models import Plan, Route, RouteStop
from telemetry.models import DriverPosition
from traceability import custody
from traceability.risk import LEVELS
from traceability.service import sync_van
from traceability.trace import ON_TRIPS, custody_summary, order_risks
from warehouses.models import Compartment, Driver, Node, Product, User, Vehicle

NO_SUCH_STOP = "no such stop on your routes"
NO_SUCH_PROOF = "no such proof"
FUTURE_SLACK = timedelta(minutes=5)  # a phone clock this far ahead is still believed


@dataclass(frozen=True)
class DriverRef:
    """The calling driver, as every driver query takes it."""

    id: int
    username: str
    vehicle_id: int | None
    vehicle_code: str | None


@dataclass(frozen=True)
class Login:
    role: str
    active: bool
    driver: DriverRef | None


_US, _DR, _VH = User.__table__.c, Driver.__table__.c, Vehicle.__table__.c
_LOGIN = (select(_US.role, _US.active, _DR.id, _DR.vehicle_id, _VH.code)
          .select_from(User.__table__.outerjoin(Driver.__table__, _DR.username == _US.username)
                       .outerjoin(Vehicle.__table__, _VH.id == _DR.vehicle_id))
          .where(_US.username == bindparam("username")))


def _login(username: str, row) -> Login | None:  # noqa: ANN001
    """A login from a row that starts (role, active, driver id, vehicle id, vehicle code); None for no row."""
    if row is None:
        return None
    role, active, driver_id, vehicle_id, code = row[:5]
    driver = DriverRef(driver_id, username, vehicle_id, code) if driver_id is not None else None
    return Login(role, bool(active), driver)


def login_of(session: Session, username: str) -> Login | None:
    """The user and, when there is one, the driver of the same username (drivers.csv), in one query (built once:
    every driver request runs it)."""
    return _login(username, session.connection().execute(_LOGIN, {"username": username}).first())


def driver_of(login: Login | None, username: str) -> DriverRef:
    """The driver this login may act as on the driver routes, or why not: an unknown or disabled user 401, a user
    of another role, or one who is no driver of drivers.csv, 403."""
    if login is None or not login.active:
        raise Unauthorized("unknown or disabled user")
    if login.role not in ("driver", "admin"):
        raise Forbidden(f"this needs the role driver; you are {login.role}")
    if login.driver is None:
        raise Forbidden(f"user {username} is not a driver of drivers.csv")
    return login.driver


def driver_ref(session: Session, username: str) -> DriverRef | None:
    """The driver of drivers.csv with this username, if any."""
    row = session.execute(select(Driver.id, Driver.vehicle_id, Vehicle.code)
                          .outerjoin(Vehicle, Vehicle.id == Driver.vehicle_id)
                          .where(Driver.username == username)).first()
    return DriverRef(row[0], username, row[1], row[2]) if row else None


def _conflict(exc: IllegalMove) -> Conflict:
    extra: dict[str, str] = {"route_status": exc.route}
    if exc.stop is not None:
        extra["stop_status"] = exc.stop
    return Conflict(str(exc), **extra)


# --------------------------------------------------------------------------------- route


def _route_query(driver: DriverRef, day: date) -> Select:
    """The van's routes of the day, one per trip (routing stores each trip as a route), in order."""
    return (select(Route, Plan.day, Node.code)
            .join(Plan, Plan.id == Route.plan_id)
            .join(Node, Node.id == Plan.depot_id)
            .where(Plan.day == day, Plan.status == "current", Route.vehicle_id == driver.vehicle_id)
            .order_by(Plan.id.desc(), Route.trip, Route.id))


def _trips(session: Session, query: Select) -> list:
    """The rows of the newest current plan only (a van has one depot, so one plan a day)."""
    rows = session.execute(query).all()
    return [r for r in rows if r[0].plan_id == rows[0][0].plan_id] if rows else []


def _trip_to_start(trips: list[Route]) -> Route:
    """The trip the van loads next: the first not yet finished (a started one answers 409 as before)."""
    return next((r for r in trips if r.status != "done"), trips[-1])


def _local(moment: datetime) -> datetime:
    """Local time to the second (the solver's times carry fractions of a second)."""
    return to_local(moment + timedelta(microseconds=500_000)).replace(microsecond=0)


def _no_route(driver: DriverRef, day: date) -> NotFound:
    if driver.vehicle_id is None:
        return NotFound(f"no van is assigned to you ({driver.username}) in drivers.csv")
    return NotFound(f"you have no route on {day.isoformat()}")


@dataclass(frozen=True)
class _StaticStop:
    """What a stop shows that changes only with a re-plan (a new plan version, with new routes)."""

    pk: int
    order_id: int
    view: dict  # the contract's stop fields but status and check


_RS_ = RouteStop.__table__.c
_STATIC_KEPT = 2048  # routes (one van's day each); the least recently used go first
_static: LRUCache[tuple, tuple[float, list[_StaticStop]]] = LRUCache(_STATIC_KEPT)
_static_lock = threading.Lock()
_STATIC_MAX_AGE_S = 600.0  # order data is not edited once planned; this bounds it anyway


def _static_stops(session: Session, plan: tuple, trip_ids: list[int]) -> list[_StaticStop]:
    """The stops of these trips in order with their orders and items, kept per process by the plan's identity
    (id and creation time: a re-plan writes a new plan with new routes) and its trips."""
    key = (str(session.get_bind().engine.url), *plan, tuple(trip_ids))
    clock = time.monotonic()
    with _static_lock:
        got = _static.get(key)  # a use: it becomes the most recently used
        if got is not None and clock - got[0] < _STATIC_MAX_AGE_S:
            return got[1]
    stops: list[_StaticStop] = []
    seen: dict[int, _StaticStop] = {}
    for row in session.execute(
            select(RouteStop.id, RouteStop.stop_id, RouteStop.seq, RouteStop.arrive_at, Order.id.label("order_id"),
                   Order.ref, Order.lat, Order.lon, Order.window_start, Order.window_end, Order.address,
                   Order.customer, Order.phone, Order.note,
                   Product.sku, Product.name, OrderLine.qty, Product.temp_class, Product.fragile)
            .join(Order, Order.id == RouteStop.order_id).join(Route, Route.id == RouteStop.route_id)
            .outerjoin(OrderLine, OrderLine.order_id == Order.id)
            .outerjoin(Product, Product.id == OrderLine.product_id)
            .where(RouteStop.route_id.in_(trip_ids))
            .order_by(Route.trip, RouteStop.seq, RouteStop.id, OrderLine.line_no)):
        stop = seen.get(row.id)
        if stop is None:
            stop = seen[row.id] = _StaticStop(row.id, row.order_id, {
                "stop_id": row.stop_id, "seq": row.seq, "order_ref": row.ref, "eta": _local(row.arrive_at),
                "lat": row.lat, "lon": row.lon, "window": (f"{row.window_start:%H:%M}", f"{row.window_end:%H:%M}"),
                "address": row.address, "contact": " ".join(p for p in (row.customer, row.phone) if p) or None,
                "note": row.note, "items": []})
            stops.append(stop)
        if row.sku is not None:
            stop.view["items"].append({"sku": row.sku, "name": row.name, "qty": row.qty,
                                       "temp_class": row.temp_class, "fragile": bool(row.fragile)})
    with _static_lock:
        _static[key] = (clock, stops)  # the least recently used route goes when full
    return stops


def forget_routes() -> None:
    """Drop every kept route (tests that rebuild data in a rolled-back transaction, benchmarks)."""
    with _static_lock:
        _static.clear()


_RTC, _PLC, _NDC, _CPC = Route.__table__.c, Plan.__table__.c, Node.__table__.c, Compartment.__table__.c
# the van's trips that day (newest current plan first) with the van's compartments, one row per compartment
_TRIPS_OF_DAY = (Route.__table__
                 .join(Plan.__table__, and_(_PLC.id == _RTC.plan_id, _PLC.day == bindparam("day"),
                                            _PLC.status == "current"))
                 .join(Node.__table__, _NDC.id == _PLC.depot_id)
                 .outerjoin(Compartment.__table__, _CPC.vehicle_id == _RTC.vehicle_id))
_TRIP_COLUMNS = (_RTC.id, _RTC.plan_id, _RTC.status, _RTC.start_at, _RTC.end_at, _RTC.started_at, _PLC.day,
                 _NDC.code, _PLC.created_at, _CPC.id.label("compartment_id"), _CPC.temp_class, _CPC.capacity_l)
_TRIP_ORDER = (_PLC.id.desc(), _RTC.trip, _RTC.id, _CPC.id)
_DAY_TRIPS = Hot(select(*_TRIP_COLUMNS).select_from(_TRIPS_OF_DAY)
                 .where(_RTC.vehicle_id == bindparam("vehicle_id")).order_by(*_TRIP_ORDER))
# the caller's login (as _LOGIN) and their van's trips that day (as _DAY_TRIPS), in one statement: one row with no
# trip when there is none
_LOGIN_TRIPS = Hot(
    select(_US.role, _US.active, _DR.id.label("driver_id"), _DR.vehicle_id, _VH.code.label("vehicle_code"),
           *_TRIP_COLUMNS)
    .select_from(User.__table__.outerjoin(Driver.__table__, _DR.username == _US.username)
                 .outerjoin(Vehicle.__table__, _VH.id == _DR.vehicle_id)
                 .outerjoin(_TRIPS_OF_DAY, _RTC.vehicle_id == _DR.vehicle_id))
    .where(_US.username == bindparam("username"))
    .order_by(*_TRIP_ORDER))
_TRIPS_CUSTODY = custody_summary(ON_TRIPS)
# the trips' stops' statuses with the per-order part of the risk checks' inputs
_TRIP_STATUSES = Hot(
    select(_RS_.id, _RS_.status, _RS_.order_id, _TRIPS_CUSTODY.c.n, _TRIPS_CUSTODY.c.newest, _TRIPS_CUSTODY.c.first)
    .select_from(RouteStop.__table__.outerjoin(_TRIPS_CUSTODY, _TRIPS_CUSTODY.c.order_id == _RS_.order_id))
    .where(_RS_.route_id.in_(bindparam("trip_ids", expanding=True))))


def route_of(session: Session, driver: DriverRef, day: date) -> dict:
    """The driver's route that day in the contract's shape, stops in order.

    A fixed number of statements whatever the number of stops (tests/delivery/test_route_statements.py):
    the trips with the van's compartments; the stops' statuses with the per-order part of the risk checks'
    inputs; the rest of these inputs (one aggregate, traceability.trace.order_risks). What changes only
    with a re-plan (the stops, their orders and items) is kept per process by plan and trips, and each
    order's risk while its inputs hold; either is read again (one statement; the risk checks' own, one
    per kind of thing) when it does not. The statements are built once, on table columns: the most
    requested answer of the API spent more of its time building SQL than the database spent on it.
    """
    if not driver.vehicle_id:
        raise _no_route(driver, day)
    return _route(session, driver, day, _DAY_TRIPS.rows(session.connection(),
                                                        {"day": day, "vehicle_id": driver.vehicle_id}))


def route_for(session: Session, username: str, day: date) -> dict:
    """:func:`route_of` for the user of this username, checked as :func:`driver_of` checks a login, in the same
    statement as the van's trips: the API's most requested answer takes one statement less."""
    rows = _LOGIN_TRIPS.rows(session.connection(), {"username": username, "day": day})
    driver = driver_of(_login(username, rows[0] if rows else None), username)
    if not driver.vehicle_id:
        raise _no_route(driver, day)
    return _route(session, driver, day, [r for r in rows if r.id is not None])


def _route(session: Session, driver: DriverRef, day: date, rows: list) -> dict:
    if not rows:
        raise _no_route(driver, day)
    conn = session.connection()
    rows = [r for r in rows if r.plan_id == rows[0].plan_id]  # a van has one depot, so one plan a day
    first = rows[0]
    trips = list({r.id: r for r in rows}.values())
    compartments: dict[str, float] = {}
    for _cid, tclass, litres in sorted({(r.compartment_id, r.temp_class, r.capacity_l) for r in rows
                                        if r.id == first.id and r.compartment_id is not None}):
        compartments[tclass] = compartments.get(tclass, 0.0) + float(litres)  # two of a class: their sum
    current = _trip_to_start(trips)
    trip_ids = [r.id for r in trips]
    status: dict[int, str] = {}
    kept: dict[int, tuple] = {}  # the risk checks' inputs per order (traceability.trace.order_risks)
    for pk, stop_status, order_id, n, newest, first_at in _TRIP_STATUSES.rows(conn, {"trip_ids": trip_ids}):
        status[pk] = stop_status
        if n:
            kept[order_id] = (n, newest, first_at)
    stops = _static_stops(session, (first.plan_id, first.created_at), trip_ids)
    if set(status) != {s.pk for s in stops}:  # cannot happen within one plan version; read afresh if it does
        forget_routes()
        stops = _static_stops(session, (first.plan_id, first.created_at), trip_ids)
    checks = stop_checks(session, list(dict.fromkeys(s.order_id for s in stops)), trip_ids, kept)
    return {
        "date": first.day, "vehicle": driver.vehicle_code, "depot": first.code,
        "status": route_state(current.status), "start": _local(first.start_at), "end": _local(trips[-1].end_at),
        "started_at": to_local(current.started_at) if current.started_at else None,
        "compartments": compartments,
        "stops": [{**s.view, "status": status.get(s.pk), "check": checks.get(s.order_id)} for s in stops],
    }


def stop_checks(session: Session, order_ids: list[int], trip_ids: list[int] | None = None,
                custody: dict[int, tuple] | None = None) -> dict[int, dict]:
    """"Check on delivery" per order whose spoilage or breakage risk is not ok (the same test as quality
    staff's at-risk list): the worse level, both levels, and the reasons of the risks not ok. ``trip_ids``:
    routes whose orders include these (a van's day), ``custody`` their custody summary if already read
    (traceability.trace.order_risks)."""
    out: dict[int, dict] = {}
    for order_id, (spoil, brk) in order_risks(session, order_ids, trip_ids, custody).items():
        if spoil["level"] == "ok" and brk["level"] == "ok":
            continue
        level = max(spoil["level"], brk["level"], key=LEVELS.index)
        out[order_id] = {"level": level, "spoilage": spoil["level"], "breakage": brk["level"],
                         "reasons": [r for risk in (spoil, brk) if risk["level"] != "ok" for r in risk["reasons"]]}
    return out


_RS, _RT, _PL, _OR = RouteStop.__table__, Route.__table__, Plan.__table__, Order.__table__
_OPEN = _RS.alias("open_stops")
# the stop with its route and order, locked with its route, and how many of the route's stops are still open
# (SQLite's; on PostgreSQL a read that waited for the route's lock would count in its snapshot from before the
# wait, so the count that decides whether the route finishes comes with the writes, :func:`_pg_writes`)
_STOP_ROW = Hot(
    select(_RS.c.id, _RS.c.stop_id, _RS.c.status, _RS.c.order_id, _RT.c.id.label("route_id"),
           _RT.c.status.label("route_status"), _RT.c.vehicle_id, _OR.c.ref, _OR.c.status.label("order_status"),
           select(func.count()).where(_OPEN.c.route_id == _RT.c.id, _OPEN.c.status.not_in(lifecycle.STOP_DONE))
           .scalar_subquery().label("open_stops"))
    .select_from(_RS.join(_RT, _RT.c.id == _RS.c.route_id).join(_PL, _PL.c.id == _RT.c.plan_id)
                 .join(_OR, _OR.c.id == _RS.c.order_id))
    .where(_RS.c.stop_id == bindparam("stop_id"), _RT.c.vehicle_id == bindparam("vehicle_id"),
           _PL.c.status == "current")
    .with_for_update(of=[_RT, _RS]))
_ORDER_EVENTS_INSERT = OrderEvent.__table__.insert()
_EVENT_INSERT = DeliveryEvent.__table__.insert().returning(DeliveryEvent.__table__.c.id)
_STOP_STATUS = (update(_RS).where(_RS.c.id == bindparam("stop_pk")).values(status=bindparam("new_status")))
_ROUTE_DONE = (update(_RT).where(_RT.c.id == bindparam("route_pk"), _RT.c.status == route_stored("started"))
               .values(status=route_stored("finished")))


def _load_out(session: Session, order: Order, actor: str, at: datetime, data: dict) -> bool:
    """The order is in the van: planned (or a re-attempt) becomes out_for_delivery."""
    if order.status in ("planned", "reattempt"):
        record_event(session, order, "loaded", actor, to_status="out_for_delivery", data=data, at=at)
        return True
    return False


def start_route(session: Session, driver: DriverRef, body: RouteStartIn, now: datetime | None = None) -> dict:
    """The van is loaded and leaves: the route starts, its orders go out for delivery, the van is watched.

    A fixed number of statements whatever the number of stops (tests/delivery/test_route_statements.py): the
    orders' moves in one INSERT of their events and one UPDATE of their status, custody "loaded" in one
    INSERT (traceability.custody.record_loaded).
    """
    now = now or utcnow()
    at = body.at or now
    rows = _trips(session, _route_query(driver, body.date).with_for_update(of=Route)) if driver.vehicle_id else []
    if not rows:
        raise _no_route(driver, body.date)
    route = _trip_to_start([r[0] for r in rows])  # with several trips: the next load
    try:
        lifecycle.check_route_move(route_state(route.status), "started")
    except IllegalMove as exc:
        raise _conflict(exc) from None
    route.status, route.started_at = route_stored("started"), at
    stops = session.execute(select(RouteStop, _OR.c.id, _OR.c.ref, _OR.c.status)
                            .join(_OR, _OR.c.id == RouteStop.order_id)
                            .where(RouteStop.route_id == route.id).order_by(RouteStop.seq)).all()
    planned = [stop for stop, *_order in stops if stop.status == "planned"]
    events: list[dict] = []
    entries: list[audit.Entry] = []
    out_ids: list[int] = []
    for stop, order_id, ref, status in stops:
        if stop.status != "planned" or status not in ("planned", "reattempt"):  # _load_out's rule
            continue
        moves = order_moves(order_id, ref, status, [("loaded", "out_for_delivery", {
            "vehicle": driver.vehicle_code, "stop_id": stop.stop_id, "route": route.id})], driver.username, at)
        events += moves.rows
        entries += moves.entries
        out_ids.append(order_id)
    conn = session.connection()
    if events:
        conn.execute(_ORDER_EVENTS_INSERT, events)
        conn.execute(update(_OR).where(_OR.c.id.in_(out_ids)).values(status="out_for_delivery"))
        audit.append_many(session, entries)
    conn.execute(_EVENT_INSERT, {
        "route_id": route.id, "stop_pk": None, "stop_id": None, "driver_id": driver.id,
        "vehicle_id": route.vehicle_id, "type": "started", "at": at, "received_at": now, "lat": None, "lon": None,
        "recipient": None, "reason": None, "note": None, "from_status": "planned", "to_status": "started"})
    session.flush()
    custody.record_loaded(session, route, at, driver.username, stops=planned)
    _expire_written(session, *((Order, order_id) for order_id in out_ids))
    # this van's cargo, and watched for silence: it is out, whatever day its route is planned for (the other
    # vans' watch is Celery beat's, every minute)
    sync_van(session, driver.vehicle_code, now, active=True)
    return {"date": body.date, "vehicle": driver.vehicle_code, "status": "started", "started_at": at,
            "stops": len(stops), "orders_out_for_delivery": len(out_ids)}


# ----------------------------------------------------------------------------------- stops


def _driver_stop(session: Session, driver: DriverRef, stop_id: str, lock: bool,
                 with_order: bool = False) -> tuple:
    """The stop, if it is on a current route of the driver's van; locked with its route for a change.
    (stop, route), or (stop, route, order) with ``with_order`` (read in the same query, not locked)."""
    if driver.vehicle_id is None or len(stop_id) > 32:
        raise NotFound(NO_SUCH_STOP)
    query = (select(RouteStop, Route, Order) if with_order else select(RouteStop, Route))
    if with_order:
        query = query.join(Order, Order.id == RouteStop.order_id)
    query = (query
             .join(Route, Route.id == RouteStop.route_id)
             .join(Plan, Plan.id == Route.plan_id)
             .where(RouteStop.stop_id == stop_id, Route.vehicle_id == driver.vehicle_id, Plan.status == "current"))
    if lock:
        query = query.with_for_update(of=[Route, RouteStop])
    row = session.execute(query).first()
    if row is None:
        raise NotFound(NO_SUCH_STOP)
    return tuple(row)


def _damage(session: Session, stop: RouteStop, order: Order, items: list, event: DeliveryEvent,
            at: datetime) -> list[dict]:
    """Damage per order line: each SKU must be on the order, and no more damaged than were ordered."""
    lines = session.execute(select(OrderLine.id, OrderLine.qty, Product.id, Product.sku)
                            .join(Product, Product.id == OrderLine.product_id)
                            .where(OrderLine.order_id == order.id).order_by(OrderLine.line_no)).all()
    by_sku: dict[str, list] = {}
    for line_id, qty, pid, sku in lines:
        by_sku.setdefault(sku, []).append([line_id, qty, pid])
    before = dict(session.execute(select(StopDamage.line_id, func.sum(StopDamage.qty))
                                  .where(StopDamage.order_id == order.id).group_by(StopDamage.line_id)).all())
    rows: list[StopDamage] = []
    wanted: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.sku not in by_sku:
            raise Invalid(f"{item.sku} is not on order {order.ref}", pointer=f"/items/{i}/sku")
        wanted[item.sku] = wanted.get(item.sku, 0) + item.qty
        left = sum(qty - int(before.get(line_id, 0)) for line_id, qty, _pid in by_sku[item.sku])
        if wanted[item.sku] > left:
            raise Invalid(f"order {order.ref} has {left} of {item.sku} not yet reported damaged; "
                          f"{wanted[item.sku]} reported", pointer=f"/items/{i}/qty")
    for sku, qty in wanted.items():
        for line in by_sku[sku]:  # fill the order's lines of that SKU in order
            line_id, line_qty, pid = line
            free = line_qty - int(before.get(line_id, 0))
            take = min(free, qty)
            if take > 0:
                rows.append(StopDamage(stop_pk=stop.id, order_id=order.id, line_id=line_id, product_id=pid, qty=take,
                                       at=at))
                before[line_id] = int(before.get(line_id, 0)) + take
                qty -= take
    for r in rows:
        r.event_id = event.id
    session.add_all(rows)
    return [{"sku": sku, "qty": qty} for sku, qty in wanted.items()]


def stop_event(session: Session, driver: DriverRef, stop_id: str, body: StopEventIn,
               now: datetime | None = None) -> dict:
    """Apply one stop event (see the module docstring for what it moves).

    arrived, delivered and failed of an order already out for delivery (every stop but those of a later trip's
    first event) take Core statements with no ORM objects: the stop, route, order and the route's open stops
    in one locked read, then one INSERT or UPDATE per table written (tests/delivery/test_route_statements.py
    counts them). Damage and a later trip's load go through :func:`_stop_event_orm`.
    """
    now = now or utcnow()
    at = body.at or now
    if driver.vehicle_id is None or len(stop_id) > 32:
        raise NotFound(NO_SUCH_STOP)
    conn = session.connection()
    row = _STOP_ROW.first(conn, {"stop_id": stop_id, "vehicle_id": driver.vehicle_id})
    if row is None:
        raise NotFound(NO_SUCH_STOP)
    if body.type == "damaged" or row.order_status in ("planned", "reattempt"):
        return _stop_event_orm(session, driver, stop_id, body, now)
    route_status = route_state(row.route_status)
    try:
        target = lifecycle.stop_target(body.type, row.status, route_status)
    except IllegalMove as exc:
        raise _conflict(exc) from None
    data = {"stop_id": row.stop_id, "vehicle": driver.vehicle_code, "driver": driver.username,
            "position": list(body.position) if body.position else None}
    if body.type == "arrived":
        steps = [("arrived", None, data)]
    elif body.type == "delivered":
        steps = [("delivered", "delivered", {**data, "recipient": body.recipient, "note": body.note})]
    else:
        steps = [("failed", "failed", {**data, "reason": body.reason, "note": body.note}),
                 ("reattempt", "reattempt",
                  {"reason": f"delivery failed ({body.reason}): back to the dispatcher for a re-attempt",
                   "stop_id": row.stop_id})]
    moves = order_moves(row.order_id, row.ref, row.order_status, steps, driver.username, at)  # 409 before writing
    lat, lon = body.position if body.position else (None, None)
    event = {"route_id": row.route_id, "stop_pk": row.id, "stop_id": row.stop_id, "driver_id": driver.id,
             "vehicle_id": row.vehicle_id, "type": body.type, "at": at, "received_at": now, "lat": lat, "lon": lon,
             "recipient": body.recipient, "reason": body.reason, "note": body.note, "from_status": row.status,
             "to_status": target}
    if conn.dialect.name == "postgresql":  # the event, the order's moves and the stop's status: one statement
        ((event_id, open_others),) = driver_rows(
            conn, _pg_writes(conn.dialect, len(moves.rows), moves.status != row.order_status),
            _pg_params(event, moves, row.id, target))
    else:  # SQLite: the writing transaction holds the database's lock from BEGIN, so the first read's count holds
        event_id = conn.execute(_EVENT_INSERT, event).scalar_one()
        write_order_moves(session, row.order_status, moves)
        conn.execute(_STOP_STATUS, {"stop_pk": row.id, "new_status": target})
        open_others = row.open_stops - (0 if row.status in lifecycle.STOP_DONE else 1)
    audit.append_many(session, moves.entries[:1])  # the audit log in the order the ORM path writes it
    if body.type != "arrived":
        door = custody.Door(row.id, row.stop_id, row.order_id, row.ref, row.route_id, row.vehicle_id,
                            driver.vehicle_code or "")
        custody.record_at_door(session, door, body.type, at, driver.username, position=body.position,
                               recipient=body.recipient, note=body.note,
                               reason=body.reason if body.type == "failed" else None)
    audit.append_many(session, moves.entries[1:])
    if target in lifecycle.STOP_DONE and row.status not in lifecycle.STOP_DONE and open_others == 0:
        route_status = "finished"
        finish_route(session, row.route_id, row.vehicle_id, driver.vehicle_code, driver.id, driver.username,
                     at, now)
    _expire_written(session, (RouteStop, row.id), (Order, row.order_id), (Route, row.route_id))
    return {"event_id": event_id, "stop_id": row.stop_id, "order_ref": row.ref, "type": body.type, "at": at,
            "status": target, "route_status": route_status, "order_status": moves.status, "damaged": []}


_DE_COLUMNS = ("route_id", "stop_pk", "stop_id", "driver_id", "vehicle_id", "type", "at", "received_at", "lat",
               "lon", "recipient", "reason", "note", "from_status", "to_status")
_OE_COLUMNS = ("order_id", "at", "actor", "type", "from_status", "to_status", "data")


@lru_cache(maxsize=8)
def _pg_writes(dialect: Dialect, order_events: int, order_moves: bool) -> str:
    """PostgreSQL: a stop event's writes in one statement (data-modifying CTEs): the order's events (and its
    new status), the stop's new status, and the delivery event, whose id it returns with how many other stops
    of the route are still open (in this statement's snapshot, taken after the route's lock was granted).
    Compiled once per shape and sent as it is (with its 30-odd parameters, SQLAlchemy's per-execution cache key
    walk cost more than the round trips it saves); :func:`_pg_params` gives the parameters as the driver takes
    them."""
    de, oe = DeliveryEvent.__table__, OrderEvent.__table__
    others = _RS.alias("other_open_stops")  # read in this statement's snapshot, taken with the route locked
    open_others = (select(func.count()).where(others.c.route_id == bindparam("cnt_route"),
                                              others.c.status.not_in(  # literals: the SQL is sent as compiled
                                                  [literal_column(f"'{v}'") for v in sorted(lifecycle.STOP_DONE)]),
                                              others.c.id != bindparam("cnt_stop")).scalar_subquery())
    stmt = (de.insert().values({c: bindparam(f"de_{c}", type_=de.c[c].type) for c in _DE_COLUMNS})
            .returning(de.c.id, open_others))
    rows = [{c: bindparam(f"oe{i}_{c}", type_=oe.c[c].type) for c in _OE_COLUMNS} for i in range(order_events)]
    stmt = stmt.add_cte(oe.insert().values(rows).cte("order_events_written"))
    stmt = stmt.add_cte(update(_RS).where(_RS.c.id == bindparam("rs_pk"))
                        .values(status=bindparam("rs_status", type_=_RS.c.status.type)).cte("stop_written"))
    if order_moves:
        stmt = stmt.add_cte(update(_OR).where(_OR.c.id == bindparam("or_pk"))
                            .values(status=bindparam("or_status", type_=_OR.c.status.type)).cte("order_written"))
    return str(stmt.compile(dialect=dialect))


def _pg_params(event: dict, moves: OrderMoves, stop_pk: int, target: str) -> dict:
    params = {f"de_{c}": event[c] for c in _DE_COLUMNS}
    for i, row in enumerate(moves.rows):
        params.update({f"oe{i}_{c}": row[c] for c in _OE_COLUMNS})
        params[f"oe{i}_data"] = json.dumps(row["data"])  # the JSON column's text (what its type would send)
    params.update(rs_pk=stop_pk, rs_status=target, or_pk=moves.rows[0]["order_id"], or_status=moves.status,
                  cnt_route=event["route_id"], cnt_stop=stop_pk)
    return params


def _expire_written(session: Session, *written: tuple[type, int]) -> None:
    """Core statements do not touch ORM objects the session already holds: expire those written here (a session
    that lives across requests, as in tests, or a caller that loaded them) so that they are read again."""
    if not session.identity_map:
        return
    for model, pk in written:
        obj = session.identity_map.get(identity_key(model, pk))
        if obj is not None:
            session.expire(obj)


def finish_route(session: Session, route_id: int, vehicle_id: int, vehicle_code: str | None, driver_id: int,
                 actor: str, at: datetime, now: datetime) -> bool:
    """The route has no stop left to visit: it finishes, the goods of its failed stops go back to the depot,
    and the van is no longer watched for silence. Its last stop done (:func:`stop_event`), or its last open
    stop cancelled (delivery.flows.finish_emptied_routes): a route left started would keep the van watched
    for silence and never record its failed goods back. False, and nothing written, when it is not started."""
    conn = session.connection()
    if not conn.execute(_ROUTE_DONE, {"route_pk": route_id}).rowcount:
        return False
    conn.execute(_EVENT_INSERT, {
        "route_id": route_id, "stop_pk": None, "stop_id": None, "driver_id": driver_id, "vehicle_id": vehicle_id,
        "type": "finished", "at": at, "received_at": now, "lat": None, "lon": None, "recipient": None,
        "reason": None, "note": None, "from_status": "started", "to_status": "finished"})
    _expire_written(session, (Route, route_id))
    for failed in session.scalars(select(RouteStop).where(RouteStop.route_id == route_id,
                                                          RouteStop.status == "failed")):
        custody.record_returned(session, failed, at, actor, reason="back at the depot after a failed delivery")
    if vehicle_code:
        sync_van(session, vehicle_code, now, active=False)
    return True


def _stop_event_orm(session: Session, driver: DriverRef, stop_id: str, body: StopEventIn,
                    now: datetime | None = None) -> dict:
    """A stop event through the ORM, for what the hot path (:func:`stop_event`) leaves to it: damage, and an
    order loaded on a later trip (custody "loaded" first). It writes before it may refuse (an unknown SKU or too
    many damaged, an order move the lifecycle forbids), so it runs in a savepoint that a refusal rolls back:
    the API stores the refusal with the key and commits nothing else."""
    with session.begin_nested():
        return _stop_event_orm_work(session, driver, stop_id, body, now)


def _stop_event_orm_work(session: Session, driver: DriverRef, stop_id: str, body: StopEventIn,
                         now: datetime | None) -> dict:
    now = now or utcnow()
    at = body.at or now
    stop, route, order = _driver_stop(session, driver, stop_id, lock=True, with_order=True)
    try:
        target = lifecycle.stop_target(body.type, stop.status, route_state(route.status))
    except IllegalMove as exc:
        raise _conflict(exc) from None
    lat, lon = body.position if body.position else (None, None)
    event = DeliveryEvent(route_id=route.id, stop_pk=stop.id, stop_id=stop.stop_id, driver_id=driver.id,
                          vehicle_id=route.vehicle_id, type=body.type, at=at, received_at=now, lat=lat, lon=lon,
                          recipient=body.recipient, reason=body.reason, note=body.note, from_status=stop.status,
                          to_status=target)
    session.add(event)
    session.flush()
    data = {"stop_id": stop.stop_id, "vehicle": driver.vehicle_code, "driver": driver.username,
            "position": list(body.position) if body.position else None}
    damaged: list[dict] = []
    if body.type == "damaged":
        damaged = _damage(session, stop, order, body.items or [], event, at)
        record_event(session, order, "damaged", driver.username, data={**data, "items": damaged, "note": body.note},
                     at=at)
    else:
        if _load_out(session, order, driver.username, at, {**data, "reason": "loaded on a later trip"}):
            custody.record_loaded(session, route, at, driver.username, stops=[stop])
        if body.type == "arrived":
            record_event(session, order, "arrived", driver.username, data=data, at=at)
        elif body.type == "delivered":
            record_event(session, order, "delivered", driver.username, to_status="delivered",
                         data={**data, "recipient": body.recipient, "note": body.note}, at=at)
            custody.record_delivered(session, stop, at, driver.username, position=body.position,
                                     recipient=body.recipient, note=body.note)
        else:
            record_event(session, order, "failed", driver.username, to_status="failed",
                         data={**data, "reason": body.reason, "note": body.note}, at=at)
            custody.record_failed(session, stop, at, driver.username, reason=body.reason, position=body.position)
            record_event(session, order, "reattempt", driver.username, to_status="reattempt",
                         data={"reason": f"delivery failed ({body.reason}): back to the dispatcher for a re-attempt",
                               "stop_id": stop.stop_id}, at=at)
    stop.status = target
    route_status = route_state(route.status)
    if target in lifecycle.STOP_DONE:
        left = session.scalars(select(RouteStop.status).where(RouteStop.route_id == route.id)).all()
        if lifecycle.route_finishes(list(left)):
            route_status = "finished"
            session.flush()
            finish_route(session, route.id, route.vehicle_id, driver.vehicle_code, driver.id, driver.username,
                         at, now)
    session.flush()
    return {"event_id": event.id, "stop_id": stop.stop_id, "order_ref": order.ref, "type": body.type, "at": at,
            "status": target, "route_status": route_status, "order_status": order.status, "damaged": damaged}


# ---------------------------------------------------------------------------------- proofs


def add_proof(session: Session, driver: DriverRef, stop_id: str, data: bytes | None,
              now: datetime | None = None) -> dict:
    """A photo or signature for one of the driver's stops, JPEG or PNG by its bytes, at most 5 MB."""
    now = now or utcnow()
    stop, route = _driver_stop(session, driver, stop_id, lock=False)
    if data is None:
        raise Invalid("the multipart form needs a field named file", pointer="/file")
    if len(data) > proofs.MAX_BYTES:
        raise PayloadTooLarge(f"the file has {len(data)} bytes; at most {proofs.MAX_BYTES}")
    content_type = proofs.sniff(data[:16])
    if content_type is None:
        raise UnsupportedMedia("a proof is a JPEG or PNG image (judged by its bytes, not its name or "
                                      "declared type)")
    if stop.status not in lifecycle.PROOF_ALLOWED:
        raise Conflict(f"the stop is {stop.status}: a proof comes at or after the door", stop_status=stop.status,
                       route_status=route_state(route.status))
    sha = hashlib.sha256(data).hexdigest()
    proofs.store(data, sha, content_type)  # the directory or the S3-compatible store (delivery/proofs.py)
    proof = DeliveryProof(stop_pk=stop.id, driver_id=driver.id, sha256=sha, content_type=content_type,
                          size=len(data), at=now)
    session.add(proof)
    session.flush()
    order_ref = session.scalar(select(Order.ref).where(Order.id == stop.order_id))
    return proof_view(proof, stop.stop_id, order_ref)


def proof_view(proof: DeliveryProof, stop_id: str, order_ref: str) -> dict:
    return {"id": proof.id, "stop_id": stop_id, "order_ref": order_ref, "sha256": proof.sha256,
            "content_type": proof.content_type, "size": proof.size, "at": proof.at,
            "url": f"/api/v1/proofs/{proof.id}"}


def proofs_query(driver: DriverRef | None, stop_id: str | None = None, order_ref: str | None = None) -> Select:
    """Proofs with their stop and order; a driver's own only (``driver``), staff any (``None``)."""
    query = (select(DeliveryProof, RouteStop.stop_id, Order.ref, DeliveryProof.id.label("id"))
             .join(RouteStop, RouteStop.id == DeliveryProof.stop_pk)
             .join(Order, Order.id == RouteStop.order_id))
    if driver is not None:
        query = query.where(DeliveryProof.driver_id == driver.id)
    if stop_id is not None:
        query = query.where(RouteStop.stop_id == stop_id)
    if order_ref is not None:
        query = query.where(Order.ref == order_ref)
    return query


def proof_of(session: Session, proof_id: int, driver: DriverRef | None) -> DeliveryProof:
    proof = session.scalar(proofs_query(driver).where(DeliveryProof.id == proof_id))
    if proof is None:
        raise NotFound(NO_SUCH_PROOF)
    return proof


# ------------------------------------------------------------------------------- positions


def record_position(session: Session, driver: DriverRef, body: PositionIn, now: datetime | None = None) -> dict:
    """Where the driver's phone is, kept for the van (re-planning takes the newest of this and the van's GPS)."""
    now = now or utcnow()
    at = body.at or now
    if driver.vehicle_id is None:
        raise Conflict(f"no van is assigned to you ({driver.username}) in drivers.csv")
    if at > now + FUTURE_SLACK:
        raise Invalid(f"the position's time {at.isoformat()} is in the future", pointer="/at")
    lat, lon = body.position
    session.add(DriverPosition(driver_id=driver.id, vehicle_id=driver.vehicle_id, at=at, lat=lat, lon=lon,
                               received_at=now))
    session.flush()
    return {"vehicle": driver.vehicle_code, "at": at, "position": (lat, lon)}
