"""An order's or a lot's trace for quality staff: custody, the temperature history of each interval a line
spent in a compartment, spoilage and breakage risk; and for a lot, where all of it went (a recall).

The order's trace (CONTRACTS.md section 3), the shape the exporters (traceability/exports.py) take as
input. Keep it stable; add keys, never rename or remove::

    {"order_ref": "A1", "delivery_date": "2026-11-24", "status": "delivered",
     "customer": "张三", "address": "…",
     "assessed_at": "…Z",                        # the clock open legs were assessed to
     "custody": [{"type", "at", "vehicle", "compartment", "sku", "lot", "qty", "node", "position",
                  "order_ref", "line_no", "stop_id", "actor", "reason", "data"}, ...],   # time order
     "legs": [{"vehicle": "VAN-01", "device": "TL-0001", "compartment": "chilled",
               "from": "…Z", "to": "…Z" | null, "open": false,  # to is null while still aboard
               "ended_by": "delivered" | "returned" | "disposed" | "loaded" | null,  # loaded: moved to another van
               "failed_at": [...],                # failed attempts during the leg (the goods stayed aboard)
               "lines": [{"line_no", "sku", "lot", "qty"}],
               "readings": [{"device", "seq", "ts", "compartment", "kind": "temperature", "value"}],
               "summary": {"readings", "min_c", "max_c", "mean_c"},
               "door_openings": [{"opened", "closed" | null, "minutes"}],   # this compartment's door
               "shocks": [{"device", "seq", "ts", "compartment": null, "kind": "shock", "value"}],
               "max_shock_g": 2.7 | null}, ...],
     "spoilage_risk": {"level": "ok" | "watch" | "at_risk" | "reject", "reasons": ["…"],
                       "products": [{"sku", "name", "level", "reasons", "figures"}]},
     "breakage_risk": {same shape}}

A leg is one line's (and lot's) time in one compartment of one van: from its ``loaded`` custody event to
its ``delivered``, ``returned`` or ``disposed`` one (or its loading into another van). A ``failed`` attempt
does not end it: custody says the goods stay in the van until they are returned or delivered on a later
attempt, and they keep warming or shaking meanwhile; the attempt is listed in ``failed_at``. Lines that
shared a compartment over the same interval share one leg. A leg still open is assessed up to
``assessed_at``. ``readings`` are the compartment's temperatures inside the leg only; ``shocks`` lists the
van's shock readings inside the leg at or above the hard-jolt level of the most fragile product in it (the
risk uses every one).

Readings are fetched by index range on ix_telemetry_readings_vehicle_kind_ts (vehicle, kind, compartment,
ts), never loaded whole: one range per leg for one order; for a day's orders (:func:`assess_orders`), one
range per van, kind and compartment covering all the day's legs of that van, sliced per leg in memory.

Driver damage is read from the order's ``damaged`` events (fulfillment's order history, written by the
same driver report that writes delivery's stop_damages, with the same SKUs and quantities plus the
driver's note): traceability sits below delivery and may not import it (ARCHITECTURE.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from cachetools import LRUCache, TTLCache
from sqlalchemy import BindParameter, Row, Select, String, Subquery, bindparam, cast, delete, func, or_, select, union
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from core.audit import utc_text
from core.errors import Invalid, NotFound
from core.hot import Hot
from core.settings import get_settings
from core.timeutil import local_datetime, utcnow
from fulfillment.models import DAMAGE_REPORTS, Order, OrderEvent, OrderLine, Reservation
from routing.models import RouteStop
from telemetry.models import TelemetryReading
from telemetry.service import READING_COMPARTMENTS, readings_query, span_readings
from traceability import risk
from traceability.custody import event_views
from traceability.models import CustodyEvent, KeptRisk
from warehouses.models import LotHold, Node, Product, StockLot, Vehicle

_ENDS = ("delivered", "returned", "disposed")
_ABOARD = ("loaded", "failed")


def _z(moment: datetime | None) -> str | None:
    return utc_text(moment) if moment is not None else None


# ----------------------------------------------------------------------------- readings


_R_C = TelemetryReading.__table__.c
_COUNTED_KINDS = ("temperature", "shock")  # what risk reads: a leg's temperatures and shocks
_COUNTED = (_R_C.kind.in_(_COUNTED_KINDS), _R_C.compartment.in_(READING_COMPARTMENTS))
_VAN_SPAN = Hot(span_readings(_COUNTED_KINDS))  # a van's counted readings over a span, in one statement


class Readings:
    """Readings by index range. ``spans``: per van, a time range to fetch once and slice per leg (a day's
    assessment): the first leg of a van asks for all its counted readings of the span in one statement (every
    compartment's temperatures and the shocks: a van's legs need two or three of them, and one statement a van
    cost less than one a kind and compartment); a leg outside its van's span is fetched on its own."""

    def __init__(self, session: Session, spans: dict[int, tuple[datetime, datetime]] | None = None,
                 cache: dict | None = None) -> None:
        self.session = session
        self.spans = spans or {}
        # (van, kind, compartment) -> (times, rows) over the van's span; ``cache``: fetched earlier for these spans
        self.cache: dict[tuple[int, str, str], tuple[list[datetime], list[tuple]]] = cache if cache is not None else {}
        self.queries = 0

    def _fetch(self, vehicle_id: int, kind: str | None, compartment: str | None, start: datetime,
               end: datetime) -> list[tuple]:
        """(ts, device, seq, value) rows of one kind and compartment; ``kind`` None: every counted kind and
        compartment, each row with its kind and compartment after those four."""
        self.queries += 1
        if kind is None:
            params = {"van": vehicle_id, "start": start, "end": end}
            return [tuple(row) for row in _VAN_SPAN.rows(self.session.connection(), params)]
        r = TelemetryReading
        query = readings_query(vehicle_id, start, end, kind, compartment).with_only_columns(
            r.ts, r.device, r.seq, r.value)
        return [tuple(row) for row in self.session.execute(query)]

    def _fill(self, vehicle_id: int, span: tuple[datetime, datetime]) -> None:
        """Every counted (kind, compartment) of the van over its span, an empty one included: a key in the cache
        means fetched over the span (trace._redo adds what came since to the keys there are)."""
        grouped: dict[tuple[int, str, str], tuple[list[datetime], list[tuple]]] = {
            (vehicle_id, kind, compartment): ([], [])
            for kind in _COUNTED_KINDS for compartment in READING_COMPARTMENTS}
        for ts, device, seq, value, kind, compartment in self._fetch(vehicle_id, None, None, *span):
            times, rows = grouped[(vehicle_id, kind, compartment)]
            times.append(ts)
            rows.append((ts, device, seq, value))
        for key, got in grouped.items():
            self.cache.setdefault(key, got)

    def get(self, vehicle_id: int, kind: str, compartment: str, start: datetime, end: datetime) -> list[tuple]:
        """(ts, device, seq, value) of the van's ``kind`` readings in ``compartment`` ('' = none), start <= ts < end."""
        span = self.spans.get(vehicle_id)
        if span is None or start < span[0] or end > span[1]:
            return self._fetch(vehicle_id, kind, compartment, start, end)
        key = (vehicle_id, kind, compartment)
        got = self.cache.get(key)
        if got is None and kind in _COUNTED_KINDS and compartment in READING_COMPARTMENTS:
            self._fill(vehicle_id, span)
            got = self.cache[key]
        elif got is None:
            rows = self._fetch(vehicle_id, kind, compartment, span[0], span[1])
            got = self.cache[key] = ([row[0] for row in rows], rows)
        times, rows = got
        return rows[bisect_left(times, start):bisect_left(times, end)]


# ----------------------------------------------------------------------------- legs


@dataclass
class _Leg:
    vehicle_id: int
    compartment: str
    start: datetime
    route_id: int | None
    end: datetime | None = None
    ended_by: str | None = None
    failed_at: list[datetime] = field(default_factory=list)
    # (line id, lot id, product id, lot code, qty) of each line aboard
    lines: list[tuple[int, int | None, int, str, int]] = field(default_factory=list)


