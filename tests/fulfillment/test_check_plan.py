"""The allocation, exported as CONTRACTS.md section 5, passes the independent checker
(/work/shared/tools/check_plan.py) on scenarios written as section 4 CSV files."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import shapely

from fulfillment.allocation import Lot, Node, Order, Product, allocate, to_contract
from tests.support import DAY, at, square

PRODUCTS = [
    Product("MILK-1L", "chilled", 1.0),
    Product("EGG-30", "chilled", 2.5),
    Product("DUMPLING", "frozen", 1.2),
    Product("ORANGE-5KG", "ambient", 6.0),
    Product("ICE-CREAM", "frozen", 0.8),
]


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_scenario(d: Path, nodes: list[Node], lots: list[Lot], orders: list[Order]) -> None:
    _write(d / "nodes.csv",
           ["code", "kind", "name", "lat", "lon", "parent", "opens", "closes", "frozen_l", "chilled_l",
            "ambient_l", "service_area_wkt"],
           [[n.code, n.kind, n.code, repr(n.lat), repr(n.lon), n.parent or "", "07:00", "21:00", n.frozen_l,
             n.chilled_l, n.ambient_l, shapely.to_wkt(n.area, rounding_precision=-1) if n.area else ""]
            for n in nodes])
    _write(d / "products.csv",
           ["sku", "name", "temp_class", "fragile", "unit_l", "unit_kg", "shelf_life_days", "min_c", "max_c",
            "max_on_board_min"],
           [[p.sku, p.sku, p.temp_class, 0, p.unit_l, p.unit_l, 10, -25, 8, ""] for p in PRODUCTS])
    _write(d / "stock.csv", ["node", "sku", "lot", "qty", "expires"],
           [[lt.node, lt.sku, lt.lot, lt.qty, lt.expires.isoformat()] for lt in lots])
    vans = [n for n in nodes if n.has_van]
    _write(d / "vehicles.csv",
           ["code", "depot", "frozen_l", "chilled_l", "ambient_l", "max_kg", "shift_start", "shift_end",
            "speed_kmh", "cost_per_km", "fixed_cost", "device"],
           [[f"VAN-{i}", n.code, 100, 300, 400, 800, "08:00", "18:00", 30, 1.2, 50, f"TL-{i}"]
            for i, n in enumerate(vans)])
    _write(d / "drivers.csv", ["username", "name", "vehicle"],
           [[f"driver{i}", f"Driver {i}", f"VAN-{i}"] for i in range(len(vans))])
    _write(d / "orders.csv",
           ["order_ref", "delivery_date", "mode", "lat", "lon", "window_start", "window_end", "sku", "qty",
            "pickup_node", "allow_split"],
           [[o.ref, o.delivery_date.isoformat(), o.mode, repr(o.lat), repr(o.lon), "09:00", "12:00", sku, q,
             o.pickup_node or "", int(o.allow_split)] for o in orders for sku, q in o.lines])


def scenario(seed: int, ample: bool):
    rng = random.Random(seed)
    nodes = []
    for i in range(24):
        flagship = i < 4
        e, n = rng.uniform(-8, 8), rng.uniform(-8, 8)
        lat, lon = at(e, n)
        area = None if (flagship and i % 2) or rng.random() < 0.1 else square(e, n, rng.uniform(1.5, 3.0))
        big = 1e6 if ample else None
        nodes.append(Node(
            f"FS-{i}" if flagship else f"HUB-{i:02d}", "flagship" if flagship else "hub", lat, lon,
            None if flagship else f"FS-{i % 4}", area, flagship or rng.random() < 0.7,
            big or rng.choice([5.0, 20.0, 60.0]), big or rng.choice([10.0, 40.0, 120.0]),
            big or rng.choice([20.0, 80.0, 200.0]),
        ))
    lots = []
    for nd in nodes:
        for p in PRODUCTS:
            if not ample and rng.random() < 0.4:
                continue
            for j in range(rng.randint(1, 3)):
                lots.append(Lot(nd.code, p.sku, f"{nd.code}-{p.sku}-{j}",
                                1000 if ample else rng.randint(1, 8),
                                DAY + timedelta(days=rng.randint(0 if ample else -2, 9))))
    hubs = [nd.code for nd in nodes if nd.kind == "hub"]
    orders = []
    for k in range(250):
        spread = 7 if ample else 10
        lat, lon = at(rng.uniform(-spread, spread), rng.uniform(-spread, spread))
        lines = {}
        for _ in range(rng.randint(1, 3)):
            sku = rng.choice(PRODUCTS).sku
            lines[sku] = lines.get(sku, 0) + rng.randint(1, 3)
        pickup = (not ample) and rng.random() < 0.1
        mode = "pickup" if pickup else "delivery"
        orders.append(Order(f"A{k:03d}", mode, DAY, lat, lon, tuple(lines.items()),
                            rng.choice(hubs) if pickup else None, (not ample) and rng.random() < 0.3))
    return nodes, lots, orders


@pytest.mark.parametrize(("seed", "ample"), [(1, False), (2, False), (3, True)])
def test_allocation_passes_check_plan(tmp_path, seed, ample, check_plan):
    nodes, lots, orders = scenario(seed, ample)
    write_scenario(tmp_path, nodes, lots, orders)
    res = allocate(nodes, PRODUCTS, lots, orders)
    assert res.allocations
    if not ample:
        assert res.unallocated and any(len({a.node for a in res.allocations if a.order_ref == o.ref}) > 1
                                       for o in orders)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(to_contract(res, DAY)))
    args = [sys.executable, str(check_plan), str(tmp_path), str(plan), "--alloc-only"]
    args += ["--ample"] if ample else []
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "violations=0" in out.stdout
    if ample:  # plenty of everything: only addresses no node with a van covers stay unallocated
        assert "nearest=" in out.stdout
        assert all(u.reason.startswith("outside") for u in res.unallocated)
