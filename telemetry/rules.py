"""Alert rules over a van's telemetry — a pure module: samples in, alert openings and closings out.

Design (why it is built this way)
---------------------------------

*Event time, not arrival order.* Vans send backlogs late and out of order and
several ingestors share one van's stream (MQTT shared subscriptions), so a
rule cannot be a state machine fed "the next message". Each condition is a
*series* per vehicle — ``temperature:chilled:high``, ``temperature:chilled:low``,
``door:frozen``, ``shock``, ``battery`` — kept as an ordered list of *runs* in
event time. A run is ``[first_ts, last_ts, class, peak]``: consecutive points
of the same class (OUT = beyond the limit, BAND = inside the limit but not by
the hysteresis margin, CLEAR = inside by the margin) with no hole longer than
``merge_gap_s`` (2 min) between them — so a later backlog can only fall
between runs or split a run within a 2-minute step. A steady van has one run
per series; every excursion adds two or three. So the state stays small (a
few KB of JSON, stored in the database after every batch) while still
holding the exact shape of the recent history.

*Re-evaluate, then reconcile.* Every call re-runs a small deterministic state
machine over the runs of each series (tens of runs: microseconds) and gets
the list of *episodes* the data shows. These are then matched (by time
overlap) against the alerts already emitted, which the state remembers with
their keys; only the differences become events: ``open`` for a new episode,
``update`` when the start, peak, end or minutes changed, ``close`` when it
ended (``update`` for minutes and peak at most about once a minute, not at
every sample). Because evaluation is a pure function of the runs, applying
the same samples twice (QoS 1 redelivery) changes nothing, and a late backlog
that fills a gap is evaluated exactly as if it had arrived on time: an
excursion it reveals opens (and, if over, closes) its alert, with
``late=True``; an excursion it extends moves the alert's ``started_at``
earlier. (A test plays random histories in shuffled blocks up to two hours
late and checks the final alerts equal those of the same data in order.)

*Semantics of a duration rule.* A reading holds from its time until the next
reading (last value carried forward), for at most ``max_gap_s``. A condition
is "for 15 continuous minutes" when OUT readings cover ``[start, start+15min]``
without a non-OUT reading between (single-event mode: the timer restarts after
any reading back inside the limit). So 14 min 59 s → no alert, 15 min → alert;
``started_at`` is the start of the condition, not when it was detected.

*Hysteresis.* An open alert closes only after readings inside the limit by
``margin`` (0.5 °C, 0.05 battery) cover ``clear_after_s`` (2 min); readings
between the limit and the margin keep it open. It opens once and closes once.
``ended_at`` is when the value came back inside by the margin.

*Per kind.* Temperature: above ``temp_max_c`` or below ``temp_min_c`` of the
compartment class for ``temp_duration_s``, kind ``temperature`` with
``details.limit`` "high"/"low"; peak = the extreme value. Door: open for
``door_open_s``; peak 1.0. Shock: ``shock_g`` ≥ limit is instant; shocks
less than ``clear_after_s`` apart are one alert (peak = the largest,
``ended_at`` = the last shock). Battery: below ``battery_min`` at once.
Minutes = time actually beyond the limit within the alert.

*The clock.* Duration rules and silence must fire without a new sample:
``tick(state, now, active)`` extends the last reading of each series to
``now`` (at most ``max_gap_s`` past it), so a van whose sensor went quiet
mid-excursion still alerts (on its last known value; the alert's details say
``"extrapolated": true``), and opens a ``silence`` alert when an active van
has sent nothing for ``silence_s`` — counted on arrival time (a van's clock
may be skewed) from its last message or from the route's start, whichever is
later; the silence closes when the van reports again or the route ends, and
its peak is the minutes without data. If data then arrives showing a value
was in fact back in range, the alert raised on the extrapolation is closed,
or if already closed updated, with ``details.superseded`` — never deleted:
what was raised stays on record. (``apply`` extrapolates the same way to its
``now``, so ``apply`` and ``tick`` agree.)

*Late.* An alert is ``late`` when it was opened more than ``late_after_s``
after the moment its condition was met (its ``started_at`` plus the rule's
duration): either the samples arrived late (a backlog) or the clock had
already passed that moment when they came.

*Bounded state.* Runs more than ``keep_s`` (6 h) behind the newest reading, and any beyond ``max_runs``, are
folded into a checkpoint of the state machine, so evaluation from the
checkpoint gives the same result as from the beginning. A sample older than
the first kept run (a backlog arriving after more than ``max_runs`` newer
runs) is evaluated on its own (its episodes are raised late and closed at
the end of that backlog) — an approximation documented here on purpose.
A reading that lands *inside* a kept run with another class splits the run
at its time (the run's inner points are not kept, so the rest of the run is
taken to resume at once): the error is at most one ``merge_gap_s`` step.

*Configuration* changes (e.g. a product with ``max_c`` 4 °C loaded into the
chilled compartment) apply to readings classified after the change.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

STATE_VERSION = 1

OUT, BAND, CLEAR = 2, 1, 0

_NORMAL, _PENDING, _ACTIVE, _CLEARING = "normal", "pending", "active", "clearing"

SILENCE = "silence"


class SampleLike(Protocol):
    vehicle: str
    ts: datetime
    temp_c: Mapping[str, float]
    door: Mapping[str, str]
    shock_g: float | None
    battery: float | None


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RuleConfig:
    """Thresholds and timings. Times in seconds.

    ``temp_max_c`` / ``temp_min_c`` are per compartment class; use
    :meth:`with_limits` or :meth:`for_products` to override them (a product's
    ``min_c``/``max_c``). ``temp_duration_by_class`` overrides the duration of
    the temperature rule per class.
    """

    temp_max_c: Mapping[str, float] = field(
        default_factory=lambda: {"chilled": 8.0, "frozen": -15.0, "ambient": 30.0}
    )
    temp_min_c: Mapping[str, float] = field(default_factory=lambda: {"chilled": 0.0})
    temp_duration_s: float = 15 * 60
    temp_duration_by_class: Mapping[str, float] = field(default_factory=dict)
    temp_margin_c: float = 0.5
    door_open_s: float = 5 * 60
    shock_g: float = 4.0
    battery_min: float = 0.2
    battery_margin: float = 0.05
    silence_s: float = 10 * 60
    clear_after_s: float = 2 * 60
    late_after_s: float = 2 * 60
    max_gap_s: float = 30 * 60
    merge_gap_s: float = 2 * 60
    carry_grace_s: float = 10.0  # network lag of the last sample that still counts as "live"
    max_runs: int = 1000
    keep_s: float = 6 * 3600  # runs this far behind the newest reading are folded into the checkpoint
    # the products whose limits tightened a compartment's thresholds, by "class:high" / "class:low"
    # (shown in the alert's details)
    temp_limit_skus: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def with_limits(
        self, compartment: str, *, max_c: float | None = None, min_c: float | None = None
    ) -> RuleConfig:
        """A copy with the limits of one compartment class replaced (None leaves it as it is)."""
        tmax, tmin = dict(self.temp_max_c), dict(self.temp_min_c)
        if max_c is not None:
            tmax[compartment] = float(max_c)
        if min_c is not None:
            tmin[compartment] = float(min_c)
        return replace(self, temp_max_c=tmax, temp_min_c=tmin)

    def for_products(self, products: Iterable[tuple[str, float | None, float | None]]) -> RuleConfig:
        """A copy whose limits are tightened by the products aboard: ``(temp_class, min_c, max_c)``.

        The tightest product wins: a compartment holding yoghurt (max 6 °C)
        and cheese (max 8 °C) alerts above 6 °C.
        """
        tmax, tmin = dict(self.temp_max_c), dict(self.temp_min_c)
        for cls, min_c, max_c in products:
            if max_c is not None:
                tmax[cls] = min(tmax.get(cls, float(max_c)), float(max_c))
            if min_c is not None:
                tmin[cls] = max(tmin.get(cls, float(min_c)), float(min_c))
        return replace(self, temp_max_c=tmax, temp_min_c=tmin)

    def for_cargo(self, cargo: Mapping[str, Mapping[str, Any]] | None) -> RuleConfig:
        """A copy tightened by what a van carries: ``{class: {"min_c", "max_c", "max_skus", "min_skus"}}``
        (the SKUs setting each bound, named in the alert; ``skus`` stands for both when those are absent).

        This is how the ingestor applies per-product limits: traceability works out the
        strictest range of the products aboard each compartment and stores it with the
        van's rule state; a class default stays when it is stricter than every product.
        """
        if not cargo:
            return self
        products = [(cls, c.get("min_c"), c.get("max_c")) for cls, c in cargo.items()]
        out = self.for_products(products)
        skus: dict[str, tuple[str, ...]] = {}
        for cls, c in cargo.items():
            for bound, key in (("high", "max_skus"), ("low", "min_skus")):
                named = c.get(key, c.get("skus"))
                if named:
                    skus[f"{cls}:{bound}"] = tuple(named)
        return replace(out, temp_limit_skus={**self.temp_limit_skus, **skus})

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuleConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True, slots=True)
class _Rule:
    series: str
    kind: str
    compartment: str | None
    limit: float
    margin: float
    direction: int  # +1: alert above the limit (peak = max); -1: below (peak = min)
    duration: float
    instant: bool
    details: dict[str, Any]
    inclusive: bool = False  # the limit itself is out (shock >= 4 g)

    def classify(self, value: float) -> int:
        if self.direction > 0:
            if value > self.limit or (self.inclusive and value == self.limit):
                return OUT
            return CLEAR if value <= self.limit - self.margin else BAND
        if value < self.limit:
            return OUT
        return CLEAR if value >= self.limit + self.margin else BAND


def _make_rule(config: RuleConfig, series: str) -> _Rule | None:
    parts = series.split(":")
    kind = parts[0]
    if kind == "temperature":
        cls, bound = parts[1], parts[2]
        duration = float(config.temp_duration_by_class.get(cls, config.temp_duration_s))
        limits = config.temp_max_c if bound == "high" else config.temp_min_c
        if cls not in limits:
            return None
        limit = float(limits[cls])
        details = {"limit": bound, "threshold_c": limit, "duration_minutes": duration / 60}
        if config.temp_limit_skus.get(f"{cls}:{bound}"):
            details["cargo"] = list(config.temp_limit_skus[f"{cls}:{bound}"])
        return _Rule(series, kind, cls, limit, config.temp_margin_c, 1 if bound == "high" else -1,
                     duration, False, details)
    if kind == "door":
        details = {"threshold_minutes": config.door_open_s / 60}
        return _Rule(series, kind, parts[1], 0.5, 0.0, 1, float(config.door_open_s), False, details)
    if kind == "shock":
        return _Rule(series, kind, None, config.shock_g, 0.0, 1, 0.0, True, {"threshold_g": config.shock_g},
                     inclusive=True)
    if kind == "battery":
        return _Rule(series, kind, None, config.battery_min, config.battery_margin, -1, 0.0, False,
                     {"threshold": config.battery_min})
    return None


# --------------------------------------------------------------------------- alerts


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """What the caller stores and publishes. ``key`` identifies the alert across events."""

    action: str  # "open" | "update" | "close"
    key: str
    vehicle: str
    compartment: str | None
    kind: str  # temperature | door | shock | silence | battery
    status: str  # "open" | "closed" — the status the alert has after this event
    started_at: datetime
    ended_at: datetime | None
    peak: float | None
    minutes: float
    late: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "key": self.key,
            "vehicle": self.vehicle,
            "compartment": self.compartment,
            "kind": self.kind,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at) if self.ended_at else None,
            "peak": self.peak,
            "minutes": self.minutes,
            "late": self.late,
            "details": dict(self.details),
        }


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _ts(dt: datetime) -> float:
    if dt.tzinfo is None:
        raise ValueError("naive datetime: times must carry a zone")
    return dt.timestamp()


# --------------------------------------------------------------------------- state


@dataclass
class _Series:
    runs: list[list] = field(default_factory=list)  # [first, last, cls, peak], sorted by first
    checkpoint: dict[str, Any] | None = None  # machine state after the folded runs
    boundary: float | None = None  # first ts of the kept runs once something was folded


@dataclass
class VehicleState:
    """Everything the rules remember about one vehicle; JSON-serialisable (to_dict/from_dict)."""

    vehicle: str
    series: dict[str, _Series] = field(default_factory=dict)
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> record (epoch seconds)
    last_arrival: float | None = None
    last_ts: float | None = None
    active: bool = False
    active_since: float | None = None
    watch_since: float | None = None

    @classmethod
    def new(cls, vehicle: str, now: datetime) -> VehicleState:
        return cls(vehicle=vehicle, watch_since=_ts(now))

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "vehicle": self.vehicle,
            "series": {
                k: {"runs": [list(r) for r in s.runs], "checkpoint": s.checkpoint, "boundary": s.boundary}
                for k, s in self.series.items()
            },
            "alerts": {k: dict(r) for k, r in self.alerts.items()},
            "last_arrival": self.last_arrival,
            "last_ts": self.last_ts,
            "active": self.active,
            "active_since": self.active_since,
            "watch_since": self.watch_since,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VehicleState:
        if data.get("v") != STATE_VERSION:
            raise ValueError(f"unsupported rule state version: {data.get('v')!r}")
        return cls(
            vehicle=data["vehicle"],
            series={
                k: _Series([list(r) for r in s["runs"]], s.get("checkpoint"), s.get("boundary"))
                for k, s in data["series"].items()
            },
            alerts={k: dict(r) for k, r in data["alerts"].items()},
            last_arrival=data.get("last_arrival"),
            last_ts=data.get("last_ts"),
            active=bool(data.get("active", False)),
            active_since=data.get("active_since"),
            watch_since=data.get("watch_since"),
        )


# --------------------------------------------------------------------------- runs


def _better(rule: _Rule, a: float, b: float) -> float:
    return max(a, b) if rule.direction > 0 else min(a, b)


def _insert(runs: list[list], rule: _Rule, ts: float, cls: int, value: float, merge_gap: float) -> None:
    """Insert one point into the ordered runs, merging with same-class neighbours."""
    if runs and ts > runs[-1][1]:  # after every run: the usual in-order stream, no search
        last = runs[-1]
        if last[2] == cls and ts - last[1] <= merge_gap:
            last[1] = ts
            last[3] = _better(rule, last[3], value)
        else:
            runs.append([ts, ts, cls, value])
        return
    i = bisect.bisect_right(runs, ts, key=lambda r: r[0]) - 1
    if i >= 0 and runs[i][0] <= ts <= runs[i][1]:
        run = runs[i]
        if run[2] == cls:
            run[3] = _better(rule, run[3], value)
            return
        # A different reading inside a run: split the run at ts. Its inner points
        # are not kept, so the right part is taken to resume at ts (see module doc).
        pieces = []
        if ts > run[0]:
            pieces.append([run[0], ts, run[2], run[3]])
        pieces.append([ts, ts, cls, value])
        if ts < run[1]:
            pieces.append([ts, run[1], run[2], run[3]])
        runs[i : i + 1] = pieces
        return
    prev = runs[i] if i >= 0 else None
    nxt = runs[i + 1] if i + 1 < len(runs) else None
    if prev is not None and prev[2] == cls and ts - prev[1] <= merge_gap:
        prev[1] = ts
        prev[3] = _better(rule, prev[3], value)
        if nxt is not None and nxt[2] == cls and nxt[0] - ts <= merge_gap:
            prev[1] = nxt[1]
            prev[3] = _better(rule, prev[3], nxt[3])
            del runs[i + 1]
        return
    if nxt is not None and nxt[2] == cls and nxt[0] - ts <= merge_gap:
        nxt[0] = ts
        nxt[3] = _better(rule, nxt[3], value)
        return
    runs.insert(i + 1, [ts, ts, cls, value])


# --------------------------------------------------------------------------- the state machine


def _fresh_machine() -> dict[str, Any]:
    return {"phase": _NORMAL, "start": None, "peak": None, "out_s": 0.0, "clear_since": None,
            "detected": None, "last_end": None, "extrapolated": False, "last_data": None}


def _episode(m: dict[str, Any], end: float | None) -> dict[str, Any]:
    return {"start": m["start"], "end": end, "peak": m["peak"], "out_s": m["out_s"],
            "detected": m["detected"], "extrapolated": m["extrapolated"], "last_data": m["last_data"]}


def _run_machine(
    m: dict[str, Any], rule: _Rule, runs: Sequence[list], end_bound: float, config: RuleConfig
) -> list[dict[str, Any]]:
    """Advance machine ``m`` (in place) over ``runs``; time stops at ``end_bound``.

    Returns the episodes that closed plus, last, the one still open (end None).
    """
    episodes: list[dict[str, Any]] = []
    clear_after = config.clear_after_s
    n = len(runs)
    if rule.instant:
        for j in range(n):
            first, last, _cls, peak = runs[j]
            if m["phase"] == _CLEARING and first - m["clear_since"] >= clear_after:
                episodes.append(_episode(m, m["clear_since"]))
                m["phase"] = _NORMAL
            if m["phase"] == _NORMAL:
                m.update(phase=_ACTIVE, start=first, peak=peak, out_s=0.0, detected=first,
                         extrapolated=False)
            else:
                m["peak"] = _better(rule, m["peak"], peak)
            m["out_s"] += last - first
            m["last_data"] = last
            m["phase"] = _CLEARING
            m["clear_since"] = last
        if m["phase"] == _CLEARING and end_bound - m["clear_since"] >= clear_after:
            episodes.append(_episode(m, m["clear_since"]))
            m["phase"] = _NORMAL
        elif m["phase"] != _NORMAL:
            episodes.append(_episode(m, None))
        return episodes

    max_gap = config.max_gap_s
    for j in range(n):
        first, last, cls, peak = runs[j]
        nxt = runs[j + 1][0] if j + 1 < n else end_bound
        ext = max(last, min(nxt, last + max_gap))
        hole = m["last_end"] is not None and first > m["last_end"]
        phase = m["phase"]
        if phase == _PENDING and (hole or cls != OUT):
            phase = _NORMAL
        if cls == OUT:
            if phase == _NORMAL:
                phase = _PENDING
                m.update(start=first, peak=peak, out_s=0.0, extrapolated=False)
            else:
                m["peak"] = _better(rule, m["peak"], peak)
            if phase == _CLEARING:
                phase = _ACTIVE
                m["clear_since"] = None
            m["out_s"] += ext - first
            m["last_data"] = last
            if phase == _PENDING and ext - m["start"] >= rule.duration:
                phase = _ACTIVE
                m["detected"] = m["start"] + rule.duration
                m["extrapolated"] = m["detected"] > last and j + 1 == n
        elif cls == BAND:
            if phase == _CLEARING:
                phase = _ACTIVE
                m["clear_since"] = None
        else:  # CLEAR
            if phase == _ACTIVE or (phase == _CLEARING and hole):
                phase = _CLEARING
                m["clear_since"] = first
            if phase == _CLEARING and ext - m["clear_since"] >= clear_after:
                m["phase"] = phase
                episodes.append(_episode(m, m["clear_since"]))
                phase = _NORMAL
        m["phase"] = phase
        m["last_end"] = ext
    if m["phase"] in (_ACTIVE, _CLEARING):
        episodes.append(_episode(m, None))
    return episodes


# --------------------------------------------------------------------------- the engine


@dataclass
class _Ctx:
    vehicle: str
    now: float
    arrived: float
    events: list[AlertEvent]
    horizon: float = 0.0  # how far readings are carried forward: see _horizon


def _horizon(state: VehicleState, now_t: float, grace: float) -> float:
    """The last reading holds for as long as the van has been silent *in arrival time* (plus `grace`
    for ordinary network lag), not up to the clock: a van replaying hours-old data that just arrived
    has been silent for no time at all, so its last door-open reading must not be stretched to now
    (that raised an alert per stop on every fast replay). A van whose data came in live and then
    stopped is carried forward as before."""
    if state.last_ts is None or state.last_arrival is None:
        return now_t
    return min(now_t, state.last_ts + max(0.0, now_t - state.last_arrival) + grace)


class RuleEngine:
    """Stateless: all memory is in the :class:`VehicleState` passed in and returned.

    ``apply`` and ``tick`` update the given state in place and return it with
    the events to store and publish. Give ``apply`` the samples that were newly
    stored (duplicates are harmless for kept runs, but a very old duplicate
    would be evaluated again on its own).
    """

    def __init__(self, config: RuleConfig | None = None) -> None:
        self.config = config or RuleConfig()
        self._rules: dict[str, _Rule | None] = {}
        self._variants: dict[str, RuleEngine] = {}

    def for_cargo(self, cargo: Mapping[str, Mapping[str, Any]] | None) -> RuleEngine:
        """The engine for a van carrying ``cargo`` (see :meth:`RuleConfig.for_cargo`), built once per cargo."""
        if not cargo:
            return self
        key = json.dumps(cargo, sort_keys=True)
        engine = self._variants.get(key)
        if engine is None:
            if len(self._variants) > 1000:
                self._variants.clear()
            engine = self._variants[key] = RuleEngine(self.config.for_cargo(cargo))
        return engine

    def _rule(self, series: str) -> _Rule | None:
        try:
            return self._rules[series]
        except KeyError:
            rule = self._rules[series] = _make_rule(self.config, series)
            return rule

    # -- public API ---------------------------------------------------------------------

    def apply(
        self,
        state: VehicleState | None,
        samples: Sequence[SampleLike],
        now: datetime,
        arrived_at: datetime | None = None,
    ) -> tuple[VehicleState, list[AlertEvent]]:
        """Take samples of one vehicle (any order) that arrived at ``arrived_at``; ``now`` is the clock."""
        if state is None:
            if not samples:
                raise ValueError("a new state needs samples (or use VehicleState.new)")
            state = VehicleState.new(samples[0].vehicle, now)
        for s in samples:
            if s.vehicle != state.vehicle:
                raise ValueError(f"sample of {s.vehicle} given to the state of {state.vehicle}")
        now_t = _ts(now)
        arrived = _ts(arrived_at) if arrived_at is not None else now_t
        ctx = _Ctx(state.vehicle, now_t, arrived, [])

        isolated: dict[str, list[tuple[float, int, float]]] = {}
        touched: set[str] = set()
        # the ingestor's hottest loop (every point of every sample): locals, no throwaway objects
        all_series, merge_gap, rule_of = state.series, self.config.merge_gap_s, self._rule
        for s in sorted(samples, key=lambda s: s.ts):
            t = _ts(s.ts)
            if state.last_ts is None or t > state.last_ts:
                state.last_ts = t
            for key, value in self._points(s):
                rule = rule_of(key)
                if rule is None:
                    continue
                cls = rule.classify(value)
                if rule.instant and cls != OUT:
                    continue  # an instant rule keeps only its events
                series = all_series.get(key)
                if series is None:
                    series = all_series[key] = _Series()
                touched.add(key)
                if series.boundary is not None and t < series.boundary:
                    isolated.setdefault(key, []).append((t, cls, value))
                    continue
                _insert(series.runs, rule, t, cls, value, merge_gap)

        if samples:
            if state.last_arrival is None or arrived > state.last_arrival:
                state.last_arrival = arrived
            self._end_silence(state, ctx, arrived, "the van reported again")
        ctx.horizon = _horizon(state, now_t, self.config.carry_grace_s)
        for key, points in isolated.items():
            self._evaluate_isolated(state, ctx, key, points)
        self._evaluate_all(state, ctx, touched)
        return state, _ordered(ctx.events)

    def tick(self, state: VehicleState | None, now: datetime, active: bool, *,
             vehicle: str | None = None) -> tuple[VehicleState, list[AlertEvent]]:
        """Evaluate against the wall clock: durations reached without new samples, and silence.

        ``active``: the van is on an active route now (silence only alerts then).
        """
        if state is None:
            if vehicle is None:
                raise ValueError("a new state needs the vehicle code")
            state = VehicleState.new(vehicle, now)
        now_t = _ts(now)
        ctx = _Ctx(state.vehicle, now_t, now_t, [], _horizon(state, now_t, self.config.carry_grace_s))
        if active and not state.active:
            state.active_since = now_t
        state.active = active
        if not active:
            self._end_silence(state, ctx, now_t, "route no longer active")
        else:
            refs = [t for t in (state.last_arrival, state.active_since, state.watch_since) if t is not None]
            ref = max(refs) if refs else now_t
            if now_t - ref >= self.config.silence_s and self._open_silence(state) is None:
                self._open_silence_alert(state, ctx, ref)
        self._evaluate_all(state, ctx)
        return state, _ordered(ctx.events)

    # -- samples to points ----------------------------------------------------------------

    def _points(self, s: SampleLike) -> Iterable[tuple[str, float]]:
        cfg = self.config
        for cls, v in s.temp_c.items():
            if cls in cfg.temp_max_c:
                yield f"temperature:{cls}:high", v
            if cls in cfg.temp_min_c:
                yield f"temperature:{cls}:low", v
        for cls, d in s.door.items():
            yield f"door:{cls}", 1.0 if d == "open" else 0.0
        if s.shock_g is not None:
            yield "shock", s.shock_g
        if s.battery is not None:
            yield "battery", s.battery

    # -- evaluation -----------------------------------------------------------------------

    def _evaluate_all(self, state: VehicleState, ctx: _Ctx, touched: set[str] | None = None) -> None:
        """Re-evaluate every series (``touched`` None) or those touched plus those not at rest.

        A series at rest — last run CLEAR, no open alert — cannot change by the clock alone.
        """
        busy = {r["series"] for r in state.alerts.values() if r["end"] is None} if touched is not None else ()
        for key, series in state.series.items():
            if touched is not None and key not in touched and key not in busy and (
                not series.runs or series.runs[-1][2] == CLEAR
            ):
                continue
            rule = self._rule(key)
            if rule is None:
                continue
            machine = dict(series.checkpoint) if series.checkpoint else _fresh_machine()
            episodes = _run_machine(machine, rule, series.runs, ctx.horizon, self.config)
            self._reconcile(state, ctx, rule, series, episodes)
            self._fold(state, rule, series)

    def _fold(self, state: VehicleState, rule: _Rule, series: _Series) -> None:
        """Bound the state by event time, not by count alone: runs that ended more than keep_s before the
        newest reading are folded into the checkpoint (and at most max_runs are kept whatever their age).

        Folding by count alone broke several ingestors sharing a van's stream: each sees every third
        sample, so its runs (no merge across the gaps) overflowed the count before the others' samples
        filled the gaps, and those then counted as an old backlog and raised separate alerts.
        """
        runs = series.runs
        newest = runs[-1][1] if runs else 0.0
        old = 0
        while old < len(runs) and runs[old][1] < newest - self.config.keep_s:
            old += 1
        excess = len(runs) - self.config.max_runs
        if excess > 0:
            excess += self.config.max_runs // 4  # fold in chunks, not at every call
        excess = min(max(excess, old), len(runs) - 1)
        if excess <= 0:
            return
        machine = dict(series.checkpoint) if series.checkpoint else _fresh_machine()
        boundary = series.runs[excess][0]
        _run_machine(machine, rule, series.runs[:excess], boundary, self.config)
        series.checkpoint = machine
        series.boundary = boundary
        del series.runs[:excess]
        for key in [k for k, r in state.alerts.items()
                    if r["series"] == rule.series and r["end"] is not None and r["end"] < boundary]:
            del state.alerts[key]

    def _evaluate_isolated(self, state: VehicleState, ctx: _Ctx, key: str,
                           points: list[tuple[float, int, float]]) -> None:
        """Samples older than the kept runs: evaluate them on their own, raise what they show as late."""
        rule = self._rule(key)
        series = state.series[key]
        if rule is None or series.boundary is None:
            return
        runs: list[list] = []
        merge_gap = self.config.merge_gap_s
        for t, cls, value in sorted(points):
            _insert(runs, rule, t, cls, value, merge_gap)
        episodes = _run_machine(_fresh_machine(), rule, runs, series.boundary, self.config)
        for ep in episodes:
            if ep["end"] is None:
                ep["end"] = min(series.boundary, runs[-1][1] + self.config.max_gap_s)
            record = self._new_record(state, rule, ep, late=True)
            record["details"]["isolated"] = True
            ctx.events.append(self._event("open", state, record | {"end": None}))
            ctx.events.append(self._event("close", state, record))
            del state.alerts[record["key"]]  # older than the kept runs: nothing left to track

    def _reconcile(self, state: VehicleState, ctx: _Ctx, rule: _Rule, series: _Series,
                   episodes: list[dict[str, Any]]) -> None:
        records = sorted((r for r in state.alerts.values() if r["series"] == rule.series),
                         key=lambda r: r["start"])
        unmatched = list(records)
        inf = float("inf")
        for ep in episodes:
            ep_end = inf if ep["end"] is None else ep["end"]
            match = None
            for r in unmatched:
                r_end = inf if r["end"] is None else r["end"]
                if ep["start"] <= r_end and r["start"] <= ep_end:
                    match = r
                    break
            if match is None:
                late = ctx.arrived - ep["detected"] > self.config.late_after_s
                record = self._new_record(state, rule, ep, late=late)
                ctx.events.append(self._event("open", state, record | {"end": None}))
                if record["end"] is not None:
                    ctx.events.append(self._event("close", state, record))
                continue
            unmatched.remove(match)
            match.update(start=ep["start"], end=ep["end"], peak=ep["peak"], out_s=ep["out_s"],
                         detected=ep["detected"])
            if not ep["extrapolated"] and match["details"].get("extrapolated"):
                match["details"]["extrapolated"] = False
            sent = match["sent"]
            if match["details"].pop("superseded", False):
                sent = {**sent, "start": None}  # confirmed again by later data: say so
            if sent["end"] is None and match["end"] is not None:
                ctx.events.append(self._event("close", state, match))
            elif (sent["start"] != match["start"] or sent["end"] != match["end"]
                  or _moved(sent["peak"], match["peak"], _PEAK_STEP.get(rule.kind, 0.0))
                  or abs(sent["out_s"] - match["out_s"]) >= 60):
                if sent["end"] is not None and match["end"] is None:
                    match["details"]["reopened"] = True
                ctx.events.append(self._event("update", state, match))
        for r in unmatched:
            # Raised on the data (or clock) of the time; later data shows no such episode.
            # It is closed (or, if closed already, updated) with details.superseded, never deleted.
            if r["details"].get("superseded"):
                continue
            r["details"]["superseded"] = True
            if r["end"] is not None:
                ctx.events.append(self._event("update", state, r))
                continue
            back = next((run[0] for run in series.runs if run[0] >= r["start"] and run[2] != OUT), ctx.now)
            r["end"] = max(r["start"], back)
            ctx.events.append(self._event("close", state, r))

    def _new_record(self, state: VehicleState, rule: _Rule, ep: dict[str, Any], late: bool) -> dict[str, Any]:
        base = f"{state.vehicle}/{rule.series}/{_dt(ep['start']).strftime('%Y%m%dT%H%M%S')}"
        key, n = base, 1
        while key in state.alerts:
            n += 1
            key = f"{base}-{n}"
        details = dict(rule.details)
        if ep.get("extrapolated"):
            details["extrapolated"] = True
            details["last_sample_at"] = _iso(_dt(ep["last_data"]))
        record = {"key": key, "series": rule.series, "kind": rule.kind, "compartment": rule.compartment,
                  "start": ep["start"], "end": ep["end"], "peak": ep["peak"], "out_s": ep["out_s"],
                  "detected": ep["detected"], "late": bool(late), "details": details,
                  "sent": {"start": None, "end": None, "peak": None, "out_s": 0.0}}
        state.alerts[key] = record
        return record

    def _event(self, action: str, state: VehicleState, r: dict[str, Any]) -> AlertEvent:
        """The event for record ``r``; remembers what was sent so that updates are only real changes."""
        if r["key"] in state.alerts:
            state.alerts[r["key"]]["sent"] = {"start": r["start"], "end": r["end"], "peak": r["peak"],
                                              "out_s": r["out_s"]}
        return AlertEvent(
            action=action,
            key=r["key"],
            vehicle=state.vehicle,
            compartment=r["compartment"],
            kind=r["kind"],
            status="open" if r["end"] is None else "closed",
            started_at=_dt(r["start"]),
            ended_at=None if r["end"] is None else _dt(r["end"]),
            peak=None if r["peak"] is None else round(r["peak"], 3),
            minutes=round(r["out_s"] / 60.0, 2),
            late=r["late"],
            details=dict(r["details"]),
        )

    # -- silence -------------------------------------------------------------------------

    @staticmethod
    def _open_silence(state: VehicleState) -> dict[str, Any] | None:
        return next((r for r in state.alerts.values() if r["series"] == SILENCE and r["end"] is None), None)

    def _open_silence_alert(self, state: VehicleState, ctx: _Ctx, since: float) -> None:
        detected = since + self.config.silence_s
        late = ctx.now - detected > self.config.late_after_s
        rule = _Rule(SILENCE, SILENCE, None, self.config.silence_s, 0.0, 1, self.config.silence_s, False,
                     {"threshold_minutes": self.config.silence_s / 60})
        ep = {"start": since, "end": None, "peak": None, "out_s": 0.0, "detected": detected}
        record = self._new_record(state, rule, ep, late=late)
        ctx.events.append(self._event("open", state, record))

    def _end_silence(self, state: VehicleState, ctx: _Ctx, at: float, why: str) -> None:
        record = self._open_silence(state)
        if record is None:
            return
        record["end"] = max(record["start"], at)
        record["out_s"] = record["end"] - record["start"]
        record["peak"] = round(record["out_s"] / 60.0, 2)  # silence: the peak is the minutes without data
        record["details"]["ended_because"] = why
        ctx.events.append(self._event("close", state, record))
        # a closed silence is history: nothing re-derives it, so it need not be kept
        del state.alerts[record["key"]]


# Smallest change of the peak worth an "update" event, per kind.
_PEAK_STEP = {"temperature": 0.1, "shock": 0.1, "battery": 0.01}


def _moved(a: float | None, b: float | None, step: float) -> bool:
    if a is None or b is None:
        return a is not b
    return abs(a - b) >= step if step else a != b


def _ordered(events: list[AlertEvent]) -> list[AlertEvent]:
    rank = {"open": 0, "update": 1, "close": 2}
    return sorted(events, key=lambda e: (e.started_at, e.key, rank[e.action]))
