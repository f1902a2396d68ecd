"""Order allocation: which node serves which order from which lots (pure: plain data in, plain data out).

The rule
--------
* Candidates. A delivery order may go to a node that has at least one van and whose service area
  covers the address (shapely ``covers``; a node without a polygon serves within 5 km geodesic of
  itself, the boundary included). A node without a van takes pickup orders only. A pickup order may
  go to its pickup node only.
* Eligible. The candidate holds, for every line, enough usable stock: lots that are not on hold and
  do not expire before the delivery date. A lot expiring ON the delivery date is usable (it is still
  good on that day; ``check_plan.py`` accepts ``expires >= delivery_date``). Lots are taken FEFO:
  earliest expiry first, then lot code. The candidate also has the remaining cold capacity, per
  temperature class, for the order's volume of that class (sum of qty x unit_l of its lines).
* Choice. The nearest eligible candidate by geodesic (WGS-84) distance; a tie (geodesic distances
  within ``tie_km``, 1 m by default) goes to the node that uses fewer lots, then to the lower code.
  Candidates are ranked with a vectorised haversine distance; every eligible candidate whose
  haversine distance is within ``near_tie`` (1 %) of the best one is settled with the exact
  geodesic distance (haversine is within 0.56 % of geodesic, so the result is the geodesic one).
* Orders are processed in the order given (the caller passes them by placement time, then ref).
  Each allocation consumes lot quantities and node capacity, so later orders see what is left.
  Nothing is ever oversold.
* Split (only when ``allow_split`` and no single node is eligible): lines are taken in order; a
  line goes whole to the nearest candidate that can take all of it, preferring a node the order
  already uses; a line no single candidate can take is split by quantity over the candidates,
  nearest first (FEFO at each). Capacity is respected per node. All or nothing: when the split
  cannot cover every line in full, nothing is allocated. A split order has one allocation entry
  per node (same ``order_ref``), as ``check_plan.py`` expects.
* Unallocated orders carry the most informative reason (see ``_Engine._explain``): "unknown SKU X",
  "outside every service area", "outside the service area of every node with a van (covered only
  by pickup-only H)", then stock for the first line no candidate can supply, choosing the state
  closest to serving ("not enough stock of X within reach (at most 2 of 3, at N)" > "stock of X
  within reach is all allocated to earlier orders" > "X is on quality hold (lot L at N)" > "only
  expired lots of X within reach" > "no stock of X within reach (nearest node with it: N)"), then
  "cold capacity of the frozen class full at the covering nodes", then "no single covering node
  holds every line of the order (split not allowed)". Pickup orders: "pickup hub H has no stock
  of X", "pickup hub H has only 1 of the 3 X needed", "X is on quality hold at pickup hub H (lot
  L)", "cold capacity of the chilled class full at pickup hub H", "unknown pickup node H".

How it stays fast (100,000 orders x 2,000 nodes in about 2 s on 2 cores, see
benchmarks/allocation.py): the spatial part runs once for all delivery orders with numpy and
shapely 2 (one bulk ``STRtree.query`` of bounding boxes; a SKU-bitmask prefilter drops nodes that
lack some line's SKU from the start; the exact ``intersects_xy`` / distance test on what is left;
haversine for every (order, node) pair; one argsort). Nodes without a polygon are indexed by a box
around their circle and tested with ``local_km`` (an ellipsoidal flat-earth approximation within
1.2e-5 of geodesic; borderline cases go to the exact geodesic). The sequential part is a plain
Python loop over per-(node, SKU) FEFO lot lists with a pointer to the first non-empty lot.
Failed orders look at every covering node again to explain themselves.

Re-runs (``prior``)
-------------------
A day is often allocated more than once (new orders came in, the dispatcher pressed the button
again). The orders allocated by an earlier run keep their lots: the caller passes those
allocations as ``prior`` and the orders themselves in their place in ``orders``. Their stock and
capacity are never offered to another order, and they are not allocated again; but every other
order's reason is worked out on the day as it stood when that order's turn came in the placement
sequence, where what a prior order holds still counts as there until the prior order's turn. So a
second run over an unchanged day gives the same reasons as the first (which saw that stock before
the prior orders took it), and allocating in two steps explains itself as allocating in one.
Only when that view would have served the order (it was placed before orders that an earlier run
allocated, e.g. it was edited since) does its reason describe what is left now.

Transfer proposals (flagship -> hub) live in ``fulfillment.transfers``.
"""

from __future__ import annotations

import gc
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from typing import NamedTuple

import numpy as np
import shapely
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

from core.geo import EARTH_R_KM, circle_box, geodesic_km, haversine_km, haversine_km1, local_km, local_km1

__all__ = [
    "CLASSES",
    "DEFAULT_RADIUS_KM",
    "Node",
    "Product",
    "Lot",
    "Order",
    "OrderLine",
    "AllocLine",
    "Allocation",
    "Unallocated",
    "AllocationResult",
    "allocate",
    "to_contract",
    "geodesic_km",
    "haversine_km",
    "local_km",
]

CLASSES = ("frozen", "chilled", "ambient")
_CLS = {c: i for i, c in enumerate(CLASSES)}
DEFAULT_RADIUS_KM = 5.0
_EPS_L = 1e-9  # litres of slack in capacity comparisons (check_plan allows 1e-6)
_LOCAL_ERR = 2e-4  # local_km vs geodesic, relative, for radii up to 60 km (measured < 1.2e-5)

_clock = time.perf_counter  # phase timings (wall seconds)



# --------------------------------------------------------------------------------------------
# input and output data


@dataclass(frozen=True, slots=True)
class Node:
    """A flagship store or community hub. Capacities are what is LEFT for the day, in litres
    (``math.inf``: no limit). ``area`` is a shapely polygon in lon/lat order, or None for the
    default 5 km geodesic radius."""

    code: str
    kind: str  # "flagship" | "hub"
    lat: float
    lon: float
    parent: str | None = None
    area: BaseGeometry | None = None
    has_van: bool = True
    frozen_l: float = math.inf
    chilled_l: float = math.inf
    ambient_l: float = math.inf


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    temp_class: str  # "frozen" | "chilled" | "ambient"
    unit_l: float


