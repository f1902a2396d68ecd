"""Bigger days: a flagship with 400 stops and 8 vans, a city of 2,000 orders in 40 depots.

    python -m benchmarks.bigday [--instances flagship city] [--times 10 30 60] [--workers 2] [--json OUT]

For each instance: the time to build its matrices (vectorised geodesic x 1.3, README "Travel
matrices"), the time to the project's first feasible plan (model build plus OR-Tools' first
solution, for each first-solution strategy the portfolio starts from) and PyVRP's (the runtime
of the first iteration whose best solution is feasible), then the scenario's objective (every
order served first, then each used van's fixed cost plus cost per km x km) of the project and
of PyVRP 0.14 side by side at each time limit, and the peak memory of each run (tracemalloc
for Python's allocations, ``ru_maxrss`` growth for the whole process; the solvers run in a
child process each so one's peak does not hide the other's).

Both solvers get the same instance: the same matrices (seconds rounded up, metres), windows,
compartments, weight, shifts, fixed cost and cost per km (PyVRP's ``VehicleType(fixed_cost,
unit_distance_cost)``; integral costs so both objectives are exact). Every returned plan is
checked here in exact arithmetic (windows from the earliest schedule, shift end, compartments,
weight, each order once) before its objective is reported. The city is one multi-depot problem
(any van may take any order), so both solvers see the same freedom.

Instances are generated from a seed (``--seed``); on a loaded machine say so beside the figures
(the benchmark prints the load average at the start and at the end).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import sys
import time

import numpy as np

from core.geo import offset
from routing import solver
from routing.travel import GeodesicTravel

H = 3600.0
SLOTS = [(9, 11), (11, 13), (13, 15), (15, 17), (17, 19), (9, 19)]
CLASSES = ("frozen", "chilled", "ambient")


# ------------------------------------------------------------------------ instances


def _orders(rng: np.random.Generator, n: int, centres: list[tuple[float, float]], radius_km: float):
    pts, stops = [], []
    for i in range(n):
        home = int(rng.integers(len(centres)))
        c = centres[home]
        r = radius_km * math.sqrt(rng.random())
        a = rng.random() * 2 * math.pi
        pts.append(offset(c[0], c[1], r * math.cos(a), r * math.sin(a)))
        demand = {"chilled": float(rng.integers(3, 13))}
        if rng.random() < 0.3:
            demand["frozen"] = float(rng.integers(2, 8))
        if rng.random() < 0.5:
            demand["ambient"] = float(rng.integers(2, 10))
        lo, hi = SLOTS[int(rng.integers(len(SLOTS)))]
        stops.append(dict(id=f"O{i + 1:05d}", demand=demand, weight=round(sum(demand.values()) * 0.6, 1),
                          window=(lo * H, hi * H), service=300.0, depot=home))
    return pts, stops


def flagship(seed: int = 1) -> dict:
    """One flagship store, 400 stops within 8 km, 8 vans (one load each is enough)."""
    rng = np.random.default_rng(seed)
    depot = (30.657, 104.066)
    pts, stops = _orders(rng, 400, [depot], 8.0)
    vans = [dict(id=f"VAN-{k + 1:02d}", depot=0, capacity={"frozen": 150.0, "chilled": 700.0, "ambient": 700.0},
                 max_weight=900.0, cost_per_km=2, fixed_cost=150) for k in range(8)]
    return {"name": "flagship", "depots": [depot], "points": pts, "stops": stops, "vans": vans, "speed": 25.0}


def city(seed: int = 1, depots: int = 40, orders: int = 2000, vans_per_depot: int = 2) -> dict:
    """40 depots over a 36 x 36 km city, 2,000 orders each within 4 km of some depot, 2 vans a depot."""
    rng = np.random.default_rng(seed)
    centre = (30.657, 104.066)
    sites = [offset(*centre, float(rng.uniform(-18, 18)), float(rng.uniform(-18, 18))) for _ in range(depots)]
    pts, stops = _orders(rng, orders, sites, 4.0)
    vans = [dict(id=f"D{d + 1:02d}-VAN-{k + 1}", depot=d,
                 capacity={"frozen": 80.0, "chilled": 400.0, "ambient": 400.0},
                 max_weight=600.0, cost_per_km=2, fixed_cost=120)
            for d in range(depots) for k in range(vans_per_depot)]
    return {"name": "city", "depots": sites, "points": pts, "stops": stops, "vans": vans, "speed": 25.0}


INSTANCES = {"flagship": flagship, "city": city}


def depot_days(inst: dict) -> list[dict]:
    """The instance as the project plans it: each depot's own orders (allocated to it) and vans, one
    problem per depot (routing.service.plan_depot, one Celery task each)."""
    if len(inst["depots"]) == 1:
        return [inst]
    out = []
    for d, site in enumerate(inst["depots"]):
        mine = [i for i, s in enumerate(inst["stops"]) if s["depot"] == d]
        out.append({"name": f"{inst['name']}-{d + 1:02d}", "depots": [site], "speed": inst["speed"],
                    "points": [inst["points"][i] for i in mine],
                    "stops": [{**inst["stops"][i], "depot": 0} for i in mine],
                    "vans": [{**v, "depot": 0} for v in inst["vans"] if v["depot"] == d]})
    return out


def matrices(inst: dict) -> tuple[np.ndarray, np.ndarray, float]:
    """(seconds, metres, build seconds) over depots then orders."""
    points = list(inst["depots"]) + list(inst["points"])
    t0 = time.perf_counter()
    sec, met = GeodesicTravel().matrix(points, inst["speed"])
    return sec, met, time.perf_counter() - t0


def problem(inst: dict, time_limit: float, sec: np.ndarray, met: np.ndarray) -> solver.Problem:
    nd = len(inst["depots"])
    vehicles = [solver.Vehicle(id=v["id"], start=v["depot"], end=v["depot"], shift=(8 * H, 20 * H),
                               capacity=dict(v["capacity"]), max_weight=v["max_weight"],
                               cost_per_km=float(v["cost_per_km"]), fixed_cost=float(v["fixed_cost"]))
                for v in inst["vans"]]
    stops = [solver.Stop(id=s["id"], node=nd + i, demand=dict(s["demand"]), weight=s["weight"], window=s["window"],
                         service=s["service"]) for i, s in enumerate(inst["stops"])]
    return solver.Problem(vehicles=vehicles, stops=stops, travel_time=sec, distance=met, time_limit=time_limit,
                          depots=list(range(nd)))


# ------------------------------------------------------------------ independent check


def check(inst: dict, sec: np.ndarray, met: np.ndarray, routes: dict[str, list[str]]) -> tuple[list[str], float, int]:
    """Errors, objective (fixed cost of used vans + cost per km x km) and orders served, in exact arithmetic.

    Each van leaves at its shift start and waits where it arrives early (the earliest schedule: a
    route feasible with a later departure is feasible with this one, since nothing limits duration)."""
    nd = len(inst["depots"])
    node = {s["id"]: nd + i for i, s in enumerate(inst["stops"])}
    stop = {s["id"]: s for s in inst["stops"]}
    vans = {v["id"]: v for v in inst["vans"]}
    errors: list[str] = []
    seen: set[str] = set()
    cost = 0.0
    for vid, seq in routes.items():
        if not seq:
            continue
        v = vans[vid]
        at, t = v["depot"], 8 * H
        load = dict.fromkeys(CLASSES, 0.0)
        weight = dist = 0.0
        for sid in seq:
            if sid in seen:
                errors.append(f"{sid} served twice")
            seen.add(sid)
            s = stop[sid]
            t += float(sec[at, node[sid]])
            dist += float(met[at, node[sid]])
            t = max(t, s["window"][0])
            if t > s["window"][1] + 1e-6:
                errors.append(f"{vid}: {sid} served at {t:.0f} s after its window ends ({s['window'][1]:.0f})")
            t += s["service"]
            for c, q in s["demand"].items():
                load[c] += q
            weight += s["weight"]
            at = node[sid]
        t += float(sec[at, v["depot"]])
        dist += float(met[at, v["depot"]])
        if t > 20 * H + 1e-6:
            errors.append(f"{vid} back at {t:.0f} s, after its shift")
        errors += [f"{vid}: {c} {q:g} l > {v['capacity'][c]:g} l" for c, q in load.items()
                   if q > v["capacity"].get(c, 0.0) + 1e-9]
        if weight > v["max_weight"] + 1e-9:
            errors.append(f"{vid}: {weight:g} kg > {v['max_weight']:g} kg")
        cost += v["fixed_cost"] + dist / 1000.0 * v["cost_per_km"]
    return errors, cost, len(seen)


# ------------------------------------------------------------------------- solvers


def first_feasible_ours(inst: dict, sec: np.ndarray, met: np.ndarray, strategy: str) -> dict:
    """Model build + OR-Tools' first solution alone (no local search), as the portfolio starts."""
    from ortools.constraint_solver import routing_enums_pb2

    t0 = time.perf_counter()
    p = problem(inst, 600.0, sec, met)
    active, _ = solver.prefilter(p)
    m = solver._Model(p, active)
    t_model = time.perf_counter() - t0
    params = m.params(solver.SearchConfig(strategy), 600.0)
    params.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GREEDY_DESCENT
    params.solution_limit = 1
    m.close(params)
    sol = m.routing.SolveWithParameters(params)
    out = m.extract(sol) if sol is not None else None
    seconds = time.perf_counter() - t0
    res = {"strategy": strategy, "seconds": seconds, "model_seconds": t_model}
    if out:
        routes = {p.vehicles[k].id: [p.stops[i].id for i in seq] for (k, _t), seq in
                  zip(m.fleet, out["routes"], strict=True)}
        errors, cost, served = check(inst, sec, met, routes)
        res.update(errors=errors[:3], objective=cost, served=served)
    return res


