"""Routing benchmark: coldchain vs PyVRP (and VROOM) side by side, in one run, at 10 s and 30 s.

    python -m benchmarks.routing                      # Solomon + the two generated cities, 10 s and 30 s
    python -m benchmarks.routing --time-limits 10 --instances R201 --cities
    python -m benchmarks.routing --cities city-2x200 --instances --variants no-tob
    python -m benchmarks.routing --solvers coldchain pyvrp --reference earlier.json  # peers reused

Solomon / VRPLIB instances, distance only: every solution (ours and the peers') is checked by
``routing.vrplib.check_solution`` in exact arithmetic and, for Solomon files, again by
:func:`check_solomon_routes`, which reads the file itself and shares no code with the project.
Peers get the same integer data as the model sees: times scaled x1000 and rounded up, distances
scaled x1000 and rounded; the reported distance is recomputed in double precision.

Day plans on generated cities (:data:`CITIES`, see :func:`run_city`): the scenario's objective, the
most orders served first, then fixed cost per van used + cost_per_km; PyVRP gets the same cost model
(:func:`pyvrp_day`). Each solver's plans are exported and checked by ../shared/tools/check_plan.py,
and recomputed by :func:`check_day`. The time limit is per instance and per depot.

PyVRP and pyvroom are imported only here (``pip install .[bench]``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from routing.vrplib import Instance, check_solution, read_instance, route_distance, solve_file

DEFAULT_DIR = "/work/shared/benchmarks/solomon"
CHECK_PLAN = os.path.join(os.environ.get("COLDCHAIN_SHARED_DIR", "/work/shared"), "tools", "check_plan.py")
DEFAULT_INSTANCES = ["C101", "C201", "R101", "R201", "RC101", "RC201"]
SCALE = 1000


def _int_data(inst: Instance):
    dur = np.ceil(inst.travel * SCALE).astype(np.int64)
    dist = np.rint(inst.distance * SCALE).astype(np.int64)
    np.fill_diagonal(dur, 0)
    np.fill_diagonal(dist, 0)

    def t(x: float, up: bool) -> int:
        if not math.isfinite(x):
            return 2**40
        return int(math.ceil(x * SCALE - 1e-9)) if up else int(math.floor(x * SCALE + 1e-9))

    return dur, dist, t


def run_pyvrp(inst: Instance, time_limit: float, seed: int = 1) -> tuple[list[list[int]], float]:
    from pyvrp import Model
    from pyvrp.stop import MaxRuntime

    t0 = time.monotonic()
    dur, dist, t = _int_data(inst)
    n = len(inst.ids)
    m = Model()
    xy = inst.coords if inst.coords is not None else np.zeros((n, 2))
    locs = [m.add_location(int(round(xy[i, 0])), int(round(xy[i, 1]))) for i in range(n)]
    m.add_depot(locs[0], tw_early=t(inst.ready[0], True), tw_late=t(inst.due[0], False))
    m.add_vehicle_type(inst.num_vehicles or n - 1, capacity=[int(inst.capacity)],
                       tw_early=t(inst.ready[0], True), tw_late=t(inst.due[0], False))
    for i in range(1, n):
        m.add_client(locs[i], delivery=[int(inst.demand[i])], service_duration=t(inst.service[i], True),
                     tw_early=t(inst.ready[i], True), tw_late=t(inst.due[i], False))
    for i in range(n):
        for j in range(n):
            m.add_edge(locs[i], locs[j], distance=int(dist[i, j]), duration=int(dur[i, j]))
    res = m.solve(MaxRuntime(max(0.1, time_limit - (time.monotonic() - t0))), seed=seed, display=False)
    routes = [[inst.ids[a.idx + 1] for a in r if a.is_client()] for r in res.best.routes()]
    return routes, time.monotonic() - t0


def run_vroom(inst: Instance, time_limit: float, threads: int = 2) -> tuple[list[list[int]], float]:
    import datetime

    import vroom

    t0 = time.monotonic()
    dur, dist, t = _int_data(inst)
    n = len(inst.ids)
    vi = vroom.Input()
    vi.set_durations_matrix(profile="car", matrix_input=dur)
    vi.set_costs_matrix(profile="car", matrix_input=dist)
    shift = vroom.TimeWindow(t(inst.ready[0], True), t(inst.due[0], False))
    for k in range(inst.num_vehicles or n - 1):
        vi.add_vehicle(vroom.Vehicle(id=k + 1, start=0, end=0, capacity=[int(inst.capacity)],
                                     time_window=shift))
    for i in range(1, n):
        vi.add_job(vroom.Job(id=i, location=i, delivery=[int(inst.demand[i])],
                             default_service=t(inst.service[i], True),
                             time_windows=[vroom.TimeWindow(t(inst.ready[i], True), t(inst.due[i], False))]))
    sol = vi.solve(exploration_level=5, nb_threads=threads,
                   timeout=datetime.timedelta(seconds=max(0.1, time_limit)))
    df = sol.routes
    routes: list[list[int]] = []
    for _, grp in df[df["type"] == "job"].groupby("vehicle_id", sort=True):
        routes.append([inst.ids[int(j)] for j in grp["id"]])
    return routes, time.monotonic() - t0


def run_ours(path: str, time_limit: float, workers: int | None) -> tuple[list[list[int]], float]:
    t0 = time.monotonic()
    res = solve_file(path, time_limit, workers=workers)
    return res["routes"], time.monotonic() - t0


def _bks(directory: str) -> dict[str, float]:
    out = {}
    p = os.path.join(directory, "bks_distance.csv")
    if os.path.exists(p):
        with open(p, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out[row["instance"]] = float(row["distance"])
    return out


def _find(directory: str, name: str) -> str:
    for ext in (".txt", ".vrp", ""):
        p = os.path.join(directory, name + ext)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"{name} not found in {directory}")


def check_solomon_routes(path: str, routes: Sequence[Sequence[int]]) -> list[str]:
    """A second feasibility check of Solomon routes that shares no code with the project: it reads
    the file itself and recomputes, in double precision, each route's Euclidean legs (travel time =
    distance), service start within [ready, due], the return by the depot's due date, the load
    against the capacity, the number of vehicles, and that every customer is served exactly once."""
    with open(path, encoding="utf-8") as f:
        lines = [ln.split() for ln in f.read().splitlines() if ln.strip()]
    fleet = cap = None
    cust: dict[int, tuple[float, ...]] = {}
    for i, parts in enumerate(lines):
        if fleet is None and parts[:1] == ["NUMBER"] and "CAPACITY" in parts:
            fleet, cap = int(lines[i + 1][0]), float(lines[i + 1][1])
        elif len(parts) == 7 and all(p.replace(".", "", 1).isdigit() for p in parts):
            cust[int(parts[0])] = tuple(float(p) for p in parts[1:])  # x y demand ready due service
    errors: list[str] = []
    used = [r for r in routes if r]
    if fleet is not None and len(used) > fleet:
        errors.append(f"{len(used)} routes but only {fleet} vehicles")
    x0, y0, _, ready0, due0, _ = cust[0]
    count: dict[int, int] = {}
    for n, r in enumerate(used):
        x, y, t, load = x0, y0, ready0, 0.0
        for c in r:
            if c == 0 or c not in cust:
                errors.append(f"route {n}: no customer {c}")
                continue
            count[c] = count.get(c, 0) + 1
            cx, cy, q, ready, due, service = cust[c]
            t = max(t + math.hypot(cx - x, cy - y), ready)
            if t > due + 1e-6:
                errors.append(f"route {n}: customer {c} at {t:.3f}, due {due:g}")
            t += service
            load += q
            x, y = cx, cy
        t += math.hypot(x0 - x, y0 - y)
        if t > due0 + 1e-6:
            errors.append(f"route {n}: back at {t:.3f}, depot due {due0:g}")
        if cap is not None and load > cap + 1e-6:
            errors.append(f"route {n}: load {load:g} > capacity {cap:g}")
    errors += [f"customer {c} served {k} times" for c, k in count.items() if k > 1]
    missing = sorted(set(cust) - {0} - set(count))
    if missing:
        errors.append(f"{len(missing)} customers not served, e.g. {missing[:5]}")
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limits", type=float, nargs="+", default=[10.0, 30.0],
                    help="seconds per instance (and per depot of a city); every solver at each (default 10 30)")
    ap.add_argument("--time-limit", type=float, help="one time limit only (same as --time-limits S)")
    ap.add_argument("--instances", nargs="*", default=DEFAULT_INSTANCES)
    ap.add_argument("--dir", default=os.environ.get("COLDCHAIN_BENCH_DIR", DEFAULT_DIR))
    ap.add_argument("--solvers", nargs="*", default=["coldchain", "pyvrp"],
                    help="coldchain, pyvrp, vroom (Solomon only)")
    ap.add_argument("--cities", nargs="*", default=[c[0] for c in CITIES],
                    help=f"generated cities to plan (default all: {' '.join(c[0] for c in CITIES)}); "
                         "--cities alone: none")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                    help="day-plan variants: as-is (time-on-board limits, which PyVRP cannot model) and "
                         "no-tob (the same days without them: the same model for both solvers)")
    ap.add_argument("--workers", type=int, default=None, help="coldchain processes (default: all cores)")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--reference", help="reuse the peers' Solomon results (same instances and time limits) from a "
                                        "--json file of an earlier run instead of solving again; only the "
                                        "solvers named in --solvers that the file lacks are run")
    args = ap.parse_args(argv)
    limits = [args.time_limit] if args.time_limit is not None else list(args.time_limits)

    from rich.console import Console

    console = Console(stderr=False)
    console.width = max(console.width, 120)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    console.print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
                  f"at the start; coldchain workers: {args.workers or os.cpu_count()}, PyVRP: 1 thread")
    stored: dict[tuple[str, str, float], dict] = {}
    if args.reference:
        # peers are deterministic enough that rerunning them for every experiment on our
        # own solver only costs time; their feasibility is re-checked below all the same
        with open(args.reference, encoding="utf-8") as f:
            ref = json.load(f)
        have = {float(x) for x in ref.get("time_limits", [ref.get("time_limit", math.nan)])}
        missing = [x for x in limits if x not in have]
        if missing:
            ap.error(f"--reference was run with --time-limits {sorted(have)}, not {missing}")
        stored = {(r["instance"], r["solver"], float(r.get("time_limit", ref.get("time_limit")))): r
                  for r in ref["results"] if r["solver"] != "coldchain"}
    results: list[dict] = []
    for limit in limits if args.instances else []:
        results += _solomon(args, limit, stored, console)
    cities: list[dict] = []
    known = {c[0]: c for c in CITIES}
    for name in args.cities:
        if name not in known:
            ap.error(f"unknown city {name} (known: {' '.join(known)})")
        cities += run_city(known[name], limits, [s for s in args.solvers if s != "vroom"], args.workers,
                           variants=args.variants)
    if cities:
        _city_table(cities, console)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    console.print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"time_limit": limits[0], "time_limits": limits, "results": results, "cities": cities},
                      f, indent=1)
    ok = all(not r["errors"] for r in results)
    ok = ok and all(not c["errors"] for c in cities if c["solver"] == "coldchain")
    return 0 if ok else 1


def _solomon(args, limit: float, stored: dict, console) -> list[dict]:
    """The Solomon / VRPLIB instances at one time limit, every solver one after the other."""
    from rich.table import Table

    bks = _bks(args.dir)
    results: list[dict] = []
    runners = {
        "coldchain": lambda p, inst: run_ours(p, limit, args.workers),
        "pyvrp": lambda p, inst: run_pyvrp(inst, limit),
        "vroom": lambda p, inst: run_vroom(inst, limit),
    }
    for name in args.instances:
        path = _find(args.dir, name)
        inst = read_instance(path)
        for solver in args.solvers:
            try:
                if (name, solver, limit) in stored:
                    old = stored[(name, solver, limit)]
                    routes, secs = old["routes"], old["seconds"]
                else:
                    routes, secs = runners[solver](path, inst)
                errors = check_solution(inst, routes)
                if inst.kind == "solomon":  # and again, by a checker that shares no code with the project
                    errors += [e for e in check_solomon_routes(path, routes) if e not in errors]
                dist = route_distance(inst, routes)
                nveh = sum(1 for r in routes if r)
            except Exception as exc:  # a peer that fails is reported, not fatal
                routes, secs, errors, dist, nveh = [], 0.0, [f"{type(exc).__name__}: {exc}"], math.nan, 0
            results.append({"instance": name, "solver": solver, "time_limit": limit, "vehicles": nveh,
                            "distance": dist, "seconds": secs, "errors": errors, "routes": routes})
            print(f"{name:6s} {solver:9s} {limit:4g}s {nveh:3d} {dist:10.2f} {secs:6.1f}s "
                  f"{'feasible' if not errors else 'INFEASIBLE: ' + '; '.join(errors[:2])}",
                  file=sys.stderr, flush=True)

    table = Table(title=f"Routing benchmark, time limit {limit:g} s (distance-only objective)")
    for col in ("instance", "solver", "vehicles", "distance", "gap to BKS", "ratio to PyVRP",
                "seconds", "feasible"):
        table.add_column(col, justify="left" if col in ("instance", "solver", "feasible") else "right")
    by = {(r["instance"], r["solver"]): r for r in results}
    ratios: dict[str, list[float]] = {}
    gaps: dict[str, list[float]] = {}
    for r in results:
        b = bks.get(r["instance"])
        gap = (r["distance"] / b - 1) * 100 if b and not r["errors"] else math.nan
        peer = by.get((r["instance"], "pyvrp"))
        ratio = (r["distance"] / peer["distance"]
                 if peer and not peer["errors"] and not r["errors"] else math.nan)
        r["ratio"] = ratio
        if not math.isnan(ratio):
            ratios.setdefault(r["solver"], []).append(ratio)
        if not math.isnan(gap):
            gaps.setdefault(r["solver"], []).append(gap)
        table.add_row(r["instance"], r["solver"], str(r["vehicles"]), f"{r['distance']:.2f}",
                      "" if math.isnan(gap) else f"{gap:+.2f} %", "" if math.isnan(ratio) else f"{ratio:.4f}",
                      f"{r['seconds']:.1f}", "yes" if not r["errors"] else "NO: " + r["errors"][0])
    for solver in args.solvers:
        g = gaps.get(solver, [])
        q = ratios.get(solver, [])
        feas = sum(1 for r in results if r["solver"] == solver and not r["errors"])
        tot = sum(1 for r in results if r["solver"] == solver)
        table.add_row("mean", solver, "", "", f"{np.mean(g):+.2f} %" if g else "",
                      f"{np.mean(q):.4f}" if q else "", "", f"{feas}/{tot}", style="bold")
    console.print(table)
    return results


def _city_table(rows: list[dict], console) -> None:
    from rich.table import Table

    table = Table(title="Day plans on generated cities (time limit per depot; objective: most orders served, "
                        "then fixed cost per van used + cost_per_km)")
    for col in ("city", "variant", "limit", "solver", "served", "vans", "trips", "km", "cost", "cost ratio to PyVRP",
                "check_plan.py", "own check"):
        table.add_column(col, justify="left" if col in ("city", "variant", "solver", "check_plan.py", "own check")
                         else "right")
    by = {(r["city"], r["variant"], r["time_limit"], r["solver"]): r for r in rows}
    for r in rows:
        peer = by.get((r["city"], r["variant"], r["time_limit"], "pyvrp"))
        ratio = ""
        if peer is not None and peer["served"] == r["served"] and peer["cost"] > 0:
            ratio = f"{r['cost'] / peer['cost']:.4f}"
        elif peer is not None:
            ratio = f"serves {r['served'] - peer['served']:+d}"
        viol = r.get("check_plan", "").rsplit("violations=", 1)[-1] if "violations=" in r.get("check_plan", "") else "?"
        own = [e for e in r["errors"] if not e.startswith("VIOLATION")]
        table.add_row(r["city"], r["variant"], f"{r['time_limit']:g} s", r["solver"], f"{r['served']}/{r['orders']}",
                      str(r["vans"]), str(r["trips"]), f"{r['km']:.2f}", f"{r['cost']:.2f}", ratio,
                      f"{viol} violations", "ok" if not own else f"{len(own)} errors, e.g. {own[0]}")
    console.print(table)



# ------------------------------------------------------------------------------------- day plans
#
# A generated city (warehouses.samplegen.synthetic) is loaded into a throwaway SQLite database and
# allocated by the project; each depot's day (routing.service.build_problem: compartments, weight,
# windows, shifts, per-van speeds, trips with the reload time, time on board) is then solved by the
# project and by PyVRP with the scenario's own objective: serve the most orders, then the least
# fixed cost per van used plus cost_per_km. Each solver's plans are stored, exported (CONTRACTS
# section 5) and checked by ../shared/tools/check_plan.py; besides, every trip is recomputed here from
# the problem's data (check_day), which also checks what check_plan cannot see (time on board, weight).

CITIES: list[tuple[str, int, int, int]] = [  # name, nodes, orders, seed of samplegen.synthetic
    ("city-3x300", 3, 300, 3),
    ("city-2x200", 2, 200, 4),
]
VARIANTS = ("as-is", "no-tob")
_COST_UNIT = 10_000  # PyVRP costs are integers: 1/10,000 of a currency unit (cost_per_km x 10 per metre)
# an order's prize: FACTOR x (the longest detour + the dearest van) + 1, enough to serve the most orders
# first. Not 100 like our own drop penalty: with prizes that large PyVRP's penalised search never got
# back to a feasible plan on city-2x200's FS-01 (152 orders, 3 vans): 0 served at 10 s and 30 s, 149 with 1
PRIZE_FACTOR = 1
_TOL = 1e-6


def pyvrp_day(problem, seed: int = 1):
    """Solve one depot's day with PyVRP within ``problem.time_limit`` (model building included).

    The same integer data as our model: seconds rounded up, windows inwards, litres and kg in
    thousandths; one vehicle type per van (``fixed_cost``, ``unit_distance_cost``, its own speed as
    a profile, ``reload_depots`` and ``max_reloads`` = trips - 1, the reload time as the depot's
    service duration, which PyVRP also spends before the first trip, so the van's window opens that
    much earlier); every order optional with a prize above any plan's cost (serve the most first).
    PyVRP has no time-on-board limit: its trips are re-timed to leave as late as their windows and
    the next trip allow, and check_day reports what still breaks a limit.
    """
    from pyvrp import Model
    from pyvrp.stop import MaxRuntime

    from routing import solver

    t0 = time.monotonic()
    P = problem
    reload = int(math.ceil(max(0.0, P.reload_time)))
    nodes = [0] + [s.node for s in P.stops]  # PyVRP location i -> matrix node
    idx = np.asarray(nodes)
    dist = np.rint(np.asarray(P.distance, dtype=float)[np.ix_(idx, idx)]).astype(np.int64)
    np.fill_diagonal(dist, 0)
    m = Model()
    locs = [m.add_location(0, 0) for _ in nodes]
    big = 2**40
    depot = m.add_depot(locs[0], tw_early=0, tw_late=big, service_duration=reload)
    classes = list(solver.CLASSES)

    def dem(s) -> list[int]:
        return [int(math.ceil(s.demand.get(c, 0.0) * 1000 - 1e-6)) for c in classes] + \
            [int(math.ceil(s.weight * 1000 - 1e-6))]

    profiles: dict[int, object] = {}
    matrices: dict[int, np.ndarray] = {}
    max_arc = 1
    for v in P.vehicles:
        tt = P.travel_time if v.travel_time is None else v.travel_time
        if id(tt) not in profiles:
            profiles[id(tt)] = m.add_profile()
            dur = np.ceil(np.asarray(tt, dtype=float)[np.ix_(idx, idx)] - 1e-9).astype(np.int64)
            np.fill_diagonal(dur, 0)
            matrices[id(tt)] = dur
        max_arc = max(max_arc, int(dist.max()) * int(round(v.cost_per_km * _COST_UNIT / 1000)))
    total_weight = sum(dem(s)[-1] for s in P.stops) + 1
    types = []
    for v in P.vehicles:
        if v.start != 0 or v.end != 0:
            raise ValueError("day plans start and end at the depot (node 0)")
        tt = P.travel_time if v.travel_time is None else v.travel_time
        cap = [int(math.floor(v.capacity.get(c, 0.0) * 1000 + 1e-6)) for c in classes]
        cap.append(total_weight if v.max_weight is None else int(math.floor(v.max_weight * 1000 + 1e-6)))
        types.append(m.add_vehicle_type(
            1, capacity=cap, start_depot=depot, end_depot=depot,
            fixed_cost=int(round(v.fixed_cost * _COST_UNIT)),
            unit_distance_cost=int(round(v.cost_per_km * _COST_UNIT / 1000)),
            tw_early=int(math.ceil(v.shift[0] - 1e-9)) - reload, tw_late=int(math.floor(v.shift[1] + 1e-9)),
            profile=profiles[id(tt)], reload_depots=[depot] if v.trips > 1 else [],
            max_reloads=max(0, int(v.trips) - 1), name=v.id))
    fixed_max = max([int(round(v.fixed_cost * _COST_UNIT)) for v in P.vehicles] + [0])
    prize = PRIZE_FACTOR * (2 * max_arc + fixed_max) + 1
    for i, s in enumerate(P.stops, start=1):
        if s.allowed_vehicles is not None:
            raise ValueError("allowed_vehicles is not modelled for PyVRP here")
        late = big if not math.isfinite(s.window[1]) else int(math.floor(s.window[1] + 1e-9))
        m.add_client(locs[i], delivery=dem(s), service_duration=int(math.ceil(s.service - 1e-9)),
                     tw_early=int(math.ceil(s.window[0] - 1e-9)), tw_late=late, prize=prize, required=False)
    for key, prof in profiles.items():
        dur = matrices[key]
        for a in range(len(nodes)):
            for b in range(len(nodes)):
                if a != b:
                    m.add_edge(locs[a], locs[b], distance=int(dist[a, b]), duration=int(dur[a, b]), profile=prof)
    res = m.solve(MaxRuntime(max(0.1, P.time_limit - (time.monotonic() - t0))), seed=seed, display=False)
    best = res.best
    van_of = {t.name: k for k, t in enumerate(m.vehicle_types)} if hasattr(m, "vehicle_types") else None
    routes = []
    served: set[int] = set()
    if best.is_feasible():
        for rt in best.routes():
            k = rt.vehicle_type() if van_of is None else van_of[types[rt.vehicle_type()].name]
            trips: dict[int, tuple[float, list[int]]] = {}
            depart = None
            for act in rt.schedule():
                if act.is_depot():
                    depart = float(act.end_time)
                    continue
                start, seq = trips.setdefault(act.trip, (depart, []))
                seq.append(act.idx)  # client index == index into P.stops
            ordered = [trips[t] for t in sorted(trips)]
            starts = _late_departures(P, k, ordered)
            for n, ((_dep, seq), start) in enumerate(zip(ordered, starts, strict=True), start=1):
                routes.append(solver._schedule(P, k, seq, start, n))
                served.update(seq)
    unserved = [solver.Unserved(s.id, "not served by PyVRP") for i, s in enumerate(P.stops) if i not in served]
    return solver.Solution(routes, unserved, sum(r.distance for r in routes), sum(r.cost for r in routes),
                           time.monotonic() - t0, "pyvrp")


def _late_departures(P, k: int, trips: list[tuple[float, list[int]]]) -> list[float]:
    """Each trip's departure, as late as its windows and the next trip allow (never before PyVRP's)."""
    v = P.vehicles[k]
    tt = P.travel_time if v.travel_time is None else v.travel_time
    out: list[float] = []
    bound = v.shift[1]  # the latest return of the trip being timed
    for depart, seq in reversed(trips):
        latest = bound
        node = v.end
        for i in reversed(seq):
            s = P.stops[i]
            latest = min(s.window[1], latest - float(tt[s.node, node]) - s.service)
            node = s.node
        latest -= float(tt[v.start, node])
        start = max(depart, latest)
        out.append(start)
        bound = start - P.reload_time
    return out[::-1]


def check_day(problem, sol) -> tuple[list[str], int, float, float]:
    """Recompute every trip from the problem's data alone: windows, shifts, compartments and weight
    per trip, time on board from the trip's own departure, a van's trips apart by the reload time,
    each order at most once. Returns (errors, served, cost, km); cost = fixed cost per van used +
    cost_per_km x km, from the recomputed distances."""
    from collections import Counter, defaultdict

    stops = {s.id: s for s in problem.stops}
    vans = {v.id: v for v in problem.vehicles}
    errors: list[str] = []
    seen: Counter = Counter()
    by_van: dict[str, list] = defaultdict(list)
    for r in sol.routes:
        by_van[r.vehicle_id].append(r)
    cost = metres_all = 0.0
    for vid, trips in by_van.items():
        v = vans.get(vid)
        if v is None:
            errors.append(f"unknown van {vid}")
            continue
        tt = problem.travel_time if v.travel_time is None else v.travel_time
        dm = problem.distance
        if len(trips) > max(1, v.trips):
            errors.append(f"{vid}: {len(trips)} trips, at most {v.trips}")
        back_prev = None
        metres_van = 0.0
        for r in sorted(trips, key=lambda r: r.start):
            if r.start < v.shift[0] - _TOL:
                errors.append(f"{vid}: leaves at {r.start:.0f} before its shift")
            if back_prev is not None and r.start < back_prev + problem.reload_time - _TOL:
                errors.append(f"{vid}: a trip leaves {r.start:.0f} before the last is back and reloaded")
            t, node = r.start, v.start
            load: dict[str, float] = {}
            weight = 0.0
            for vis in r.visits:
                s = stops.get(vis.stop_id)
                if s is None:
                    errors.append(f"{vid}: unknown stop {vis.stop_id}")
                    continue
                seen[s.id] += 1
                metres_van += float(dm[node, s.node])
                begin = max(t + float(tt[node, s.node]), s.window[0])
                if begin > s.window[1] + _TOL:
                    errors.append(f"{s.id}: served at {begin:.0f} after its window {s.window[1]:.0f}")
                if s.max_on_board is not None and begin - r.start > s.max_on_board + _TOL:
                    errors.append(f"{s.id}: {(begin - r.start) / 60:.1f} min on board > {s.max_on_board / 60:.0f}")
                for c, q in s.demand.items():
                    load[c] = load.get(c, 0.0) + q
                weight += s.weight
                t, node = begin + s.service, s.node
            metres_van += float(dm[node, v.end])
            back_prev = t + float(tt[node, v.end])
            if back_prev > v.shift[1] + _TOL:
                errors.append(f"{vid}: back at {back_prev:.0f} after its shift")
            for c, q in load.items():
                if q > v.capacity.get(c, 0.0) + _TOL:
                    errors.append(f"{vid}: {c} {q:g} l > {v.capacity.get(c, 0.0):g} l")
            if v.max_weight is not None and weight > v.max_weight + _TOL:
                errors.append(f"{vid}: {weight:g} kg > {v.max_weight:g} kg")
        if any(r.visits for r in trips):
            cost += v.fixed_cost + metres_van / 1000.0 * v.cost_per_km
        metres_all += metres_van
    errors += [f"{sid} served {n} times" for sid, n in seen.items() if n > 1]
    return errors, len(seen), cost, metres_all / 1000.0


def run_city(spec: tuple[str, int, int, int], limits: list[float], solvers: list[str],
             workers: int | None, variants: Sequence[str] = VARIANTS, day=None) -> list[dict]:
    """One generated city at each time limit (per depot) for each solver; see the section comment.

    Variant "as-is" is the city's day; "no-tob" the same day without time-on-board limits, which
    PyVRP cannot model: there both solvers solve the same model (the same trips per van too)."""
    import dataclasses
    import subprocess
    import tempfile
    from datetime import date, timedelta
    from pathlib import Path

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from core import migrate
    from core.db import make_engine
    from fulfillment.scenario import load_scenario
    from fulfillment.service import allocate_day, day_allocations
    from routing import service, solver
    from warehouses import samplegen
    from warehouses.models import Node

    name, n_nodes, n_orders, seed = spec
    day = day or date.today() + timedelta(days=1)
    folder = Path(tempfile.mkdtemp(prefix=f"coldchain-{name}-"))
    samplegen.write_scenario(samplegen.synthetic(n_nodes, n_orders, day, seed=seed), folder)
    engine = make_engine(f"sqlite:///{folder}/bench.sqlite")
    migrate.upgrade(engine)
    out: list[dict] = []
    with Session(engine) as session:
        load_scenario(session, folder)
        allocate_day(session, day, actor="bench")
        session.commit()
        depots = []
        for code in service.depots_of_day(session, day):
            depot = session.scalar(select(Node).where(Node.code == code))
            problem, orders, vans = service.build_problem(session, day, depot, 10.0)
            depots.append((depot, problem, orders, vans))
        for variant, limit, who in [(v, x, w) for v in variants for x in limits for w in solvers]:
            row = {"city": name, "variant": variant, "solver": who, "time_limit": limit, "orders": 0, "served": 0,
                   "vans": 0, "trips": 0, "km": 0.0, "cost": 0.0, "seconds": 0.0, "errors": []}
            for depot, problem, orders, vans in depots:
                p = dataclasses.replace(problem, time_limit=limit)
                if variant == "no-tob":
                    # the day as the project models one without time-on-board limits (service.build_problem):
                    # trips only when one load per van is too little, chained, not in the slots kept for
                    # time on board, so both solvers get the same freedom (PyVRP: trips - 1 reloads)
                    p.stops = [dataclasses.replace(st, max_on_board=None) for st in p.stops]
                    trips = service.trips_needed(p.vehicles, p.stops)
                    p.vehicles = [dataclasses.replace(v, trips=trips, trip_slots=False) for v in p.vehicles]
                sol = pyvrp_day(p) if who == "pyvrp" else solver.solve(p, workers=workers)
                errors, served, cost, km = check_day(p, sol)
                row["orders"] += len(p.stops)
                row["served"] += served
                row["vans"] += sol.vehicles_used
                row["trips"] += sol.trips
                row["km"] += km
                row["cost"] += cost
                row["seconds"] = max(row["seconds"], sol.seconds)
                row["errors"] += [f"{depot.code} {e}" for e in errors]
                service.store_solution(session, day, depot, sol, orders, vans, "bench", limit)
                session.flush()
            plan = {"date": day.isoformat(), **day_allocations(session, day), **service.day_routes(session, day)}
            path = folder / f"plan-{variant}-{who}-{limit:g}.json"
            path.write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
            chk = subprocess.run([sys.executable, CHECK_PLAN, str(folder), str(path)], capture_output=True,
                                 text=True, timeout=300)
            last = (chk.stdout.strip().splitlines() or [""])[-1]
            row["check_plan"] = last
            if chk.returncode != 0:
                row["errors"] += [ln for ln in chk.stdout.splitlines() if ln.startswith("VIOLATION")] or \
                    [f"check_plan.py exit {chk.returncode}: {chk.stderr.strip()[-200:]}"]
            out.append(row)
            print(f"{name} {variant} {who:9s} {limit:4g}s served {row['served']}/{row['orders']} "
                  f"vans {row['vans']} "
                  f"trips {row['trips']} {row['km']:.2f} km cost {row['cost']:.2f} | {last} "
                  f"{'OK' if not row['errors'] else 'ERRORS: ' + '; '.join(row['errors'][:3])}",
                  file=sys.stderr, flush=True)
        session.rollback()
    engine.dispose()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
