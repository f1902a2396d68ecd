"""Routing benchmark: coldchain vs PyVRP vs VROOM on Solomon / VRPLIB instances.

    python -m benchmarks.routing [--time-limit 30] [--instances C101 R101] [--dir PATH]
    python -m benchmarks.routing --solvers coldchain pyvrp --reference earlier.json  # peers reused

Every solution (ours and the peers') is checked by ``routing.vrplib.check_solution`` in
exact arithmetic before it is reported. PyVRP and pyvroom are imported only here
(``pip install .[bench]``). Peers get the same integer data as the model sees: times
scaled x1000 and rounded up, distances scaled x1000 and rounded; the reported distance
is recomputed in double precision from the returned routes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time

import numpy as np

from routing.vrplib import Instance, check_solution, read_instance, route_distance, solve_file

DEFAULT_DIR = "/work/shared/benchmarks/solomon"
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--instances", nargs="*", default=DEFAULT_INSTANCES)
    ap.add_argument("--dir", default=os.environ.get("COLDCHAIN_BENCH_DIR", DEFAULT_DIR))
    ap.add_argument("--solvers", nargs="*", default=["coldchain", "pyvrp", "vroom"])
    ap.add_argument("--workers", type=int, default=None, help="coldchain processes (default: all cores)")
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--reference", help="reuse the peers' results (same instances and time limit) from a "
                                        "--json file of an earlier run instead of solving again; only the "
                                        "solvers named in --solvers that the file lacks are run")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    console.width = max(console.width, 110)
    bks = _bks(args.dir)
    results: list[dict] = []
    runners = {
        "coldchain": lambda p, inst: run_ours(p, args.time_limit, args.workers),
        "pyvrp": lambda p, inst: run_pyvrp(inst, args.time_limit),
        "vroom": lambda p, inst: run_vroom(inst, args.time_limit),
    }
    stored: dict[tuple[str, str], dict] = {}
    if args.reference:
        # peers are deterministic enough that rerunning them for every experiment on our
        # own solver only costs time; their feasibility is re-checked below all the same
        with open(args.reference, encoding="utf-8") as f:
            ref = json.load(f)
        if float(ref.get("time_limit", math.nan)) != args.time_limit:
            ap.error(f"--reference was run with --time-limit {ref.get('time_limit')}, not {args.time_limit:g}")
        stored = {(r["instance"], r["solver"]): r for r in ref["results"] if r["solver"] != "coldchain"}
    for name in args.instances:
        path = _find(args.dir, name)
        inst = read_instance(path)
        for solver in args.solvers:
            try:
                if (name, solver) in stored:
                    old = stored[(name, solver)]
                    routes, secs = old["routes"], old["seconds"]
                else:
                    routes, secs = runners[solver](path, inst)
                errors = check_solution(inst, routes)
                dist = route_distance(inst, routes)
                nveh = sum(1 for r in routes if r)
            except Exception as exc:  # a peer that fails is reported, not fatal
                routes, secs, errors, dist, nveh = [], 0.0, [f"{type(exc).__name__}: {exc}"], math.nan, 0
            results.append({"instance": name, "solver": solver, "vehicles": nveh, "distance": dist,
                            "seconds": secs, "errors": errors, "routes": routes})
            print(f"{name:6s} {solver:9s} {nveh:3d} {dist:10.2f} {secs:6.1f}s "
                  f"{'feasible' if not errors else 'INFEASIBLE: ' + '; '.join(errors[:2])}",
                  file=sys.stderr, flush=True)

    table = Table(title=f"Routing benchmark, time limit {args.time_limit:g} s (distance-only objective)")
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
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"time_limit": args.time_limit, "results": results}, f, indent=1)
    return 0 if all(not r["errors"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