def run_ours(inst: dict, sec: np.ndarray, met: np.ndarray, time_limit: float, workers: int) -> dict:
    t0 = time.perf_counter()
    sol = solver.solve(problem(inst, time_limit, sec, met), workers=workers)
    seconds = time.perf_counter() - t0
    routes: dict[str, list[str]] = {}
    for r in sol.routes:
        routes.setdefault(r.vehicle_id, []).extend(v.stop_id for v in r.visits)
    errors, cost, served = check(inst, sec, met, routes)
    return {"seconds": seconds, "objective": cost, "served": served, "errors": errors[:3],
            "vans": sol.vehicles_used, "km": sol.distance / 1000, "strategy": sol.strategy}


def _pyvrp_model(inst: dict, sec: np.ndarray, met: np.ndarray):
    from pyvrp import Model

    nd = len(inst["depots"])
    dur = np.ceil(sec).astype(np.int64)
    dist = np.rint(met).astype(np.int64)
    m = Model()
    locs = [m.add_location(0, 0) for _ in range(nd + len(inst["stops"]))]
    depots = [m.add_depot(locs[d], tw_early=int(8 * H), tw_late=int(20 * H)) for d in range(nd)]
    by_depot: dict[int, list[dict]] = {}
    for v in inst["vans"]:
        by_depot.setdefault(v["depot"], []).append(v)
    for d, vans in by_depot.items():
        v = vans[0]
        caps = [int(v["capacity"][c] * 1000) for c in CLASSES] + [int(v["max_weight"] * 1000)]
        # PyVRP's objective in metre units: unit_distance_cost per metre, fixed cost per van x 1000
        m.add_vehicle_type(len(vans), capacity=caps, start_depot=depots[d], end_depot=depots[d],
                           fixed_cost=int(v["fixed_cost"] * 1000), unit_distance_cost=int(v["cost_per_km"]),
                           tw_early=int(8 * H), tw_late=int(20 * H), name=str(d))
    for i, s in enumerate(inst["stops"]):
        load = [int(math.ceil(s["demand"].get(c, 0.0) * 1000)) for c in CLASSES] + [int(math.ceil(s["weight"] * 1000))]
        m.add_client(locs[nd + i], delivery=load, service_duration=int(s["service"]),
                     tw_early=int(s["window"][0]), tw_late=int(s["window"][1]), name=s["id"])
    n = len(locs)
    for i in range(n):
        for j in range(n):
            if i != j:
                m.add_edge(locs[i], locs[j], distance=int(dist[i, j]), duration=int(dur[i, j]))
    return m


