"""Read Solomon and VRPLIB (CVRP / VRPTW) instances, solve them, check solutions.

Conventions
-----------
* Solomon text files: Euclidean distances in double precision; travel time equals
  distance; service must *start* by the due date; vehicles return to the depot by the
  depot's due date. ``distance`` is the sum of unrounded Euclidean lengths.
* VRPLIB files: ``EDGE_WEIGHT_TYPE: EUC_2D`` uses the TSPLIB rule (Euclidean distance
  rounded to the nearest integer); ``EXPLICIT`` uses the file's own edge weights.
  Travel time equals the edge weight. ``distance`` is the sum of those edge weights.
* Routes list clients by the number the file gives them (the depot left out).

Nothing here needs the ``vrplib`` package.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from routing.solver import Problem, Stop, Vehicle, solve

_TOL = 1e-6
_CLASS = "ambient"  # the one capacity dimension of a benchmark maps onto this compartment


@dataclass
class Instance:
    name: str
    kind: str  # "solomon" or "vrplib"
    ids: list[int]  # the file's number of each node; index 0 is the depot
    demand: np.ndarray
    ready: np.ndarray
    due: np.ndarray
    service: np.ndarray
    capacity: float
    num_vehicles: int | None
    distance: np.ndarray  # what the reported distance sums
    travel: np.ndarray  # travel times
    coords: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_clients(self) -> int:
        return len(self.ids) - 1


def _euclid(coords: np.ndarray) -> np.ndarray:
    d = coords[:, None, :] - coords[None, :, :]
    return np.sqrt((d * d).sum(axis=2))


# ------------------------------------------------------------------ Solomon


def read_solomon(path: str) -> Instance:
    with open(path, encoding="utf-8", newline=None) as f:
        lines = [ln.strip() for ln in f.read().splitlines()]
    lines = [ln for ln in lines if ln]
    name = lines[0].split()[0]
    nveh = cap = None
    rows: list[list[float]] = []
    i = 1
    while i < len(lines):
        up = lines[i].upper()
        if up.startswith("NUMBER") and "CAPACITY" in up and nveh is None:
            parts = lines[i + 1].split()
            nveh, cap = int(parts[0]), float(parts[1])
            i += 2
            continue
        parts = lines[i].split()
        if len(parts) == 7 and all(_is_number(p) for p in parts):
            rows.append([float(p) for p in parts])
        i += 1
    if nveh is None or not rows:
        raise ValueError(f"{path}: not a Solomon instance")
    arr = np.asarray(rows)
    order = np.argsort(arr[:, 0], kind="stable")
    arr = arr[order]
    if int(arr[0, 0]) != 0:
        raise ValueError(f"{path}: the depot (customer 0) is missing")
    coords = arr[:, 1:3]
    dist = _euclid(coords)
    return Instance(name=name, kind="solomon", ids=[int(x) for x in arr[:, 0]], demand=arr[:, 3],
                    ready=arr[:, 4], due=arr[:, 5], service=arr[:, 6], capacity=cap, num_vehicles=nveh,
                    distance=dist, travel=dist, coords=coords)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------- VRPLIB

_SECTIONS = {"NODE_COORD_SECTION", "DEMAND_SECTION", "TIME_WINDOW_SECTION", "SERVICE_TIME_SECTION",
             "DEPOT_SECTION", "EDGE_WEIGHT_SECTION"}


def read_vrplib(path: str) -> Instance:
    with open(path, encoding="utf-8", newline=None) as f:
        raw = f.read().splitlines()
    spec: dict[str, str] = {}
    sections: dict[str, list[list[str]]] = {}
    current = None
    for ln in raw:
        s = ln.strip()
        if not s or s == "EOF":
            continue
        head = s.split()[0].rstrip(":")
        if head in _SECTIONS:
            current = head
            sections[current] = []
            continue
        if ":" in s and not _is_number(s.split(":")[0].strip()):
            key, val = s.split(":", 1)
            key = key.strip().upper()
            if key.endswith("_SECTION"):
                current = key
                sections[current] = []
            else:
                spec[key] = val.strip()
                current = None
            continue
        if current is None:
            continue
        sections[current].append(s.split())
    n = int(spec["DIMENSION"])
    name = spec.get("NAME", os.path.splitext(os.path.basename(path))[0])
    capacity = float(spec.get("CAPACITY", "inf"))
    nveh = int(spec["VEHICLES"]) if "VEHICLES" in spec else None
    ewt = spec.get("EDGE_WEIGHT_TYPE", "EUC_2D").upper()

    ids = list(range(1, n + 1))
    coords = None
    if "NODE_COORD_SECTION" in sections:
        rows = sections["NODE_COORD_SECTION"]
        ids = [int(r[0]) for r in rows]
        coords = np.asarray([[float(r[1]), float(r[2])] for r in rows])
    pos = {nid: k for k, nid in enumerate(ids)}

    def per_node(section: str, default: float, cols: int = 1) -> np.ndarray:
        out = np.full((n, cols), default, dtype=float)
        for r in sections.get(section, []):
            out[pos[int(r[0])]] = [float(x) for x in r[1:1 + cols]]
        return out

    demand = per_node("DEMAND_SECTION", 0.0)[:, 0]
    tw = per_node("TIME_WINDOW_SECTION", 0.0, 2)
    if "TIME_WINDOW_SECTION" not in sections:
        tw[:, 1] = math.inf
    service = per_node("SERVICE_TIME_SECTION", 0.0)[:, 0]
    depots = [int(r[0]) for r in sections.get("DEPOT_SECTION", []) if int(r[0]) >= 0] or [ids[0]]
    depot = pos[depots[0]]

    if ewt == "EXPLICIT":
        weights = _explicit(sections.get("EDGE_WEIGHT_SECTION", []), n,
                            spec.get("EDGE_WEIGHT_FORMAT", "FULL_MATRIX").upper())
    elif ewt in ("EUC_2D", "EXACT_2D", "FLOAT_2D"):
        if coords is None:
            raise ValueError(f"{path}: {ewt} needs a NODE_COORD_SECTION")
        weights = _euclid(coords)
        if ewt == "EUC_2D":
            weights = np.floor(weights + 0.5)
    else:
        raise ValueError(f"{path}: unsupported EDGE_WEIGHT_TYPE {ewt}")

    # put the depot first
    order = [depot] + [k for k in range(n) if k != depot]
    o = np.asarray(order)
    return Instance(name=name, kind="vrplib", ids=[ids[k] for k in order], demand=demand[o],
                    ready=tw[o, 0], due=tw[o, 1], service=service[o], capacity=capacity, num_vehicles=nveh,
                    distance=weights[np.ix_(o, o)], travel=weights[np.ix_(o, o)],
                    coords=None if coords is None else coords[o])


def _explicit(rows: list[list[str]], n: int, fmt: str) -> np.ndarray:
    vals = [float(x) for r in rows for x in r]
    m = np.zeros((n, n))
    it = iter(vals)
    if fmt == "FULL_MATRIX":
        m[:] = np.asarray(vals[: n * n]).reshape(n, n)
    elif fmt in ("LOWER_ROW", "LOWER_DIAG_ROW"):
        diag = fmt == "LOWER_DIAG_ROW"
        for i in range(n):
            for j in range(i + 1 if diag else i):
                m[i, j] = m[j, i] = next(it)
    elif fmt in ("UPPER_ROW", "UPPER_DIAG_ROW"):
        diag = fmt == "UPPER_DIAG_ROW"
        for i in range(n):
            for j in range(i if diag else i + 1, n):
                m[i, j] = m[j, i] = next(it)
    else:
        raise ValueError(f"unsupported EDGE_WEIGHT_FORMAT {fmt}")
    return m


def read_instance(path: str) -> Instance:
    """Solomon text or VRPLIB, told apart by the content."""
    with open(path, encoding="utf-8", newline=None) as f:
        head = f.read(4096)
    if "DIMENSION" in head.upper() and ":" in head:
        return read_vrplib(path)
    return read_solomon(path)


# ----------------------------------------------------------------- to Problem


def to_problem(inst: Instance, time_limit: float) -> Problem:
    n = len(inst.ids)
    nveh = inst.num_vehicles if inst.num_vehicles else max(1, n - 1)
    if not inst.num_vehicles and not np.isfinite(inst.due[1:]).any() and math.isfinite(inst.capacity):
        # an unlimited fleet without windows: twice the capacity bound is plenty
        nveh = min(nveh, 2 * math.ceil(float(inst.demand.sum()) / inst.capacity) + 2)
    horizon_end = float(inst.due[0]) if math.isfinite(inst.due[0]) else 10.0 ** 9
    vehicles = [Vehicle(id=str(k + 1), start=0, end=0, shift=(float(inst.ready[0]), horizon_end),
                        capacity={_CLASS: float(inst.capacity)}, cost_per_km=1000.0)
                for k in range(nveh)]
    stops = [Stop(id=str(inst.ids[i]), node=i, demand={_CLASS: float(inst.demand[i])},
                  window=(float(inst.ready[i]), float(inst.due[i])), service=float(inst.service[i]))
             for i in range(1, n)]
    integral = bool(np.all(inst.travel == np.round(inst.travel)))
    return Problem(vehicles=vehicles, stops=stops, travel_time=inst.travel, distance=inst.distance,
                   time_limit=time_limit, depots=[0],
                   time_scale=1.0 if integral else 1000.0, cost_scale=1.0 if integral else 1000.0)


def solve_file(path: str, time_limit: float, workers: int | None = None,
               progress: Callable[[float], None] | None = None) -> dict:
    """Solve a Solomon or VRPLIB file; answer CONTRACTS.md section 6."""
    t0 = time.monotonic()
    inst = read_instance(path)
    problem = to_problem(inst, max(0.1, time_limit - (time.monotonic() - t0)))
    sol = solve(problem, workers=workers, progress=progress)
    routes = [[int(v.stop_id) for v in r.visits] for r in sol.routes]
    return {"instance": inst.name, "vehicles": len(routes),
            "distance": round(route_distance(inst, routes), 2),
            "seconds": round(time.monotonic() - t0, 2), "routes": routes}


def route_distance(inst: Instance, routes: Sequence[Sequence[int]]) -> float:
    pos = {nid: k for k, nid in enumerate(inst.ids)}
    total = 0.0
    for r in routes:
        prev = 0
        for c in r:
            total += float(inst.distance[prev, pos[c]])
            prev = pos[c]
        if r:
            total += float(inst.distance[prev, 0])
    return total


def check_solution(instance: Instance | str, routes: Sequence[Sequence[int]]) -> list[str]:
    """Independent feasibility check in exact (double) arithmetic; [] means feasible."""
    inst = read_instance(instance) if isinstance(instance, str) else instance
    pos = {nid: k for k, nid in enumerate(inst.ids)}
    errors: list[str] = []
    seen: dict[int, int] = {}
    nonempty = [r for r in routes if len(r) > 0]
    if inst.num_vehicles is not None and len(nonempty) > inst.num_vehicles:
        errors.append(f"{len(nonempty)} routes but only {inst.num_vehicles} vehicles")
    for ri, r in enumerate(nonempty):
        t = float(inst.ready[0])
        load = 0.0
        prev = 0
        for c in r:
            if c not in pos or pos[c] == 0:
                errors.append(f"route {ri}: unknown client {c}")
                continue
            k = pos[c]
            seen[c] = seen.get(c, 0) + 1
            t = max(t + float(inst.travel[prev, k]), float(inst.ready[k]))
            if t > float(inst.due[k]) + _TOL:
                errors.append(f"route {ri}: client {c} served at {t:.4f} after its due date {inst.due[k]:g}")
            t += float(inst.service[k])
            load += float(inst.demand[k])
            prev = k
        t += float(inst.travel[prev, 0])
        if t > float(inst.due[0]) + _TOL:
            errors.append(f"route {ri}: back at the depot at {t:.4f} after {inst.due[0]:g}")
        if load > inst.capacity + _TOL:
            errors.append(f"route {ri}: load {load:g} exceeds capacity {inst.capacity:g}")
    for c, cnt in seen.items():
        if cnt > 1:
            errors.append(f"client {c} visited {cnt} times")
    missing = [nid for nid in inst.ids[1:] if nid not in seen]
    if missing:
        errors.append(f"{len(missing)} clients not visited, e.g. {missing[:5]}")
    return errors