@dataclass(frozen=True, slots=True)
class Lot:
    """A stock lot at a node; ``qty`` is what is available (on hand minus already reserved)."""

    node: str
    sku: str
    lot: str
    qty: int
    expires: date
    on_hold: bool = False


class OrderLine(NamedTuple):
    """One line of an order (a plain ``(sku, qty)`` tuple is accepted too)."""

    sku: str
    qty: int


class AllocLine(NamedTuple):
    """What an allocation takes: ``qty`` units of lot ``lot`` of ``sku``. A tuple, so it equals the
    plain ``(sku, lot, qty)``."""

    sku: str
    lot: str
    qty: int


@dataclass(frozen=True, slots=True)
class Order:
    """``lines`` are (sku, qty) pairs (``OrderLine`` or plain tuples); repeated SKUs are summed.
    ``lat``/``lon`` may be None for a pickup order."""

    ref: str
    mode: str  # "delivery" | "pickup"
    delivery_date: date
    lat: float | None
    lon: float | None
    lines: tuple[OrderLine | tuple[str, int], ...]
    pickup_node: str | None = None
    allow_split: bool = False


@dataclass(frozen=True, slots=True)
class Allocation:
    """One node's share of an order (``AllocLine``s). A split order has several."""

    order_ref: str
    node: str
    lines: tuple[AllocLine, ...]


@dataclass(frozen=True, slots=True)
class Unallocated:
    order_ref: str
    reason: str


@dataclass(slots=True)
class AllocationResult:
    allocations: list[Allocation] = field(default_factory=list)
    unallocated: list[Unallocated] = field(default_factory=list)
    # (node, sku, lot) -> qty still available after allocation (usable lots only: not held,
    # not expired before the earliest delivery date of the run)
    lots_left: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # node -> {"frozen": l, "chilled": l, "ambient": l} capacity left after allocation
    capacity_left: dict[str, dict[str, float]] = field(default_factory=dict)
    # seconds per phase ("stock", "index", "prepare", "spatial", "allocate", "state") and
    # counters ("pairs", "near_ties", "skipped_candidates", "prior_orders")
    stats: dict[str, float] = field(default_factory=dict)

    def reservations(self) -> dict[tuple[str, str, str], int]:
        """(node, sku, lot) -> qty reserved by this run (what the service writes back)."""
        out: dict[tuple[str, str, str], int] = defaultdict(int)
        for a in self.allocations:
            for sku, lot, qty in a.lines:
                out[(a.node, sku, lot)] += qty
        return dict(out)

    def to_contract(self, day: date | str | None = None) -> dict:
        return to_contract(self, day)


def to_contract(result: AllocationResult, day: date | str | None = None) -> dict:
    """The "allocations" and "unallocated" parts of CONTRACTS.md section 5 (plus "date")."""
    out: dict = {}
    if day is not None:
        out["date"] = day.isoformat() if isinstance(day, date) else str(day)
    out["allocations"] = [
        {
            "order_ref": a.order_ref,
            "node": a.node,
            "lines": [{"sku": s, "lot": lot, "qty": q} for s, lot, q in a.lines],
        }
        for a in result.allocations
    ]
    out["unallocated"] = [{"order_ref": u.order_ref, "reason": u.reason} for u in result.unallocated]
    return out


# --------------------------------------------------------------------------------------------
# service areas (distances: core.geo)