def run_pyvrp(inst: dict, sec: np.ndarray, met: np.ndarray, time_limit: float) -> dict:
    from pyvrp.stop import MaxRuntime

    t0 = time.perf_counter()
    m = _pyvrp_model(inst, sec, met)
    t_model = time.perf_counter() - t0
    res = m.solve(MaxRuntime(max(0.1, time_limit - t_model)), seed=1, display=False, collect_stats=True)
    seconds = time.perf_counter() - t0
    vans_of: dict[int, list[str]] = {}
    for v in inst["vans"]:
        vans_of.setdefault(v["depot"], []).append(v["id"])
    routes: dict[str, list[str]] = {}
    for r in res.best.routes():
        depot = int(r.start_depot())
        vid = vans_of[depot].pop(0)
        routes[vid] = [inst["stops"][a.idx]["id"] for a in r if a.is_client()]  # idx: the n-th client
    errors, cost, served = check(inst, sec, met, routes)
    elapsed, first = t_model, None
    for dt, datum in zip(res.stats.runtimes, res.stats.data, strict=False):
        elapsed += dt
        if datum.best_feas:
            first = elapsed
            break
    return {"seconds": seconds, "objective": cost, "served": served, "errors": errors[:3],
            "vans": sum(1 for r in routes.values() if r), "feasible": res.best.is_feasible(),
            "first_feasible": first, "model_seconds": t_model}


