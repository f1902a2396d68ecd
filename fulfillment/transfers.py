"""Flagship -> hub transfer proposals (pure: plain data in, plain data out).

When a hub lacks stock for an order it would otherwise serve, its parent flagship may still have
it: ``suggest_transfers`` proposes moving that stock so the hub can serve the order (proposals
only; nothing is moved here). It reads what an allocation run left (``AllocationResult.lots_left``
and ``capacity_left``) and uses the allocator's service areas and distances, so a proposal targets
the same hub the allocator would have chosen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from core.geo import EARTH_R_KM, geodesic_km, local_km1
from fulfillment.allocation import (
    _EPS_L,
    _LOCAL_ERR,
    CLASSES,
    DEFAULT_RADIUS_KM,
    AllocationResult,
    Lot,
    Node,
    Order,
    Product,
    _Spatial,
)

__all__ = ["Transfer", "suggest_transfers"]


@dataclass(frozen=True, slots=True)
class Transfer:
    """Move ``qty`` of lot ``lot`` of ``sku`` from flagship ``from_node`` to hub ``to_node`` so that
    the hub can serve ``order_refs``."""

    from_node: str
    to_node: str
    sku: str
    lot: str
    qty: int
    expires: date
    order_refs: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "from": self.from_node,
            "to": self.to_node,
            "sku": self.sku,
            "lot": self.lot,
            "qty": self.qty,
            "expires": self.expires.isoformat(),
            "order_refs": list(self.order_refs),
        }


@dataclass(slots=True, eq=False)
class _Left:
    """A usable lot left after allocation, as the proposals use it up."""

    qty: int
    expires: date
    lot: str


@dataclass(slots=True)
class _Proposal:
    qty: int
    expires: date
    order_refs: list[str] = field(default_factory=list)


def _nearest_node(lat: float, lon: float, cands: list[Node]) -> Node:
    """The geodesic nearest of cands (then the lower code); geographiclib only for close calls."""
    if len(cands) == 1:
        return cands[0]
    loc = {n.code: local_km1(lat, lon, n.lat, n.lon) for n in cands}
    lmin = min(loc.values())
    err = _LOCAL_ERR + 2.0 * (max(loc.values()) / EARTH_R_KM) ** 2
    close = [n for n in cands if loc[n.code] * (1 - err) <= lmin * (1 + err)]
    if len(close) == 1:
        return close[0]
    return min(close, key=lambda n: (geodesic_km(lat, lon, n.lat, n.lon), n.code))


def suggest_transfers(
    nodes: Iterable[Node],
    products: Iterable[Product],
    lots: Iterable[Lot],
    orders: Iterable[Order],
    result: AllocationResult,
    *,
    radius_km: float = DEFAULT_RADIUS_KM,
) -> list[Transfer]:
    """Flagship -> hub transfers that would let hubs serve orders left unallocated.

    For each unallocated order (in the order given) the target is its pickup node when that is a
    hub, else the nearest hub with a van whose service area covers the address. When the target
    hub has a parent flagship and the hub's cold capacity left (``result.capacity_left``, minus
    what earlier proposals already count on) fits the order, the missing quantity of each line
    (what the order needs minus what the hub still has, usable on the delivery date) is taken FEFO
    from the flagship's lots left (``result.lots_left``), skipping held lots and lots that expire
    before the delivery date. A proposal is made only when the flagship covers every missing line
    in full. A flagship lot (and the hub's own stock) is never counted twice across proposals.
    Orders already allocated, or unallocated for an unknown SKU or node, get no proposal.
    """
    nodes = list(nodes)
    by_code = {n.code: n for n in nodes}
    prod = {p.sku: p for p in products}
    unalloc = {u.order_ref for u in result.unallocated}
    info = {(lt.node, lt.sku, lt.lot): lt for lt in lots}
    # usable lots left per (node, sku), FEFO order
    left: dict[tuple[str, str], list[_Left]] = defaultdict(list)
    for (n, s, lot), q in result.lots_left.items():
        lt = info.get((n, s, lot))
        if lt is None or lt.on_hold or q <= 0:
            continue
        left[(n, s)].append(_Left(q, lt.expires, lot))
    for v in left.values():
        v.sort(key=lambda x: (x.expires, x.lot))
    cap = {c: dict(v) for c, v in result.capacity_left.items()}
    hubs = [n for n in nodes if n.kind == "hub" and n.has_van]
    proposals: dict[tuple[str, str, str, str], _Proposal] = {}  # (from, to, sku, lot) -> proposal
    orders = list(orders)
    # the covering hubs of every unallocated delivery order, in one vectorised query
    dl = [o for o in orders if o.ref in unalloc and o.mode == "delivery" and o.lat is not None
          and o.lon is not None]
    covering: dict[int, list[Node]] = {}
    if hubs and dl:
        pi, ni = _Spatial(hubs, radius_km).covering(np.array([o.lat for o in dl], dtype=float),
                                                    np.array([o.lon for o in dl], dtype=float))
        for p, i in zip(pi.tolist(), ni.tolist(), strict=True):
            covering.setdefault(id(dl[p]), []).append(hubs[i])

    for o in orders:
        if o.ref not in unalloc:
            continue
        if any(s not in prod or q <= 0 for s, q in o.lines):
            continue
        if o.mode == "pickup":
            hub = by_code.get(o.pickup_node or "")
            if hub is None or hub.kind != "hub":
                continue
        else:
            near = covering.get(id(o))
            if not near:
                continue
            hub = _nearest_node(o.lat, o.lon, near)
        flag = by_code.get(hub.parent or "")
        if flag is None:
            continue
        need: dict[str, int] = defaultdict(int)
        for s, q in o.lines:
            need[s] += q
        vol = defaultdict(float)
        for s, q in need.items():
            vol[prod[s].temp_class] += q * prod[s].unit_l
        hcap = cap.setdefault(hub.code, {c: getattr(hub, f"{c}_l") for c in CLASSES})
        if any(v > hcap.get(c, 0.0) + _EPS_L for c, v in vol.items()):
            continue
        day = o.delivery_date
        hub_take: list[tuple[_Left, int]] = []
        moves: list[tuple[str, _Left, int]] = []
        ok = True
        for s, q in need.items():
            rest = q
            for x in left.get((hub.code, s), ()):
                if x.expires >= day and x.qty > 0 and rest:
                    t = min(x.qty, rest)
                    hub_take.append((x, t))
                    rest -= t
            for x in left.get((flag.code, s), ()):
                if x.expires >= day and x.qty > 0 and rest:
                    t = min(x.qty, rest)
                    moves.append((s, x, t))
                    rest -= t
            if rest:
                ok = False
                break
        if not ok or not moves:
            continue
        for x, t in hub_take:
            x.qty -= t
        for s, x, t in moves:
            x.qty -= t
            p = proposals.setdefault((flag.code, hub.code, s, x.lot), _Proposal(0, x.expires))
            p.qty += t
            if o.ref not in p.order_refs:
                p.order_refs.append(o.ref)
        for c, v in vol.items():
            hcap[c] = hcap.get(c, 0.0) - v
    return [
        Transfer(f, h, s, lot, p.qty, p.expires, tuple(p.order_refs)) for (f, h, s, lot), p in proposals.items()
    ]