def _intervals(events: Sequence[CustodyEvent]) -> list[_Leg]:
    """Each (line, lot)'s time aboard, from custody rows in the order they were recorded."""
    open_: dict[tuple[int, int | None], _Leg] = {}
    done: list[_Leg] = []
    for ev in sorted(events, key=lambda e: e.id):
        if ev.line_id is None:
            continue
        key = (ev.line_id, ev.lot_id)
        leg = open_.get(key)
        if ev.type == "loaded":
            if leg is not None and leg.vehicle_id == ev.vehicle_id and leg.compartment == ev.compartment:
                continue  # already aboard this compartment
            if leg is not None:
                leg.end, leg.ended_by = ev.at, "loaded"
                done.append(open_.pop(key))
            open_[key] = _Leg(ev.vehicle_id, ev.compartment or "", ev.at, ev.route_id,
                              lines=[(ev.line_id, ev.lot_id, ev.product_id, ev.lot, ev.qty)])
        elif leg is not None and ev.type == "failed":
            leg.failed_at.append(ev.at)
        elif leg is not None and ev.type in _ENDS:
            leg.end, leg.ended_by = ev.at, ev.type
            done.append(open_.pop(key))
    merged: dict[tuple, _Leg] = {}
    for leg in [*done, *open_.values()]:
        k = (leg.vehicle_id, leg.compartment, leg.start, leg.end, leg.ended_by, tuple(leg.failed_at))
        if k in merged:
            merged[k].lines.extend(leg.lines)
        else:
            merged[k] = leg
    return sorted(merged.values(), key=lambda g: (g.start, g.vehicle_id, g.compartment))


def _reading(row: tuple, kind: str, compartment: str | None) -> dict:
    ts, device, seq, value = row
    return {"device": device, "seq": seq, "ts": _z(ts), "compartment": compartment, "kind": kind, "value": value}


def _door_openings(rows: Sequence[tuple], end: datetime) -> list[dict]:
    out, opened = [], None
    for ts, _device, _seq, value in rows:
        if value >= 0.5 and opened is None:
            opened = ts
        elif value < 0.5 and opened is not None:
            minutes = round((ts - opened).total_seconds() / 60, 1)
            out.append({"opened": _z(opened), "closed": _z(ts), "minutes": minutes})
            opened = None
    if opened is not None:
        out.append({"opened": _z(opened), "closed": None, "minutes": round((end - opened).total_seconds() / 60, 1)})
    return out


# ----------------------------------------------------------------------------- assessing


@dataclass
class _Ctx:
    """What a batch of orders needs, read once."""

    products: dict[int, risk.Product]  # by product id
    vehicles: dict[int, tuple[str, str | None]]
    expires: dict[int, date]
    damage: dict[int, list[tuple[datetime, dict]]]  # order id -> its damaged events
    van_damage: dict[int, list[tuple[datetime, int, str, dict]]]  # route id -> (at, order id, ref, data)
    lines: dict[int, tuple[tuple[int, int, int], ...]]  # order id -> (line id, line no, product id), in line order


_REFERENCE_MAX = 200_000  # products, vans, lots, orders' lines (small tuples); the least recently used go first
_reference: LRUCache[tuple, tuple[float, object]] = LRUCache(_REFERENCE_MAX)
_reference_lock = threading.Lock()


def _kept_reference(session: Session, kind: str, ids: Iterable[int],
                    load: Callable[[list[int]], dict[int, object]], default: object = None) -> dict:
    """By id, what does not change during a day (products' limits, vans' codes, lots' expiry, orders' lines),
    kept per process for at most :data:`_MAX_AGE_S`: re-assessing one order after a delivery read five such
    tables again, more statements than the order's own custody and readings. ``load`` reads the missing
    ids; an id it does not answer gets ``default`` (kept too: an order with no lines)."""
    url = str(session.get_bind().engine.url)
    clock = time.monotonic()
    out: dict = {}
    missing: list[int] = []
    with _reference_lock:
        for i in ids:
            got = _reference.get((url, kind, i))
            if got is not None and clock - got[0] < _MAX_AGE_S:
                out[i] = got[1]
            else:
                missing.append(i)
    if missing:
        loaded = load(missing)
        fresh = {i: loaded.get(i, default) for i in missing}
        with _reference_lock:
            for i, value in fresh.items():
                _reference[(url, kind, i)] = (clock, value)
        out.update(fresh)
    return {i: v for i, v in out.items() if v is not None}


_LINES = Hot(select(OrderLine.order_id, OrderLine.id, OrderLine.line_no, OrderLine.product_id)
             .where(OrderLine.order_id.in_(bindparam("ids", expanding=True)))
             .order_by(OrderLine.order_id, OrderLine.line_no))


def _load_lines(session: Session, order_ids: list[int]) -> dict[int, object]:
    lines: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for order_id, line_id, line_no, product_id in _LINES.session_rows(session, {"ids": order_ids}):
        lines[order_id].append((line_id, line_no, product_id))
    return {order_id: tuple(ls) for order_id, ls in lines.items()}


def _context(session: Session, events: Sequence[CustodyEvent], order_ids: list[int]) -> _Ctx:
    damage, van_damage = _damage(session, order_ids, {e.route_id for e in events if e.route_id is not None})
    return _with_reference(session, events, order_ids, damage, van_damage)


def _with_reference(session: Session, events: Sequence[CustodyEvent], order_ids: list[int],
                    damage: dict[int, list], van_damage: dict[int, list]) -> _Ctx:
    """The context with what does not change during a day (kept per process: :func:`_kept_reference`)."""
    lines = _kept_reference(session, "lines", order_ids, lambda ids: _load_lines(session, ids), default=())
    product_ids = {e.product_id for e in events} | {p for ls in lines.values() for _i, _n, p in ls}
    products = _kept_reference(session, "product", product_ids, lambda ids: {
        p.id: _risk_product(p) for p in session.scalars(select(Product).where(Product.id.in_(ids)))})
    vehicle_ids = {e.vehicle_id for e in events if e.vehicle_id is not None}
    vehicles = _kept_reference(session, "vehicle", vehicle_ids, lambda ids: {
        vid: (code, device) for vid, code, device in session.execute(
            select(Vehicle.id, Vehicle.code, Vehicle.device).where(Vehicle.id.in_(ids)))})
    lot_ids = {e.lot_id for e in events if e.lot_id is not None}
    expires = _kept_reference(session, "lot", lot_ids, lambda ids: dict(
        session.execute(select(StockLot.id, StockLot.expires).where(StockLot.id.in_(ids))).all()))
    return _Ctx(products, vehicles, expires, damage, van_damage, lines)


_OWN_DAMAGE = Hot(select(OrderEvent.order_id, OrderEvent.at, OrderEvent.data)
                  .where(OrderEvent.order_id.in_(bindparam("ids", expanding=True)), DAMAGE_REPORTS)
                  .order_by(OrderEvent.id))
_VAN_DAMAGE = Hot(select(RouteStop.route_id, OrderEvent.at, OrderEvent.order_id, Order.ref, OrderEvent.data)
                  .join(OrderEvent, OrderEvent.order_id == RouteStop.order_id)
                  .join(Order, Order.id == RouteStop.order_id)
                  .where(RouteStop.route_id.in_(bindparam("routes", expanding=True)), DAMAGE_REPORTS)
                  .order_by(OrderEvent.id))


def _damage(session: Session, order_ids: list[int], route_ids: set[int]) -> tuple[dict[int, list], dict[int, list]]:
    """Drivers' damage reports: each order's own (by order id), and every order's on the routes (by route id)."""
    damage: dict[int, list] = defaultdict(list)
    for order_id, at, data in _OWN_DAMAGE.session_rows(session, {"ids": list(order_ids)}):
        damage[order_id].append((at, data or {}))
    van_damage: dict[int, list] = defaultdict(list)
    if route_ids:
        for route_id, at, order_id, ref, data in _VAN_DAMAGE.session_rows(session, {"routes": sorted(route_ids)}):
            van_damage[route_id].append((at, order_id, ref, data or {}))
    return damage, van_damage


