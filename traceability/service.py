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
from telemetry.models import Alert, DriverPosition, TelemetryReading
from telemetry.service import VanWatch, default_engine, last_positions, readings_query, vehicle_id_of, watch_vans
from traceability import risk
from traceability.models import CustodyEvent
from traceability.trace import _door_openings, _intervals
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


def cargo_aboard(session: Session, vans_days: set[tuple[str, str]]) -> dict[str, dict[str, list[dict]]]:
    """What each van still carries (stops not yet delivered on its current routes of that day), per
    compartment class: van code -> class -> [{sku, name, qty, order_refs}]. ``vans_days`` holds
    (van code, ISO date) pairs, e.g. those of open alerts; one statement for all of them."""
    if not vans_days:
        return {}
    days = sorted({date.fromisoformat(d) for _, d in vans_days})
    rows = session.execute(
        select(Vehicle.code, Plan.day, Product.temp_class, Product.sku, Product.name, OrderLine.qty, Order.ref)
        .join(Route, Route.vehicle_id == Vehicle.id).join(Plan, Plan.id == Route.plan_id)
        .join(RouteStop, RouteStop.route_id == Route.id).join(Order, Order.id == RouteStop.order_id)
        .join(OrderLine, OrderLine.order_id == Order.id).join(Product, Product.id == OrderLine.product_id)
        .where(Plan.status == "current", Plan.day.in_(days), Vehicle.code.in_(sorted({v for v, _ in vans_days})),
               RouteStop.status.in_(_ON_BOARD), Route.status.not_in(_FINISHED_ROUTES))
        .order_by(Vehicle.code, Product.sku, Order.ref)
    ).all()
    grouped: dict[tuple[str, str, str], dict] = {}
    for code, day, cls, sku, name, qty, ref in rows:
        if (code, day.isoformat()) not in vans_days:
            continue
        item = grouped.setdefault((code, cls, sku), {"sku": sku, "name": name, "qty": 0, "order_refs": []})
        item["qty"] += qty
        if ref not in item["order_refs"]:
            item["order_refs"].append(ref)
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for (code, cls, _sku), item in grouped.items():
        out[code][cls].append(item)
    return {code: dict(classes) for code, classes in out.items()}


# ----------------------------------------------------------------------------- a compartment over a period
# What the quality console's van chart shows: the compartment's temperatures, door openings and shocks in a
# period, with the limits the rules applied then (the class default tightened by the products aboard, from
# custody: the goods loaded into that compartment and not yet delivered or returned).

LOOK_BACK = timedelta(days=3)  # goods loaded this long before the period may still be aboard in it


def limits_in_force(session: Session, vehicle_id: int, compartment: str, start: datetime,
                    end: datetime) -> list[dict]:
    """Spans of constant limits over [start, end): ``{"start", "end", "min_c", "max_c", "skus"}``, the class
    default (telemetry's RuleConfig) tightened by the products custody has aboard (RuleConfig.for_products, the
    rules' own tightening); ``skus`` are the products aboard then."""
    line_ids = session.scalars(select(CustodyEvent.line_id).where(
        CustodyEvent.vehicle_id == vehicle_id, CustodyEvent.compartment == compartment,
        CustodyEvent.type == "loaded", CustodyEvent.at < end, CustodyEvent.at >= start - LOOK_BACK,
        CustodyEvent.line_id.is_not(None)).distinct()).all()
    events = session.scalars(select(CustodyEvent).where(CustodyEvent.line_id.in_(line_ids))
                             .order_by(CustodyEvent.id)).all() if line_ids else []
    legs = [leg for leg in _intervals(events) if leg.vehicle_id == vehicle_id and leg.compartment == compartment
            and leg.start < end and (leg.end is None or leg.end > start)]
    product_ids = {pid for leg in legs for _l, _lot, pid, _c, _q in leg.lines}
    products = {p.id: p for p in session.scalars(select(Product).where(Product.id.in_(product_ids)))} \
        if product_ids else {}
    config = default_engine().config
    cuts = sorted({start, end} | {t for leg in legs for t in (leg.start, leg.end) if t is not None and start < t < end})
    spans: list[dict] = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        aboard = {pid for leg in legs if leg.start <= a and (leg.end is None or leg.end > a)
                  for _l, _lot, pid, _c, _q in leg.lines}
        tight = config.for_products([(compartment, products[p].min_c, products[p].max_c)
                                     for p in aboard if p in products])
        span = {"start": a, "end": b, "min_c": tight.temp_min_c.get(compartment),
                "max_c": tight.temp_max_c.get(compartment), "skus": sorted(products[p].sku for p in aboard)}
        last = spans[-1] if spans else None
        if last and (last["min_c"], last["max_c"], last["skus"]) == (span["min_c"], span["max_c"], span["skus"]):
            last["end"] = b
        else:
            spans.append(span)
    return spans