def _peak_mb() -> float:
    """Peak resident memory of this process and of its (reaped) children, MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def _job(fn_name: str, name: str, seed: int, part: int, args: tuple) -> dict:
    """One depot's day in a worker process (instances are rebuilt from the seed: nothing big is pickled)."""
    sub = depot_days(INSTANCES[name](seed))[part]
    sec, met, _ = matrices(sub)
    fn = {"ours": run_ours, "pyvrp": run_pyvrp, "first": first_feasible_ours}[fn_name]
    try:
        out = fn(sub, sec, met, *args)
    except Exception as exc:  # reported, not fatal
        out = {"errors": [f"{type(exc).__name__}: {exc}"]}
    out["rss_peak_mb"] = _peak_mb()
    out["orders"] = len(sub["stops"])
    return out


def run_day(fn_name: str, name: str, seed: int, processes: int, *args) -> tuple[list[dict], float, float]:  # noqa: ANN002
    """Every depot of the instance in a pool of fresh processes (spawned: each one's peak memory is its
    own); returns the per-depot results, the wall time and the largest peak memory of a process."""
    from concurrent.futures import ProcessPoolExecutor

    parts = len(depot_days(INSTANCES[name](seed)))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(processes, parts)), mp_context=mp.get_context("spawn")) as pool:
        futs = [pool.submit(_job, fn_name, name, seed, k, args) for k in range(parts)]
        res = [f.result() for f in futs]
    wall = time.perf_counter() - t0
    return res, wall, max(r.get("rss_peak_mb", 0.0) for r in res)


