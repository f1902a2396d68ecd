"""The allocation rule (fulfillment/allocation.py): choice of node, FEFO, capacity, reasons, split."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import timedelta

import pytest
from geopy.distance import geodesic

from fulfillment import allocation as alloc_mod
from fulfillment.allocation import (
    Lot,
    Order,
    allocate,
    geodesic_km,
    haversine_km,
    to_contract,
)
from tests.support import DAY, PRODUCTS, at, lot, node, order, square

UNIT = {p.sku: p for p in PRODUCTS}


def run(nodes, lots, orders, **kw):
    return allocate(nodes, PRODUCTS, lots, orders, **kw)


def only(res, ref):
    got = [a for a in res.allocations if a.order_ref == ref]
    assert len(got) == 1, (got, res.unallocated)
    return got[0]


def reason(res, ref):
    got = [u.reason for u in res.unallocated if u.order_ref == ref]
    assert len(got) == 1, (got, res.allocations)
    return got[0]


# ---- choice of node --------------------------------------------------------------------------


def test_nearest_covering_node_wins():
    nodes = [
        node("FAR", 2.0),  # default 5 km radius
        node("NEAR", 1.0),
        # nearest of all, but its polygon does not reach the address
        node("SMALL", 0.3, area=square(0.3 + 0.6, 0.0, 0.4)),
    ]
    lots = [lot(c, "MILK", f"L-{c}", 10) for c in ("FAR", "NEAR", "SMALL")]
    res = run(nodes, lots, [order("A1")])
    assert only(res, "A1").node == "NEAR"
    assert res.unallocated == []


def test_polygon_covers_its_boundary_and_default_radius_is_5km():
    poly = square(0.0, 0.0, 1.0)
    lon_edge = poly.bounds[2]  # a point exactly on the east edge
    lat_mid = (poly.bounds[1] + poly.bounds[3]) / 2
    nodes = [node("POLY", 0.0, area=poly), node("CIRCLE", 10.0)]
    lots = [lot("POLY", "MILK", "P1", 5), lot("CIRCLE", "MILK", "C1", 5)]
    edge = Order("EDGE", "delivery", DAY, lat_mid, lon_edge, (("MILK", 1),))
    inside = order("IN5", 10.0 - 4.99)  # 4.99 km west of CIRCLE
    outside = order("OUT5", 10.0 + 5.01)  # 5.01 km east of CIRCLE
    res = run(nodes, lots, [edge, inside, outside])
    assert only(res, "EDGE").node == "POLY"
    assert only(res, "IN5").node == "CIRCLE"
    assert reason(res, "OUT5") == "outside every service area"


def test_later_orders_see_what_is_left_and_fall_back_to_the_next_node():
    nodes = [node("NEAR", 0.5), node("FAR", 1.5)]
    lots = [lot("NEAR", "MILK", "N1", 3), lot("FAR", "MILK", "F1", 10)]
    res = run(nodes, lots, [order("A1", lines=[("MILK", 2)]), order("A2", lines=[("MILK", 2)])])
    assert only(res, "A1").node == "NEAR"
    assert only(res, "A2").node == "FAR"  # NEAR has 1 left, the order is not split
    assert res.lots_left[("NEAR", "MILK", "N1")] == 1
    assert res.lots_left[("FAR", "MILK", "F1")] == 8


def test_tie_goes_to_fewer_lots_then_code():
    # two nodes at the very same place: B serves from one lot, A would need two
    nodes = [node("A", 1.0), node("B", 1.0)]
    lots = [lot("A", "MILK", "A1", 1), lot("A", "MILK", "A2", 5), lot("B", "MILK", "B1", 5)]
    res = run(nodes, lots, [order("O1", lines=[("MILK", 2)])])
    assert only(res, "O1").node == "B"
    # same number of lots: the lower code wins
    nodes2 = [node("Z", 1.0), node("Y", 1.0)]
    lots2 = [lot("Z", "MILK", "Z1", 5), lot("Y", "MILK", "Y1", 5)]
    res2 = run(nodes2, lots2, [order("O2")])
    assert only(res2, "O2").node == "Y"


def test_near_tie_is_settled_by_geodesic_distance():
    # On the ellipsoid at 30.7 N a km north is "shorter" than on the mean sphere and a km east
    # "longer", so haversine ranks EAST first while the geodesic ranks NORTH first.
    north, east = at(0.0, 2.000), at(2.004, 0.0)
    h_north = float(haversine_km(at()[0], at()[1], north[0], north[1]))
    h_east = float(haversine_km(at()[0], at()[1], east[0], east[1]))
    g_north = geodesic(at(), north).km
    g_east = geodesic(at(), east).km
    assert h_east < h_north < h_east * 1.01  # a near-tie by haversine, EAST ahead ...
    assert g_north < g_east  # ... but NORTH is nearer for real
    nodes = [node("EAST", 2.004, 0.0), node("NORTH", 0.0, 2.000)]
    lots = [lot("EAST", "MILK", "E1", 5), lot("NORTH", "MILK", "N1", 5)]
    res = run(nodes, lots, [order("O1")])
    assert only(res, "O1").node == "NORTH"
    assert res.stats["near_ties"] == 1


def test_very_near_tie_goes_to_geographiclib(monkeypatch):
    # 1.5 m apart at 10 km: closer than the cheap approximations can tell apart safely
    calls = []
    real = alloc_mod.geodesic_km

    def spy(*a):
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(alloc_mod, "geodesic_km", spy)
    nodes = [node("EAST", 10.0015, 0.0, area=square(10.0, 0.0, 11.0)),
             node("NORTH", 0.0, 10.0, area=square(0.0, 10.0, 11.0))]
    lots = [lot("EAST", "MILK", "E1", 5), lot("NORTH", "MILK", "N1", 5)]
    res = run(nodes, lots, [order("O1")])
    assert only(res, "O1").node == "NORTH"
    assert len(calls) == 2


def test_distances_within_a_metre_are_a_tie_decided_by_lots():
    # NORTH is 0.5 m nearer but needs two lots; EAST serves from one
    nodes = [node("EAST", 3.0005, 0.0), node("NORTH", 0.0, 3.0)]
    lots = [lot("EAST", "MILK", "E1", 5), lot("NORTH", "MILK", "N1", 1), lot("NORTH", "MILK", "N2", 5)]
    res = run(nodes, lots, [order("O1", lines=[("MILK", 2)])])
    assert only(res, "O1").node == "EAST"
    res2 = run(nodes, lots, [order("O2", lines=[("MILK", 1)])])  # one lot each
    assert only(res2, "O2").node == "EAST"  # a tie within 1 m: lower code, EAST < NORTH


def test_geodesic_km_is_geopys_number():
    a, b = at(0.3, -0.2), at(7.1, 3.3)
    assert geodesic_km(a[0], a[1], b[0], b[1]) == pytest.approx(geodesic(a, b).km, rel=1e-12)


# ---- lots: FEFO, expiry, holds ---------------------------------------------------------------


def test_fefo_earliest_expiry_first_then_lot_code():
    nodes = [node("N", 0.5)]
    lots = [
        lot("N", "MILK", "LATE", 10, days=9),
        lot("N", "MILK", "SOON-B", 2, days=2),
        lot("N", "MILK", "SOON-A", 2, days=2),
        lot("N", "MILK", "MID", 3, days=5),
    ]
    res = run(nodes, lots, [order("O1", lines=[("MILK", 5)]), order("O2", lines=[("MILK", 4)])])
    assert only(res, "O1").lines == (("MILK", "SOON-A", 2), ("MILK", "SOON-B", 2), ("MILK", "MID", 1))
    assert only(res, "O2").lines == (("MILK", "MID", 2), ("MILK", "LATE", 2))


def test_expired_lots_are_never_used_but_a_lot_expiring_on_the_day_is():
    nodes = [node("N", 0.5)]
    lots = [lot("N", "MILK", "GONE", 50, days=-1), lot("N", "MILK", "TODAY", 2, days=0)]
    res = run(nodes, lots, [order("O1", lines=[("MILK", 2)]), order("O2")])
    assert only(res, "O1").lines == (("MILK", "TODAY", 2),)
    assert reason(res, "O2") == "stock of MILK within reach is all allocated to earlier orders"
    res2 = run(nodes, [lot("N", "MILK", "GONE", 50, days=-1)], [order("O3")])
    assert reason(res2, "O3") == "only expired lots of MILK within reach"


def test_lot_expiring_between_two_delivery_dates_serves_only_the_earlier_one():
    nodes = [node("N", 0.5)]
    lots = [lot("N", "MILK", "SHORT", 5, days=1), lot("N", "MILK", "LONG", 5, days=20)]
    later = order("LATER", day=DAY + timedelta(days=3))
    res = run(nodes, lots, [later, order("NOW")])
    assert only(res, "LATER").lines == (("MILK", "LONG", 1),)
    assert only(res, "NOW").lines == (("MILK", "SHORT", 1),)


def test_held_lots_are_never_used():
    nodes = [node("N", 0.5)]
    lots = [lot("N", "MILK", "HELD", 50, days=1, hold=True), lot("N", "MILK", "OK", 3, days=5)]
    res = run(nodes, lots, [order("O1", lines=[("MILK", 3)]), order("O2")])
    assert only(res, "O1").lines == (("MILK", "OK", 3),)
    assert ("N", "MILK", "HELD") not in res.lots_left
    res2 = run(nodes, [lots[0]], [order("O3")])
    assert reason(res2, "O3") == "MILK is on quality hold (lot HELD at N)"


# ---- capacity --------------------------------------------------------------------------------


def test_cold_capacity_per_class_is_respected_and_consumed():
    nodes = [node("NEAR", 0.5, frozen_l=4.0), node("FAR", 1.5, frozen_l=3.0)]
    lots = [lot(c, s, f"{c}-{s}", 100) for c in ("NEAR", "FAR") for s in ("DUMPLING", "MILK")]
    dumplings = [("DUMPLING", 2)]  # 3 litres frozen
    orders = [order("F1", lines=dumplings), order("F2", lines=dumplings), order("F3", lines=dumplings),
              order("C1", lines=[("MILK", 50)])]  # chilled: no limit set
    res = run(nodes, lots, orders)
    assert only(res, "F1").node == "NEAR"
    assert only(res, "F2").node == "FAR"  # NEAR has 1 l of frozen left
    assert reason(res, "F3") == "cold capacity of the frozen class full at the covering nodes"
    assert only(res, "C1").node == "NEAR"  # the chilled class is not affected
    assert res.capacity_left["NEAR"]["frozen"] == pytest.approx(1.0)
    assert res.capacity_left["FAR"]["frozen"] == pytest.approx(0.0)


def test_capacity_counts_every_class_of_a_mixed_order():
    nodes = [node("N", 0.5, frozen_l=10.0, chilled_l=1.0)]
    lots = [lot("N", "DUMPLING", "D", 9), lot("N", "EGG", "E", 9)]
    res = run(nodes, lots, [order("O1", lines=[("DUMPLING", 1), ("EGG", 1)])])  # 2 l chilled > 1
    assert reason(res, "O1") == "cold capacity of the chilled class full at the covering nodes"


# ---- pickup, vans ----------------------------------------------------------------------------


def test_pickup_goes_to_its_node_even_without_a_van_and_not_to_a_nearer_one():
    nodes = [node("NEAR", 0.1), node("PICK", 30.0, van=False)]
    lots = [lot("NEAR", "MILK", "N1", 9), lot("PICK", "MILK", "P1", 9)]
    res = run(nodes, lots, [order("P1", mode="pickup", pickup="PICK")])
    assert only(res, "P1").node == "PICK"


def test_pickup_reasons():
    nodes = [node("HUB-1", 30.0, van=False), node("FS-1", 0.5, kind="flagship")]
    lots = [lot("FS-1", "MILK", "F1", 9), lot("HUB-1", "EGG", "E1", 1),
            lot("HUB-1", "RICE", "R1", 9, hold=True)]
    orders = [
        order("P1", mode="pickup", pickup="HUB-1"),
        order("P2", mode="pickup", pickup="HUB-1", lines=[("EGG", 3)]),
        order("P3", mode="pickup", pickup="HUB-1", lines=[("RICE", 1)]),
        order("P4", mode="pickup", pickup="NOPE"),
        order("P5", mode="pickup", pickup=None),
    ]
    res = run(nodes, lots, orders)
    assert reason(res, "P1") == "pickup hub HUB-1 has no stock of MILK"
    assert reason(res, "P2") == "pickup hub HUB-1 has only 1 of the 3 EGG needed"
    assert reason(res, "P3") == "RICE is on quality hold at pickup hub HUB-1 (lot R1)"
    assert reason(res, "P4") == "unknown pickup node NOPE"
    assert reason(res, "P5") == "pickup order without a pickup node"


def test_node_without_a_van_takes_no_delivery():
    nodes = [node("NOVAN", 0.2, van=False), node("VAN", 3.0)]
    lots = [lot("NOVAN", "MILK", "A", 9), lot("VAN", "MILK", "B", 9)]
    res = run(nodes, lots, [order("D1"), order("D2", -4.0)])  # D2: 4.2 km from NOVAN, 7 km from VAN
    assert only(res, "D1").node == "VAN"
    assert reason(res, "D2") == (
        "outside the service area of every node with a van (covered only by pickup-only NOVAN)"
    )


# ---- reasons ---------------------------------------------------------------------------------


def test_reasons_for_delivery_orders():
    nodes = [node("N1", 0.5), node("N2", 1.0), node("FAR", 40.0)]
    lots = [
        lot("N1", "MILK", "M1", 2),
        lot("N2", "MILK", "M2", 1),
        lot("N1", "EGG", "E1", 5),
        lot("FAR", "RICE", "R1", 5),
        lot("N2", "DUMPLING", "D1", 5),
    ]
    orders = [
        order("U1", lines=[("MILK", 1), ("CAVIAR", 1)]),
        order("S1", lines=[("MILK", 3)]),
        order("R1", lines=[("RICE", 1)]),
        order("X1", lines=[("EGG", 1), ("DUMPLING", 1)]),
        order("Z1", lines=[("MILK", 0)]),
        Order("NOXY", "delivery", DAY, None, None, (("MILK", 1),)),
        order("OUT", 100.0),
    ]
    res = run(nodes, lots, orders)
    assert reason(res, "U1") == "unknown SKU CAVIAR"
    assert reason(res, "S1") == "not enough stock of MILK within reach (at most 2 of 3, at N1)"
    assert reason(res, "R1") == "no stock of RICE within reach (nearest node with it: FAR)"
    assert reason(res, "X1") == "no single covering node holds every line of the order (split not allowed)"
    assert reason(res, "Z1") == "quantity of MILK must be positive"
    assert reason(res, "NOXY") == "delivery address has no coordinates"
    assert reason(res, "OUT") == "outside every service area"
    res2 = run(nodes, [], [order("E1", lines=[("EGG", 1)])])
    assert reason(res2, "E1") == "no stock of EGG within reach (no node has any left)"


def test_most_informative_reason_prefers_stock_state_closest_to_serving():
    # one covering node has the SKU on hold, another only expired: the hold is reported
    nodes = [node("A", 0.5), node("B", 1.0)]
    lots = [lot("A", "MILK", "OLD", 5, days=-2), lot("B", "MILK", "HOLD", 5, hold=True)]
    res = run(nodes, lots, [order("O1")])
    assert reason(res, "O1") == "MILK is on quality hold (lot HOLD at B)"


def test_multi_class_capacity_reason():
    nodes = [node("A", 0.5, frozen_l=0.0, chilled_l=0.0)]
    lots = [lot("A", "DUMPLING", "D", 5), lot("A", "MILK", "M", 5)]
    res = run(nodes, lots, [order("O1", lines=[("DUMPLING", 1), ("MILK", 1)])])
    assert reason(res, "O1") == "cold capacity of the frozen and chilled classes full at the covering nodes"


# ---- split -----------------------------------------------------------------------------------


def test_allow_split_by_line_and_by_quantity():
    nodes = [node("A", 0.5), node("B", 1.0), node("C", 1.5)]
    lots = [lot("A", "MILK", "MA", 3), lot("B", "MILK", "MB", 4), lot("B", "EGG", "EB", 2),
            lot("C", "RICE", "RC", 9)]
    res = run(nodes, lots, [order("S1", lines=[("MILK", 6), ("EGG", 2)], split=True)])
    parts = {a.node: a.lines for a in res.allocations if a.order_ref == "S1"}
    # MILK: no node has 6 -> 3 from A (nearest), 3 from B; EGG whole from B
    assert parts == {"A": (("MILK", "MA", 3),), "B": (("MILK", "MB", 3), ("EGG", "EB", 2))}
    # the same order without split is not allocated
    res2 = run(nodes, lots, [order("S2", lines=[("MILK", 6), ("EGG", 2)])])
    assert reason(res2, "S2") == "not enough stock of MILK within reach (at most 4 of 6, at B)"


def test_split_prefers_a_single_node_when_one_can_serve():
    nodes = [node("A", 0.5), node("B", 1.0)]
    lots = [lot("A", "MILK", "MA", 1), lot("B", "MILK", "MB", 9), lot("B", "EGG", "EB", 9)]
    res = run(nodes, lots, [order("S1", lines=[("MILK", 2), ("EGG", 1)], split=True)])
    assert only(res, "S1").node == "B"


def test_split_keeps_lines_together_on_a_node_already_used_and_is_all_or_nothing():
    nodes = [node("A", 0.5), node("B", 1.0)]
    lots = [lot("A", "MILK", "MA", 5), lot("B", "EGG", "EB", 5), lot("A", "EGG", "EA", 5),
            lot("B", "RICE", "RB", 1)]
    res = run(nodes, lots, [order("S1", lines=[("MILK", 1), ("RICE", 1), ("EGG", 1)], split=True)])
    parts = {a.node: a.lines for a in res.allocations if a.order_ref == "S1"}
    assert parts == {"A": (("MILK", "MA", 1), ("EGG", "EA", 1)), "B": (("RICE", "RB", 1),)}
    # not enough RICE anywhere: nothing is taken at all
    res2 = run(nodes, lots, [order("S2", lines=[("MILK", 1), ("RICE", 2)], split=True)])
    assert reason(res2, "S2") == "not enough stock of RICE within reach (1 of 2 at the covering nodes)"
    assert res2.lots_left[("A", "MILK", "MA")] == 5


def test_split_respects_capacity():
    nodes = [node("A", 0.5, frozen_l=3.0), node("B", 1.0, frozen_l=3.0)]
    lots = [lot("A", "DUMPLING", "DA", 9), lot("B", "DUMPLING", "DB", 9)]
    res = run(nodes, lots, [order("S1", lines=[("DUMPLING", 4)], split=True)])  # 6 l: 2 + 2
    parts = {a.node: a.lines for a in res.allocations if a.order_ref == "S1"}
    assert parts == {"A": (("DUMPLING", "DA", 2),), "B": (("DUMPLING", "DB", 2),)}
    res2 = run(nodes, lots, [order("S2", lines=[("DUMPLING", 5)], split=True)])
    assert reason(res2, "S2") == "cold capacity of the frozen class full at the covering nodes"


# ---- no oversell under scarcity (property style) --------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_never_oversells_and_respects_every_rule_under_scarcity(seed):
    rng = random.Random(seed)
    nodes = [
        node(f"N{i}", rng.uniform(-6, 6), rng.uniform(-6, 6), van=rng.random() < 0.8,
             area=None if rng.random() < 0.5 else square(rng.uniform(-6, 6), rng.uniform(-6, 6), 3.0),
             frozen_l=rng.uniform(0, 20), chilled_l=rng.uniform(0, 40), ambient_l=rng.uniform(0, 60))
        for i in range(12)
    ]
    lots = [
        Lot(n.code, p.sku, f"{n.code}-{p.sku}-{j}", rng.randint(0, 6),
            DAY + timedelta(days=rng.randint(-2, 6)), rng.random() < 0.1)
        for n in nodes for p in PRODUCTS for j in range(rng.randint(0, 3))
    ]
    orders = [
        order(f"O{k}", rng.uniform(-8, 8), rng.uniform(-8, 8),
              [(rng.choice(PRODUCTS).sku, rng.randint(1, 4)) for _ in range(rng.randint(1, 3))],
              split=rng.random() < 0.3)
        for k in range(150)
    ]
    res = run(nodes, lots, orders)
    by_lot = {(lt.node, lt.sku, lt.lot): lt for lt in lots}
    used = Counter()
    vol = defaultdict(float)
    for a in res.allocations:
        for sku, name, q in a.lines:
            lt = by_lot[(a.node, sku, name)]
            assert not lt.on_hold and lt.expires >= DAY and q > 0
            used[(a.node, sku, name)] += q
            vol[(a.node, UNIT[sku].temp_class)] += q * UNIT[sku].unit_l
    for key, q in used.items():
        assert q <= by_lot[key].qty
    by_node = {n.code: n for n in nodes}
    for (code, cls), v in vol.items():
        assert v <= getattr(by_node[code], f"{cls}_l") + 1e-6
    refs = [o.ref for o in orders]
    allocated = {a.order_ref for a in res.allocations}
    assert allocated.isdisjoint(u.order_ref for u in res.unallocated)
    assert allocated | {u.order_ref for u in res.unallocated} == set(refs)
    for o in orders:  # every allocated order gets exactly its lines, from nodes with a van
        if o.ref in allocated:
            got = Counter()
            for a in res.allocations:
                if a.order_ref == o.ref:
                    assert by_node[a.node].has_van
                    for sku, _, q in a.lines:
                        got[sku] += q
            want = Counter()
            for sku, q in o.lines:
                want[sku] += q
            assert got == want
    assert all(u.reason for u in res.unallocated)
    assert res.reservations() == dict(used)


def test_to_contract_shape():
    res = run([node("N", 0.5)], [lot("N", "MILK", "L1", 5)], [order("A1"), order("A9", 50.0)])
    out = to_contract(res, DAY)
    assert out == {
        "date": DAY.isoformat(),
        "allocations": [{"order_ref": "A1", "node": "N", "lines": [{"sku": "MILK", "lot": "L1", "qty": 1}]}],
        "unallocated": [{"order_ref": "A9", "reason": "outside every service area"}],
    }
    assert res.to_contract(DAY.isoformat()) == out


# ---- the fast path agrees with a plain reference implementation ------------------------------


def reference_choice(nodes, lots, orders):
    """The rule written plainly: every node, shapely covers / geodesic <= 5 km, FEFO lot lists,
    nearest by geodesic, ties (1 m) by fewer lots then code. No split. Returns ref -> node|None."""
    left = {(lt.node, lt.sku, lt.lot): lt.qty for lt in lots}
    cap = {n.code: {"frozen": n.frozen_l, "chilled": n.chilled_l, "ambient": n.ambient_l} for n in nodes}
    out = {}
    for o in orders:
        need = Counter()
        for sku, q in o.lines:
            need[sku] += q
        vol = Counter()
        for sku, q in need.items():
            vol[UNIT[sku].temp_class] += q * UNIT[sku].unit_l
        if o.mode == "pickup":
            cands = [n for n in nodes if n.code == o.pickup_node]
        else:
            from shapely.geometry import Point

            cands = [n for n in nodes if n.has_van and (
                n.area.covers(Point(o.lon, o.lat)) if n.area is not None
                else geodesic((o.lat, o.lon), (n.lat, n.lon)).km <= 5.0)]
        options = []
        for n in cands:
            if any(v > cap[n.code][c] + 1e-9 for c, v in vol.items()):
                continue
            takes = []
            for sku, q in need.items():
                usable = sorted((lt.expires, lt.lot) for lt in lots if lt.node == n.code and lt.sku == sku
                                and not lt.on_hold and lt.expires >= o.delivery_date
                                and left[(n.code, sku, lt.lot)] > 0)
                for _, name in usable:
                    if q == 0:
                        break
                    t = min(q, left[(n.code, sku, name)])
                    takes.append(((n.code, sku, name), t))
                    q -= t
                if q:
                    break
            else:
                options.append((geodesic((o.lat, o.lon), (n.lat, n.lon)).km, len(takes), n.code, takes))
        if not options:
            out[o.ref] = None
            continue
        gmin = min(x[0] for x in options)
        best = min((x for x in options if x[0] <= gmin + 0.001), key=lambda x: (x[1], x[2]))
        for key, t in best[3]:
            left[key] -= t
        for c, v in vol.items():
            cap[best[2]][c] -= v
        out[o.ref] = best[2]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_fast_allocation_matches_the_reference(seed):
    rng = random.Random(100 + seed)
    nodes = []
    places = [(rng.uniform(-5, 5), rng.uniform(-5, 5)) for _ in range(25)]
    for i in range(25):
        e, n = places[i - 1] if i % 6 == 5 else places[i]  # some co-located nodes: exact ties
        nodes.append(node(f"N{i:02d}", e, n, van=rng.random() < 0.85,
                          area=None if rng.random() < 0.4 else square(e, n, rng.uniform(1.0, 3.0)),
                          frozen_l=rng.uniform(5, 40), chilled_l=rng.uniform(10, 80),
                          ambient_l=rng.uniform(20, 200)))
    lots = [Lot(n.code, p.sku, f"{n.code}-{p.sku}-{j}", rng.randint(1, 8),
                DAY + timedelta(days=rng.randint(-1, 5)), rng.random() < 0.05)
            for n in nodes for p in PRODUCTS if rng.random() < 0.7 for j in range(rng.randint(1, 3))]
    orders = [order(f"O{k:03d}", rng.uniform(-6, 6), rng.uniform(-6, 6),
                    [(rng.choice(PRODUCTS).sku, rng.randint(1, 3)) for _ in range(rng.randint(1, 3))],
                    mode="pickup" if rng.random() < 0.1 else "delivery",
                    pickup=rng.choice(nodes).code)
              for k in range(200)]
    orders = [o if o.mode == "pickup" else Order(o.ref, o.mode, o.delivery_date, o.lat, o.lon, o.lines)
              for o in orders]
    want = reference_choice(nodes, lots, orders)
    for threads in (1, 2):
        res = run(nodes, lots, orders, threads=threads)
        got = {o.ref: None for o in orders}
        for a in res.allocations:
            got[a.order_ref] = a.node
        assert got == want
        assert sum(v is not None for v in got.values()) > 50