def _risk_product(p: Product | risk.Product) -> risk.Product:
    if isinstance(p, risk.Product):
        return p
    return risk.Product(sku=p.sku, min_c=p.min_c, max_c=p.max_c, shelf_life_days=p.shelf_life_days,
                        fragile=bool(p.fragile), name=p.name)


def _damage_note(data: dict, sku: str | None = None) -> str:
    items = [i for i in data.get("items") or [] if sku is None or i.get("sku") == sku]
    what = ", ".join(f"{i.get('qty')} × {i.get('sku')}" for i in items)
    note = (data.get("note") or "").strip()
    return "; ".join(x for x in (f"{what} damaged" if what else "", note) if x) or "damage reported"


def _combine(per_product: list[dict]) -> dict:
    """The order's level is its worst product's; the reasons are those of every product not ok (each named),
    or, when all are ok, each product's ok reason."""
    if not per_product:
        return {"level": "ok", "reasons": ["no lines to assess"], "products": []}
    worst = max(risk.LEVELS.index(p["level"]) for p in per_product)
    shown = [p for p in per_product if p["level"] != "ok"] if worst else per_product
    shown = sorted(shown, key=lambda p: -risk.LEVELS.index(p["level"]))
    label = {p["sku"]: f"{p['sku']} {p['name']}".strip() for p in per_product}
    reasons = [f"{label[p['sku']]}: {r}" for p in shown for r in p["reasons"]]
    return {"level": risk.LEVELS[worst], "reasons": reasons, "products": per_product}


def _assess(order: Order, events: Sequence[CustodyEvent], ctx: _Ctx, source: Readings, now: datetime,
            detail: bool, spoilage: risk.SpoilageRules, breakage: risk.BreakageRules) -> dict:
    legs = _intervals(events)
    hold = spoilage.max_hold
    risk_legs: list[risk.Leg] = []
    legs_out: list[dict] = []
    for leg in legs:
        code, device = ctx.vehicles.get(leg.vehicle_id, (None, None))
        end = leg.end if leg.end is not None else max(now, leg.start)
        temps = source.get(leg.vehicle_id, "temperature", leg.compartment, leg.start - hold, end)
        shocks = source.get(leg.vehicle_id, "shock", "", leg.start, end)
        rl = risk.Leg(vehicle=code or "?", compartment=leg.compartment, start=leg.start, end=end,
                      temperatures=[risk.Reading(ts, value) for ts, _d, _s, value in temps],
                      shocks=[risk.Reading(ts, value) for ts, _d, _s, value in shocks])
        risk_legs.append(rl)
        if detail:
            inside = [row for row in temps if row[0] >= leg.start]
            values = [row[3] for row in inside]
            fragile = min((risk.shock_limit(_risk_product(ctx.products[pid]), breakage)
                           for _l, _lot, pid, _c, _q in leg.lines if pid in ctx.products),
                          default=breakage.normal_limit_g) * breakage.hard_share
            doors = source.get(leg.vehicle_id, "door", leg.compartment, leg.start, end)
            legs_out.append({
                "vehicle": code, "device": device, "compartment": leg.compartment,
                "from": _z(leg.start), "to": _z(leg.end), "open": leg.end is None, "ended_by": leg.ended_by,
                "failed_at": [_z(t) for t in leg.failed_at],
                "lines": [{"line_no": None, "sku": ctx.products[pid].sku if pid in ctx.products else None,
                           "lot": lot, "qty": qty, "_line_id": line_id}
                          for line_id, _lot_id, pid, lot, qty in leg.lines],
                "readings": [_reading(row, "temperature", leg.compartment) for row in inside],
                "summary": {"readings": len(values), "min_c": min(values, default=None),
                            "max_c": max(values, default=None),
                            "mean_c": round(sum(values) / len(values), 2) if values else None},
                "door_openings": _door_openings(doors, end),
                "shocks": [_reading(row, "shock", None) for row in shocks if row[3] >= fragile],
                "max_shock_g": max((row[3] for row in shocks), default=None),
            })
    by_product: dict[int, list[int]] = defaultdict(list)  # product id -> indexes of its legs
    for i, leg in enumerate(legs):
        for _l, _lot, pid, _c, _q in leg.lines:
            if i not in by_product[pid]:
                by_product[pid].append(i)
    line_products = list(dict.fromkeys(pid for _i, _n, pid in ctx.lines.get(order.id, [])))
    own_damage = ctx.damage.get(order.id, [])
    spoil_out, break_out = [], []
    for pid in line_products:
        p = ctx.products[pid]
        rp = _risk_product(p)
        mine = [risk_legs[i] for i in by_product.get(pid, [])]
        lots = {lot_id for i in by_product.get(pid, []) for _l, lot_id, q, _c, _q in legs[i].lines if q == pid}
        days_left = None
        if mine and lots and all(lot in ctx.expires for lot in lots):
            begins = min(leg.start for leg in mine)
            ends = min(local_datetime(ctx.expires[lot] + timedelta(days=1), datetime.min.time()) for lot in lots)
            days_left = (ends - begins).total_seconds() / 86400
        s = risk.spoilage_risk(rp, mine, spoilage, days_left=days_left)
        damage = [risk.Damage(at, _damage_note(data, p.sku), own_order=True, order_ref=order.ref)
                  for at, data in own_damage if any(i.get("sku") == p.sku for i in data.get("items") or [])]
        for i in by_product.get(pid, []):
            leg = legs[i]
            end = risk_legs[i].end
            for at, other_id, ref, data in ctx.van_damage.get(leg.route_id, []):
                if other_id != order.id and leg.start <= at <= end:
                    damage.append(risk.Damage(at, _damage_note(data), own_order=False, order_ref=ref))
        b = risk.breakage_risk(rp, mine, damage, breakage)
        spoil_out.append({"sku": p.sku, "name": p.name, **s.as_dict()})
        break_out.append({"sku": p.sku, "name": p.name, **b.as_dict()})
    out = {"order_ref": order.ref, "delivery_date": order.delivery_date.isoformat(), "status": order.status,
           "spoilage_risk": _combine(spoil_out), "breakage_risk": _combine(break_out)}
    if detail:
        line_nos = {i: n for i, n, _p in ctx.lines.get(order.id, [])}
        for leg in legs_out:
            for ln in leg["lines"]:
                ln["line_no"] = line_nos.get(ln.pop("_line_id"))
        out.update(customer=order.customer, address=order.address, assessed_at=_z(now), legs=legs_out)
    return out


def _rules() -> tuple[risk.SpoilageRules, risk.BreakageRules]:
    tz = get_settings().tz
    return risk.SpoilageRules(tz=tz), risk.BreakageRules(tz=tz)


def order_trace(session: Session, order_ref: str, now: datetime | None = None) -> dict:
    """The order's trace in the shape of the module docstring; NotFound for an unknown order."""
    order = session.scalar(select(Order).where(Order.ref == order_ref))
    if order is None:
        raise NotFound(f"no order {order_ref}")
    events = session.scalars(select(CustodyEvent).where(CustodyEvent.order_id == order.id)
                             .order_by(CustodyEvent.at, CustodyEvent.id)).all()
    ctx = _context(session, events, [order.id])
    spoilage, breakage = _rules()
    out = _assess(order, events, ctx, Readings(session), now or utcnow(), True, spoilage, breakage)
    trace = {"order_ref": out.pop("order_ref"), "custody": event_views(session, events), **out}
    return {"order_ref": trace["order_ref"], "delivery_date": trace["delivery_date"], "status": trace["status"],
            "customer": trace["customer"], "address": trace["address"], "assessed_at": trace["assessed_at"],
            "custody": trace["custody"], "legs": trace["legs"], "spoilage_risk": trace["spoilage_risk"],
            "breakage_risk": trace["breakage_risk"]}