def compartment_history(session: Session, vehicle_code: str, compartment: str, start: datetime,
                        end: datetime) -> dict:
    """A van compartment's [start, end): temperatures ``[(ts, °C)]``, door openings, the van's shocks at or above
    the lowest level the breakage risk counts (a fragile product's hard jolt), the limits in force
    (:func:`limits_in_force`) and the alerts of that compartment (and the van's shock alerts) overlapping it.
    Readings come by index range (telemetry.service.readings_query). NotFound for an unknown van."""
    vehicle_id = vehicle_id_of(session, vehicle_code)
    if vehicle_id is None:
        raise NotFound(f"no vehicle {vehicle_code}")
    r = TelemetryReading

    def rows(kind: str, comp: str) -> list[tuple]:
        query = readings_query(vehicle_id, start, end, kind, comp).with_only_columns(r.ts, r.device, r.seq, r.value)
        return [tuple(row) for row in session.execute(query)]

    rules = risk.BreakageRules()
    hard = rules.fragile_limit_g * rules.hard_share
    alerts = session.scalars(
        select(Alert).where(Alert.vehicle_id == vehicle_id, Alert.started_at < end,
                            (Alert.ended_at.is_(None)) | (Alert.ended_at >= start),
                            (Alert.compartment == compartment) | (Alert.kind == "shock"))
        .order_by(Alert.started_at, Alert.id)).all()
    return {"vehicle": vehicle_code, "compartment": compartment, "start": start, "end": end,
            "temperatures": [(ts, value) for ts, _d, _s, value in rows("temperature", compartment)],
            "door_openings": _door_openings(rows("door", compartment), end),
            "shocks": [(ts, value) for ts, _d, _s, value in rows("shock", "") if value >= hard],
            "limits": limits_in_force(session, vehicle_id, compartment, start, end),
            "alerts": alerts}


def lot_legs(session: Session, lot: str, now: datetime | None = None) -> list[dict]:
    """Each time the lot was aboard a van's compartment on one route: ``{"vehicle", "compartment", "start",
    "end" (None while aboard), "qty", "sku", "min_c", "max_c"}`` (the product's range), from its custody legs
    (traceability.trace's intervals) merged per van, compartment and route; oldest first."""
    events = session.scalars(select(CustodyEvent).where(CustodyEvent.lot == lot).order_by(CustodyEvent.id)).all()
    merged: dict[tuple, dict] = {}
    for leg in _intervals(events):
        key = (leg.vehicle_id, leg.compartment, leg.route_id)
        qty = sum(q for _l, _lot, _p, _c, q in leg.lines)
        got = merged.get(key)
        if got is None:
            merged[key] = {"vehicle_id": leg.vehicle_id, "compartment": leg.compartment, "start": leg.start,
                           "end": leg.end, "qty": qty, "product_id": leg.lines[0][2]}
        else:
            got["start"] = min(got["start"], leg.start)
            got["end"] = None if got["end"] is None or leg.end is None else max(got["end"], leg.end)
            got["qty"] += qty
    ids = {m["vehicle_id"] for m in merged.values()}
    codes = dict(session.execute(select(Vehicle.id, Vehicle.code).where(Vehicle.id.in_(ids))).all()) if ids else {}
    pids = {m["product_id"] for m in merged.values()}
    products = {p.id: p for p in session.scalars(select(Product).where(Product.id.in_(pids)))} if pids else {}
    out = []
    for m in sorted(merged.values(), key=lambda m: (m["start"], m["vehicle_id"])):
        p = products.get(m.pop("product_id"))
        out.append({**m, "vehicle": codes.get(m["vehicle_id"]), "sku": p.sku if p else None,
                    "min_c": p.min_c if p else None, "max_c": p.max_c if p else None})
    return out
def day_positions(session: Session, day: date, at: datetime,
                  max_age: timedelta) -> dict[str, tuple[float, float, datetime]]:
    """The newest fix, no older than ``max_age`` at ``at``, of each van with a current route on ``day``: its
    tracker's (telemetry) or its driver's phone's, whichever is newer. code -> (lat, lon, ts); for the
    dispatcher's map. One statement for the trackers (telemetry.last_positions), one for the phones."""
    vans = dict(session.execute(
        select(Vehicle.code, Vehicle.id).distinct().join(Route, Route.vehicle_id == Vehicle.id)
        .join(Plan, Plan.id == Route.plan_id).where(Plan.day == day, Plan.status == "current")).all())
    if not vans:
        return {}
    newest = last_positions(session, list(vans), at, max_age=max_age)
    latest = (select(_PHONE.c.vehicle_id, func.max(_PHONE.c.at).label("at"))
              .where(_PHONE.c.vehicle_id.in_(list(vans.values())), _PHONE.c.at <= at, _PHONE.c.at >= at - max_age)
              .group_by(_PHONE.c.vehicle_id).subquery())
    codes = {vid: code for code, vid in vans.items()}
    for vid, lat, lon, ts in session.execute(
            select(_PHONE.c.vehicle_id, _PHONE.c.lat, _PHONE.c.lon, _PHONE.c.at)
            .join(latest, (latest.c.vehicle_id == _PHONE.c.vehicle_id) & (latest.c.at == _PHONE.c.at))):
        code = codes[vid]
        if code not in newest or ts > newest[code][2]:
            newest[code] = (lat, lon, ts)
    return newest