class _Spatial:
    """STRtree over the nodes' service areas (polygons, or boxes around the default circles)."""

    def __init__(self, nodes: Sequence[Node], radius_km: float):
        self.radius_km = radius_km
        geoms = []
        self.is_circle = np.zeros(len(nodes), dtype=bool)
        for i, n in enumerate(nodes):
            if n.area is None:
                self.is_circle[i] = True
                geoms.append(shapely.box(*circle_box(n.lat, n.lon, radius_km)))
            else:
                geoms.append(n.area)
        self.geoms = np.array(geoms, dtype=object)
        shapely.prepare(self.geoms)
        self.tree = STRtree(self.geoms)
        self.lat = np.array([n.lat for n in nodes], dtype=float)
        self.lon = np.array([n.lon for n in nodes], dtype=float)
        self.lat_l, self.lon_l = self.lat.tolist(), self.lon.tolist()
        self.is_circle_l = self.is_circle.tolist()

    def covering(self, lat, lon, prefilter=None, bbox_out: list | None = None):
        """All (point index, node index) pairs where the node's service area covers the point.
        ``prefilter(pi, ni) -> bool mask`` may drop pairs before the exact (costlier) test."""
        if len(lat) == 0:
            e = np.zeros(0, dtype=np.intp)
            return e, e
        pts = shapely.points(lon, lat)
        pi, ni = self.tree.query(pts)
        if bbox_out is not None:  # the raw pairs, sorted by point, to re-test one point later
            bbox_out.append((pi, ni))
        if prefilter is not None and len(pi):
            m = prefilter(pi, ni)
            pi, ni = pi[m], ni[m]
        return self.exact(pi, ni, lat, lon)

    def exact_one(self, vi: np.ndarray, lat: float, lon: float) -> list[int]:
        """``exact`` for one point and a few candidate nodes, with little numpy overhead."""
        vis = vi.tolist()
        circ = self.is_circle_l
        polys = [v for v in vis if not circ[v]]
        out = []
        if polys:
            ok = shapely.intersects_xy(self.geoms[polys], lon, lat).tolist()
            out = [v for v, k in zip(polys, ok, strict=True) if k]
        r = self.radius_km
        err = _LOCAL_ERR + 2.0 * (r / EARTH_R_KM) ** 2
        for v in vis:
            if circ[v]:
                la, lo = self.lat_l[v], self.lon_l[v]
                d = local_km1(lat, lon, la, lo)
                if d <= r * (1 - err) or (d <= r * (1 + err) and geodesic_km(lat, lon, la, lo) <= r):
                    out.append(v)
        return out

    def exact(self, pi, ni, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """The (point, node) pairs, out of candidate pairs, whose service area covers the point."""
        if len(pi) == 0:
            return pi, ni
        circ = self.is_circle[ni]
        keep = np.empty(len(pi), dtype=bool)
        poly = ~circ
        if poly.any():
            pp, pn = pi[poly], ni[poly]
            # for a point, intersects == covers (the boundary counts)
            keep[poly] = shapely.intersects_xy(self.geoms[pn], lon[pp], lat[pp])
        if circ.any():
            cp, cn = pi[circ], ni[circ]
            d = local_km(lat[cp], lon[cp], self.lat[cn], self.lon[cn])
            r = self.radius_km
            err = _LOCAL_ERR + 2.0 * (r / EARTH_R_KM) ** 2  # the flat approximation degrades as d^2
            inside = d <= r * (1 - err)
            unsure = np.flatnonzero((d > r * (1 - err)) & (d <= r * (1 + err)))
            for k in unsure:  # confirm the borderline ones with the exact distance
                inside[k] = geodesic_km(lat[cp[k]], lon[cp[k]], self.lat[cn[k]], self.lon[cn[k]]) <= r
            keep[circ] = inside
        return pi[keep], ni[keep]


# --------------------------------------------------------------------------------------------
# the engine


_SHORT, _ALLOCATED, _HOLD, _EXPIRED, _NONE = range(5)


@dataclass(slots=True, eq=False)  # eq=False: hashed by identity (a key of the split's ``taken``)
class _LotLeft:
    """A usable lot of one (node, SKU) during a run."""

    qty: int  # left for this run's orders
    expires: int  # date ordinal
    lot: str
    start: int  # at the start of the placement sequence: qty + prior
    prior: int = 0  # held by prior allocations of orders whose turn has not come yet


@dataclass(slots=True, eq=False)
class _Stock:
    """The usable lots of one (node, SKU), FEFO (expiry, then lot code)."""

    total: int  # the lots' qty summed
    first: int  # index of the first lot with qty left (len(lots) when none)
    lots: list[_LotLeft]
    prior: int = 0  # the lots' prior summed


class _HeldLot(NamedTuple):
    lot: str
    qty: int
    expires: int


# An order made ready for the loop: (lines as (sku index, qty) pairs with repeated SKUs summed,
# litres per class in CLASSES order, delivery date ordinal). Only ever unpacked whole, so a plain
# tuple: unpacking a NamedTuple costs three times as much, 100,000 times a run.
_Prep = tuple[list[tuple[int, int]], list[float], int]


class _SkuState(NamedTuple):
    status: int  # -1 (enough), _SHORT, _ALLOCATED, _HOLD, _EXPIRED or _NONE
    now: int  # usable qty at the node
    detail: str  # the held lot, for _HOLD
    node: int


class _Pick(NamedTuple):
    lot: _LotLeft
    qty: int


class _PriorLine(NamedTuple):
    """What a prior order holds: ``qty`` of a lot (None when the lot is no longer usable) and
    ``litres`` of class ``cls`` at node ``node``."""

    lot: _LotLeft | None
    stock: _Stock | None
    qty: int
    node: int
    cls: int
    litres: float


def _lot_order(x: _LotLeft) -> tuple:
    return (x.expires, x.lot)  # FEFO: expiry, then lot code


class _Engine:
    def __init__(self, nodes, products, lots, orders, prior, near_tie, tie_km, radius_km, threads=2):
        self.threads = max(1, int(threads))
        self.nodes = list(nodes)
        self.orders = list(orders)
        self.near_tie = near_tie
        self.tie_km = tie_km
        self.radius_km = radius_km
        self.code = [n.code for n in self.nodes]
        self.nidx = {c: i for i, c in enumerate(self.code)}
        order_by_code = sorted(range(len(self.nodes)), key=lambda i: self.code[i])
        self.code_rank = [0] * len(self.nodes)
        for r, i in enumerate(order_by_code):
            self.code_rank[i] = r
        self.cap = [[n.frozen_l, n.chilled_l, n.ambient_l] for n in self.nodes]
        self.skus = [p.sku for p in products]
        self.sidx = {s: i for i, s in enumerate(self.skus)}
        bad = [p.sku for p in products if p.temp_class not in _CLS]
        if bad:
            raise ValueError(f"SKU {bad[0]}: temperature class must be one of {', '.join(CLASSES)}")
        self.pcls = [_CLS[p.temp_class] for p in products]
        self.punit = [float(p.unit_l) for p in products]
        self.nsku = max(1, len(self.skus))
        self.min_day = min((o.delivery_date for o in self.orders), default=date.min).toordinal()
        # key (node_idx * nsku + sku_idx) -> the usable lots
        self.stock: dict[int, _Stock] = {}
        self.held: dict[int, list[_HeldLot]] = defaultdict(list)  # lots on quality hold
        self.expired: dict[int, int] = defaultdict(int)  # key -> qty expired before the first day
        self.sku_nodes: dict[int, set] = defaultdict(set)  # sku_idx -> nodes holding usable lots
        self._sku_geo: dict[int, tuple] = {}
        t = _clock()
        nidx, sidx, nsku, min_day = self.nidx, self.sidx, self.nsku, self.min_day
        # prior allocations of orders of this run: (key, lot) -> qty they hold
        refs = {o.ref for o in self.orders} if prior else ()
        prior = [a for a in prior if a.order_ref in refs] if prior else []
        prior_q: dict[tuple[int, str], int] = defaultdict(int)
        for a in prior:
            n = nidx.get(a.node)
            for ln in a.lines:
                s = sidx.get(ln[0])
                if n is not None and s is not None and ln[2] > 0:
                    prior_q[(n * nsku + s, ln[1])] += ln[2]
        prior_get = prior_q.get
        stock = self.stock
        sku_nodes = self.sku_nodes
        several: list[_Stock] = []  # entries with more than one lot, to sort
        ords: dict[date, int] = {}
        for lt in lots:
            n = nidx.get(lt.node)
            s = sidx.get(lt.sku)
            if n is None or s is None:
                continue
            q = lt.qty
            key = n * nsku + s
            pr = prior_get((key, lt.lot), 0) if prior_q else 0
            if q <= 0:
                if not pr:
                    continue
                q = 0
            e = ords.get(lt.expires)
            if e is None:
                e = ords[lt.expires] = lt.expires.toordinal()
            if lt.on_hold:
                if q:
                    self.held[key].append(_HeldLot(lt.lot, q, e))
            elif e < min_day:
                if q:
                    self.expired[key] += q
            else:
                st = stock.get(key)
                if st is None:
                    stock[key] = _Stock(q, 0, [_LotLeft(q, e, lt.lot, q + pr, pr)], pr)
                    sku_nodes[s].add(n)
                else:
                    if len(st.lots) == 1:
                        several.append(st)
                    st.lots.append(_LotLeft(q, e, lt.lot, q + pr, pr))
                    st.total += q
                    st.prior += pr
        for st in several:
            st.lots.sort(key=_lot_order)
        if prior_q:  # lots left with nothing but what prior orders hold
            for st in stock.values():
                lots_ = st.lots
                first = 0
                while first < len(lots_) and lots_[first].qty == 0:
                    first += 1
                st.first = first
        # what each prior order gives back to the reasons' view when its turn comes
        self._prior_of: dict[str, list[_PriorLine]] = {}
        self.cap_prior = [[0.0, 0.0, 0.0] for _ in self.nodes] if prior else []
        if prior:
            where = {(key, x.lot): (x, st) for key, st in self.stock.items() for x in st.lots if x.prior}
            for a in prior:
                n = nidx.get(a.node)
                if n is None:
                    continue
                held = self._prior_of.setdefault(a.order_ref, [])
                for ln in a.lines:
                    s = sidx.get(ln[0])
                    if s is None or ln[2] <= 0:
                        continue
                    x, st = where.get((n * nsku + s, ln[1]), (None, None))
                    litres = ln[2] * self.punit[s]
                    held.append(_PriorLine(x, st, ln[2], n, self.pcls[s], litres))
                    self.cap_prior[n][self.pcls[s]] += litres
        self._pending = len(self._prior_of)  # prior orders whose turn has not come yet
        self.t_stock = _clock() - t
        t = _clock()
        self.van = [i for i, n in enumerate(self.nodes) if n.has_van]
        self.spatial = _Spatial([self.nodes[i] for i in self.van], radius_km) if self.van else None
        self._all_spatial: _Spatial | None = None  # every node, built when a reason needs it
        self._point_of: dict[int, int] = {}
        self.t_index = _clock() - t

    # ---- stock helpers -------------------------------------------------------------------

    @staticmethod
    def _usable(e: _Stock, day: int) -> int:
        """Usable qty of a stock entry for a delivery day (lots expiring before it excluded)."""
        lots = e.lots
        if e.first < len(lots) and lots[e.first].expires >= day:
            return e.total
        return sum(x.qty for x in lots if x.expires >= day)

    def _fefo_take(self, key: int, qty: int, day: int, taken: dict | None = None,
                   view: bool = False) -> list[_Pick] | None:
        """Lots FEFO for qty without changing anything; ``taken`` maps a lot to the qty already
        tentatively taken from it; ``view``: count what prior orders still hold (see _reason).
        None when there is not enough."""
        e = self.stock.get(key)
        if e is None:
            return None
        out = []
        need = qty
        lots = e.lots
        for i in range(0 if view else e.first, len(lots)):
            x = lots[i]
            if x.expires < day:
                continue
            have = x.qty + x.prior if view else x.qty
            if taken:
                have -= taken.get(x, 0)
            if have <= 0:
                continue
            t = have if have < need else need
            out.append(_Pick(x, t))
            need -= t
            if need == 0:
                return out
        return None

    def _eligible(self, n: int, lines, vol, day: int) -> bool:
        c = self.cap[n]
        if vol[0] > c[0] + _EPS_L or vol[1] > c[1] + _EPS_L or vol[2] > c[2] + _EPS_L:
            return False
        stock = self.stock
        base = n * self.nsku
        for s, q in lines:
            e = stock.get(base + s)
            if e is None or e.total < q:
                return False
            if e.lots[e.first].expires < day and self._usable(e, day) < q:
                return False
        return True

    def _n_lots(self, n: int, lines, day: int) -> int:
        base = n * self.nsku
        return sum(len(self._fefo_take(base + s, q, day) or ()) for s, q in lines)

    def _consume(self, n: int, lines, vol, day: int) -> tuple[AllocLine, ...]:
        c = self.cap[n]
        c[0] -= vol[0]
        c[1] -= vol[1]
        c[2] -= vol[2]
        base = n * self.nsku
        out = []
        skus = self.skus
        stock = self.stock
        for s, q in lines:
            e = stock[base + s]
            lots = e.lots
            i = e.first
            x = lots[i]
            if x.qty > q and x.expires >= day:  # the common case: the first lot has more than enough
                x.qty -= q
                e.total -= q
                out.append(AllocLine(skus[s], x.lot, q))
                continue
            need = q
            sku = skus[s]
            while need:
                x = lots[i]
                i += 1
                if x.expires < day or x.qty == 0:
                    continue
                t = x.qty if x.qty < need else need
                x.qty -= t
                need -= t
                out.append(AllocLine(sku, x.lot, t))
            e.total -= q
            p = e.first
            while p < len(lots) and lots[p].qty == 0:
                p += 1
            e.first = p
        return tuple(out)

    def _release_prior(self, held: list[_PriorLine]) -> None:
        """A prior order's turn: from now on the reasons' view no longer counts what it holds."""
        cap_prior = self.cap_prior
        for h in held:
            if h.lot is not None:
                h.lot.prior -= h.qty
                h.stock.prior -= h.qty
            cap_prior[h.node][h.cls] -= h.litres
        self._pending -= 1

    # ---- static prefilter ------------------------------------------------------------------

    def _static_prefilter(self, di, fl_start, fl_sku):
        """A cheap vectorised test that drops (order, node) pairs that can never be eligible: the
        node lacks, already at the start, any usable lot of some line's SKU (tested on SKU
        bitmasks: SKU i sets bit i mod 128, so a collision may keep a pair, never drop a good
        one). Stock only goes down, so nothing feasible is dropped. The reasons and the split
        look at every covering node again (``_candidates``)."""
        nsku = self.nsku
        nn = len(self.nodes)
        words = 2
        bits = 64 * words
        node_mask = np.zeros((max(nn, 1), words), dtype=np.uint64)
        keys = np.fromiter(self.stock.keys(), dtype=np.int64, count=len(self.stock))
        if len(keys):
            kn, ks = np.divmod(keys, nsku)
            b = ks % bits
            one = np.left_shift(np.uint64(1), (b % 64).astype(np.uint64))
            np.bitwise_or.at(node_mask, (kn, b // 64), one)
        nd = len(di)
        order_mask = np.zeros((max(nd, 1), words), dtype=np.uint64)
        if len(fl_sku):
            line_order = np.repeat(np.arange(nd), np.diff(fl_start))
            b = fl_sku % bits
            np.bitwise_or.at(
                order_mask, (line_order, b // 64), np.left_shift(np.uint64(1), (b % 64).astype(np.uint64))
            )
        nm0, nm1 = node_mask[:, 0].copy(), node_mask[:, 1].copy()
        om0, om1 = order_mask[:, 0].copy(), order_mask[:, 1].copy()
        van = np.array(self.van, dtype=np.intp)

        def prefilter(pi, vi):
            ni = van[vi]
            a = om0[pi]
            ok = (nm0[ni] & a) == a
            a = om1[pi]
            ok &= (nm1[ni] & a) == a
            return ok

        return prefilter

    def _spatial_chunk(self, a: int, b: int, lat, lon, prefilter):
        """Covering (point, van node) pairs of points a..b-1, sorted by point then haversine
        distance; also the raw bounding-box pairs (for ``_candidates``)."""

        def pf(pi, vi):
            return prefilter(pi + a, vi)

        sp = self.spatial
        la, lo = lat[a:b], lon[a:b]
        raw: list = []
        pi, vi = sp.covering(la, lo, pf, raw)
        bpi, bvi = raw[0]
        d = haversine_km(la[pi], lo[pi], sp.lat[vi], sp.lon[vi])
        if len(d):
            # sort by (point, distance): the distance is scaled into [0, 0.5)
            perm = np.argsort(pi + d * (0.5 / (float(d.max()) + 1.0)), kind="stable")
            pi, vi, d = pi[perm], vi[perm], d[perm]
        return pi + a, vi, d, bpi + a, bvi

    def _warm_up_spatial(self) -> None:
        """Build, in this one thread, what GEOS otherwise builds lazily on first use: the tree's
        index and each prepared polygon's point locator. That lazy build is not thread-safe
        (libgeos/geos#825); two chunk threads doing it at once can corrupt the heap (seen once as
        "malloc(): unaligned tcache chunk detected" in the benchmark)."""
        sp = self.spatial
        sp.tree.query(shapely.points(sp.lon[:1], sp.lat[:1]))
        poly = ~sp.is_circle
        if poly.any():
            shapely.intersects_xy(sp.geoms[poly], sp.lon[poly], sp.lat[poly])

    def _candidates(self, o: Order) -> list[int]:
        """Every node with a van covering the order's address, nearest first (haversine)."""
        sp = self.spatial
        if sp is None:
            return []
        p = self._point_of.get(id(o))
        if p is None:
            _, vi = sp.covering(np.array([o.lat], dtype=float), np.array([o.lon], dtype=float))
            vis = vi.tolist()
        else:  # re-test the pairs found by the bulk bounding-box query, without the prefilter
            vis = sp.exact_one(self._bbox_vi[self._bbox_off[p] : self._bbox_off[p + 1]], o.lat, o.lon)
        return [self.van[v] for v in sorted(vis, key=lambda v: haversine_km1(o.lat, o.lon, sp.lat_l[v], sp.lon_l[v]))]

    # ---- main loop -----------------------------------------------------------------------

    def run(self) -> AllocationResult:
        t0 = _clock()
        orders = self.orders
        res = AllocationResult()
        stats = res.stats
        stats["stock"] = self.t_stock
        stats["index"] = self.t_index
        no = len(orders)
        # per-order preparation: merged lines as (sku_idx, qty), volume per class, early reasons
        prep: list[_Prep | None] = [None] * no
        early: dict[int, str] = {}
        dlv_idx = []
        pinfo = {sku: (i, self.pcls[i], self.punit[i]) for i, sku in enumerate(self.skus)}  # idx, class, l
        prior_of = self._prior_of
        fl_sku: list[int] = []  # SKUs of the delivery orders' lines, flattened (static prefilter)
        fl_start: list[int] = []
        days: dict[date, int] = {}
        for k, o in enumerate(orders):
            if prior_of and o.ref in prior_of:
                continue  # allocated by an earlier run: only its turn matters (see _release_prior)
            bad = None
            vol = [0.0, 0.0, 0.0]
            out = []
            for sku, q in o.lines:
                inf = pinfo.get(sku)
                if inf is None:
                    bad = bad or f"unknown SKU {sku}"
                    continue
                if q is None or q <= 0:
                    bad = bad or f"quantity of {sku} must be positive"
                    continue
                si, cl, unit = inf
                out.append((si, q))
                vol[cl] += q * unit
            if len(out) > 1 and len({s for s, _ in out}) < len(out):  # repeated SKU: sum the lines
                merged: dict[int, int] = {}
                for s_, q in out:
                    merged[s_] = merged.get(s_, 0) + q
                out = list(merged.items())
            if bad is None and not out:
                bad = "order has no lines"
            day = days.get(o.delivery_date)
            if day is None:
                day = days[o.delivery_date] = o.delivery_date.toordinal()
            prep[k] = (out, vol, day)
            if bad is not None:
                early[k] = bad
            elif o.mode == "delivery":
                if o.lat is None or o.lon is None:
                    early[k] = "delivery address has no coordinates"
                else:
                    dlv_idx.append(k)
                    fl_start.append(len(fl_sku))
                    for s_, _q in out:
                        fl_sku.append(s_)
            elif o.mode == "pickup":
                if not o.pickup_node:
                    early[k] = "pickup order without a pickup node"
                elif o.pickup_node not in self.nidx:
                    early[k] = f"unknown pickup node {o.pickup_node}"
            else:
                early[k] = f"unknown mode {o.mode!r}"

        t1 = _clock()
        stats["prepare"] = t1 - t0
        # spatial part, vectorised over every delivery order at once
        starts = np.zeros(no + 1, dtype=np.intp)
        cn: list = []
        cd: list = []
        if dlv_idx and self.spatial is not None:
            di = np.array(dlv_idx, dtype=np.intp)
            lat = np.array([orders[k].lat for k in dlv_idx], dtype=float)
            lon = np.array([orders[k].lon for k in dlv_idx], dtype=float)
            fl_start.append(len(fl_sku))
            prefilter = self._static_prefilter(
                di, np.array(fl_start, dtype=np.intp), np.array(fl_sku, dtype=np.intp)
            )
            # chunks may run in threads (STRtree.query and numpy release the GIL); same result
            nd = len(di)
            nchunk = max(1, min(self.threads, nd // 20_000))
            bounds = [nd * i // nchunk for i in range(nchunk + 1)]
            jobs = [(bounds[i], bounds[i + 1], lat, lon, prefilter) for i in range(nchunk)]
            if nchunk > 1:
                self._warm_up_spatial()
                with ThreadPoolExecutor(nchunk) as ex:
                    parts = list(ex.map(lambda a: self._spatial_chunk(*a), jobs))
            else:
                parts = [self._spatial_chunk(*jobs[0])]
            pi, vi, d, bpi, bvi = (np.concatenate([p[i] for p in parts]) for i in range(5))
            self._bbox_vi = bvi
            self._bbox_off = np.searchsorted(bpi, np.arange(nd + 1)).tolist()
            self._point_of = {id(orders[k]): p for p, k in enumerate(dlv_idx)}
            ni = np.array(self.van, dtype=np.intp)[vi]
            oi = di[pi]
            starts = np.searchsorted(oi, np.arange(no + 1), side="left")
            cn = ni.tolist()
            cd = d.tolist()
        starts_l = starts.tolist()
        t2 = _clock()
        stats["spatial"] = t2 - t1
        stats["pairs"] = len(cn)
        n_ties = 0
        n_checks = 0  # candidates found ineligible before the chosen one

        eligible = self._eligible
        consume = self._consume
        cap = self.cap
        nsku = self.nsku
        sget = self.stock.get
        usable = self._usable
        near = 1.0 + self.near_tie
        allocs = res.allocations
        unalloc = res.unallocated
        code = self.code
        n_prior = 0
        for k in range(no):
            o = orders[k]
            if prior_of:
                held = prior_of.pop(o.ref, None)
                if held is not None:
                    self._release_prior(held)
                    n_prior += 1
                    continue
            if k in early:
                unalloc.append(Unallocated(o.ref, early[k]))
                continue
            lines, vol, day = prep[k]
            if o.mode == "pickup":
                n = self.nidx[o.pickup_node]
                if eligible(n, lines, vol, day):
                    allocs.append(Allocation(o.ref, code[n], consume(n, lines, vol, day)))
                    continue
                cands = [n]
            else:
                a, b = starts_l[k], starts_l[k + 1]
                best = -1
                vf, vc, va = vol
                for j in range(a, b):  # the nearest eligible candidate (_eligible, inlined)
                    n = cn[j]
                    c = cap[n]
                    if vf > c[0] + _EPS_L or vc > c[1] + _EPS_L or va > c[2] + _EPS_L:
                        continue
                    base = n * nsku
                    for s, q in lines:
                        e = sget(base + s)
                        if e is None or e.total < q or (e.lots[e.first].expires < day and usable(e, day) < q):
                            break
                    else:
                        best = j
                        break
                n_checks += (best if best >= 0 else b) - a
                if best >= 0:
                    n = cn[best]
                    lim = cd[best] * near + 1e-12
                    ties = None
                    for j in range(best + 1, b):
                        if cd[j] > lim:
                            break
                        if eligible(cn[j], lines, vol, day):
                            if ties is None:
                                ties = [n]
                            ties.append(cn[j])
                    if ties is not None:
                        n_ties += 1
                        n = self._settle(o, ties, lines, day)
                    allocs.append(Allocation(o.ref, code[n], consume(n, lines, vol, day)))
                    continue
                cands = self._candidates(o)
            if o.allow_split and o.mode == "delivery" and cands:
                parts = self._split(o, cands, lines, day)
                if parts is not None:
                    allocs.extend(parts)
                    continue
            unalloc.append(Unallocated(o.ref, self._reason(o, cands, lines, vol, day)))

        t3 = _clock()
        stats["allocate"] = t3 - t2
        stats["near_ties"] = n_ties
        stats["skipped_candidates"] = n_checks
        stats["prior_orders"] = n_prior
        # state left for the caller (and for fulfillment.transfers)
        for key, e in self.stock.items():
            n, s = divmod(key, self.nsku)
            for x in e.lots:
                res.lots_left[(code[n], self.skus[s], x.lot)] = x.qty
        for n, c in enumerate(self.cap):
            res.capacity_left[code[n]] = dict(zip(CLASSES, c, strict=True))
        stats["state"] = _clock() - t3
        return res

    def _settle(self, o: Order, ties: list, lines, day: int) -> int:
        """Near-tie: exact geodesic, then fewer lots, then node code.

        geographiclib costs ~40 us a call, so the ellipsoidal ``local_km`` (within 1.2e-5 of it)
        first rules out the candidates that cannot be the geodesic nearest nor within ``tie_km``
        of it; only the others get the exact geodesic distance. The outcome is the geodesic one."""
        nodes = self.nodes
        loc = {n: local_km1(o.lat, o.lon, nodes[n].lat, nodes[n].lon) for n in ties}
        lmin = min(loc.values())
        lmax = max(loc.values())
        err = _LOCAL_ERR + 2.0 * (lmax / EARTH_R_KM) ** 2
        bound = lmin * (1 + err) + self.tie_km
        close = [n for n, d in loc.items() if d * (1 - err) <= bound]
        if len(close) == 1:
            return close[0]
        g = {n: geodesic_km(o.lat, o.lon, nodes[n].lat, nodes[n].lon) for n in close}
        gmin = min(g.values())
        group = [n for n, dist in g.items() if dist <= gmin + self.tie_km]
        if len(group) == 1:
            return group[0]
        return min(group, key=lambda n: (self._n_lots(n, lines, day), self.code[n]))

    # ---- split ---------------------------------------------------------------------------

    def _split(self, o: Order, cands: list, lines, day: int, *, view: bool = False) -> list[Allocation] | None:
        """The split (see the module docstring), committed; None when it cannot cover every line.
        ``view``: only plan, on the reasons' view of the day (what prior orders still hold counts
        as there); an empty list then says that a plan exists."""
        taken: dict[_LotLeft, int] = defaultdict(int)  # lot -> qty taken by the plan
        cap_used: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        plan: dict[int, list[tuple[_Pick, int]]] = {}  # node -> [(pick, sku_idx)]
        used_order: list[int] = []

        def room(n: int, s: int) -> int:
            cl = self.pcls[s]
            left = self._cap_view(n, view)[cl] - cap_used[n][cl]
            u = self.punit[s]
            if u <= 0 or left == math.inf:
                return 1 << 60
            return max(0, int(math.floor((left + _EPS_L) / u)))

        def take(n: int, s: int, picks: list[_Pick]) -> None:
            if n not in plan:
                plan[n] = []
                used_order.append(n)
            for pick in picks:
                taken[pick.lot] += pick.qty
                plan[n].append((pick, s))
                cap_used[n][self.pcls[s]] += pick.qty * self.punit[s]

        for s, q in lines:
            pref = [n for n in used_order] + [n for n in cands if n not in plan]
            whole = False  # the line goes whole to one node
            for n in pref:
                if room(n, s) >= q:
                    picks = self._fefo_take(n * self.nsku + s, q, day, taken, view)
                    if picks is not None:
                        take(n, s, picks)
                        whole = True
                        break
            if whole:
                continue
            need = q
            for n in cands:
                r = min(room(n, s), need)
                if r <= 0:
                    continue
                key = n * self.nsku + s
                e = self.stock.get(key)
                if e is None:
                    continue
                avail = sum(max(0, (x.qty + x.prior if view else x.qty) - taken.get(x, 0))
                            for x in e.lots[0 if view else e.first:] if x.expires >= day)
                t = min(r, avail)
                if t <= 0:
                    continue
                take(n, s, self._fefo_take(key, t, day, taken, view))
                need -= t
                if need == 0:
                    break
            if need:
                return None
        if view:
            return []
        out = []
        for n in used_order:
            vol = cap_used[n]
            c = self.cap[n]
            for i in range(3):
                c[i] -= vol[i]
            lines_out = []
            for pick, s in plan[n]:
                pick.lot.qty -= pick.qty
                self.stock[n * self.nsku + s].total -= pick.qty
                lines_out.append(AllocLine(self.skus[s], pick.lot.lot, pick.qty))
            for e_key in {n * self.nsku + s for _, s in plan[n]}:
                e = self.stock[e_key]
                p = e.first
                while p < len(e.lots) and e.lots[p].qty == 0:
                    p += 1
                e.first = p
            out.append(Allocation(o.ref, self.code[n], tuple(lines_out)))
        return out

    # ---- reasons -------------------------------------------------------------------------
    # Every reason is worked out on a view of the day: with ``view`` false, what is left now;
    # with ``view`` true, what is left plus what prior orders whose turn has not come yet still
    # hold, i.e. the day as a run without those earlier allocations would have seen it at this
    # order's turn (see "Re-runs" in the module docstring).

    def _usable_view(self, e: _Stock, day: int, view: bool) -> int:
        if not view:
            return self._usable(e, day)
        return sum(x.qty + x.prior for x in e.lots if x.expires >= day)

    def _cap_view(self, n: int, view: bool) -> list[float]:
        c = self.cap[n]
        if not view:
            return c
        p = self.cap_prior[n]
        return [c[0] + p[0], c[1] + p[1], c[2] + p[2]]

    def _has(self, n: int, s: int, q: int, day: int, view: bool) -> bool:
        """Node n has q usable units of SKU s on day."""
        e = self.stock.get(n * self.nsku + s)
        if e is None or (e.total + e.prior if view else e.total) < q:
            return False
        return self._usable_view(e, day, view) >= q

    def _status(self, n: int, s: int, q: int, day: int, view: bool) -> _SkuState:
        """How SKU s stands at node n for q units on day."""
        key = n * self.nsku + s
        e = self.stock.get(key)
        now = init = expired = 0
        if e is not None:
            for x in e.lots:
                if x.expires >= day:
                    now += x.qty + x.prior if view else x.qty
                    init += x.start
                else:
                    expired += x.start
        expired += self.expired.get(key, 0)
        if now >= q:
            return _SkuState(-1, now, "", n)
        if now > 0:
            return _SkuState(_SHORT, now, "", n)
        if init > 0:
            return _SkuState(_ALLOCATED, 0, "", n)
        held = self.held.get(key)
        if held:
            return _SkuState(_HOLD, 0, held[0].lot, n)
        if expired > 0:
            return _SkuState(_EXPIRED, 0, "", n)
        return _SkuState(_NONE, 0, "", n)

    def _nearest_with(self, o: Order, s: int, day: int, view: bool) -> str | None:
        """The nearest node (any kind; straight-line distance on a local flat map, which is enough
        for a hint) with usable stock of SKU s left on day."""
        cache = self._sku_geo.get(s)
        if cache is None:
            have = sorted(self.sku_nodes.get(s, ()))
            la = np.array([self.nodes[n].lat for n in have], dtype=float)
            lo = np.array([self.nodes[n].lon for n in have], dtype=float)
            cache = self._sku_geo[s] = (have, la, lo)
        have, la, lo = cache
        if not have:
            return None
        if o.lat is None or o.lon is None:
            order = sorted(range(len(have)), key=lambda i: self.code[have[i]])
        else:
            dx = lo - o.lon
            dx *= math.cos(math.radians(o.lat))
            dy = la - o.lat
            d2 = dx * dx
            d2 += dy * dy
            i = int(d2.argmin())
            n = have[i]
            if self._usable_view(self.stock[n * self.nsku + s], day, view) > 0:
                return self.code[n]
            order = np.argsort(d2, kind="stable").tolist()
        for i in order:
            n = have[i]
            if self._usable_view(self.stock[n * self.nsku + s], day, view) > 0:
                return self.code[n]
        return None

    def _served_in_view(self, o: Order, cands: list, lines, vol, day: int) -> bool:
        """The reasons' view (prior orders' holdings counted) would have served this order."""
        for n in cands:
            c = self._cap_view(n, True)
            if (vol[0] <= c[0] + _EPS_L and vol[1] <= c[1] + _EPS_L and vol[2] <= c[2] + _EPS_L
                    and all(self._has(n, s, q, day, True) for s, q in lines)):
                return True
        if o.allow_split and o.mode == "delivery" and cands:
            return self._split(o, cands, lines, day, view=True) is not None
        return False

    def _reason(self, o: Order, cands: list, lines, vol, day: int) -> str:
        """The reason on the view of the day at this order's turn (prior orders' holdings still
        counted until their turn); what is left now when that view would have served it."""
        view = self._pending > 0
        if view and self._served_in_view(o, cands, lines, vol, day):
            view = False
        return self._explain(o, cands, lines, vol, day, view)

    def _explain(self, o: Order, cands: list, lines, vol, day: int, view: bool) -> str:
        """The most informative reason, in this order: where (no covering node), then stock
        (a SKU no candidate can supply: short > already allocated > on hold > expired > none),
        then capacity (a candidate has the stock but not the cold capacity), then "no single
        node has every line"."""
        pickup = o.mode == "pickup"
        if not pickup and not cands:
            if self._all_spatial is None:
                self._all_spatial = _Spatial(self.nodes, self.radius_km)
            pi, ni = self._all_spatial.covering(np.array([o.lat]), np.array([o.lon]))
            if len(ni):
                codes = sorted(self.code[n] for n in ni)
                more = f" and {len(codes) - 3} more" if len(codes) > 3 else ""
                return (
                    f"outside the service area of every node with a van "
                    f"(covered only by pickup-only {', '.join(codes[:3])}{more})"
                )
            return "outside every service area"
        where = f"pickup {self.nodes[cands[0]].kind} {self.code[cands[0]]}" if pickup else ""
        skus = self.skus
        # stock, SKU by SKU
        short_skus: list[tuple[int, int, _SkuState]] = []
        for s, q in lines:
            if any(self._has(n, s, q, day, view) for n in cands):
                continue
            st = [self._status(n, s, q, day, view) for n in cands]
            if o.allow_split and not pickup and sum(x.now for x in st) >= q:
                continue
            short_skus.append((s, q, min(st, key=lambda x: (x.status, -x.now, self.code_rank[x.node]))))
        if short_skus:
            s, q, worst = short_skus[0]
            status, now = worst.status, worst.now
            sku = skus[s]
            more = f" (and {len(short_skus) - 1} more SKUs short)" if len(short_skus) > 1 else ""
            at = self.code[worst.node]
            if pickup:
                if status == _SHORT:
                    msg = f"{where} has only {now} of the {q} {sku} needed"
                elif status == _ALLOCATED:
                    msg = f"{where} has no {sku} left: its stock is allocated to earlier orders"
                elif status == _HOLD:
                    msg = f"{sku} is on quality hold at {where} (lot {worst.detail})"
                elif status == _EXPIRED:
                    msg = f"{where} has only expired lots of {sku}"
                else:
                    msg = f"{where} has no stock of {sku}"
            elif status == _SHORT and o.allow_split:
                tot = sum(self._status(n2, s, q, day, view).now for n2 in cands)
                msg = f"not enough stock of {sku} within reach ({tot} of {q} at the covering nodes)"
            elif status == _SHORT:
                msg = f"not enough stock of {sku} within reach (at most {now} of {q}, at {at})"
            elif status == _ALLOCATED:
                msg = f"stock of {sku} within reach is all allocated to earlier orders"
            elif status == _HOLD:
                msg = f"{sku} is on quality hold (lot {worst.detail} at {at})"
            elif status == _EXPIRED:
                msg = f"only expired lots of {sku} within reach"
            else:
                nw = self._nearest_with(o, s, day, view)
                tail = f"nearest node with it: {nw}" if nw else "no node has any left"
                msg = f"no stock of {sku} within reach ({tail})"
            return msg + more
        # capacity: candidates that have the stock of every line
        full = set()
        stocked = False
        for n in cands:
            if all(self._has(n, s, q, day, view) for s, q in lines):
                stocked = True
                c = self._cap_view(n, view)
                full.update(CLASSES[i] for i in range(3) if vol[i] > c[i] + _EPS_L)
        if stocked or o.allow_split:
            if not full:  # split case: classes short across the candidates
                for i in range(3):
                    if vol[i] > 0 and vol[i] > sum(max(0.0, self._cap_view(n, view)[i]) for n in cands) + _EPS_L:
                        full.add(CLASSES[i])
                if not full:
                    full = {CLASSES[i] for i in range(3) if vol[i] > 0}
            cls = [c for c in CLASSES if c in full]
            what = cls[0] + " class" if len(cls) == 1 else " and ".join(cls) + " classes"
            if pickup:
                return f"cold capacity of the {what} full at {where}"
            return f"cold capacity of the {what} full at the covering nodes"
        return "no single covering node holds every line of the order (split not allowed)"


# --------------------------------------------------------------------------------------------
# public functions


def allocate(
    nodes: Iterable[Node],
    products: Iterable[Product],
    lots: Iterable[Lot],
    orders: Iterable[Order],
    *,
    prior: Iterable[Allocation] = (),
    near_tie: float = 0.01,
    tie_km: float = 0.001,
    radius_km: float = DEFAULT_RADIUS_KM,
    threads: int = 2,
) -> AllocationResult:
    """Allocate ``orders`` in the order given. Inputs are not modified.

    ``prior``: allocations an earlier run made for some of ``orders`` (a re-run of the day).
    Those orders keep them and are left out of the result; ``lots`` and the nodes' capacities are
    what is left after them, and the other orders' reasons see the day as the earlier run did
    (see "Re-runs" in the module docstring). Prior allocations of orders not in ``orders`` are
    ignored (what they hold is simply gone).

    ``near_tie``: eligible candidates within this relative haversine margin of the best are
    compared by exact geodesic distance; ``tie_km``: geodesic distances closer than this are a tie
    (fewer lots, then node code); ``radius_km``: the service radius of a node without a polygon;
    ``threads``: threads for the vectorised spatial step (used from 20,000 delivery orders up; the
    result does not depend on it)."""
    # The run creates many small lists and tuples that all stay alive until it ends; the cyclic
    # garbage collector would rescan them again and again (it has nothing to free here).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Engine(nodes, list(products), lots, orders, list(prior), near_tie, tie_km, radius_km,
                       threads).run()
    finally:
        if enabled:
            gc.enable()