def assess_orders(session: Session, orders: Sequence[Order], now: datetime | None = None,
                  readings: Readings | None = None) -> list[dict]:
    """Spoilage and breakage risk of many orders at once, without their legs' readings in the answer:
    ``{"order_ref", "delivery_date", "status", "spoilage_risk", "breakage_risk"}`` each, in the given order.

    Custody, products and damage are read in one query each; readings once per van, kind and compartment
    over the span of that van's legs (``readings``: a source to share between batches of one day).
    """
    if not orders:
        return []
    ids = [o.id for o in orders]
    events = session.scalars(select(CustodyEvent).where(CustodyEvent.order_id.in_(ids))
                             .order_by(CustodyEvent.id)).all()
    return _assess_orders(session, orders, events, now, readings)


def _assess_orders(session: Session, orders: Sequence[Order], events: Sequence[CustodyEvent],
                   now: datetime | None, readings: Readings | None) -> list[dict]:
    spoilage, breakage = _rules()
    return _assess_batch(session, orders, events, now or utcnow(), readings, spoilage, breakage)[0]


def _assess_batch(session: Session, orders: Sequence, events: Sequence, now: datetime, readings: Readings | None,
                  spoilage: risk.SpoilageRules, breakage: risk.BreakageRules,
                  ) -> tuple[list[dict], dict[int, list], Readings, _Ctx]:
    """The orders' assessments and what they were made from: custody rows by order, readings, context."""
    by_order: dict[int, list] = defaultdict(list)
    for ev in events:
        by_order[ev.order_id].append(ev)
    if readings is None:
        readings = Readings(session, day_spans(events, now, spoilage.max_hold))
    ctx = _context(session, events, [o.id for o in orders])
    assessed = [_assess(o, by_order.get(o.id, []), ctx, readings, now, False, spoilage, breakage) for o in orders]
    return assessed, by_order, readings, ctx


# ----------------------------------------------------------------------------- kept assessments


@dataclass(frozen=True)
class _Basis:
    """What a batch of orders was assessed from that the orders share: their vans' readings (as fetched, by van,
    kind and compartment), the drivers' damage reports, and the shared part of the inputs it was read with.
    While no damage is reported, an order of the batch is assessed again from this at a later clock, after a
    custody step of its own, or with the readings its vans sent since added, without reading the rest again
    (:func:`_redo`)."""

    scope: tuple  # whose vans and since when the shared part counts (:func:`_inputs`)
    shared: tuple  # readings' count and newest time, newest damage report
    now: datetime  # the clock the batch was assessed to: open legs' readings were fetched up to it
    born: float  # time.monotonic()
    spans: dict[int, tuple[datetime, datetime]]  # per van, the range its readings were fetched for
    readings: dict  # Readings.cache of the batch
    damage: dict[int, list]
    van_damage: dict[int, list]
    route_ids: frozenset[int]  # the routes van_damage covers


@dataclass(frozen=True)
class _Kept:
    """One order's assessed risks, what they were computed from, and when."""

    inputs: tuple  # the order's custody and its van's damage and readings, as :func:`_inputs` reads them
    spoilage: dict
    breakage: dict
    aboard: bool  # a leg still open: its end is "now", so time alone moves the risk
    born: float  # time.monotonic()
    order: Row | None = None  # (id, ref, delivery_date, status), with the custody rows below: the order's own
    events: tuple = ()  # part of what it was assessed from (None, (): taken from kept_risks, nothing to redo from)
    basis: int | None = None  # the rest: its batch's basis, in _bases while it may be redone from


_MAX_AGE_S = 600.0  # any day (and any kept order) at least this often: fingerprints are aggregates, not rows
_KEPT_MAX = 50_000  # orders (a few kB each); the least recently used go first
_kept: LRUCache[tuple[str, int], _Kept] = LRUCache(_KEPT_MAX)
_kept_lock = threading.Lock()  # guards _kept and _bases
# the bases orders may be redone from, apart from the orders: one holds a batch's readings for the day (a few
# hundred kB for a van), is of no use after _MAX_AGE_S, and must not stay for as long as its orders are kept
_BASES_MAX = 5_000
_bases: TTLCache[int, _Basis] = TTLCache(_BASES_MAX, ttl=_MAX_AGE_S, timer=time.monotonic)
_basis_ids = itertools.count(1)


def _register(basis: _Basis) -> int:
    with _kept_lock:
        key = next(_basis_ids)
        _bases[key] = basis
    return key
assessments = 0  # orders assessed by :func:`order_risks` because their kept assessment did not hold (tests read it)
redone = 0  # of those, assessed again from what was kept of their earlier assessment (:func:`_redo`)


def custody_summary(order_ids: Select | Sequence[int] | BindParameter) -> Subquery:
    """Per order of ``order_ids`` with custody rows: (order_id, n, newest, first): their count, newest id and
    first time. The part of :func:`order_risks`' inputs that is per order; a caller that reads the orders
    anyway may join it in (``custody=`` of :func:`order_risks`) and save a statement."""
    c = CustodyEvent.__table__.c
    return (select(c.order_id, func.count(c.id).label("n"), func.max(c.id).label("newest"),
                   func.min(c.at).label("first"))
            .where(c.order_id.in_(order_ids)).group_by(c.order_id).subquery("custody_summary"))



def _shared_inputs(wanted: Select | BindParameter) -> tuple[Select, Select]:
    """The two forms of :func:`_inputs`' aggregate over the orders ``wanted``: with the vans' readings since
    ``:since``, and the damage part alone (no loading yet). Built once, on table columns: a statement built per
    request cost more Python than the database spent answering it.

    Shaped so that the database cannot but start from the few rows: the readings are counted per van by
    correlated subqueries on the (van, kind, compartment, ts) index, and the damage reports are looked up by
    order in the partial index of damage events. Written as ``vehicle_id IN (vans of the orders)``, PostgreSQL
    planned the morning's new partition, never analysed, as a scan of every van's readings of the day with a
    join per reading: 6-7 ms a route read at 500 readings in the partition, growing with the fleet. The vans
    are answered too (ids joined by commas), for :data:`_AFTER` to name them."""
    c, r, oe, rs, o = (CustodyEvent.__table__.c, TelemetryReading.__table__.c, OrderEvent.__table__.c,
                       RouteStop.__table__.c, Order.__table__.c)
    routes = select(c.route_id).where(c.order_id.in_(wanted), c.route_id.is_not(None))
    near = union(select(o.id).where(o.id.in_(wanted)), select(rs.order_id).where(rs.route_id.in_(routes)))
    damaged = select(func.max(oe.id)).where(DAMAGE_REPORTS, oe.order_id.in_(near)).scalar_subquery()
    vans = (select(c.vehicle_id).where(c.order_id.in_(wanted), c.vehicle_id.is_not(None)).distinct()
            .subquery("vans"))
    of_van = (r.vehicle_id == vans.c.vehicle_id, *_COUNTED, r.ts >= bindparam("since"))
    per_van = select(vans.c.vehicle_id, select(func.count()).where(*of_van).scalar_subquery().label("n"),
                     select(func.max(r.ts)).where(*of_van).scalar_subquery().label("newest")).subquery("per_van")
    readings = select(func.coalesce(func.sum(per_van.c.n), 0), func.max(per_van.c.newest), damaged,
                      func.aggregate_strings(cast(per_van.c.vehicle_id, String), ","))
    return readings, select(damaged)


# the readings :func:`_shared_inputs` counts, those after ``:after`` only, of the vans it named: what they sent
# since an assessment (:func:`_redo`), in the order the readings' fetch uses
_AFTER = Hot(select(_R_C.vehicle_id, _R_C.kind, _R_C.compartment, _R_C.ts, _R_C.device, _R_C.seq, _R_C.value)
             .where(_R_C.vehicle_id.in_(bindparam("vans", expanding=True)), *_COUNTED, _R_C.ts > bindparam("after"))
             .order_by(_R_C.ts, _R_C.device, _R_C.seq, _R_C.kind, _R_C.compartment))


