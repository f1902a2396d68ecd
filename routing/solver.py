"""Pure vehicle-routing engine: plain dataclasses in, plain dataclasses out.

The model is OR-Tools routing (pywrapcp) with integer transit matrices:

* travel times are scaled by ``Problem.time_scale`` and rounded **up**, windows are
  rounded inwards, so every integer schedule is feasible in exact arithmetic;
* one capacity dimension per compartment class (litres), one weight dimension;
* a time dimension with waiting (slack), vehicle shift windows on the start and end
  cumuls, optional per-stop "max time on board" measured from the trip's departure (a
  dimension of its own without waiting, checked exactly afterwards: :func:`_enforce_on_board`);
* arc cost = distance x cost per km (per-vehicle evaluators when costs differ), plus a
  fixed cost per used vehicle;
* every stop is optional with a large penalty, so one impossible order never sinks the
  plan; the obviously impossible ones are filtered out beforehand with a human reason;
* second trips: a van with ``trips`` > 1 is modelled as that many routing vehicles, one per
  load from the depot, chained in time (trip t+1 leaves at least ``Problem.reload_time`` after
  trip t is back, and is used only when trip t is). Capacities and time on board hold per
  trip (each trip's start is its own departure); the van's fixed cost sits on its first trip
  only, so it counts once however many trips it makes.

Search: a portfolio of configurations (mostly iterated local search with ruin-and-recreate
perturbations, differing in first solution and ruin size), one per process (each builds its
own model), then guided local search refines the best plan from a warm start. A plan given
as initial routes is improved by guided local search instead (ILS cannot start from it). With
``workers=1`` everything runs in-process.

This module knows nothing of the database, HTTP or MQTT.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace

import numpy as np

CLASSES: tuple[str, ...] = ("frozen", "chilled", "ambient")
INF = math.inf

_DEMAND_SCALE = 1000  # litres and kilograms are modelled in thousandths
_EPS = 1e-9


# --------------------------------------------------------------------------- data in


@dataclass
class Vehicle:
    """A van. Times are seconds since local midnight; capacities are litres per class."""

    id: str
    start: int  # node index (matrix row) where the van starts
    end: int  # node index where the van must end
    shift: tuple[float, float] = (0.0, 86400.0)
    capacity: dict[str, float] = field(default_factory=dict)  # {"frozen": 120, "chilled": 400, ...}
    max_weight: float | None = None  # kg; None = unlimited
    cost_per_km: float = 1.0
    fixed_cost: float = 0.0
    travel_time: np.ndarray | None = None  # optional own seconds matrix (e.g. another speed)
    trips: int = 1  # most loads from the depot in the shift (back to reload between them)
    # trips in equal slots of the shift (trip t within slot t) instead of chained one after the other:
    # for short trips that keep perishables within their time on board (routing.service.trips_needed)
    trip_slots: bool = False


@dataclass
class Stop:
    """A delivery. ``demand`` is litres per temperature class."""

    id: str
    node: int  # node index (matrix row)
    demand: dict[str, float] = field(default_factory=dict)
    weight: float = 0.0
    window: tuple[float, float] = (0.0, INF)  # service must start within it
    service: float = 0.0  # seconds
    max_on_board: float | None = None  # seconds from the van leaving its start to the stop
    allowed_vehicles: list[str] | None = None  # None = any van


@dataclass
class InitialRoute:
    """A route known before solving (warm start or re-planning).

    ``stops`` is the order to start the search from. The first ``locked`` stops were
    already visited: they stay first on this vehicle, in this order. With ``pinned``
    every stop listed stays on this vehicle (its order may still change).
    """

    vehicle: str
    stops: list[str]
    locked: int = 0
    pinned: bool = False


@dataclass
class Problem:
    vehicles: list[Vehicle]
    stops: list[Stop]
    travel_time: np.ndarray  # seconds, float, [from][to] over node indices
    distance: np.ndarray  # metres, float
    time_limit: float = 10.0  # seconds of wall time for the whole solve
    depots: list[int] = field(default_factory=list)  # node indices of depots (informative)
    initial_routes: list[InitialRoute] = field(default_factory=list)
    time_scale: float = 1.0  # integer model units per second
    cost_scale: float = 1000.0  # integer model units per currency unit
    reload_time: float = 0.0  # seconds at the depot between two trips of one van


# -------------------------------------------------------------------------- data out


@dataclass
class Visit:
    stop_id: str
    arrival: float  # seconds since midnight
    service_start: float
    departure: float
    distance: float  # metres of the leg that leads to this stop


@dataclass
class Route:
    vehicle_id: str
    start: float  # departure from the start node
    end: float  # arrival at the end node
    distance: float  # metres, whole route including the way back
    cost: float
    visits: list[Visit]
    load: dict[str, float] = field(default_factory=dict)
    weight: float = 0.0
    trip: int = 1  # the van's n-th load from the depot that day


@dataclass
class Unserved:
    stop_id: str
    reason: str


@dataclass
class Solution:
    routes: list[Route]  # only vehicles that leave their depot, one per trip, a van's trips in order
    unserved: list[Unserved]
    distance: float  # metres, all routes
    cost: float
    seconds: float  # wall time of the solve
    strategy: str = ""  # the search configuration that produced the plan

    @property
    def vehicles_used(self) -> int:
        return len({r.vehicle_id for r in self.routes})

    @property
    def trips(self) -> int:
        return len(self.routes)


def hhmm(seconds: float) -> str:
    """Seconds since local midnight as ``HH:MM`` (rounded to the nearest minute)."""
    total = int(round(seconds / 60.0))
    return f"{total // 60:02d}:{total % 60:02d}"


def _hhmm_down(seconds: float) -> str:
    total = int(math.floor(seconds / 60.0 + 1e-9))
    return f"{total // 60:02d}:{total % 60:02d}"


def _hhmm_up(seconds: float) -> str:
    total = int(math.ceil(seconds / 60.0 - 1e-9))
    return f"{total // 60:02d}:{total % 60:02d}"


# ----------------------------------------------------------------- pre-filtering


def _tt(problem: Problem, v: Vehicle) -> np.ndarray:
    return problem.travel_time if v.travel_time is None else v.travel_time


def _allowed(problem: Problem, stop: Stop) -> list[int]:
    if stop.allowed_vehicles is None:
        return list(range(len(problem.vehicles)))
    wanted = set(stop.allowed_vehicles)
    return [k for k, v in enumerate(problem.vehicles) if v.id in wanted]


def _fits(v: Vehicle, stop: Stop) -> bool:
    for cls, q in stop.demand.items():
        if q > _EPS and q > v.capacity.get(cls, 0.0) + _EPS:
            return False
    return not (v.max_weight is not None and stop.weight > v.max_weight + _EPS)


def prefilter(problem: Problem, locked: set[str] | None = None) -> tuple[list[int], list[Unserved]]:
    """Split stops into those worth modelling and those that cannot be served at all."""
    locked = locked or set()
    keep: list[int] = []
    out: list[Unserved] = []
    for i, s in enumerate(problem.stops):
        if s.id in locked:
            keep.append(i)
            continue
        reason = _impossible_reason(problem, s)
        if reason is None:
            keep.append(i)
        else:
            out.append(Unserved(s.id, reason))
    return keep, out


def _impossible_reason(problem: Problem, s: Stop) -> str | None:
    vans = _allowed(problem, s)
    if not vans:
        return "no van at the depot"
    # compartments / weight
    fitting = [k for k in vans if _fits(problem.vehicles[k], s)]
    if not fitting:
        for cls in sorted(s.demand, key=lambda c: CLASSES.index(c) if c in CLASSES else 99):
            q = s.demand[cls]
            best = max(problem.vehicles[k].capacity.get(cls, 0.0) for k in vans)
            if q > best + _EPS:
                return f"demand exceeds every van's compartment ({cls} {q:g} l > {best:g} l)"
        limits = [problem.vehicles[k].max_weight for k in vans if problem.vehicles[k].max_weight is not None]
        best = max(limits) if limits else 0.0
        return f"weight exceeds every van's limit ({s.weight:g} kg > {best:g} kg)"
    # time window against the earliest possible arrival
    arrivals = []
    for k in fitting:
        v = problem.vehicles[k]
        arrivals.append(v.shift[0] + float(_tt(problem, v)[v.start, s.node]))
    earliest = min(arrivals)
    if s.window[1] + _EPS < earliest or s.window[1] < s.window[0]:
        return (f"time window {_hhmm_down(s.window[0])}-{_hhmm_down(s.window[1])} ends before "
                f"the earliest arrival {_hhmm_up(earliest)}")
    # max time on board: even the direct drive is too long
    if s.max_on_board is not None:
        direct = min(float(_tt(problem, problem.vehicles[k])[problem.vehicles[k].start, s.node])
                     for k in fitting)
        if direct > s.max_on_board + _EPS:
            return (f"time on board would exceed the product's limit "
                    f"({direct / 60:.0f} min > {s.max_on_board / 60:.0f} min)")
    # serve and come back within some shift
    for k in fitting:
        v = problem.vehicles[k]
        tt = _tt(problem, v)
        arrive = v.shift[0] + float(tt[v.start, s.node])
        begin = max(arrive, s.window[0])
        if begin <= s.window[1] + _EPS and begin + s.service + float(tt[s.node, v.end]) <= v.shift[1] + _EPS:
            return None
    return "shift time exhausted (no van can serve it and return before its shift ends)"


# --------------------------------------------------------------------- the model


def fleet(problem: Problem) -> list[tuple[int, int]]:
    """The routing vehicles of the model: (van index, trip index from 0), a van's trips in a row."""
    return [(k, t) for k, v in enumerate(problem.vehicles) for t in range(max(1, int(v.trips)))]



