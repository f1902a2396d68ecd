"""Fleet telemetry simulator — a pure, deterministic generator of van telemetry (CONTRACTS.md section 2).

No database, no MQTT, no clock: vans (and their planned stops, if any) and a time span
go in; out comes every MQTT message a fleet would publish, in publish order, as
``Message(at, topic, payload)`` with ``at`` the simulated publish time, plus an
:class:`Expected` summary of what a correct ingestor must make of them (distinct valid
samples, rejects with their reasons, alerts by vehicle, compartment and kind).
The same inputs and seed give the same bytes.

What a van does
---------------
* **Temperatures**: each compartment cycles with its compressor (a sinusoid with a
  per-van period and phase plus Gaussian noise): chilled ~1.5–3.5 °C, frozen ~-22…-20 °C,
  ambient ~14–18 °C. A door opening warms the compartment (a bump that grows while the
  door is open and decays once it is closed). Outside the scenario incidents the values
  are kept inside the alert limits of :class:`telemetry.rules.RuleConfig` by a margin, so
  normal running never alerts.
* **Doors**: at each stop the doors of the compartments used open after arrival for at
  most 3.5 minutes (under the 5-minute door rule), whatever the service time; every
  sample reports every compartment's door (``open``/``closed``) — a van that only
  reported ``open`` would have its door carried forward as open by the rules.
* **Position**: straight lines between the depot and the stops at the planned times
  (parked at a stop with a few metres of GPS jitter); a van without a plan drives a
  loop of random stops within ~3 km of its depot.
* **Shock**: peak g since the last sample: ~0.02 g parked, 0.1–0.8 g driving, a pothole
  now and then (1–3 g).
* **Battery**: starts at 0.85–0.98 and drains ~0.015 per hour (never near the 0.2 rule).
* ``seq`` starts at a per-device number and increases by 1 per sample; ``ts`` is RFC 3339
  with ``Z`` and milliseconds; a message leaves the van 0.2–1.5 s after its ``ts``.

Scenario switches (:class:`Scenario`); each incident goes to a van picked by the seed
(different vans while there are enough) at a time that fits in the span:

* ``warming``: a chilled compartment drifts above 8 °C for 25 minutes → temperature alert;
* ``blip``: a chilled compartment above 8 °C for 5 minutes → no alert;
* ``door_left_open``: a door open for 7 minutes → door alert;
* ``hard_shock``: one shock of 4.3–5.8 g while driving → shock alert;
* ``signal_loss``: a van holds its samples for 20 minutes and then sends the backlog as
  ONE JSON array, published just after its first live sample (so it arrives late and out
  of order);
* ``duplicates``: about 1 % of the messages (at least 3) are published a second time a
  second later, as a QoS 1 redelivery would;
* ``garbage``: once each, on vans picked by the seed: a message that is not JSON, one
  that is not UTF-8, a sample without ``seq`` (extra messages, no sample lost), and a
  sample whose chilled (or first) temperature reads 500 °C (a real sample slot: that
  sample is rejected whole, so it is not among the valid samples).

``on_trips`` (a day run on a simulated clock, `coldchain demo`): every incident falls inside one of
its van's trips (``VanSpec.trips``), while goods are aboard and the van is watched; the warming
crosses the compartment class's default limit (so it alerts whatever the rules know the van
carries at that moment: cargo limits loosen as stops are delivered), and the signal loss is
expected to raise a ``silence`` alert (20 minutes without a message are 20 minutes for the rules
too when the whole system reads the same simulated clock).

Incidents on one van never overlap, the sample just before a signal loss has its
doors closed and temperatures normal (the rules carry a reading forward over a hole),
and the last two minutes of the span are quiet, so the expected alerts are exact.

``clock_offset`` shifts every ``ts`` (the device clocks) and :attr:`Expected` times but
not ``at``: a publisher replaying a future day can stamp it into the past.

What was staged is data: :attr:`Simulation.expected` (counts, reject reasons, alerts by
vehicle, compartment and kind) and :meth:`Simulation.valid_samples` (every sample a correct
ingestor stores, once). ``withhold`` names incidents that stay in :attr:`Expected` but are
left out of the stream: a defect put in on purpose, so that a check comparing what was
staged with what was found can be seen to fail (``coldchain demo --withhold-incident``).
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from core.geo import local_km1, offset
from telemetry.decoding import COMPARTMENTS, telemetry_topic
from telemetry.rules import RuleConfig

__all__ = [
    "COMPARTMENT_PROFILES",
    "WITHHOLDABLE",
    "Expected",
    "ExpectedAlert",
    "Incident",
    "Message",
    "PlannedStop",
    "Scenario",
    "Simulation",
    "Tally",
    "VanSpec",
    "tally",
    "simulate",
    "status_topic",
]

STATUS_SUFFIX = "/status"


def status_topic(vehicle_code: str) -> str:
    """``coldchain/v1/vehicles/{code}/status``: retained ``online`` / last will ``offline``."""
    return f"coldchain/v1/vehicles/{vehicle_code}{STATUS_SUFFIX}"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlannedStop:
    """A stop of a planned route: where, when the van arrives and leaves, which compartments it opens.

    ``compartments`` empty means every compartment the van has.
    """

    lat: float
    lon: float
    arrive: datetime
    depart: datetime
    compartments: tuple[str, ...] = ()


@dataclass(frozen=True)
class VanSpec:
    """A van: code, fitted device, depot position, compartments present, and its planned stops (if any).

    ``route_start`` / ``route_end``: when it leaves and is back at the depot (default: a
    leg's driving time before the first stop / after the last one).
    """

    code: str
    device: str
    depot: tuple[float, float]
    compartments: tuple[str, ...] = ("chilled",)
    stops: tuple[PlannedStop, ...] = ()
    route_start: datetime | None = None
    route_end: datetime | None = None
    # what it carries: {class: {"min_c", "max_c", "skus"}}, as the rules know it (RuleConfig.for_cargo);
    # normal running stays inside these tighter limits and staged excursions cross them
    cargo: dict[str, dict[str, Any]] | None = field(default=None, hash=False, compare=False)
    # the van's trips as (leaves the depot, last stop done): it is watched for silence then
    trips: tuple[tuple[datetime, datetime], ...] = ()

    def __post_init__(self) -> None:
        bad = [c for c in self.compartments if c not in COMPARTMENTS]
        if bad or not self.compartments:
            raise ValueError(f"{self.code}: compartments must be a non-empty subset of {COMPARTMENTS}, got "
                             f"{self.compartments!r}")


@dataclass(frozen=True)
class Scenario:
    """Which incidents to stage (see the module docstring). ``garbage`` is off by default."""

    warming: bool = True
    blip: bool = True
    door_left_open: bool = True
    hard_shock: bool = True
    signal_loss: bool = True
    duplicates: bool = True
    garbage: bool = False
    on_trips: bool = False

    @classmethod
    def quiet(cls) -> Scenario:
        """A normal day: no incident, no duplicate, no garbage."""
        return cls(False, False, False, False, False, False, False)


# Per class: (mid-point °C, half amplitude °C, door bump rate °C/min, bump cap °C).
COMPARTMENT_PROFILES: dict[str, tuple[float, float, float, float]] = {
    "chilled": (2.4, 0.9, 0.7, 2.0),  # set for the strictest chilled goods (0-4 °C)
    "frozen": (-21.0, 1.2, 0.8, 1.8),  # and frozen goods kept at -18 °C or colder
    "ambient": (16.0, 1.8, 0.5, 2.0),
}

WARMING_OUT = timedelta(minutes=25)
BLIP_OUT = timedelta(minutes=5)
RAMP = timedelta(minutes=8)
DOOR_LEFT_OPEN = timedelta(minutes=7)
SIGNAL_LOSS = timedelta(minutes=20)
STOP_DOOR_MAX = timedelta(minutes=3.5)
QUIET_END = timedelta(minutes=2)
# incidents that can be withheld from the stream while staying expected (see the module docstring)
WITHHOLDABLE = ("warming", "door_left_open", "hard_shock")
PAD = timedelta(minutes=4)  # between incidents on one van


# --------------------------------------------------------------------------- outputs


class Message(NamedTuple):
    """One MQTT publish: simulated publish time, topic, payload bytes."""

    at: datetime
    topic: str
    payload: bytes


@dataclass(frozen=True)
class ExpectedAlert:
    vehicle: str
    compartment: str | None
    kind: str
    starts_at: datetime

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.vehicle, self.compartment, self.kind)


@dataclass(frozen=True)
class Incident:
    """A staged incident: kind, van, compartment (if any), device-clock window."""

    kind: str
    vehicle: str
    compartment: str | None
    start: datetime
    end: datetime


@dataclass
class Expected:
    """What the stream holds and what a correct ingestor makes of it."""

    messages: int = 0  # telemetry messages published (duplicates and garbage included)
    samples: int = 0  # distinct valid samples ((device, seq) pairs that decode)
    samples_by_vehicle: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0  # messages published twice (the second copy)
    batches: int = 0  # backlog messages (JSON arrays)
    rejects: int = 0
    reject_reasons: list[str] = field(default_factory=list)  # sorted
    alerts: list[ExpectedAlert] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # incidents that did not fit, with why

    def alert_keys(self) -> list[tuple[str, str | None, str]]:
        """Sorted ``(vehicle, compartment, kind)`` of the alerts that must be raised (and no others)."""
        return sorted((a.key for a in self.alerts), key=lambda k: (k[0], k[1] or "", k[2]))

    def to_dict(self) -> dict[str, Any]:
        def iso(value: Any) -> Any:
            return _iso(value) if isinstance(value, datetime) else value

        return {
            "messages": self.messages,
            "samples": self.samples,
            "samples_by_vehicle": dict(self.samples_by_vehicle),
            "duplicates": self.duplicates,
            "batches": self.batches,
            "rejects": self.rejects,
            "reject_reasons": list(self.reject_reasons),
            "alerts": [{k: iso(v) for k, v in asdict(a).items()} for a in self.alerts],
            "incidents": [{k: iso(v) for k, v in asdict(i).items()} for i in self.incidents],
            "skipped": list(self.skipped),
        }


class Tally(NamedTuple):
    """How many times a key was staged and how many times it was found."""

    key: Any
    expected: int
    found: int

    @property
    def ok(self) -> bool:
        return self.expected == self.found


def tally(expected: Iterable[Hashable], found: Iterable[Hashable]) -> list[Tally]:
    """Compare two multisets key by key (every key of either side, sorted; None sorts first).

    Multisets, not sets: two door alerts on one van where one was staged is a difference,
    and so is one where two were staged."""
    want, got = Counter(expected), Counter(found)

    def order(key: Hashable) -> Any:
        parts = key if isinstance(key, tuple) else (key,)
        return tuple((p is not None, "" if p is None else str(p)) for p in parts)

    return [Tally(k, want[k], got[k]) for k in sorted(want.keys() | got.keys(), key=order)]


def _iso(moment: datetime) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- geometry


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    return local_km1(a[0], a[1], b[0], b[1]) * 1000.0


def _lerp(a: float, b: float, f: float) -> float:
    return a + (b - a) * f


@dataclass
class _Leg:
    """The van's whereabouts over [start, end): parked at ``a`` (a == b) or driving a → b."""

    start: datetime
    end: datetime
    a: tuple[float, float]
    b: tuple[float, float]

    @property
    def driving(self) -> bool:
        return self.a != self.b

    def at(self, t: datetime) -> tuple[float, float]:
        span = (self.end - self.start).total_seconds()
        f = 0.0 if span <= 0 else min(1.0, max(0.0, (t - self.start).total_seconds() / span))
        return (_lerp(self.a[0], self.b[0], f), _lerp(self.a[1], self.b[1], f))


# --------------------------------------------------------------------------- per van plan


@dataclass
class _VanDay:
    spec: VanSpec
    rng: random.Random
    times: list[datetime]
    legs: list[_Leg]
    doors: dict[str, list[tuple[datetime, datetime]]]  # compartment -> open intervals
    busy: list[tuple[datetime, datetime]] = field(default_factory=list)
    temp_incidents: list[tuple[str, datetime, datetime, float]] = field(default_factory=list)
    shocks: dict[int, float] = field(default_factory=dict)  # sample index -> g
    loss: tuple[int, int] | None = None  # sample indexes [i, j) held back
    hot_index: int | None = None  # the 500 °C sample

    def driving_at(self, t: datetime) -> bool:
        leg = self._leg(t)
        return leg is not None and leg.driving

    def _leg(self, t: datetime) -> _Leg | None:
        for leg in self.legs:
            if leg.start <= t < leg.end:
                return leg
        return None

    def position(self, t: datetime) -> tuple[float, float]:
        leg = self._leg(t)
        if leg is None:
            return self.spec.depot
        return leg.at(t)

    def door_open(self, cls: str, t: datetime) -> bool:
        return any(a <= t < b for a, b in self.doors.get(cls, ()))

    def free(self, start: datetime, end: datetime) -> bool:
        return all(end + PAD <= a or start >= b + PAD for a, b in self.busy)


def _plan_legs(spec: VanSpec, start: datetime, end: datetime, rng: random.Random,
               speed_mps: float = 7.0) -> tuple[list[_Leg], list[PlannedStop]]:
    """Legs (driving and parked) of the van's day; synthetic stops around the depot if it has no plan."""
    stops = list(spec.stops)
    if not stops:
        stops = []
        t = start + timedelta(minutes=rng.uniform(6, 20))
        here = spec.depot
        while True:
            bearing = rng.uniform(0, 2 * math.pi)
            radius = rng.uniform(600, 3000)
            there = offset(spec.depot[0], spec.depot[1], radius * math.sin(bearing) / 1000.0,
                           radius * math.cos(bearing) / 1000.0)
            drive = timedelta(seconds=max(240.0, _metres(here, there) / speed_mps))
            service = timedelta(minutes=rng.uniform(4, 9))
            back = timedelta(seconds=max(240.0, _metres(there, spec.depot) / speed_mps))
            if t + drive + service + back + timedelta(minutes=5) > end:
                break
            used = tuple(c for c in spec.compartments if rng.random() < 0.7) or (rng.choice(spec.compartments),)
            stops.append(PlannedStop(there[0], there[1], t + drive, t + drive + service, used))
            t, here = t + drive + service, there
        route_start = route_end = None
    else:
        stops.sort(key=lambda s: s.arrive)
        route_start, route_end = spec.route_start, spec.route_end
    legs: list[_Leg] = []
    if not stops:
        return legs, stops
    first, last = stops[0], stops[-1]
    if route_start is None or route_start > first.arrive:
        out = timedelta(seconds=max(300.0, _metres(spec.depot, (first.lat, first.lon)) / speed_mps))
        route_start = first.arrive - out
    if route_end is None or route_end < last.depart:
        back = timedelta(seconds=max(300.0, _metres((last.lat, last.lon), spec.depot) / speed_mps))
        route_end = last.depart + back
    here, t = spec.depot, route_start
    for stop in stops:
        there = (stop.lat, stop.lon)
        if stop.arrive > t:
            legs.append(_Leg(t, stop.arrive, here, there))
        legs.append(_Leg(max(t, stop.arrive), max(t, stop.depart), there, there))
        here, t = there, max(t, stop.depart)
    if route_end > t:
        legs.append(_Leg(t, route_end, here, spec.depot))
    return legs, stops


# --------------------------------------------------------------------------- the simulation


class Simulation:
    """Plan a fleet's day once (deterministic in ``seed``); iterate it for the messages.

    ``vans``: :class:`VanSpec`; ``start``/``end``: the span (aware datetimes);
    ``interval_s``: seconds between a van's samples; ``scenario``: incidents to stage;
    ``clock_offset``: added to every device time (``ts``) but not to publish times.
    """

    def __init__(self, vans: Sequence[VanSpec], start: datetime, end: datetime, *, interval_s: float = 30.0,
                 seed: int = 0, scenario: Scenario | None = None, clock_offset: timedelta = timedelta(0),
                 rules: RuleConfig | None = None, withhold: Iterable[str] = ()) -> None:
        withhold = frozenset(withhold)
        if withhold - set(WITHHOLDABLE):
            raise ValueError(f"cannot withhold {', '.join(sorted(withhold - set(WITHHOLDABLE)))}: "
                             f"only {', '.join(WITHHOLDABLE)}")
        self.withhold = withhold
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be aware datetimes")
        if end <= start:
            raise ValueError("end must be after start")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        codes = [v.code for v in vans]
        if len(set(codes)) != len(codes) or len({v.device for v in vans}) != len(vans):
            raise ValueError("vehicle codes and devices must be unique")
        self.vans = sorted(vans, key=lambda v: v.code)
        self.start, self.end = start.astimezone(UTC), end.astimezone(UTC)
        self.interval = timedelta(seconds=interval_s)
        self.seed = seed
        self.scenario = scenario or Scenario()
        self.clock_offset = clock_offset
        self.rules = rules or RuleConfig()
        self.expected = Expected()
        self._days: list[_VanDay] = [self._plan_van(v) for v in self.vans]
        self._garbage: list[tuple[str, int, bytes, str]] = []  # (vehicle, sample index, payload, reason)
        self._duplicated: set[tuple[str, int]] = set()
        self._stage()
        self._messages: list[Message] | None = None
        self._sample_cache: dict[str, list[dict[str, Any]]] = {}

    # -- planning ---------------------------------------------------------------------------

    def _plan_van(self, spec: VanSpec) -> _VanDay:
        rng = random.Random(f"{self.seed}:{spec.code}")
        phase = timedelta(seconds=rng.uniform(0, self.interval.total_seconds()))
        times = []
        t = self.start + phase
        while t < self.end:
            times.append(t)
            t += self.interval
        legs, stops = _plan_legs(spec, self.start, self.end, rng)
        doors: dict[str, list[tuple[datetime, datetime]]] = {c: [] for c in spec.compartments}
        quiet_from = self.end - QUIET_END
        for stop in stops:
            opens = stop.arrive + timedelta(seconds=rng.uniform(20, 60))
            closes = min(opens + STOP_DOOR_MAX, stop.depart - timedelta(seconds=30), quiet_from)
            for cls in stop.compartments or spec.compartments:
                if cls in doors and closes - opens >= timedelta(seconds=40):
                    jitter = timedelta(seconds=rng.uniform(0, 20))
                    doors[cls].append((opens + jitter, min(closes, opens + jitter + STOP_DOOR_MAX)))
        return _VanDay(spec, rng, times, legs, doors)

    def _stage(self) -> None:
        sc, rng = self.scenario, random.Random(f"{self.seed}:incidents")
        order = list(self._days)
        rng.shuffle(order)
        turn = 0

        def candidates(need: Iterable[_VanDay]) -> list[_VanDay]:
            nonlocal turn
            pool = list(need)
            if not pool:
                return []
            k = turn % len(pool)
            turn += 1
            return pool[k:] + pool[:k]

        def with_temp_class(day: _VanDay) -> str:
            return "chilled" if "chilled" in day.spec.compartments else day.spec.compartments[0]

        def pick(kind: str, length: timedelta, pool: list[_VanDay], ok=None) -> tuple[_VanDay, datetime] | None:  # noqa: ANN001
            earliest = self.start + timedelta(minutes=5)
            latest = self.end - QUIET_END - timedelta(minutes=3) - length
            if latest < earliest:
                self.expected.skipped.append(f"{kind}: the span is too short")
                return None
            pool = candidates(pool)
            steps = int((latest - earliest) / timedelta(minutes=1)) + 1
            scan = [earliest + timedelta(minutes=k) for k in range(steps)]  # first fit, when chance fails
            chance = [(d, [earliest + (latest - earliest) * rng.random() for _ in range(30)]) for d in pool]
            for day, tries in chance + [(d, scan) for d in pool]:
                for t0 in tries:
                    t0 = t0.replace(microsecond=0)
                    if day.free(t0, t0 + length) and (ok is None or ok(day, t0)):
                        day.busy.append((t0, t0 + length))
                        return day, t0
            self.expected.skipped.append(f"{kind}: no van has a free slot of {length}")
            return None

        def limits(day: _VanDay) -> Mapping[str, float]:
            return self.rules.for_cargo(day.spec.cargo).temp_max_c

        def on_trip(length: timedelta, ok=None):  # noqa: ANN001, ANN202
            """With ``on_trips``: the incident's whole slot inside one trip of the van (and ``ok``)."""
            if not sc.on_trips:
                return ok
            margin = timedelta(minutes=2)

            def inside(day: _VanDay, t0: datetime) -> bool:
                return (any(a + margin <= t0 and t0 + length + margin <= b for a, b in day.spec.trips)
                        and (ok is None or ok(day, t0)))
            return inside

        if sc.on_trips:
            order = [d for d in order if d.spec.trips]
        eligible = [d for d in order if with_temp_class(d) in limits(d)]
        # an excursion over the van's limit: long enough to alert (warming) or not (blip)
        for kind, out_for, alert in (("warming", WARMING_OUT, "temperature"), ("blip", BLIP_OUT, None)):
            if not getattr(sc, kind):
                continue
            length = RAMP + out_for + RAMP + timedelta(minutes=3)
            got = pick(kind, length, eligible, ok=on_trip(length))
            if got:
                day, t0 = got
                cls = with_temp_class(day)
                a = t0 + RAMP
                limit = limits(day)[cls]
                if sc.on_trips and kind == "warming":  # over any limit the rules may hold then
                    limit = max(limit, self.rules.temp_max_c.get(cls, limit))
                if kind not in self.withhold:
                    day.temp_incidents.append((cls, a, a + out_for, limit))
                self._incident(kind, day, cls, a, a + out_for, alert=alert)
        if sc.door_left_open:
            got = pick("door_left_open", DOOR_LEFT_OPEN + timedelta(minutes=3), order,
                       ok=on_trip(DOOR_LEFT_OPEN + timedelta(minutes=3)))
            if got:
                day, t0 = got
                cls = with_temp_class(day)
                a, b = t0 + timedelta(minutes=1), t0 + timedelta(minutes=1) + DOOR_LEFT_OPEN
                for c in day.doors:  # the other openings of that door around it are folded into this one
                    day.doors[c] = [(x, y) for x, y in day.doors[c] if c != cls or y <= a - PAD or x >= b + PAD]
                if "door_left_open" not in self.withhold:
                    day.doors[cls].append((a, b))
                self._incident("door_left_open", day, cls, a, b, alert="door")
        if sc.hard_shock:
            got = pick("hard_shock", timedelta(minutes=2), order,
                       ok=on_trip(timedelta(minutes=2), lambda d, t: d.driving_at(t)))
            if got is None and self.expected.skipped and self.expected.skipped[-1].startswith("hard_shock: no van"):
                self.expected.skipped.pop()  # no van drives at a free moment: take any free moment
                got = pick("hard_shock", timedelta(minutes=2), order, ok=on_trip(timedelta(minutes=2)))
            if got:
                day, t0 = got
                i = self._index_at(day, t0)
                g = round(rng.uniform(4.3, 5.8), 2)
                if "hard_shock" not in self.withhold:
                    day.shocks[i] = g
                self._incident("hard_shock", day, None, day.times[i], day.times[i], alert="shock")
        if sc.signal_loss:
            def clean_before(day: _VanDay, t0: datetime) -> bool:
                i = self._index_at(day, t0)
                if i == 0 or i >= len(day.times):
                    return False
                before = day.times[i - 1]
                return not any(day.door_open(c, before) or day.door_open(c, before - timedelta(minutes=1))
                               for c in day.spec.compartments)

            got = pick("signal_loss", SIGNAL_LOSS + timedelta(minutes=2), order,
                       ok=on_trip(SIGNAL_LOSS + timedelta(minutes=2), clean_before))
            if got:
                day, t0 = got
                i = self._index_at(day, t0)
                j = self._index_at(day, t0 + SIGNAL_LOSS)
                if j < len(day.times) and j > i:
                    day.loss = (i, j)
                    self._incident("signal_loss", day, None, day.times[i], day.times[j - 1],
                                   alert="silence" if sc.on_trips else None)
        if sc.garbage:
            self._stage_garbage(rng)
        if sc.duplicates:
            self._stage_duplicates(rng)
        self._count()

    def _index_at(self, day: _VanDay, t: datetime) -> int:
        """Index of the first sample at or after t."""
        lo, hi = 0, len(day.times)
        while lo < hi:
            mid = (lo + hi) // 2
            if day.times[mid] < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _incident(self, kind: str, day: _VanDay, cls: str | None, a: datetime, b: datetime,
                  alert: str | None) -> None:
        off = self.clock_offset
        self.expected.incidents.append(Incident(kind, day.spec.code, cls, a + off, b + off))
        if alert:
            self.expected.alerts.append(ExpectedAlert(day.spec.code, cls, alert, a + off))

    def _in_loss(self, day: _VanDay, i: int) -> bool:
        return day.loss is not None and day.loss[0] <= i < day.loss[1]

    def _stage_garbage(self, rng: random.Random) -> None:
        days = [d for d in self._days if len(d.times) > 4]
        if not days:
            self.expected.skipped.append("garbage: no van has samples")
            return
        kinds = ["not JSON", "not UTF-8", "missing field: seq", "hot"]
        for n, kind in enumerate(kinds):
            day = days[(n + rng.randrange(len(days))) % len(days)]
            for _ in range(100):
                i = rng.randrange(1, len(day.times) - 1)
                if not self._in_loss(day, i) and i != day.hot_index and i not in day.shocks:
                    break
            code, device = day.spec.code, day.spec.device
            if kind == "hot":
                day.hot_index = i
                cls = "chilled" if "chilled" in day.spec.compartments else day.spec.compartments[0]
                self._garbage.append((code, i, b"", f"value out of physical range: temp_c.{cls}=500.0"))
                continue
            if kind == "not JSON":
                payload = b'{"device":"' + device.encode() + b'","seq":}}'  # a truncated, broken object
            elif kind == "not UTF-8":
                payload = b"\xff\xfe\x00T\x00L\x00-\x00" + device.encode("utf-16-le")[:8]
            else:
                first = day.spec.compartments[0]
                payload = _dumps({"device": device, "ts": _iso(day.times[i] + self.clock_offset),
                                  "temp_c": {first: COMPARTMENT_PROFILES[first][0]}})
            self._garbage.append((code, i, payload, kind))

    def _stage_duplicates(self, rng: random.Random) -> None:
        total = sum(len(d.times) for d in self._days)
        want = max(3, total // 100)
        slots = [(d, i) for d in self._days for i in range(len(d.times))
                 if not self._in_loss(d, i) and i != d.hot_index]
        if not slots:
            return
        picked = rng.sample(slots, min(want, len(slots)))
        self._duplicated = {(d.spec.code, i) for d, i in picked}
        # the backlog is redelivered too, when there is one
        for d in self._days:
            if d.loss is not None:
                self._duplicated.add((d.spec.code, -1))

    def _count(self) -> None:
        exp = self.expected
        for day in self._days:
            n = len(day.times) - (1 if day.hot_index is not None else 0)
            exp.samples_by_vehicle[day.spec.code] = n
            exp.samples += n
        reasons = [r for _c, _i, _p, r in self._garbage]
        exp.rejects = len(reasons)
        exp.reject_reasons = sorted(reasons)
        exp.batches = sum(1 for d in self._days if d.loss is not None)
        exp.duplicates = len(self._duplicated)
        live = sum(len(d.times) - (d.loss[1] - d.loss[0] if d.loss else 0) for d in self._days)
        extra = sum(1 for _c, _i, p, _r in self._garbage if p)
        exp.messages = live + exp.batches + extra + exp.duplicates
        exp.alerts.sort(key=lambda a: (a.vehicle, a.compartment or "", a.kind))

    # -- values -----------------------------------------------------------------------------

    def _samples(self, day: _VanDay) -> list[dict[str, Any]]:
        cached = self._sample_cache.get(day.spec.code)
        if cached is None:
            cached = self._sample_cache[day.spec.code] = self._make_samples(day)
        return cached

    def valid_samples(self) -> Iterator[dict[str, Any]]:
        """Every sample a correct ingestor stores (once), as published: the 500 °C one is left out.

        Contract-shaped dicts, as `telemetry.service.reading_counts` takes them."""
        for day in self._days:
            for i, sample in enumerate(self._samples(day)):
                if i != day.hot_index:
                    yield sample

    def _make_samples(self, day: _VanDay) -> list[dict[str, Any]]:
        spec = day.spec
        rng = random.Random(f"{self.seed}:{spec.code}:values")
        seq0 = rng.randrange(1, 50_000)
        periods = {c: rng.uniform(17, 27) * 60 for c in spec.compartments}
        phases = {c: rng.uniform(0, 2 * math.pi) for c in spec.compartments}
        bump = dict.fromkeys(spec.compartments, 0.0)
        battery = rng.uniform(0.85, 0.98)
        rules = self.rules.for_cargo(spec.cargo)
        tmax, tmin = rules.temp_max_c, rules.temp_min_c
        margin = rules.temp_margin_c + 0.1
        out = []
        prev: datetime | None = None
        for i, t in enumerate(day.times):
            dt_min = 0.0 if prev is None else (t - prev).total_seconds() / 60
            prev = t
            temps: dict[str, float] = {}
            doors: dict[str, str] = {}
            for cls in spec.compartments:
                mid, amp, rate, cap = COMPARTMENT_PROFILES[cls]
                is_open = day.door_open(cls, t)
                if is_open:
                    bump[cls] = min(cap, bump[cls] + rate * dt_min)
                else:
                    bump[cls] *= math.exp(-dt_min / 4.0)
                secs = (t - self.start).total_seconds()
                value = mid + amp * math.sin(2 * math.pi * secs / periods[cls] + phases[cls])
                value += max(-0.3, min(0.3, rng.gauss(0, 0.12))) + bump[cls]
                hi = tmax.get(cls, math.inf) - margin
                lo = tmin.get(cls, -math.inf) + margin
                value = min(hi, max(lo, value))
                for icls, a, b, limit in day.temp_incidents:
                    if icls != cls:
                        continue
                    noise = max(-0.25, min(0.25, rng.gauss(0, 0.08)))
                    if a - RAMP <= t < a:
                        f = (t - (a - RAMP)) / RAMP
                        value = min(_lerp(value, limit - 0.3, f), limit - 0.3)
                    elif a <= t <= b:
                        value = limit + 0.9 + 0.35 * math.sin((t - a).total_seconds() / 240) + noise
                    elif b < t < b + RAMP:
                        f = (t - b) / RAMP
                        value = min(_lerp(limit - 0.3, value, f), limit - 0.3)
                temps[cls] = round(value, 2)
                doors[cls] = "open" if is_open else "closed"
            if day.driving_at(t):
                shock = rng.uniform(0.1, 0.8)
                if rng.random() < 0.03:
                    shock = rng.uniform(1.0, 3.0)
            else:
                shock = rng.uniform(0.0, 0.05)
            shock = day.shocks.get(i, shock)
            lat, lon = day.position(t)
            jitter = 0.00002
            lat += rng.uniform(-jitter, jitter)
            lon += rng.uniform(-jitter, jitter)
            battery = max(0.3, battery - 0.015 * dt_min / 60)
            sample: dict[str, Any] = {"device": spec.device, "seq": seq0 + i, "ts": _iso(t + self.clock_offset),
                                      "temp_c": temps, "door": doors, "shock_g": round(shock, 2),
                                      "pos": [round(lat, 6), round(lon, 6)], "battery": round(battery, 3)}
            if i == day.hot_index:
                cls = "chilled" if "chilled" in temps else next(iter(temps))
                sample["temp_c"][cls] = 500.0
            out.append(sample)
        return out

    # -- messages ---------------------------------------------------------------------------

    def _van_messages(self, day: _VanDay) -> list[Message]:
        rng = random.Random(f"{self.seed}:{day.spec.code}:network")
        topic = telemetry_topic(day.spec.code)
        samples = self._samples(day)
        msgs: list[tuple[datetime, int, Message]] = []
        tie = 0

        def add(at: datetime, payload: bytes) -> None:
            nonlocal tie
            msgs.append((at, tie, Message(at, topic, payload)))
            tie += 1

        held: list[dict[str, Any]] = []
        for i, (t, sample) in enumerate(zip(day.times, samples, strict=True)):
            at = t + timedelta(seconds=rng.uniform(0.2, 1.5))
            if self._in_loss(day, i):
                held.append(sample)
                continue
            payload = _dumps(sample)
            add(at, payload)
            if (day.spec.code, i) in self._duplicated:
                add(at + timedelta(seconds=rng.uniform(0.8, 1.6)), payload)
            if held:  # the backlog goes right after the first live sample after the loss
                backlog = _dumps(held)
                add(at + timedelta(seconds=0.3), backlog)
                if (day.spec.code, -1) in self._duplicated:
                    add(at + timedelta(seconds=2.1), backlog)
                held = []
        for code, i, payload, _reason in self._garbage:
            if code == day.spec.code and payload:
                add(day.times[i] + timedelta(seconds=rng.uniform(2, 10)), payload)
        msgs.sort(key=lambda m: (m[0], m[1]))
        return [m for _at, _tie, m in msgs]

    def messages(self) -> list[Message]:
        """Every message of the day, in publish order (computed once)."""
        if self._messages is None:
            per_van = [self._van_messages(d) for d in self._days]
            self._messages = list(heapq.merge(*per_van, key=lambda m: (m.at, m.topic)))
            assert len(self._messages) == self.expected.messages, (len(self._messages), self.expected.messages)
        return self._messages

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages())

    def __len__(self) -> int:
        return self.expected.messages


def simulate(vans: Sequence[VanSpec], start: datetime, end: datetime,
             **kwargs: Any) -> tuple[Expected, Iterator[Message]]:
    """Shortcut: ``(expected, messages)`` of a :class:`Simulation` with these arguments."""
    sim = Simulation(vans, start, end, **kwargs)
    return sim.expected, iter(sim)