_RS_C = RouteStop.__table__.c
# the orders of a van's trips (``trip_ids``: the routes' ids), or a list of order ids (``ids``)
ON_TRIPS = select(_RS_C.order_id).where(_RS_C.route_id.in_(bindparam("trip_ids", expanding=True)))
_BY_IDS = bindparam("ids", expanding=True)
# run on PostgreSQL's cursor (core.hot): the route read's statements
_SHARED = {wanted: tuple(Hot(s) for s in _shared_inputs(by))
           for wanted, by in (("trips", ON_TRIPS), ("ids", _BY_IDS))}
_OWN = Hot(select(custody_summary(_BY_IDS)))


def _inputs(session: Session, ids: Sequence[int], margin: timedelta, trip_ids: Sequence[int] | None = None,
            own: dict[int, tuple] | None = None) -> tuple[dict[int, tuple], tuple]:
    """What the orders' risk depends on that changes during a day, in two aggregate statements on indexes
    (one when ``own``, the first, was read by the caller):

    * per order, its custody rows (count, newest id, first time): a loading, delivery, failure, return;
    * for all of them, the newest damage report of theirs or of any order on a route they were loaded
      on (the van's damage counts for every order aboard), and the count and newest time of the
      temperature and shock readings of the vans they were loaded on, from ``margin`` before the first
      loading on (a reading stored late, for a time already past, changes the count).

    ``trip_ids``: routes whose orders include these (a van's day), named by the routes in SQL; the shared part
    then covers all their orders, so it changes at least whenever these orders' does. Returns the inputs by
    order id (own part first: three values) and the scope the shared part was counted over (the routes or
    orders, since when, and the vans whose readings it counted): two equal shared parts say nothing changed only
    when read over the same scope.
    Products' limits, lots' expiry dates and order lines do not change during a day (a scenario reload
    makes a new plan); :data:`_MAX_AGE_S` bounds them anyway.
    """
    conn = session.connection()
    params: dict = {"trip_ids": list(trip_ids)} if trip_ids is not None else {"ids": list(ids)}
    with_readings, damage_only = _SHARED["trips" if trip_ids is not None else "ids"]
    if own is None:
        own = {order_id: (n, newest, first) for order_id, n, newest, first in _OWN.rows(conn, {"ids": list(ids)})}
    firsts = [first for _n, _newest, first in own.values() if first is not None]
    since = min(firsts) - margin if firsts else None
    vans: tuple[int, ...] = ()
    if since is not None:
        n, newest, damaged, named = with_readings.rows(conn, {**params, "since": since})[0]
        shared = (int(n), newest, damaged)
        vans = tuple(sorted(int(van) for van in named.split(","))) if named else ()
    else:
        shared = (0, None, damage_only.rows(conn, params)[0][0])
    scope = ("trips", tuple(trip_ids)) if trip_ids is not None else ("ids", tuple(ids))
    return {order_id: (*own.get(order_id, (0, None, None)), *shared) for order_id in ids}, (*scope, since, vans)


_KR = KeptRisk.__table__
_STORED = Hot(select(_KR.c.order_id, _KR.c.inputs, _KR.c.spoilage, _KR.c.breakage, _KR.c.aboard,
                     _KR.c.assessed_at).where(_KR.c.order_id.in_(_BY_IDS)))
_upsert = pg_insert(_KR)
_STORE = _upsert.on_conflict_do_update(index_elements=[_KR.c.order_id], set_={
    name: _upsert.excluded[name] for name in ("inputs", "spoilage", "breakage", "aboard", "assessed_at")})
stored_hits = 0  # orders taken from kept_risks, assessed by another process (tests read it)


def _digest(inputs: tuple, rules: str) -> str:
    """The inputs as text that every process writes alike (kept_risks.inputs), with the rules they were assessed
    by (``rules``: :func:`_rules_tag`), so that a process with other rules (a new release, other settings)
    never takes another's answer."""
    return json.dumps([rules, *(v.isoformat() if isinstance(v, datetime) else v for v in inputs)],
                      separators=(",", ":"))


def _rules_tag(spoilage: risk.SpoilageRules, breakage: risk.BreakageRules) -> str:
    return hashlib.sha256(repr((spoilage, breakage)).encode()).hexdigest()[:16]


def _check(assessed: dict) -> dict:
    """What a risk check shows of an assessed risk (delivery.service.stop_checks): its level and reasons."""
    return {"level": assessed["level"], "reasons": assessed["reasons"]}


def _holds(age: float, aboard: bool, ttl: float) -> bool:
    """Whether an assessment this old may still be given (its inputs being the same)."""
    return age < _MAX_AGE_S and not (aboard and age >= ttl)


def _keep(url: str, assessed: list[tuple[int, _Kept]], out: dict[int, tuple[dict, dict]]) -> None:
    """Keep these assessments in this process (the least recently used order goes when full) and answer them."""
    with _kept_lock:
        for order_id, kept in assessed:
            _kept[(url, order_id)] = kept
    for order_id, kept in assessed:
        out[order_id] = (kept.spoilage, kept.breakage)


def order_risks(session: Session, ids: Sequence[int], trip_ids: Sequence[int] | None = None,
                custody: dict[int, tuple] | None = None) -> dict[int, tuple[dict, dict]]:
    """(spoilage, breakage) of each order, each its ``level`` and ``reasons`` as :func:`assess_orders` answers
    them now, reusing an earlier assessment of an order while what it depends on holds. ``trip_ids``: routes
    whose orders include these (a van's day; named by the routes in SQL in place of the list, see
    :func:`_inputs`); ``custody``: :func:`custody_summary`'s rows of these orders, (n, newest, first) by order
    id, when already read.

    Every call reads the orders' inputs from the database (:func:`_inputs`: two statements), so a
    loading, delivery, damage report or reading stored by any process (another API worker, the ingestor)
    shows in the very next answer. An order with goods still aboard is assessed again once its assessment is
    COLDCHAIN_RISK_OPEN_TTL_S old (its open leg ends "now": a held reading or a gap in readings grows with
    time alone); any order at least every :data:`_MAX_AGE_S`. In that order of preference, an order is
    answered from: this process's own assessment while it holds; this process's earlier assessment redone
    from what it was computed from when the clock, the order's own custody or its vans' new readings moved
    (:func:`_redo`: no readings read again but those sent since, no damage reports, which is what assessing
    costs); on PostgreSQL, one another process
    stored in kept_risks with the same inputs (one statement, only for orders this process cannot answer:
    with several API workers, a driver's first request of the day is assessed by one worker instead of
    each); else assessed afresh. Every assessment made here is stored there (one statement). The lock guards
    the map only: assessing runs outside it, so one request's statements never hold up another's.
    """
    global assessments, stored_hits, redone
    if not ids:
        return {}
    spoilage, breakage = _rules()
    ttl = get_settings().risk_open_ttl_s
    url = str(session.get_bind().engine.url)
    inputs, scope = _inputs(session, ids, spoilage.max_hold, trip_ids, custody)
    clock = time.monotonic()
    out: dict[int, tuple[dict, dict]] = {}
    stale: list[tuple[int, _Kept, _Basis]] = []
    with _kept_lock:
        for order_id in ids:
            got = _kept.get((url, order_id))
            if got is None:
                continue
            if got.inputs == inputs[order_id] and _holds(clock - got.born, got.aboard, ttl):
                out[order_id] = (got.spoilage, got.breakage)
                continue
            basis = _bases.get(got.basis) if got.basis is not None else None
            if basis is not None and _redoable(basis, inputs[order_id], scope, clock):
                stale.append((order_id, got, basis))
    if len(out) == len(ids):
        return out
    now = utcnow()
    conn = session.connection()
    shared = conn.dialect.name == "postgresql"
    rules = _rules_tag(spoilage, breakage) if shared else ""
    fresh: list[tuple[int, _Kept]] = []
    if stale:
        fresh = _redo(session, stale, inputs, scope, now, spoilage, breakage)
        _keep(url, fresh, out)
        redone += len(fresh)
        assessments += len(fresh)
    missing = [order_id for order_id in ids if order_id not in out]
    if missing and shared:
        wall = utcnow()
        taken = []
        for order_id, digest, spoil, brk, aboard_, at in _STORED.rows(conn, {"ids": missing}):
            age = max(0.0, (wall - at).total_seconds())
            if digest == _digest(inputs[order_id], rules) and _holds(age, aboard_, ttl):
                taken.append((order_id, _Kept(inputs[order_id], spoil, brk, aboard_, clock - age)))
        _keep(url, taken, out)
        stored_hits += len(taken)
        missing = [order_id for order_id in missing if order_id not in out]
    if missing:
        assessments += len(missing)
        new = _assess_fresh(session, missing, inputs, scope, now, spoilage, breakage)
        _keep(url, new, out)
        fresh += new
    if shared and fresh:
        fresh.sort(key=lambda f: f[0])
        # every assessment made here, redone or afresh, for the workers that hold nothing to redo it from; in the
        # request's transaction, in order of order id: two workers writing the same orders take turns and never
        # deadlock (the prune skips what is being written); the rows are held until the request commits
        conn.execute(_STORE, [{"order_id": order_id, "inputs": _digest(kept.inputs, rules), "spoilage": kept.spoilage,
                               "breakage": kept.breakage, "aboard": kept.aboard, "assessed_at": now}
                              for order_id, kept in fresh])
    return out


