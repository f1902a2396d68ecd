"""Allocation benchmark: a synthetic metro network in memory, then ``fulfillment.allocation.allocate``.

    python -m benchmarks.allocation [--orders 100000] [--nodes 2000] [--seed 7] [--repeat 1]

The network (deterministic for a seed) looks like a Chinese provincial capital around Chengdu:
about 5 % flagship stores (half of them with the default 5 km radius, the rest with 4-8 km-radius
polygons) and community hubs with irregular 1-2.5 km-radius polygons (diameter 2-5 km; 3 % with
no polygon), denser towards the centre; every flagship and 60 % of the hubs have vans. Flagships
hold ~95 % of 200 SKUs in 2-3 lots each, hubs ~40 popular SKUs in 1-2 lots; about 3 % of lots are
expired and 1 % on hold. Orders: addresses spread like the population, 1-4 lines with
Zipf-like SKU popularity, 5 % pickup at a hub, 10 % allowing split.

``make_network(n_nodes, seed)`` and ``make_orders(network, n_orders, seed)`` return the same input
dataclasses the service builds from the database, so an end-to-end (PostgreSQL) mode can reuse
them: load ``network``/``orders`` into the database, run the service, compare with ``run(...)``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import shapely

from fulfillment.allocation import Lot, Node, Order, Product, allocate

CENTER = (30.6586, 104.0647)  # Chengdu, Tianfu Square
DAY = date(2026, 11, 24)
KM_LAT = 110.9
KM_LON = 111.32 * math.cos(math.radians(CENTER[0]))


@dataclass
class Network:
    nodes: list[Node]
    products: list[Product]
    lots: list[Lot]
    day: date = DAY


def _positions(rng: np.random.Generator, n: int, core_share: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """lat, lon of n points: a denser core (sigma 12 km) plus a uniform disc of radius 30 km."""
    core = rng.random(n) < core_share
    r = np.where(core, np.abs(rng.normal(0, 12.0, n)), 30.0 * np.sqrt(rng.random(n)))
    a = rng.uniform(0, 2 * math.pi, n)
    return CENTER[0] + r * np.sin(a) / KM_LAT, CENTER[1] + r * np.cos(a) / KM_LON


def _polygon(rng: np.random.Generator, lat: float, lon: float, r_km: float) -> shapely.Polygon:
    k = int(rng.integers(12, 21))
    ang = np.sort(rng.uniform(0, 2 * math.pi, k))
    rad = r_km * rng.uniform(0.8, 1.2, k)
    return shapely.Polygon(np.c_[lon + rad * np.cos(ang) / KM_LON, lat + rad * np.sin(ang) / KM_LAT])


def make_network(n_nodes: int = 2000, seed: int = 7, n_skus: int = 200) -> Network:
    rng = np.random.default_rng(seed)
    n_flag = max(1, n_nodes // 20)
    lat, lon = _positions(rng, n_nodes)
    classes = rng.choice(["frozen", "chilled", "ambient"], size=n_skus, p=[0.25, 0.45, 0.30])
    products = [
        Product(f"SKU-{i:04d}", str(classes[i]), round(float(rng.uniform(0.3, 3.0)), 2))
        for i in range(n_skus)
    ]
    popularity = 1.0 / (np.arange(n_skus) + 5.0)
    popularity /= popularity.sum()
    nodes: list[Node] = []
    lots: list[Lot] = []
    fl_lat, fl_lon = lat[:n_flag], lon[:n_flag]
    for i in range(n_nodes):
        flagship = i < n_flag
        code = f"FS-{i:03d}" if flagship else f"HUB-{i:04d}"
        if flagship:
            area = None if rng.random() < 0.5 else _polygon(rng, lat[i], lon[i], rng.uniform(4.0, 8.0))
            parent = None
            has_van = True
            cap = (3000.0, 6000.0, 8000.0)
            skus = rng.choice(n_skus, size=int(n_skus * 0.95), replace=False, p=popularity)
            n_lots = (2, 4)
            qty = (50, 400)
        else:
            area = None if rng.random() < 0.03 else _polygon(rng, lat[i], lon[i], rng.uniform(1.0, 2.5))
            d2 = (fl_lat - lat[i]) ** 2 + ((fl_lon - lon[i]) * KM_LON / KM_LAT) ** 2
            parent = f"FS-{int(np.argmin(d2)):03d}"
            has_van = bool(rng.random() < 0.6)
            cap = (float(rng.integers(150, 400)), float(rng.integers(400, 900)),
                   float(rng.integers(600, 1200)))
            skus = rng.choice(n_skus, size=40, replace=False, p=popularity)
            n_lots = (1, 3)
            qty = (5, 40)
        nodes.append(
            Node(code, "flagship" if flagship else "hub", float(lat[i]), float(lon[i]), parent, area, has_van,
                 *cap)
        )
        for s in skus:
            for j in range(int(rng.integers(*n_lots))):
                u = rng.random()
                days = int(rng.integers(-3, 0)) if u < 0.03 else int(rng.integers(0, 30))
                expires = DAY + timedelta(days=days)
                lots.append(
                    Lot(code, products[s].sku, f"L{i:04d}-{s:03d}-{j}", int(rng.integers(*qty)), expires,
                        on_hold=bool(rng.random() < 0.01))
                )
    return Network(nodes, products, lots)


def make_orders(network: Network, n_orders: int = 100_000, seed: int = 11) -> list[Order]:
    rng = np.random.default_rng(seed)
    lat, lon = _positions(rng, n_orders, core_share=0.4)
    n_skus = len(network.products)
    popularity = 1.0 / (np.arange(n_skus) + 5.0)
    popularity /= popularity.sum()
    n_lines = rng.integers(1, 5, n_orders)
    sku_draw = rng.choice(n_skus, size=int(n_lines.sum()), p=popularity)
    qty_draw = rng.integers(1, 4, int(n_lines.sum()))
    pickup = rng.random(n_orders) < 0.05
    split = rng.random(n_orders) < 0.10
    hubs = [n.code for n in network.nodes if n.kind == "hub"] or [n.code for n in network.nodes]
    hub_pick = rng.integers(0, len(hubs), n_orders)
    orders = []
    p = 0
    for k in range(n_orders):
        m = int(n_lines[k])
        pairs = zip(sku_draw[p : p + m].tolist(), qty_draw[p : p + m].tolist(), strict=True)
        lines = tuple((network.products[s].sku, q) for s, q in pairs)
        p += m
        if pickup[k]:
            orders.append(Order(f"O{k:06d}", "pickup", network.day, float(lat[k]), float(lon[k]), lines,
                                hubs[int(hub_pick[k])], False))
        else:
            orders.append(Order(f"O{k:06d}", "delivery", network.day, float(lat[k]), float(lon[k]), lines,
                                None, bool(split[k])))
    return orders


def run(network: Network, orders: list[Order], threads: int = 2):
    """Allocate and return (result, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    res = allocate(network.nodes, network.products, network.lots, orders, threads=threads)
    return res, time.perf_counter() - t, time.process_time() - c


def run_database(url: str, n_nodes: int, n_orders: int, seed: int = 1) -> dict:
    """End to end on a real database: a synthetic city (warehouses.samplegen) is written as a scenario
    folder, loaded into a fresh database made for the run, and allocated by the service
    (locks, FEFO reservations, events); the database is dropped afterwards."""
    import tempfile
    from pathlib import Path

    from sqlalchemy.orm import Session

    from benchmarks.throwaway import throwaway_database
    from fulfillment.scenario import load_scenario
    from fulfillment.service import allocate_day
    from warehouses import samplegen

    scenario = samplegen.synthetic(n_nodes, n_orders, DAY, seed=seed)
    folder = Path(tempfile.mkdtemp(prefix="coldchain-bench-"))
    samplegen.write_scenario(scenario, folder)
    with throwaway_database(url, "bench_alloc") as (_url, engine):
        with Session(engine) as session:
            t = time.perf_counter()
            report = load_scenario(session, folder)
            session.commit()
            load_s = time.perf_counter() - t
        with Session(engine) as session:
            t = time.perf_counter()
            outcome = allocate_day(session, DAY, actor="bench")
            session.commit()
            alloc_s = time.perf_counter() - t
    n = outcome.allocated + outcome.unallocated
    return {"nodes": n_nodes, "orders": n, "allocated": outcome.allocated, "unallocated": outcome.unallocated,
            "load_s": load_s, "allocate_s": alloc_s, "orders_per_s": n / alloc_s, "rejected_rows": len(report.errors)}


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=1, help="runs; the fastest is reported")
    ap.add_argument("--threads", type=int, default=2, help="threads for the spatial step")
    ap.add_argument("--database", metavar="URL", help="also run end to end on this PostgreSQL server "
                    "(a database is made and dropped); default $COLDCHAIN_BENCH_DATABASE_URL if set")
    ap.add_argument("--db-orders", type=int, default=20_000)
    ap.add_argument("--db-nodes", type=int, default=2000)
    args = ap.parse_args(argv)
    con = Console()
    url = args.database or os.environ.get("COLDCHAIN_BENCH_DATABASE_URL")
    if url:
        r = run_database(url, args.db_nodes, args.db_orders)
        con.print(f"[bold]end to end on PostgreSQL[/bold]: {r['orders']:,} orders over {r['nodes']:,} nodes "
                  f"allocated in {r['allocate_s']:.2f} s = [bold]{r['orders_per_s']:,.0f} orders/s[/bold] "
                  f"({r['allocated']:,} allocated, {r['unallocated']:,} with a reason; scenario load "
                  f"{r['load_s']:.1f} s, not counted)")
    t = time.perf_counter()
    net = make_network(args.nodes, args.seed)
    orders = make_orders(net, args.orders, args.seed + 1)
    con.print(f"generated {len(net.nodes)} nodes, {len(net.lots)} lots, {len(orders)} orders "
              f"in {time.perf_counter() - t:.1f} s (not timed)")
    best = None
    for _ in range(max(1, args.repeat)):
        res, secs, cpu = run(net, orders, args.threads)
        if best is None or secs < best[1]:
            best = (res, secs, cpu)
    res, secs, cpu = best
    st = res.stats
    split = len(res.allocations) - len({a.order_ref for a in res.allocations})
    tab = Table(title=f"allocation: {len(orders):,} orders, {len(net.nodes):,} nodes")
    tab.add_column("what")
    tab.add_column("value", justify="right")
    tab.add_row("allocated orders", f"{len({a.order_ref for a in res.allocations}):,}")
    tab.add_row("unallocated orders", f"{len(res.unallocated):,}")
    tab.add_row("extra allocation entries from splits", f"{split:,}")
    tab.add_row("(order, covering van node) pairs after the SKU prefilter", f"{int(st['pairs']):,}")
    tab.add_row("candidates found ineligible before the chosen one", f"{int(st['skipped_candidates']):,}")
    for k in ("stock", "index", "prepare", "spatial", "allocate", "state"):
        tab.add_row(f"  {k} s", f"{st.get(k, 0.0):.3f}")
    tab.add_row("total s (wall)", f"{secs:.3f}")
    tab.add_row("total s (CPU of this process)", f"{cpu:.3f}")
    tab.add_row("[bold]orders/s (wall)[/bold]", f"[bold]{len(orders) / secs:,.0f}[/bold]")
    tab.add_row("orders/s (CPU)", f"{len(orders) / cpu:,.0f}")
    tab.add_row("lots / orders with a near-tie", f"{len(net.lots):,} / {int(st.get('near_ties', 0)):,}")
    con.print(tab)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    con.print(f"load average {load:.2f} on {os.cpu_count()} CPUs (other work on the machine slows the "
              "wall figure)")
    reasons: dict[str, int] = {}
    for u in res.unallocated:
        key = u.reason.split(" (")[0]
        for prefix in ("SKU-", "HUB-", "FS-"):
            key = " ".join(prefix + "*" if w.startswith(prefix) else w for w in key.split())
        reasons[key] = reasons.get(key, 0) + 1
    rt = Table(title="unallocated reasons (codes folded)")
    rt.add_column("reason")
    rt.add_column("orders", justify="right")
    for r, c in sorted(reasons.items(), key=lambda x: -x[1])[:12]:
        rt.add_row(r, f"{c:,}")
    con.print(rt)


if __name__ == "__main__":
    main()
