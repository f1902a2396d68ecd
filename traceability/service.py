"""What each van carries and whether it is out on a route, told to the telemetry rules.

Telemetry knows vans and compartments, not orders (ARCHITECTURE.md); this room joins the
day's routes with the products on them, so that the rules use the limits of the products
aboard (strawberries at most 4 °C tighten the chilled compartment's 8 °C default) and watch
for silence only the vans that are out. The ingestor's timer and Celery beat call
:func:`sync_vans`; the CLI calls it after planning and re-planning.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.errors import Conflict, NotFound
from core.timeutil import to_local, utcnow
from fulfillment.models import Order, OrderLine, Reservation
from routing.models import Plan, Route, RouteStop
from telemetry.models import DriverPosition
from telemetry.service import VanWatch, last_positions, watch_vans
from traceability.models import CustodyEvent
from warehouses.models import LotHold, Node, Product, StockLot, Vehicle

# A van counts as out from its planned departure until this long after its planned return
# (late vans are still watched); a route a driver started counts until it is done.
ACTIVE_GRACE = timedelta(minutes=30)
_ON_BOARD = ("planned", "arrived")  # stop statuses whose goods are still in the van
_FINISHED_ROUTES = ("done", "broken")


def van_watch(session: Session, day: date, now: datetime | None = None,
              vehicle: str | None = None) -> dict[str, VanWatch]:
    """Each van's watch from the current plans of ``day``.

    With ``now``: a van is active while a route of its is under way (started by its driver, or
    within its planned times), and its cargo is what that route still carries. Without
    ``now``: every van with a route that day is taken as loaded (a simulated day), none active.
    ``vehicle``: that van's watch only.
    """
    query = (select(Route.id, Vehicle.code, Route.status, Route.start_at, Route.end_at)
             .join(Plan, Plan.id == Route.plan_id).join(Vehicle, Vehicle.id == Route.vehicle_id)
             .where(Plan.day == day, Plan.status == "current", Route.status.not_in(_FINISHED_ROUTES)))
    if vehicle is not None:
        query = query.where(Vehicle.code == vehicle)
    routes = session.execute(query).all()
    under_way: dict[int, str] = {}
    for route_id, code, status, start_at, end_at in routes:
        if now is None or status == "started" or start_at <= now <= end_at + ACTIVE_GRACE:
            under_way[route_id] = code
    if not under_way:
        return {}
    aboard = session.execute(
        select(RouteStop.route_id, Product.sku, Product.temp_class, Product.min_c, Product.max_c)
        .join(OrderLine, OrderLine.order_id == RouteStop.order_id).join(Product, Product.id == OrderLine.product_id)
        .where(RouteStop.route_id.in_(list(under_way)), RouteStop.status.in_(_ON_BOARD))
    ).all()
    products: dict[str, dict[str, set[tuple[str, float | None, float | None]]]] = defaultdict(lambda: defaultdict(set))
    for route_id, sku, cls, min_c, max_c in aboard:
        products[under_way[route_id]][cls].add((sku, min_c, max_c))
    return {code: VanWatch(active=now is not None,
                           cargo={cls: _limits(items) for cls, items in sorted(products[code].items())} or None)
            for code in set(under_way.values())}


def _limits(items: set[tuple[str, float | None, float | None]]) -> dict:
    """The tightest range of these products, and the SKUs that set each bound (the ones quality staff look at:
    a warm alert names the products with the lowest maximum, a cold one those with the highest minimum)."""
    maxes = [hi for _s, _lo, hi in items if hi is not None]
    mins = [lo for _s, lo, _hi in items if lo is not None]
    max_c = float(min(maxes)) if maxes else None
    min_c = float(max(mins)) if mins else None
    max_skus = sorted({sku for sku, _lo, hi in items if hi is not None and hi == max_c})
    min_skus = sorted({sku for sku, lo, _hi in items if lo is not None and lo == min_c})
    return {"min_c": min_c, "max_c": max_c, "skus": sorted({*max_skus, *min_skus}),
            "max_skus": max_skus, "min_skus": min_skus}


def sync_vans(session: Session, now: datetime | None = None, day: date | None = None) -> int:
    """Tell the rules what every van carries and which vans are out, as of ``now`` (default: the clock).

    ``day`` without ``now`` loads that day's vans as if all had left (a simulated day).
    Returns how many vans changed.
    """
    if day is not None and now is None:
        return watch_vans(session, van_watch(session, day, None))
    now = now or utcnow()
    today = to_local(now).date()
    watch = van_watch(session, today - timedelta(days=1), now)  # routes that run past midnight
    watch.update(van_watch(session, today, now))
    return watch_vans(session, watch, now)


def sync_van(session: Session, vehicle: str, now: datetime | None = None, active: bool | None = None) -> int:
    """:func:`sync_vans` for one van (a driver's route start or last stop): its cargo and watch as of ``now``,
    without touching the other vans (Celery beat keeps those current every minute). ``active`` overrides
    whether the rules watch it for silence (a started van is out whatever day its route is planned for; a van
    whose last stop is done is not). Returns 1 when its row changed."""
    now = now or utcnow()
    today = to_local(now).date()
    watch = van_watch(session, today - timedelta(days=1), now, vehicle)
    watch.update(van_watch(session, today, now, vehicle))
    mine = watch.get(vehicle, VanWatch(False, None))
    if active is not None:
        mine = VanWatch(active, mine.cargo)
    return watch_vans(session, {vehicle: mine}, now, only=[vehicle])


def van_positions(session: Session, depot_code: str, at: datetime) -> dict[str, tuple[float, float]]:
    """Where the depot's vans are at ``at`` (a fix of the last 15 minutes), for re-planning: a van between stops
    goes on from the road, not from the last stop it reported. The newest of the van's own GPS fix (telemetry)
    and its driver's phone (POST /api/v1/driver/position, for vans without a tracker) wins."""
    vans = dict(session.execute(select(Vehicle.code, Vehicle.id).join(Node, Node.id == Vehicle.depot_id)
                                .where(Node.code == depot_code)).all())
    newest = last_positions(session, list(vans), at)
    for code, vid in vans.items():
        row = session.execute(
            select(_PHONE.c.lat, _PHONE.c.lon, _PHONE.c.at)
            .where(_PHONE.c.vehicle_id == vid, _PHONE.c.at <= at, _PHONE.c.at >= at - PHONE_MAX_AGE)
            .order_by(_PHONE.c.at.desc()).limit(1)).first()
        if row is not None and (code not in newest or row[2] > newest[code][2]):
            newest[code] = (row[0], row[1], row[2])
    return {code: (lat, lon) for code, (lat, lon, _ts) in newest.items()}


_PHONE = DriverPosition.__table__  # phones in vans without a tracker (telemetry keeps them; delivery records them)
PHONE_MAX_AGE = timedelta(minutes=15)


# ----------------------------------------------------------------------------- quality holds
# A hold is on a lot code: every node's stock of it (allocation, pick lists, transfers and re-planning
# all read StockLot.on_hold; allocation also reads the hold table, so stock of the code that comes in
# while it is held is held too). Each hold and release is appended to the audit log.


def _lot_rows(session: Session, lot: str) -> list[StockLot]:
    return list(session.scalars(select(StockLot).where(StockLot.lot == lot).order_by(StockLot.id).with_for_update()))


def _lot_known(session: Session, lot: str, rows: list[StockLot]) -> None:
    if not rows and session.scalar(select(CustodyEvent.id).where(CustodyEvent.lot == lot).limit(1)) is None:
        raise NotFound(f"no lot {lot}")


def active_hold(session: Session, lot: str) -> LotHold | None:
    return session.scalar(select(LotHold).where(LotHold.lot == lot, LotHold.released_at.is_(None)))


def hold_lot(session: Session, lot: str, reason: str, actor: str, now: datetime | None = None) -> LotHold:
    """Put ``lot`` on quality hold: from now on allocation never takes it (orders take another lot or are
    left unallocated with the hold as their reason). Conflict when it is already held."""
    now = now or utcnow()
    rows = _lot_rows(session, lot)
    _lot_known(session, lot, rows)
    held = active_hold(session, lot)
    if held is not None:
        raise Conflict(f"lot {lot} is already on hold since {held.held_at.isoformat()} ({held.reason})")
    hold = LotHold(lot=lot, reason=reason, held_by=actor, held_at=now)
    session.add(hold)
    for row in rows:
        row.on_hold, row.hold_reason = True, reason
    session.flush()
    aboard = held_on_routes(session, lots=[lot])
    audit.append(session, actor, "lot.hold", "lot", lot,
                 {"hold_id": hold.id, "stock": [{"node_id": r.node_id, "qty": r.qty, "reserved": r.reserved}
                                                for r in rows],
                  "on_routes": [{k: a[k] for k in ("order_ref", "vehicle", "date", "qty")} for a in aboard]},
                 why=reason, at=now)
    return hold


def release_lot(session: Session, lot: str, reason: str, actor: str, now: datetime | None = None) -> LotHold:
    """Release the lot's active hold: allocation may take it again. Conflict when it is not on hold."""
    now = now or utcnow()
    rows = _lot_rows(session, lot)
    _lot_known(session, lot, rows)
    hold = active_hold(session, lot)
    if hold is None:
        raise Conflict(f"lot {lot} is not on hold")
    hold.released_by, hold.released_at, hold.release_reason = actor, now, reason
    for row in rows:
        row.on_hold, row.hold_reason = False, None
    session.flush()
    audit.append(session, actor, "lot.release", "lot", lot, {"hold_id": hold.id, "held_by": hold.held_by,
                                                             "held_for": hold.reason}, why=reason, at=now)
    return hold


def holds_query(active: bool = True):  # noqa: ANN201
    query = select(LotHold)
    return query.where(LotHold.released_at.is_(None)) if active else query


def held_on_routes(session: Session, day: date | None = None, vehicle_code: str | None = None,
                   lots: list[str] | None = None, unfinished_only: bool = False,
                   from_day: date | None = None) -> list[dict]:
    """Held stock already on a route (current plans; stops not yet delivered), for the dispatcher: per stop
    and lot, the order, van, quantity and the hold's reason. ``unfinished_only``: routes not yet done;
    ``from_day``: plans of that day or later."""
    hold_reasons = dict(session.execute(select(LotHold.lot, LotHold.reason)
                                        .where(LotHold.released_at.is_(None))).all())
    if lots is not None:
        hold_reasons = {k: v for k, v in hold_reasons.items() if k in lots}
    if not hold_reasons:
        return []
    query = (select(Plan.day, Vehicle.code, RouteStop.stop_id, RouteStop.status, Order.ref, Product.sku,
                    StockLot.lot, func.sum(Reservation.qty))
             .join(Route, Route.plan_id == Plan.id).join(Vehicle, Vehicle.id == Route.vehicle_id)
             .join(RouteStop, RouteStop.route_id == Route.id).join(Order, Order.id == RouteStop.order_id)
             .join(OrderLine, OrderLine.order_id == Order.id).join(Reservation, Reservation.line_id == OrderLine.id)
             .join(StockLot, StockLot.id == Reservation.lot_id).join(Product, Product.id == OrderLine.product_id)
             .where(Plan.status == "current", RouteStop.status != "delivered", StockLot.lot.in_(list(hold_reasons)))
             .group_by(Plan.day, Vehicle.code, RouteStop.stop_id, RouteStop.status, RouteStop.seq, Order.ref,
                       Product.sku, StockLot.lot)
             .order_by(Plan.day, Vehicle.code, RouteStop.seq, Product.sku, StockLot.lot))
    if day is not None:
        query = query.where(Plan.day == day)
    if vehicle_code is not None:
        query = query.where(Vehicle.code == vehicle_code)
    if unfinished_only:
        query = query.where(Route.status.not_in(_FINISHED_ROUTES))
    if from_day is not None:
        query = query.where(Plan.day >= from_day)
    return [{"date": d.isoformat(), "vehicle": van, "stop_id": stop_id, "stop_status": status, "order_ref": ref,
             "sku": sku, "lot": lot, "qty": int(qty), "reason": hold_reasons[lot]}
            for d, van, stop_id, status, ref, sku, lot, qty in session.execute(query)]