def _total(res: list[dict]) -> dict:
    return {"objective": sum(r.get("objective", math.nan) for r in res),
            "served": sum(r.get("served", 0) for r in res), "orders": sum(r["orders"] for r in res),
            "vans": sum(r.get("vans", 0) or 0 for r in res),
            "errors": [e for r in res for e in (r.get("errors") or [])][:3],
            "solve_s": max(r.get("seconds", 0.0) for r in res)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", nargs="*", default=["flagship", "city"], choices=sorted(INSTANCES))
    ap.add_argument("--times", nargs="*", type=float, default=[10.0, 30.0, 60.0],
                    help="time limits in seconds for the whole day (the 60 s runs take long: pass a subset)")
    ap.add_argument("--workers", type=int, default=2, help="processes (the project's solver / depots at once)")
    ap.add_argument("--solvers", nargs="*", default=["coldchain", "pyvrp"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="also write the raw results to this file")
    args = ap.parse_args(argv)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)",
          flush=True)
    report: dict = {"times": args.times, "workers": args.workers, "load_start": os.getloadavg(), "instances": {}}
    for name in args.instances:
        inst = INSTANCES[name](args.seed)
        parts = depot_days(inst)
        builds = []
        for _ in range(5):
            builds.append(matrices(inst)[2])
        n = len(inst["depots"]) + len(inst["points"])
        per = [matrices(p)[2] for p in parts] if len(parts) > 1 else []
        print(f"\n{name}: {len(inst['stops'])} orders, {len(inst['depots'])} depots, {len(inst['vans'])} vans; "
              f"one matrix over all {n} points: {min(builds) * 1000:.0f} ms "
              f"(median of 5 {sorted(builds)[2] * 1000:.0f} ms)"
              + (f"; the {len(parts)} depots' own matrices: {sum(per) * 1000:.0f} ms in all" if per else ""),
              flush=True)
        rep = report["instances"][name] = {"points": n, "matrix_s": builds, "depot_matrix_s": per, "first": {},
                                           "runs": []}
        # a single depot: the project's solver uses the processes; several: that many depots at once
        single = len(parts) == 1
        if "coldchain" in args.solvers:
            for strategy in ("PARALLEL_CHEAPEST_INSERTION", "LOCAL_CHEAPEST_INSERTION"):
                res, wall, _peak = run_day("first", name, args.seed, 1 if single else args.workers, strategy)
                tot = _total(res)
                rep["first"][strategy] = {"wall": wall, "sum_s": sum(r["seconds"] for r in res),
                                          "max_s": max(r["seconds"] for r in res), **tot}
                print(f"  first feasible, coldchain from {strategy}: "
                      + (f"{res[0]['seconds']:.2f} s (model build {res[0]['model_seconds']:.2f} s)" if single else
                         f"slowest depot {max(r['seconds'] for r in res):.2f} s, all {len(res)} depots "
                         f"{sum(r['seconds'] for r in res):.2f} s of CPU")
                      + f", served {tot['served']}/{tot['orders']}, objective {tot['objective']:.1f}"
                      + (f" ERRORS {tot['errors']}" if tot["errors"] else ""), flush=True)
        for t in args.times:
            for who in args.solvers:
                if who == "coldchain":
                    extra = (t, args.workers) if single else (t * args.workers / len(parts), 1)
                    res, wall, peak = run_day("ours", name, args.seed, 1 if single else args.workers, *extra)
                else:
                    extra = (t,) if single else (t * args.workers / len(parts),)
                    res, wall, peak = run_day("pyvrp", name, args.seed, 1 if single else args.workers, *extra)
                tot = _total(res)
                r = {"solver": who, "time_limit": t, "wall": wall, "rss_peak_mb": peak, **tot}
                if who == "pyvrp":
                    firsts = [x.get("first_feasible") for x in res]
                    r["first_feasible_max"] = max((f for f in firsts if f is not None), default=None)
                    r["first_feasible_missing"] = sum(1 for f in firsts if f is None)
                rep["runs"].append(r)
                ff = (f", first feasible {r['first_feasible_max']:.2f} s" + (" (slowest depot)" if not single else "")
                      if r.get("first_feasible_max") is not None else "")
                print(f"  {t:4.0f} s {who:9s} served {tot['served']}/{tot['orders']} "
                      f"objective {tot['objective']:10.1f} vans {tot['vans']} wall {wall:6.1f} s "
                      f"(solver {tot['solve_s']:.1f} s{' per depot' if not single else ''}) "
                      f"peak {peak:.0f} MB rss{ff} "
                      f"{'feasible' if not tot['errors'] else 'ERRORS: ' + '; '.join(tot['errors'])}", flush=True)
            ours = next((r for r in rep["runs"] if r["solver"] == "coldchain" and r["time_limit"] == t), None)
            peer = next((r for r in rep["runs"] if r["solver"] == "pyvrp" and r["time_limit"] == t), None)
            if ours and peer and ours["objective"] and peer["objective"]:
                print(f"  {t:4.0f} s ratio coldchain / PyVRP: {ours['objective'] / peer['objective']:.4f} "
                      f"(served {ours['served']} vs {peer['served']})", flush=True)
    report["load_end"] = os.getloadavg()
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
    bad = [r for i in report["instances"].values() for r in i["runs"] if r.get("errors")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