_OR_C, _CE = Order.__table__.c, CustodyEvent.__table__
# plain rows, not ORM objects: they are kept with the assessment (_Kept) after the session has gone
_ORDER_ROWS = Hot(select(_OR_C.id, _OR_C.ref, _OR_C.delivery_date, _OR_C.status).where(_OR_C.id.in_(_BY_IDS))
                  .order_by(_OR_C.id))
_EVENT_ROWS = Hot(select(_CE).where(_CE.c.order_id.in_(_BY_IDS)).order_by(_CE.c.id))


def _aboard(events: Sequence) -> bool:
    return any(leg.end is None for leg in _intervals(events))


def _assess_fresh(session: Session, ids: list[int], inputs: dict[int, tuple], scope: tuple, now: datetime,
                  spoilage: risk.SpoilageRules, breakage: risk.BreakageRules) -> list[tuple[int, _Kept]]:
    """Assess these orders from the database, keeping what they were assessed from with each (:class:`_Basis`)."""
    orders = _ORDER_ROWS.session_rows(session, {"ids": ids})
    events = _EVENT_ROWS.session_rows(session, {"ids": ids})
    assessed, by_order, readings, ctx = _assess_batch(session, orders, events, now, None, spoilage, breakage)
    born = time.monotonic()
    basis = _register(_Basis(scope, inputs[ids[0]][3:], now, born, readings.spans, readings.cache, ctx.damage,
                             ctx.van_damage, frozenset(e.route_id for e in events if e.route_id is not None)))
    return [(order.id, _Kept(inputs[order.id], _check(a["spoilage_risk"]), _check(a["breakage_risk"]),
                             _aboard(by_order.get(order.id, ())), born, order, tuple(by_order.get(order.id, ())),
                             basis))
            for order, a in zip(orders, assessed, strict=True)]


def _redoable(basis: _Basis, inputs: tuple, scope: tuple, clock: float) -> bool:
    """Whether an order may be assessed again from its basis: no damage reported since (the same newest
    report, counted over the same scope), no reading then newer than the clock the basis was fetched to (its
    open legs' readings stop there; what came since can be added: a reading dated in the future turns this
    off until the clock passes it), and the basis is not older than :data:`_MAX_AGE_S` (the inputs are
    aggregates, not rows)."""
    return (basis.scope == scope and basis.shared[2] == inputs[5] and clock - basis.born < _MAX_AGE_S
            and (basis.shared[1] is None or basis.shared[1] < basis.now))


def _redo(session: Session, stale: list[tuple[int, _Kept, _Basis]], inputs: dict[int, tuple], scope: tuple,
          now: datetime, spoilage: risk.SpoilageRules, breakage: risk.BreakageRules) -> list[tuple[int, _Kept]]:
    """Assess orders again from their kept basis (:func:`_redoable`) to the clock ``now``: an open leg grows;
    an order's custody rows are read again when its own changed (one statement: a delivery, a failure); the
    readings its vans sent since the basis' clock are read and added (one statement), and the basis moves on
    to ``now`` with them. Exact because nothing lay beyond the basis' clock when it was fetched: the rows it
    holds and those added are every row up to ``now``, which the count of the inputs confirms (a reading
    stored late, for a time before the basis' clock, breaks the count: that basis' orders are left out and
    assessed afresh), as is an order whose new custody names a route the basis has no damage reports for."""
    changed = [order_id for order_id, kept, _b in stale if kept.inputs[:3] != inputs[order_id][:3]]
    events_of: dict[int, list] = defaultdict(list)
    if changed:
        for ev in _EVENT_ROWS.session_rows(session, {"ids": changed}):
            events_of[ev.order_id].append(ev)
    groups: dict[int, list[tuple[int, _Kept, tuple]]] = defaultdict(list)
    bases: dict[int, _Basis] = {}
    for order_id, kept, basis in stale:
        events = tuple(events_of.get(order_id, ())) if kept.inputs[:3] != inputs[order_id][:3] else kept.events
        if all(e.route_id is None or e.route_id in basis.route_ids for e in events):
            groups[kept.basis].append((order_id, kept, events))
            bases[kept.basis] = basis
    shared = inputs[stale[0][0]][3:]  # one aggregate for every order of the call
    sent: list | None = None  # the readings after the oldest basis' clock, read once for every basis
    moving = [basis for basis in bases.values() if basis.shared != shared]
    if moving:
        sent = list(_AFTER.session_rows(session, {"vans": list(scope[3]), "after": min(b.now for b in moving)}))
    born = time.monotonic()
    out = []
    for key, group in groups.items():
        basis = bases[key]
        until = max(now, basis.now) + timedelta(microseconds=1)
        # an open leg's van was fetched up to the basis' clock, and nothing lay beyond it: extend it to now
        spans = {van: (lo, until if hi > basis.now else hi) for van, (lo, hi) in basis.spans.items()}
        cache = dict(basis.readings)
        if shared != basis.shared:
            # after the basis' clock, not at it: a reading for that very instant may be held already
            rows = [row for row in sent or () if row.ts > basis.now]
            if shared[0] - basis.shared[0] != len(rows):
                continue  # a reading stored late for a time already past (or one removed): assess afresh
            added: dict[tuple, list[tuple]] = defaultdict(list)
            for van, kind, compartment, *row in rows:
                if (van, kind, compartment) in cache and spans[van][1] == until:
                    added[(van, kind, compartment)].append(tuple(row))
            for key, more in added.items():
                times, held = cache[key]
                cache[key] = (times + [row[0] for row in more], held + more)
        source = Readings(session, spans, cache)
        events = [e for _o, _k, evs in group for e in evs]
        ctx = _with_reference(session, events, [order_id for order_id, _k, _e in group], basis.damage,
                              basis.van_damage)
        assessed = [(order_id, kept, evs, _assess(kept.order, evs, ctx, source, now, False, spoilage, breakage))
                    for order_id, kept, evs in group]
        moved = _register(_Basis(scope, shared, now, basis.born, spans, source.cache, basis.damage,
                                 basis.van_damage, basis.route_ids))
        out += [(order_id, _Kept(inputs[order_id], _check(a["spoilage_risk"]), _check(a["breakage_risk"]),
                                 _aboard(evs), born, kept.order, evs, moved))
                for order_id, kept, evs, a in assessed]
    return out


