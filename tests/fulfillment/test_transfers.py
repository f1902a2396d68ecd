"""Flagship -> hub transfer proposals (fulfillment.allocation.suggest_transfers)."""

from __future__ import annotations

from collections import Counter

from fulfillment.allocation import allocate
from fulfillment.transfers import suggest_transfers
from tests.support import DAY, PRODUCTS, lot, node, order, square


def network():
    # the hub covers the customers (polygon of ~3 km); the flagship is 20 km away and does not
    flag = node("FS-1", 20.0, kind="flagship")
    hub = node("HUB-1", 0.0, area=square(0.0, 0.0, 1.5), parent="FS-1", chilled_l=100.0)
    lone = node("HUB-2", 40.0, parent=None)  # no parent: never gets a proposal
    lots = [
        lot("HUB-1", "MILK", "H-M", 1),
        lot("FS-1", "MILK", "F-LATE", 10, days=8),
        lot("FS-1", "MILK", "F-SOON", 3, days=2),
        lot("FS-1", "MILK", "F-GONE", 50, days=-1),
        lot("FS-1", "MILK", "F-HELD", 50, days=1, hold=True),
        lot("FS-1", "EGG", "F-E", 1),
    ]
    return [flag, hub, lone], lots


def test_transfers_take_flagship_lots_fefo_without_double_counting():
    nodes, lots = network()
    orders = [
        order("A1", 0.2, lines=[("MILK", 1)]),  # served by the hub's own lot
        order("A2", 0.3, lines=[("MILK", 2)]),  # hub empty now -> 2 from F-SOON
        order("A3", -0.3, lines=[("MILK", 3)]),  # 1 left in F-SOON, then 2 from F-LATE
        order("A4", 0.1, lines=[("EGG", 2)]),  # flagship has 1 EGG only: no proposal
        order("A5", 40.0, lines=[("RICE", 1)]),  # HUB-2 has no parent
    ]
    res = allocate(nodes, PRODUCTS, lots, orders)
    assert {a.order_ref for a in res.allocations} == {"A1"}
    assert res.unallocated[0].reason == "stock of MILK within reach is all allocated to earlier orders"
    transfers = suggest_transfers(nodes, PRODUCTS, lots, orders, res)
    got = {(t.from_node, t.to_node, t.sku, t.lot): (t.qty, t.order_refs) for t in transfers}
    assert got == {
        ("FS-1", "HUB-1", "MILK", "F-SOON"): (3, ("A2", "A3")),
        ("FS-1", "HUB-1", "MILK", "F-LATE"): (2, ("A3",)),
    }
    moved = Counter()
    for t in transfers:
        moved[(t.from_node, t.sku, t.lot)] += t.qty
        assert t.expires >= DAY
    for (n, s, lt), q in moved.items():
        assert q <= res.lots_left[(n, s, lt)]
    d = transfers[0].to_dict()
    assert set(d) == {"from", "to", "sku", "lot", "qty", "expires", "order_refs"}


def test_transfers_respect_hub_capacity_and_count_the_hubs_own_stock_once():
    flag = node("FS-1", 20.0, kind="flagship")
    hub = node("HUB-1", 0.0, area=square(0.0, 0.0, 1.5), parent="FS-1", chilled_l=5.0)
    lots = [lot("HUB-1", "MILK", "H-M", 2), lot("FS-1", "MILK", "F-M", 50), lot("HUB-1", "EGG", "H-E", 9)]
    # X1 takes the hub's EGG capacity (4 l of 5); X2 and X3 need MILK (3 l each) the hub lacks
    orders = [order("X1", lines=[("EGG", 2)]), order("X2", lines=[("MILK", 3)]),
              order("X3", lines=[("MILK", 3)])]
    res = allocate([flag, hub], PRODUCTS, lots, orders)
    assert [a.order_ref for a in res.allocations] == ["X1"]
    assert suggest_transfers([flag, hub], PRODUCTS, lots, orders, res) == []  # 1 l left: no room
    # with room for both: X2 uses the hub's 2 MILK + 1 moved, X3 needs all 3 moved
    hub2 = node("HUB-1", 0.0, area=square(0.0, 0.0, 1.5), parent="FS-1", chilled_l=100.0)
    orders2 = orders[1:] + [order("X4", lines=[("MILK", 9)])]
    res2 = allocate([flag, hub2], PRODUCTS, lots, orders2)
    assert not res2.allocations  # the hub has 2 MILK only and the orders are not split
    tr = suggest_transfers([flag, hub2], PRODUCTS, lots, orders2, res2)
    assert [(t.lot, t.qty, t.order_refs) for t in tr] == [("F-M", 1 + 3 + 9, ("X2", "X3", "X4"))]


def test_pickup_order_at_a_hub_gets_a_proposal():
    flag = node("FS-1", 20.0, kind="flagship")
    hub = node("HUB-9", 3.0, van=False, parent="FS-1")
    lots = [lot("FS-1", "RICE", "F-R", 4)]
    orders = [order("P1", mode="pickup", pickup="HUB-9", lines=[("RICE", 2)])]
    res = allocate([flag, hub], PRODUCTS, lots, orders)
    assert res.unallocated[0].reason == "pickup hub HUB-9 has no stock of RICE"
    tr = suggest_transfers([flag, hub], PRODUCTS, lots, orders, res)
    assert [(t.from_node, t.to_node, t.lot, t.qty, t.order_refs) for t in tr] == [
        ("FS-1", "HUB-9", "F-R", 2, ("P1",))
    ]