@dataclass
class SearchConfig:
    first_solution: str = "PARALLEL_CHEAPEST_INSERTION"
    metaheuristic: str = "GUIDED_LOCAL_SEARCH"
    gls_lambda: float = 0.1
    operators: dict[str, bool] = field(default_factory=dict)  # local_search_operators switches
    neighbors_ratio: float | None = None  # restrict LS operators to the nearest fraction of nodes
    min_neighbors: int = 10
    # metaheuristic "ITERATED_LOCAL_SEARCH": ruin-and-recreate perturbations, each followed by a
    # local search, accepted by simulated annealing (see _Model.params)
    ruin: str = "sisr"  # "sisr", "random_walk" or "close_routes"
    ruin_size: int = 10  # visits removed on average (SISR) / per walk; close_routes: size // 10 routes
    recreate: str = "LOCAL_CHEAPEST_INSERTION"  # heuristic re-inserting the removed visits
    ruin_max_sequence: int | None = None  # SISR: longest string removed from one route (None: ruin_size)
    temperature: tuple[float, float] | None = None  # SA (initial, final) in cost units; None = automatic
    gls_options: dict[str, bool] = field(default_factory=dict)  # e.g. reset penalties on new best
    # ILS recreate: the order in which LOCAL_CHEAPEST_INSERTION re-inserts the removed visits
    # (LocalCheapestInsertionParameters.insertion_sorting_properties names; () = OR-Tools' default)
    recreate_sorting: tuple[str, ...] = ()
    improve_perturbed: bool = True  # ILS: local search after each recreate (False: pure ruin-and-recreate)
    cooling: str | None = None  # SA cooling schedule (CoolingScheduleStrategy name); None = OR-Tools' default
    route_neighbors: float | None = None  # SISR: fraction of routes near the seed considered (default 1)

    @property
    def label(self) -> str:
        if self.metaheuristic == "ITERATED_LOCAL_SEARCH":
            return f"{self.first_solution}+ILS({self.ruin} {self.ruin_size})"
        return f"{self.first_solution}+{self.metaheuristic}(lambda={self.gls_lambda:g})"


def _ceil_int(x: np.ndarray) -> np.ndarray:
    return np.ceil(np.asarray(x, dtype=float)).astype(np.int64)