def prune_kept_risks(session: Session, now: datetime | None = None) -> int:
    """Delete kept_risks rows too old to be taken (:data:`_MAX_AGE_S`): each is written over while its order
    is on a route, and is dead weight after (Celery beat's minute tick calls this, in a transaction of its
    own). Rows a request is writing are skipped (SKIP LOCKED, in order id order, as requests write them), so
    the prune never waits for a driver's request nor makes one wait. Returns the rows deleted."""
    cutoff = (now or utcnow()) - timedelta(seconds=_MAX_AGE_S)
    old = (select(KeptRisk.order_id).where(KeptRisk.assessed_at < cutoff).order_by(KeptRisk.order_id)
           .with_for_update(skip_locked=True))
    return session.execute(delete(KeptRisk).where(KeptRisk.order_id.in_(old.scalar_subquery()))).rowcount


def forget_reference() -> None:
    """Drop what assessing keeps of products, orders' lines, vans and lots (tests that count statements)."""
    with _reference_lock:
        _reference.clear()


def forget_assessments() -> None:
    """Drop every kept order assessment (tests that rebuild data in a rolled-back transaction, benchmarks)."""
    with _kept_lock:
        _kept.clear()
        _bases.clear()
    forget_reference()


def day_spans(events: Iterable[CustodyEvent], now: datetime,
              margin: timedelta = timedelta(minutes=15)) -> dict[int, tuple[datetime, datetime]]:
    """Per van, the time from its first loading to the last moment anything was aboard (now while still
    aboard), widened by ``margin`` at the start (the reading before a leg covers its beginning)."""
    spans: dict[int, tuple[datetime, datetime]] = {}
    for leg in _intervals(list(events)):
        lo, hi = leg.start - margin, (leg.end or max(now, leg.start)) + timedelta(microseconds=1)
        if leg.vehicle_id in spans:
            a, b = spans[leg.vehicle_id]
            spans[leg.vehicle_id] = (min(a, lo), max(b, hi))
        else:
            spans[leg.vehicle_id] = (lo, hi)
    return spans


def day_events(session: Session, day: date) -> list[CustodyEvent]:
    """Custody rows of a delivery day's orders (for :func:`day_spans`)."""
    return session.scalars(select(CustodyEvent).join(Order, Order.id == CustodyEvent.order_id)
                           .where(Order.delivery_date == day).order_by(CustodyEvent.id)).all()


_CURSOR = re.compile(r"([0-3])([0-3])([0-3])-(\d{1,12})")
_DAYS_KEPT = 8


@dataclass
class _DayRisk:
    """A day's orders not ok, worst first, and what they were computed from."""

    fingerprint: tuple
    expires: float  # time.monotonic() after which it is stale (sooner while goods are aboard)
    ranked: list[tuple[tuple[int, int, int, int], dict]]  # ((rank..., order id), assessed), ascending


_day_risks: LRUCache[tuple, _DayRisk] = LRUCache(_DAYS_KEPT)
_day_risks_lock = threading.Lock()
computations = 0  # how many times a day's risk was computed (benchmarks and tests read it)


def _fingerprint(session: Session, day: date, margin: timedelta) -> tuple:
    """What a day's risk depends on, in a few aggregate queries: the day's orders (placed, cancelled), their
    custody rows, their damage reports, and the readings of their vans over the time anything was aboard
    (counted on the readings index; a late reading changes the count). Readings after the day's last
    custody row only matter to goods still aboard, which the cache's time limit covers."""
    c, o = CustodyEvent, Order
    orders = tuple(session.execute(select(func.count(o.id), func.count(o.id).filter(o.status == "cancelled"))
                                   .where(o.delivery_date == day)).one())
    custody = tuple(session.execute(select(func.count(c.id), func.max(c.id), func.min(c.at), func.max(c.at),
                                           func.sum(c.qty), func.sum(c.id))
                                    .join(o, o.id == c.order_id).where(o.delivery_date == day)).one())
    damaged = session.scalar(select(func.max(OrderEvent.id)).join(o, o.id == OrderEvent.order_id)
                             .where(o.delivery_date == day, DAMAGE_REPORTS))
    readings: tuple = ()
    if custody[0]:
        vans = sorted(session.scalars(select(c.vehicle_id).join(o, o.id == c.order_id).distinct()
                                      .where(o.delivery_date == day, c.vehicle_id.is_not(None))))
        r = TelemetryReading
        lo, hi = custody[2] - margin, custody[3] + timedelta(microseconds=1)
        readings = tuple(session.execute(
            select(r.vehicle_id, r.kind, func.count())
            .where(r.vehicle_id.in_(vans), r.kind.in_(("temperature", "shock")),
                   r.compartment.in_(READING_COMPARTMENTS), r.ts >= lo, r.ts < hi)
            .group_by(r.vehicle_id, r.kind).order_by(r.vehicle_id, r.kind)).all()) if vans else ()
    return (orders, custody, damaged, tuple(tuple(x) for x in readings))


def _rank(assessed: dict) -> tuple[int, int, int]:
    """Worst first: the worse of the two levels, then spoilage, then breakage (0 sorts first)."""
    s = risk.LEVELS.index(assessed["spoilage_risk"]["level"])
    b = risk.LEVELS.index(assessed["breakage_risk"]["level"])
    top = len(risk.LEVELS) - 1
    return (top - max(s, b), top - s, top - b)


def _compute_day(session: Session, day: date, now: datetime, batch: int) -> tuple[list, bool]:
    """Assess the day's candidates: orders that went aboard a van or had damage reported (an order never
    aboard has no leg to warm or shake in: both its risks are ok), in batches sharing one reading source."""
    global computations
    computations += 1
    c, o = CustodyEvent, Order
    loaded = select(c.order_id).where(c.type == "loaded")
    damaged = select(OrderEvent.order_id).where(DAMAGE_REPORTS)
    ids = session.scalars(select(o.id).where(o.delivery_date == day, o.status != "cancelled",
                                             or_(o.id.in_(loaded), o.id.in_(damaged))).order_by(o.id)).all()
    events = day_events(session, day)
    spoilage, _breakage = _rules()
    readings = Readings(session, day_spans(events, now, spoilage.max_hold))
    still_aboard = any(leg.end is None for leg in _intervals(events))
    ranked = []
    for i in range(0, len(ids), batch):
        orders = session.scalars(select(o).where(o.id.in_(ids[i:i + batch])).order_by(o.id)).all()
        for order, assessed in zip(orders, assess_orders(session, orders, now, readings), strict=True):
            if assessed["spoilage_risk"]["level"] != "ok" or assessed["breakage_risk"]["level"] != "ok":
                ranked.append(((*_rank(assessed), order.id), assessed))
    ranked.sort(key=lambda x: x[0])
    return ranked, still_aboard


def _day_risk(session: Session, day: date, now: datetime | None, batch: int) -> list:
    """The day's ranked list, from the per-process cache while nothing it depends on changed."""
    spoilage, _breakage = _rules()
    key = (str(session.get_bind().engine.url), day, now)
    fingerprint = _fingerprint(session, day, spoilage.max_hold)
    with _day_risks_lock:
        got = _day_risks.get(key)
        if got is not None and got.fingerprint == fingerprint and time.monotonic() < got.expires:
            return got.ranked
    ranked, still_aboard = _compute_day(session, day, now or utcnow(), batch)
    with _day_risks_lock:
        ttl = get_settings().risk_open_ttl_s if still_aboard and now is None else _MAX_AGE_S
        _day_risks[key] = _DayRisk(fingerprint, time.monotonic() + ttl, ranked)
    return ranked


def forget_day_risks() -> None:
    """Drop every kept day (tests that rebuild the same day in a rolled-back transaction, benchmarks)."""
    with _day_risks_lock:
        _day_risks.clear()
    forget_assessments()