# Largest (stops with a time-on-board limit) x (routing vehicles) modelled with exact constraints besides
# the no-waiting bound (see _Model): the synthetic 5,000-order city's FS-01 (129 x 3) took 1.6-2.2 s to a
# first solution with them, 0.1 s without; the sample city's depots are all below 100.
EXACT_ON_BOARD = 200


class _Model:
    """Builds the OR-Tools model for the stops in ``active`` (indices into problem.stops)."""

    def __init__(self, problem: Problem, active: Sequence[int]):
        from ortools.constraint_solver import pywrapcp

        self.problem = problem
        self.active = list(active)
        P = problem
        S = P.time_scale
        self.fleet = fleet(P)
        vehicles = [P.vehicles[k] for k, _t in self.fleet]  # one routing vehicle per trip
        nv = len(vehicles)
        depot_nodes: list[int] = []
        for v in vehicles:
            for n in (v.start, v.end):
                if n not in depot_nodes:
                    depot_nodes.append(n)
        self.depot_nodes = depot_nodes
        # routing node r -> matrix node
        mat_nodes = depot_nodes + [P.stops[i].node for i in self.active]
        self.mat_nodes = mat_nodes
        nd = len(depot_nodes)
        self.nd = nd
        nr = len(mat_nodes)
        idx = np.asarray(mat_nodes, dtype=np.int64)
        starts = [depot_nodes.index(v.start) for v in vehicles]
        ends = [depot_nodes.index(v.end) for v in vehicles]
        self.manager = pywrapcp.RoutingIndexManager(nr, nv, starts, ends)
        self.routing = routing = pywrapcp.RoutingModel(self.manager)
        manager = self.manager
        stops = [P.stops[i] for i in self.active]
        known = {v.id for v in vehicles}
        self.locked_ids: set[str] = {sid for ir in P.initial_routes if ir.locked and ir.vehicle in known
                                     for sid in ir.stops[: ir.locked]}

        service = np.zeros(nr, dtype=np.int64)
        for r, s in enumerate(stops, start=nd):
            service[r] = int(math.ceil(s.service * S - _EPS)) if s.service > 0 else 0

        # distance / cost evaluators, one per distinct cost per km (and fixed cost folded in, below)
        dist = np.asarray(P.distance, dtype=float)[np.ix_(idx, idx)]
        self.cost_evals: dict[tuple, int] = {}
        max_arc = 1
        keys = []
        for k, v in enumerate(vehicles):
            # a van with several trips pays its fixed cost on the arcs leaving the depot on its first
            # trip, not as OR-Tools' fixed cost of a vehicle: the search inserts into one empty vehicle
            # per type, the cheapest to use first, which would be a later trip (no fixed cost) that may
            # not run before the first one; so no stop could ever be inserted
            fold = v.fixed_cost and v.trips > 1 and v.start == v.end and self.fleet[k][1] == 0
            key = (v.cost_per_km, starts[k] if fold else None, v.fixed_cost if fold else 0.0)
            keys.append(key)
            if key not in self.cost_evals:
                cm = np.rint(dist / 1000.0 * v.cost_per_km * P.cost_scale).astype(np.int64)
                np.fill_diagonal(cm, 0)
                max_arc = max(max_arc, int(cm.max()))
                if fold:
                    cm[starts[k], :] += int(round(v.fixed_cost * P.cost_scale))
                    cm[starts[k], starts[k]] = 0  # an unused trip stays free
                self.cost_evals[key] = routing.RegisterTransitMatrix(cm.tolist())
            if v.fixed_cost and v.trips == 1:
                routing.SetFixedCostOfVehicle(int(round(v.fixed_cost * P.cost_scale)), k)
        if len(set(keys)) > 1:
            for k, key in enumerate(keys):
                routing.SetArcCostEvaluatorOfVehicle(self.cost_evals[key], k)
        else:
            routing.SetArcCostEvaluatorOfAllVehicles(self.cost_evals[keys[0]])

        # time: ceil(travel * scale) + service of the origin, one evaluator per distinct matrix
        horizon = 0
        for v in vehicles:
            horizon = max(horizon, int(math.floor(v.shift[1] * S + _EPS)))
        for s in stops:
            if s.window[1] < INF:
                horizon = max(horizon, int(math.floor(s.window[1] * S + _EPS)))
        self.horizon = horizon
        time_evals: dict[int, int] = {}
        per_vehicle_time = []
        for v in vehicles:
            m = _tt(P, v)
            key = id(m)
            if key not in time_evals:
                tm = _ceil_int(np.asarray(m, dtype=float)[np.ix_(idx, idx)] * S)
                np.fill_diagonal(tm, 0)
                tm = tm + service[:, None]
                time_evals[key] = routing.RegisterTransitMatrix(tm.tolist())
            per_vehicle_time.append(time_evals[key])
        routing.AddDimensionWithVehicleTransits(per_vehicle_time, horizon, horizon, False, "time")
        self.time = time = routing.GetDimensionOrDie("time")
        for r, s in enumerate(stops, start=nd):
            ix = manager.NodeToIndex(r)
            lo = max(0, int(math.ceil(s.window[0] * S - _EPS)))
            hi = horizon if s.window[1] == INF else min(horizon, int(math.floor(s.window[1] * S + _EPS)))
            if hi >= lo:
                time.CumulVar(ix).SetRange(lo, hi)
            elif s.id not in self.locked_ids:
                routing.ActiveVar(ix).SetValue(0)  # window narrower than the model's time step
        reload = int(math.ceil(max(0.0, P.reload_time) * S - _EPS))
        for k, v in enumerate(vehicles):
            lo = max(0, int(math.ceil(v.shift[0] * S - _EPS)))
            hi = int(math.floor(v.shift[1] * S + _EPS))
            time.CumulVar(routing.Start(k)).SetRange(lo, hi)
            time.CumulVar(routing.End(k)).SetRange(lo, hi)
            if v.trip_slots and v.trips > 1:
                # the shift in equal slots, one per trip, the reload time at each boundary: native
                # bounds, so the insertion heuristics fill every trip from the start (chained trips
                # are filled one after the other, and the first one takes the whole day)
                t, n = self.fleet[k][1], int(v.trips)
                span = (hi - lo) / n
                a = lo + int(t * span) + (reload if t else 0)
                b = lo + int((t + 1) * span) if t + 1 < n else hi
                time.CumulVar(routing.Start(k)).SetRange(a, max(a, b))
                time.CumulVar(routing.End(k)).SetRange(a, max(a, b))

        # schedules: come back as early as possible, then leave as late as that allows
        # (no van waits at a customer for nothing, nor leaves hours before it needs to)
        # trips of one van: the next is used only after the previous one, and leaves once it
        # is back and reloaded
        for k in range(1, nv):
            if self.fleet[k][0] != self.fleet[k - 1][0]:
                continue
            on, before = routing.ActiveVehicleVar(k), routing.ActiveVehicleVar(k - 1)
            routing.solver().Add(on <= before)
            if not vehicles[k].trip_slots:  # (slots keep their trips apart)
                routing.solver().Add(time.CumulVar(routing.Start(k))
                                     >= time.CumulVar(routing.End(k - 1)) + reload - (horizon + reload) * (1 - on))
        for k in range(nv):
            routing.AddVariableMinimizedByFinalizer(time.CumulVar(routing.End(k)))
        for k in range(nv):
            routing.AddVariableMaximizedByFinalizer(time.CumulVar(routing.Start(k)))

        # capacities: one dimension per compartment class in use, plus weight
        classes = [c for c in CLASSES if any(s.demand.get(c, 0) > 0 for s in stops)]
        classes += sorted({c for s in stops for c in s.demand if c not in CLASSES and s.demand[c] > 0})
        self.classes = classes
        for c in classes:
            dem = [0] * nr
            for r, s in enumerate(stops, start=nd):
                dem[r] = int(math.ceil(s.demand.get(c, 0.0) * _DEMAND_SCALE - 1e-6))
            cb = routing.RegisterUnaryTransitVector(dem)
            caps = [int(math.floor(v.capacity.get(c, 0.0) * _DEMAND_SCALE + 1e-6)) for v in vehicles]
            routing.AddDimensionWithVehicleCapacity(cb, 0, caps, True, f"cap_{c}")
        if any(s.weight > 0 for s in stops) and any(v.max_weight is not None for v in vehicles):
            dem = [0] * nr
            for r, s in enumerate(stops, start=nd):
                dem[r] = int(math.ceil(s.weight * _DEMAND_SCALE - 1e-6))
            cb = routing.RegisterUnaryTransitVector(dem)
            big = sum(dem) + 1
            caps = [big if v.max_weight is None else int(math.floor(v.max_weight * _DEMAND_SCALE + 1e-6))
                    for v in vehicles]
            routing.AddDimensionWithVehicleCapacity(cb, 0, caps, True, "weight")

        # allowed vehicles, pinning and locks
        vid = {v.id: k for k, v in enumerate(vehicles) if self.fleet[k][1] == 0}  # a van's first trip
        trips_of: dict[str, list[int]] = defaultdict(list)  # van id -> its routing vehicles
        for k, v in enumerate(vehicles):
            trips_of[v.id].append(k)
        row_of = {s.id: r for r, s in enumerate(stops, start=nd)}
        pinned: dict[str, int] = {}
        locks: list[tuple[int, list[int]]] = []
        for ir in P.initial_routes:
            if ir.vehicle not in vid:
                continue
            k = vid[ir.vehicle]
            if ir.pinned:
                for sid in ir.stops:
                    pinned[sid] = k
            if ir.locked:
                chain = [row_of[sid] for sid in ir.stops[: ir.locked] if sid in row_of]
                locks.append((k, chain))
                for sid in ir.stops[: ir.locked]:
                    self.locked_ids.add(sid)
                    pinned[sid] = k
        for r, s in enumerate(stops, start=nd):
            ix = manager.NodeToIndex(r)
            # (SetAllowedVehiclesForIndex takes an absl::Span the 9.15 Python wrapper cannot pass)
            if s.id in pinned:
                routing.VehicleVar(ix).SetValues([-1, pinned[s.id]])
            elif s.allowed_vehicles is not None:
                allowed = sorted({k for x in s.allowed_vehicles for k in trips_of.get(x, [])})
                routing.VehicleVar(ix).SetValues([-1] + allowed)

        # max time on board: service start <= the trip's departure + limit. Modelled as a dimension of
        # its own that starts at 0 on every trip and adds the travel and service times without waiting,
        # so the routing filters check it natively (a per-stop, per-trip reified constraint needed the
        # solver's generic propagation for every insertion tried: on a synthetic flagship with 289 orders,
        # 129 of them with a limit, the first solution took 1.6-2.2 s against 0.2 s; with trips it grew
        # with the number of routing vehicles). It ignores waiting for a window on the way, which
        # only adds time on board: :func:`_enforce_on_board` checks every trip in exact arithmetic
        # from its latest departure and drops what still exceeds its limit, with a reason.
        # On a small model the exact constraints are cheap and the search keeps what waiting costs in
        # view (the sample city's HUB-03, one van with 3 chained trips: 23 of 24 served exactly, 19 with
        # the bound alone), so up to EXACT_ON_BOARD (stops with a limit x routing vehicles) both are kept.
        limited = [(r, s) for r, s in enumerate(stops, start=nd) if s.max_on_board is not None]
        solver = routing.solver()
        if limited:
            routing.AddDimensionWithVehicleTransits(per_vehicle_time, 0, horizon, True, "on_board")
            on_board = routing.GetDimensionOrDie("on_board")
        exact = len(limited) * nv <= EXACT_ON_BOARD
        for r, s in limited:
            ix = manager.NodeToIndex(r)
            limit = int(math.floor(s.max_on_board * S + _EPS))
            on_board.CumulVar(ix).SetMax(limit)
            if not exact:
                continue
            cumul = time.CumulVar(ix)
            vv = routing.VehicleVar(ix)
            cand = ([pinned[s.id]] if s.id in pinned else
                    [k for x in s.allowed_vehicles for k in trips_of.get(x, [])]
                    if s.allowed_vehicles is not None else range(nv))
            for k in cand:
                is_k = solver.IsEqualCstVar(vv, k)
                solver.Add(cumul <= time.CumulVar(routing.Start(k)) + limit + horizon * (1 - is_k))

        # optional stops
        fixed_max = max([int(round(v.fixed_cost * P.cost_scale)) for v in vehicles] + [0])
        self.penalty = penalty = min(100 * (2 * max_arc + fixed_max) + 1, 2**52 // max(1, nr))
        for r, s in enumerate(stops, start=nd):
            if s.id in self.locked_ids:
                continue  # already visited: mandatory
            routing.AddDisjunction([manager.NodeToIndex(r)], penalty)

        self.locks = locks
        self.vid = vid
        self.row_of = row_of

    # ------------------------------------------------------------------ search
    def params(self, cfg: SearchConfig, seconds: float):
        from ortools.constraint_solver import pywrapcp, routing_enums_pb2

        p = pywrapcp.DefaultRoutingSearchParameters()
        p.first_solution_strategy = getattr(routing_enums_pb2.FirstSolutionStrategy, cfg.first_solution)
        if cfg.metaheuristic == "ITERATED_LOCAL_SEARCH":
            self._ils(p, cfg)
        else:
            p.local_search_metaheuristic = getattr(routing_enums_pb2.LocalSearchMetaheuristic,
                                                   cfg.metaheuristic)
        p.guided_local_search_lambda_coefficient = cfg.gls_lambda
        for name, on in cfg.gls_options.items():
            setattr(p, name, on)
        for name, on in cfg.operators.items():
            setattr(p.local_search_operators, name, 3 if on else 2)  # BOOL_TRUE / BOOL_FALSE
        if cfg.neighbors_ratio is not None:
            p.ls_operator_neighbors_ratio = cfg.neighbors_ratio
            p.ls_operator_min_neighbors = cfg.min_neighbors
        ms = max(10, int(seconds * 1000))
        p.time_limit.seconds = ms // 1000
        p.time_limit.nanos = (ms % 1000) * 1_000_000
        return p

    @staticmethod
    def _ils(p, cfg: SearchConfig) -> None:
        """Iterated local search: ruin, recreate, local search, accept by simulated annealing.
        Solved with ``SolveWithIteratedLocalSearch`` (see :func:`_search`)."""
        from ortools.constraint_solver import routing_enums_pb2, routing_ils_pb2

        p.use_iterated_local_search = True
        p.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GREEDY_DESCENT
        ils = p.iterated_local_search_parameters
        rr = ils.ruin_recreate_parameters
        del rr.ruin_strategies[:]
        for name in cfg.ruin.split("+"):
            ruin = rr.ruin_strategies.add()
            if name == "sisr":
                ruin.sisr.avg_num_removed_visits = cfg.ruin_size
                ruin.sisr.max_removed_sequence_size = cfg.ruin_max_sequence or cfg.ruin_size
                ruin.sisr.bypass_factor = 0.01
            elif name == "random_walk":
                ruin.random_walk.num_removed_visits = cfg.ruin_size
            else:
                ruin.spatially_close_routes.num_ruined_routes = max(1, cfg.ruin_size // 10)
        rr.ruin_composition_strategy = routing_ils_pb2.RuinCompositionStrategy.RUN_ONE_RANDOMLY
        rr.recreate_strategy.heuristic = getattr(routing_enums_pb2.FirstSolutionStrategy, cfg.recreate)
        if cfg.recreate_sorting:
            from ortools.constraint_solver import routing_heuristic_parameters_pb2 as hp

            lci = rr.recreate_strategy.parameters.local_cheapest_insertion
            enum = hp.LocalCheapestInsertionParameters.InsertionSortingProperty
            del lci.insertion_sorting_properties[:]
            lci.insertion_sorting_properties.extend([enum.Value(x) for x in cfg.recreate_sorting])
        if cfg.route_neighbors is not None:
            rr.route_selection_neighbors_ratio = cfg.route_neighbors
        ils.improve_perturbed_solution = cfg.improve_perturbed
        sa = ils.reference_solution_acceptance_strategy.simulated_annealing
        # automatic temperatures follow the arc costs, so they fit day plans (currency x
        # cost_scale) and benchmarks (metres x 1000) alike; fixed ones were no better on Solomon
        if cfg.cooling is not None:
            sa.cooling_schedule_strategy = routing_ils_pb2.CoolingScheduleStrategy.Value.Value(cfg.cooling)
        if cfg.temperature is None:
            sa.automatic_temperatures = True
        else:
            sa.automatic_temperatures = False
            sa.initial_temperature, sa.final_temperature = cfg.temperature

    def close(self, params) -> None:
        routing = self.routing
        for k, chain in self.locks:
            prev = routing.Start(k)
            for r in chain:
                ix = self.manager.NodeToIndex(r)
                routing.solver().Add(routing.NextVar(prev) == ix)
                prev = ix
        routing.CloseModelWithParameters(params)

    def routes_to_indices(self, routes: dict[int, list[str]]) -> list[list[int]]:
        """Routes keyed by routing vehicle (see :func:`fleet`) as OR-Tools indices."""
        out = []
        for k in range(len(self.fleet)):
            out.append([self.manager.NodeToIndex(self.row_of[sid]) for sid in routes.get(k, [])
                        if sid in self.row_of])
        return out

    def extract(self, assignment) -> dict:
        routing, manager, time = self.routing, self.manager, self.time
        routes: list[list[int]] = []
        starts: list[int] = []
        for k in range(len(self.fleet)):
            ix = routing.Start(k)
            starts.append(assignment.Value(time.CumulVar(ix)))
            seq = []
            ix = assignment.Value(routing.NextVar(ix))
            while not routing.IsEnd(ix):
                seq.append(self.active[manager.IndexToNode(ix) - self.nd])
                ix = assignment.Value(routing.NextVar(ix))
            routes.append(seq)
        served = sum(len(r) for r in routes)
        return {"routes": routes, "starts": starts, "objective": assignment.ObjectiveValue(),
                "served": served, "penalty": self.penalty}


def _search(problem: Problem, active: list[int], cfg: SearchConfig, seconds: float,
            initial: dict[int, list[int]] | None = None, label: str | None = None) -> dict | None:
    """Build a model, search, return plain routes (stop indices) or None."""
    t0 = time.monotonic()
    if initial and cfg.metaheuristic == "ITERATED_LOCAL_SEARCH":
        # OR-Tools 9.15 runs ILS only from its own first solution (SolveFromAssignment
        # ignores it and stops at the first local optimum), so a warm start (re-planning,
        # refining) keeps guided local search
        cfg = replace(cfg, metaheuristic="GUIDED_LOCAL_SEARCH")
    m = _Model(problem, active)
    remaining = max(0.05, seconds - (time.monotonic() - t0))
    params = m.params(cfg, remaining)
    m.close(params)
    sol = None
    if initial:
        ids = {k: [problem.stops[i].id for i in seq] for k, seq in initial.items()}
        init = m.routing.ReadAssignmentFromRoutes(m.routes_to_indices(ids), True)
        if init is not None:
            sol = m.routing.SolveFromAssignmentWithParameters(init, params)
    if sol is None:
        if params.use_iterated_local_search:
            sol = m.routing.SolveWithIteratedLocalSearch(params)
        else:
            sol = m.routing.SolveWithParameters(params)
    if sol is None:
        return None
    out = _enforce_on_board(problem, m.extract(sol), m.locked_ids)
    out["config"] = label or cfg.label
    return out


ON_BOARD_REASON = ("time on board would exceed the product's limit of {limit:.0f} min (waiting for a later "
                   "customer's time window on the way; no trip found that keeps it within the limit)")


def _enforce_on_board(problem: Problem, res: dict, locked: set[str]) -> dict:
    """Check time on board in exact arithmetic and drop the stops that exceed their limit.

    The model bounds time on board without waiting (see ``_Model``); waiting for a window only
    adds to it. Each trip is timed from its latest departure that keeps every window, the shift
    end and the reload before the van's next trip (the later a trip leaves, the less time any
    stop spends on board), and while a stop (not an already visited one) still exceeds its limit
    the worst is dropped (dropping a stop never delays the others). Dropped stops are listed in
    ``res["on_board"]`` and reported unserved with :data:`ON_BOARD_REASON`."""
    if res.get("starts") is None or not any(s.max_on_board is not None for s in problem.stops):
        return res
    model_fleet = fleet(problem)
    routes = [list(seq) for seq in res["routes"]]
    starts = [float(x) for x in res["starts"]]
    scale = problem.time_scale
    dropped: list[int] = []
    reload = max(0.0, problem.reload_time)
    end_by: dict[int, float] = {}  # van -> the latest its next trip to plan (in reverse) may end
    for m in reversed(range(len(routes))):
        k = model_fleet[m][0]
        seq = routes[m]
        if not seq:
            continue
        v = problem.vehicles[k]
        bound = end_by.get(k, v.shift[1])
        fixed = any(problem.stops[i].id in locked for i in seq)  # already left: its departure is history
        start = starts[m] / scale
        while True:
            if not fixed:
                start = max(start, _latest_start(problem, k, seq, bound))
            route = _schedule(problem, k, seq, start)
            worst, excess = None, _EPS
            for i, visit in zip(seq, route.visits, strict=True):
                s = problem.stops[i]
                if s.max_on_board is None or s.id in locked:
                    continue
                over = visit.service_start - start - s.max_on_board
                if over > excess:
                    worst, excess = i, over
            if worst is None:
                break
            seq.remove(worst)
            dropped.append(worst)
            if not seq:
                break
        starts[m] = start * scale
        if seq:
            end_by[k] = start - reload
    if not dropped:
        return res
    out = dict(res, routes=routes, starts=starts, on_board=dropped)
    out["served"] = sum(len(r) for r in routes)
    out["objective"] = res["objective"] + len(dropped) * res.get("penalty", 0)
    return out


def _better(a: dict | None, b: dict | None) -> bool:
    """True when a is a better result than b."""
    if a is None:
        return False
    if b is None:
        return True
    return (-a["served"], a["objective"]) < (-b["served"], b["objective"])


# --------------------------------------------------------------------- the portfolio

# Measured on the Solomon instances (30 s, 2 cores): OR-Tools' iterated local search
# (SISR ruin-and-recreate, simulated-annealing acceptance) beats guided local search from any
# first solution (mean distance ratio to PyVRP 1.003 vs 1.008), but only when it runs long
# without interruption: cutting it into shorter runs (to share the best plan) lost 0.4-0.8 %.
# So each worker runs one ILS configuration for most of the budget; the first solution and
# the ruin size decide where ILS ends up (SISR removing ~20 visits did best from PCI, and
# which pair wins varies per instance and run), so the workers differ in those; a fourth
# worker hedges with guided local search. Workers beyond the list only take part in phase 2.
# The second worker runs a leaner local search after each recreate (without the insertion
# LNS operators, which mostly re-insert dropped visits that the recreate step just placed):
# more ILS iterations and a different trajectory from the first worker's. R201 (30 s, 2 cores):
# 1151.8-1154.7 over 4 runs vs 1156.7-1165.4 (3 runs) with the full operator set; the other
# five unchanged.
# Trimming both workers lost RC101 (1647.5 -> 1659.1), closing routes mixed into the first
# worker's SISR lost RC101 and RC201.
LEAN_ILS_OPERATORS: dict[str, bool] = dict.fromkeys([
    "use_global_cheapest_insertion_path_lns", "use_local_cheapest_insertion_path_lns",
    "use_relocate_path_global_cheapest_insertion_insert_unperformed",
    "use_global_cheapest_insertion_visit_types_lns", "use_local_cheapest_insertion_visit_types_lns",
], False)
PORTFOLIO: list[SearchConfig] = [
    SearchConfig("PARALLEL_CHEAPEST_INSERTION", "ITERATED_LOCAL_SEARCH", ruin_size=20),
    SearchConfig("LOCAL_CHEAPEST_INSERTION", "ITERATED_LOCAL_SEARCH", ruin_size=10,
                 operators=dict(LEAN_ILS_OPERATORS)),
    SearchConfig("LOCAL_CHEAPEST_INSERTION", "ITERATED_LOCAL_SEARCH", ruin_size=20),
    SearchConfig("GLOBAL_CHEAPEST_ARC"),
]
REFINE_LAMBDAS = [0.1, 0.3, 0.2, 0.05]  # GLS lambda of each refining worker
# share of the budget for phase 1; the rest goes to GLS from the best plan, which still
# shortens what ILS leaves (R201: 1159 -> 1153-1158); 0.65 instead of 0.8 was worse
PORTFOLIO_SHARE = 0.8
REFINE_ROUND_SECONDS = 7.0  # length of one refining round (GLS stalls after a while)
MIN_PORTFOLIO_SECONDS = 4.0  # below this, one configuration per worker for the whole budget


def _pool_context():
    if mp.current_process().daemon:
        return None  # e.g. inside a Celery prefork child: no grandchildren allowed
    try:
        return mp.get_context("fork")
    except ValueError:  # pragma: no cover - platforms without fork
        return mp.get_context("spawn")


def solve(problem: Problem, workers: int | None = None,
          progress: Callable[[float], None] | None = None,
          portfolio: Sequence[SearchConfig] | None = None) -> Solution:
    """Plan routes within ``problem.time_limit`` seconds of wall time.

    ``workers``: processes to use (default: the CPU count); 1 runs everything in-process.
    ``progress`` is called now and then with the elapsed fraction of the time limit.
    ``portfolio``: the search configurations, the first ``workers`` of which run side by
    side (default :data:`PORTFOLIO`).
    """
    t0 = time.monotonic()
    limit = max(0.1, float(problem.time_limit))
    locked = {sid for ir in problem.initial_routes if ir.locked for sid in ir.stops[: ir.locked]}
    active, unserved = prefilter(problem, locked)
    configs = list(portfolio or PORTFOLIO)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, int(workers))
    ctx = _pool_context() if workers > 1 else None
    if ctx is None:
        workers = 1

    initial = _initial_routes(problem, active)
    best: dict | None = None
    if not active or not problem.vehicles:
        best = {"routes": [[] for _ in fleet(problem)], "starts": None, "objective": 0, "served": 0,
                "config": "empty"}
    else:
        best = _portfolio(problem, active, configs, workers, limit, t0, initial, ctx, progress)
    if progress:
        progress(1.0)
    if best is None and active and problem.vehicles:
        # the time limit ended before any first plan (a big depot, a limit of a second or two): rather a
        # plan after the limit than none; the wall holds whenever the limit leaves time for a first plan
        best = _search(problem, active, replace(configs[0], metaheuristic="GREEDY_DESCENT"), max(1.0, limit),
                       initial, f"{configs[0].first_solution} (first plan, after the time limit)")
    if best is None:
        # no plan at all (e.g. locks that cannot be honoured): report every stop
        for i in active:
            unserved.append(Unserved(problem.stops[i].id, "no feasible plan found within the time limit"))
        best = {"routes": [[] for _ in fleet(problem)], "starts": None, "objective": 0, "served": 0,
                "config": "none"}
    return _build_solution(problem, best, active, unserved, time.monotonic() - t0)


def _initial_routes(problem: Problem, active: list[int]) -> dict[int, list[int]] | None:
    if not problem.initial_routes:
        return None
    first = {}  # van id -> the routing vehicle of its first trip
    for m, (k, t) in enumerate(fleet(problem)):
        if t == 0:
            first[problem.vehicles[k].id] = m
    vid = first
    pos = {problem.stops[i].id: i for i in active}
    out: dict[int, list[int]] = {}
    for ir in problem.initial_routes:
        if ir.vehicle in vid:
            out[vid[ir.vehicle]] = [pos[s] for s in ir.stops if s in pos]
    return out


class _Inline:
    """Runs tasks in-process with the interface of an executor (workers=1)."""

    class _Done:
        def __init__(self, value):
            self._value = value

        def result(self):
            return self._value

    def submit(self, fn, *args):
        return self._Done(fn(*args))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _portfolio(problem, active, configs, workers, limit, t0, initial, ctx, progress) -> dict | None:
    """Phase 1: the first ``workers`` configurations side by side for most of the budget;
    phase 2: every worker refines the best plan with its own GLS lambda; keep the best."""
    margin = 0.25
    budget = limit - (time.monotonic() - t0) - margin
    phase1_configs = configs[:workers]
    if workers == 1:
        # one process (e.g. a Celery prefork child, which may not fork): the first two
        # configurations in turn. On real days the first solution decides how many orders
        # fit, not only the distance: on the demo city's HUB-03 (time-on-board limits) ILS
        # from PCI serves 17 of 24 orders and ILS from LCI 22, at 3 s and at 10 s alike.
        phase1_configs = configs[:2]
    if budget < MIN_PORTFOLIO_SECONDS * max(1, workers) / 2:
        # short budget: one configuration per worker, for the whole budget (in one process, the first
        # alone: halving a second or two leaves a flagship's many trips no time for a first plan)
        per, refine = budget, False
        phase1_configs = phase1_configs[:workers]
    else:
        per, refine = budget * PORTFOLIO_SHARE, True
    if workers == 1:
        per /= len(phase1_configs)
    best = None
    pool = _Inline() if workers == 1 else ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    with pool:
        futs = [pool.submit(_search, problem, active, c, per - 0.05, initial) for c in phase1_configs]
        best = _collect(futs, best, progress, t0, limit)
        # phase 2: GLS stalls after a while, so refine in rounds, each restarting from the
        # best plan so far with fresh penalties and another lambda ("iterated GLS")
        left = limit - (time.monotonic() - t0) - margin
        n_rounds = max(1, int(left // REFINE_ROUND_SECONDS))
        for r in range(n_rounds):
            left = limit - (time.monotonic() - t0) - margin
            if not refine or best is None or left < 0.5:
                break
            slot = left / (n_rounds - r)
            seed = {k: seq for k, seq in enumerate(best["routes"])}
            lams = [REFINE_LAMBDAS[(r * workers + w) % len(REFINE_LAMBDAS)] for w in range(workers)]
            futs = [pool.submit(_search, problem, active, SearchConfig(gls_lambda=lam), slot - 0.05, seed,
                                f"{best['config'].split(' > ')[0]} > refined(lambda={lam:g})")
                    for lam in lams]
            best = _collect(futs, best, progress, t0, limit)
    return best


def _collect(futs, best, progress, t0, limit):
    pending = set(futs)
    while pending:
        done = {f for f in pending if not hasattr(f, "done") or f.done()}
        if not done:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        pending -= done
        for f in done:
            res = f.result()
            if _better(res, best):
                best = res
        if progress:
            progress(min(0.99, (time.monotonic() - t0) / limit))
    return best


# ------------------------------------------------------------------ building output


def _schedule(problem: Problem, k: int, seq: list[int], start: float, trip: int = 1) -> Route:
    """Times, distance and load of one trip in exact arithmetic; the fixed cost rides on trip 1."""
    v = problem.vehicles[k]
    tt = _tt(problem, v)
    dm = problem.distance
    t = start
    node = v.start
    visits = []
    total = 0.0
    load: dict[str, float] = {}
    weight = 0.0
    for i in seq:
        s = problem.stops[i]
        leg = float(dm[node, s.node])
        arrival = t + float(tt[node, s.node])
        begin = max(arrival, s.window[0])
        depart = begin + s.service
        visits.append(Visit(s.id, arrival, begin, depart, leg))
        total += leg
        for c, q in s.demand.items():
            load[c] = load.get(c, 0.0) + q
        weight += s.weight
        t, node = depart, s.node
    total += float(dm[node, v.end])
    end = t + float(tt[node, v.end])
    cost = total / 1000.0 * v.cost_per_km + (v.fixed_cost if trip == 1 else 0.0)
    return Route(v.id, start, end, total, cost, visits, load, weight, trip)


def _latest_start(problem: Problem, k: int, seq: list[int], end_by: float | None = None) -> float:
    """Latest departure that keeps every window and is back by ``end_by`` (default: the shift's end)."""
    v = problem.vehicles[k]
    tt = _tt(problem, v)
    latest = v.shift[1] if end_by is None else min(v.shift[1], end_by)
    node = v.end
    for i in reversed(seq):
        s = problem.stops[i]
        latest = min(s.window[1], latest - float(tt[s.node, node]) - s.service)
        node = s.node
    return max(v.shift[0], min(v.shift[1], latest - float(tt[v.start, node])))


def _room(v: Vehicle, r: Route | None, s: Stop) -> bool:
    """Whether the stop's goods would still fit on this trip (None: an unused trip)."""
    load = r.load if r else {}
    w = r.weight if r else 0.0
    ok = all(q <= v.capacity.get(c, 0.0) - load.get(c, 0.0) + _EPS for c, q in s.demand.items() if q > 0)
    return ok and not (v.max_weight is not None and s.weight > v.max_weight - w + _EPS)


def _build_solution(problem: Problem, res: dict, active: list[int], unserved: list[Unserved],
                    seconds: float) -> Solution:
    routes: list[Route] = []
    served: set[int] = set()
    model_fleet = fleet(problem)
    if len(res["routes"]) != len(model_fleet):  # a result keyed by van (no trips)
        model_fleet = [(k, 0) for k in range(len(res["routes"]))]
    made: dict[int, int] = defaultdict(int)  # van -> trips made; trips are numbered in time order
    for m, seq in enumerate(res["routes"]):
        if not seq:
            continue
        k = model_fleet[m][0]
        if res.get("starts") is not None:
            start = res["starts"][m] / problem.time_scale
        else:
            start = _latest_start(problem, k, seq)
        made[k] += 1
        routes.append(_schedule(problem, k, seq, start, made[k]))
        served.update(seq)
    # stops the model dropped: say whether capacity, trips or time ran out
    trips_of: dict[str, list[Route]] = defaultdict(list)
    for r in routes:
        trips_of[r.vehicle_id].append(r)
    for i in res.get("on_board", []):
        unserved.append(Unserved(problem.stops[i].id, ON_BOARD_REASON.format(limit=problem.stops[i].max_on_board / 60)))
    reported = {u.stop_id for u in unserved}  # e.g. every stop when no plan was found at all
    for i in active:
        if i in served or problem.stops[i].id in reported:
            continue
        s = problem.stops[i]
        room = spare = False
        most = 1
        for k in _allowed(problem, s):
            v = problem.vehicles[k]
            mine = trips_of.get(v.id, [])
            most = max(most, v.trips)
            room = room or any(_room(v, r, s) for r in mine) or (not mine and _room(v, None, s))
            spare = spare or (bool(mine) and len(mine) < v.trips and _room(v, None, s))
        if not room and spare:
            unserved.append(Unserved(s.id, "shift time exhausted: the vans are full and another trip "
                                           f"(back to the depot, {problem.reload_time / 60:.0f} min to reload) "
                                           "does not fit their shifts"))
        elif not room:
            unserved.append(Unserved(s.id, "fleet capacity exhausted" + (
                f" (every van full on each of its trips, at most {most} a day)" if most > 1 else "")))
        elif s.max_on_board is not None:
            unserved.append(Unserved(s.id, "shift time exhausted (or time on board would exceed the "
                                           f"product's limit of {s.max_on_board / 60:.0f} min)"))
        else:
            unserved.append(Unserved(s.id, "shift time exhausted"))
    distance = sum(r.distance for r in routes)
    cost = sum(r.cost for r in routes)
    return Solution(routes, unserved, distance, cost, seconds, res.get("config", ""))