def parse_cursor(after: str | None) -> tuple[int, int, int, int] | None:
    """The position after which a page of :func:`at_risk` starts; Invalid for anything but its own cursor."""
    if after is None:
        return None
    m = _CURSOR.fullmatch(after)
    if m is None:
        raise Invalid(f"after must be the cursor of a previous page's next link, not {after!r}", pointer="/after")
    return (int(m[1]), int(m[2]), int(m[3]), int(m[4]))


def at_risk(session: Session, day: date, limit: int = 100, after: str | None = None,
            now: datetime | None = None, batch: int = 500) -> tuple[list[dict], str | None]:
    """The day's orders whose spoilage or breakage level is not ok, worst first (the worse level, then
    spoilage, then breakage, then the order), each with its levels and reasons. Returns the page after the
    cursor ``after`` and the cursor of the next page (None on the last).

    The day is assessed once and kept (per process) while its fingerprint holds: no new custody row,
    damage report, order or cancel, no new reading in the vans' time aboard; for at most ten minutes, and
    while goods are still aboard (their risk grows by the minute) for at most COLDCHAIN_RISK_OPEN_TTL_S.
    Paging is by keyset on (rank, order), so a page never repeats an order of an earlier one even when the
    list was re-assessed in between.
    """
    start = parse_cursor(after)
    ranked = _day_risk(session, day, now, batch)
    first = bisect_right(ranked, start, key=lambda x: x[0]) if start is not None else 0
    page = ranked[first:first + limit]
    more = first + limit < len(ranked)
    following = None
    if more and page:
        r = page[-1][0]
        following = f"{r[0]}{r[1]}{r[2]}-{r[3]}"
    return [item for _key, item in page], following


# ----------------------------------------------------------------------------- lots


def lot_trace(session: Session, lot: str) -> dict:
    """Everything about one lot code, for a recall: every order and order line (and customer) it went into,
    and where the rest of it is: on hand per node (what is promised out of it), aboard vans, delivered,
    disposed; its holds; its custody. NotFound when no stock and no custody has that lot code.

    Stock rows' qty is what the node received (picking and delivery do not decrease it), so on hand is
    received less what is aboard a van now, delivered or disposed (returned goods are back on hand), and
    reserved on hand is what orders were promised and have not yet taken away.
    """
    stock = session.execute(select(StockLot, Node.code, Product.sku, Product.name)
                            .join(Node, Node.id == StockLot.node_id).join(Product, Product.id == StockLot.product_id)
                            .where(StockLot.lot == lot).order_by(Node.code, Product.sku)).all()
    events = session.scalars(select(CustodyEvent).where(CustodyEvent.lot == lot)
                             .order_by(CustodyEvent.at, CustodyEvent.id)).all()
    if not stock and not events:
        raise NotFound(f"no lot {lot}")
    lot_ids = [row[0].id for row in stock]
    held: dict[tuple[int, int | None], int] = defaultdict(int)  # (line, lot) -> qty of the lot the line holds
    reserved_keys: set[tuple[int, int | None]] = set()
    if lot_ids:
        for lot_id, line_id, qty in session.execute(select(Reservation.lot_id, Reservation.line_id, Reservation.qty)
                                                    .where(Reservation.lot_id.in_(lot_ids))):
            held[(line_id, lot_id)] += qty
            reserved_keys.add((line_id, lot_id))
    last: dict[tuple[int, int | None], CustodyEvent] = {}
    for ev in sorted(events, key=lambda e: e.id):
        if ev.line_id is not None:
            key = (ev.line_id, ev.lot_id)
            last[key] = ev
            if key not in reserved_keys and ev.type in ("picked", "loaded"):  # no longer reserved: re-allocated
                held[key] = max(held.get(key, 0), ev.qty)
    line_ids = {line for line, _lot in held}
    lines = {row[0]: row for row in session.execute(
        select(OrderLine.id, OrderLine.line_no, Product.sku, Order)
        .join(Product, Product.id == OrderLine.product_id).join(Order, Order.id == OrderLine.order_id)
        .where(OrderLine.id.in_(line_ids)))} if line_ids else {}
    codes = dict(session.execute(select(Vehicle.id, Vehicle.code)).all())
    orders: dict[str, dict] = {}
    for (line_id, lot_id), qty in sorted(held.items(), key=lambda kv: (lines[kv[0][0]][3].ref, lines[kv[0][0]][1])):
        _lid, line_no, sku, order = lines[line_id]
        ev = last.get((line_id, lot_id))
        _order_entry(orders, order)["lines"].append(
            {"line_no": line_no, "sku": sku, "qty": qty, "state": ev.type if ev is not None else "reserved",
             "vehicle": codes.get(ev.vehicle_id) if ev is not None and ev.type in _ABOARD else None,
             "at": _z(ev.at) if ev is not None else None})

    aboard, delivered, disposed = [], 0, 0
    out_of_node: dict[int, int] = defaultdict(int)
    for (line_id, lot_id), ev in last.items():
        if ev.type in _ABOARD:
            ref = lines[line_id][3].ref if line_id in lines else None
            aboard.append({"vehicle": codes.get(ev.vehicle_id), "compartment": ev.compartment, "qty": ev.qty,
                           "order_ref": ref, "since": _z(ev.at), "state": ev.type})
            out_of_node[lot_id] += ev.qty
        elif ev.type == "delivered":
            delivered += ev.qty
            out_of_node[lot_id] += ev.qty
    for ev in events:
        if ev.type == "disposed":
            disposed += ev.qty
            if ev.lot_id is not None:
                out_of_node[ev.lot_id] += ev.qty
    promised_here: dict[int, int] = defaultdict(int)  # promised to lines that have not taken it away yet
    for (line_id, lot_id), qty in held.items():
        now_ev = last.get((line_id, lot_id))
        if (line_id, lot_id) in reserved_keys and (now_ev is None or now_ev.type in ("picked", "returned")):
            promised_here[lot_id] += qty
    on_hand = []
    for sl, node, sku, name in stock:
        here = max(sl.qty - out_of_node.get(sl.id, 0), 0)
        on_hand.append({"node": node, "sku": sku, "name": name, "received": sl.qty, "on_hand": here,
                        "reserved": promised_here.get(sl.id, 0), "free": max(here - promised_here.get(sl.id, 0), 0),
                        "expires": sl.expires.isoformat(), "on_hold": bool(sl.on_hold)})
    views = event_views(session, events)
    holds = session.scalars(select(LotHold).where(LotHold.lot == lot).order_by(LotHold.id)).all()
    return {
        "lot": lot,
        "skus": sorted({sku for _sl, _n, sku, _name in stock} | {v["sku"] for v in views if v["sku"]}),
        "on_hold": any(h.released_at is None for h in holds),
        "holds": [hold_view(h) for h in holds],
        "orders": sorted(orders.values(), key=lambda o: o["order_ref"]),
        "remainder": {"on_hand": on_hand, "aboard": aboard,
                      "totals": {"received": sum(r["received"] for r in on_hand),
                                 "on_hand": sum(r["on_hand"] for r in on_hand),
                                 "reserved": sum(r["reserved"] for r in on_hand),
                                 "aboard": sum(a["qty"] for a in aboard), "delivered": delivered,
                                 "disposed": disposed}},
        "custody": views,
    }


def _order_entry(orders: dict[str, dict], order: Order) -> dict:
    entry = orders.get(order.ref)
    if entry is None:
        entry = orders[order.ref] = {"order_ref": order.ref, "delivery_date": order.delivery_date.isoformat(),
                                     "status": order.status, "customer": order.customer, "phone": order.phone,
                                     "address": order.address, "lines": []}
    return entry


def hold_view(h: LotHold) -> dict:
    return {"id": h.id, "lot": h.lot, "reason": h.reason, "held_by": h.held_by, "held_at": _z(h.held_at),
            "active": h.released_at is None, "released_by": h.released_by, "released_at": _z(h.released_at),
            "release_reason": h.release_reason}
