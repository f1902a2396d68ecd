"""Spoilage and breakage risk of an order line's journey: pure functions over plain data.

No database, HTTP or MQTT here: the trace service hands in the product's limits and, for each
interval the line spent in a compartment (a "leg"), that compartment's temperature readings and
the van's shock readings; the functions answer a level (``ok`` < ``watch`` < ``at_risk`` <
``reject``) with reasons in a quality officer's words, and the figures behind them.

Time weighting. Readings come unevenly (a van out of coverage sends a burst, the simulator
every minute, real loggers every 1-5 min), so every figure weighs a reading by the time it
stands for: a reading holds from its own time until the next one (sample-and-hold, the way
a logger's excursion time is counted), at most ``max_hold`` (default 15 min, beyond the
rules' 10-minute silence); time no reading covers is reported as unmonitored, not guessed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

LEVELS = ("ok", "watch", "at_risk", "reject")
R_J_PER_MOL_K = 8.3144
DELTA_H_J_PER_MOL = 83_144.0  # the customary default activation energy (83.144 kJ/mol; ΔH/R = 10,000 K)
KELVIN = 273.15


@dataclass(frozen=True, slots=True)
class Reading:
    at: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Leg:
    """An interval the line spent in one compartment, with what was measured there then."""

    vehicle: str
    compartment: str
    start: datetime
    end: datetime
    temperatures: Sequence[Reading] = ()
    shocks: Sequence[Reading] = ()  # the van's peak g per sample (shock sensors are per van)


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    min_c: float
    max_c: float
    shelf_life_days: float
    fragile: bool = False
    q10: float | None = None  # None: SpoilageRules.q10
    shock_limit_g: float | None = None  # None: BreakageRules' limit for fragile or normal goods
    name: str | None = None

    @property
    def storage_c(self) -> float:
        """The temperature shelf_life_days is taken to hold at: the middle of the allowed range.

        products.csv gives an allowed range, not a storage temperature; the range's middle is the
        point it is centred on, and neither bound (the upper one would call every journey at the
        limit "no ageing"). A product file with a storage temperature of its own should use it.
        """
        return (self.min_c + self.max_c) / 2


@dataclass(frozen=True, slots=True)
class Damage:
    """A driver's damage report: on this line's own order (at the door), or on another stop of the van."""

    at: datetime
    note: str
    own_order: bool = True
    order_ref: str | None = None


@dataclass(frozen=True)
class SpoilageRules:
    q10: float = 3.0  # fresh produce is commonly given 2-4 (Labuza 1982); 3 unless the product says otherwise
    delta_h: float = DELTA_H_J_PER_MOL
    max_hold: timedelta = timedelta(minutes=15)
    watch_minutes: float = 5.0  # outside the range this long: watch
    at_risk_minutes: float = 30.0
    reject_minutes: float = 120.0
    at_risk_excess_c: float = 3.0  # this far past a bound for watch_minutes or more: at risk
    shelf_watch: float = 0.02  # shelf life used beyond what the time itself uses, as a share of it
    shelf_at_risk: float = 0.10
    shelf_reject: float = 0.25
    unmonitored_watch_minutes: float = 15.0
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))


@dataclass(frozen=True)
class BreakageRules:
    normal_limit_g: float = 4.0  # the telemetry rules' shock alert
    fragile_limit_g: float = 2.5  # eggs, strawberries: a lower limit
    hard_share: float = 0.6  # a jolt of 60 % of the limit or more is a hard event
    hard_watch_count: int = 3
    reject_count: int = 3  # this many shocks at or above the limit: reject
    reject_factor: float = 2.0  # or one at twice the limit
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))


@dataclass
class Risk:
    level: str
    reasons: list[str]
    figures: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """CONTRACTS.md section 3's ``{"level", "reasons"}``, plus the figures."""
        return {"level": self.level, "reasons": self.reasons, "figures": self.figures}


class _Levels:
    """Collects (level, reason) findings; the worst level wins, reasons worst first."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def add(self, level: str, reason: str) -> None:
        self.found.append((LEVELS.index(level), reason))

    def risk(self, fallback: str, figures: dict) -> Risk:
        if not self.found:
            return Risk("ok", [fallback], figures)
        worst = max(rank for rank, _ in self.found)
        ordered = [reason for _rank, reason in sorted(self.found, key=lambda f: -f[0])]
        return Risk(LEVELS[worst], ordered, figures)


# ----------------------------------------------------------------------------- formulas


def mean_kinetic_temperature(segments: Iterable[tuple[float, float]], delta_h: float = DELTA_H_J_PER_MOL,
                             r: float = R_J_PER_MOL_K) -> float:
    """Mean kinetic temperature in °C of (duration, °C) segments.

    Haynes, J. Pharm. Sci. 60 (1971) 927, the formula of USP <1079.2>:
    ``T_mk = (ΔH/R) / -ln( Σ tᵢ·exp(-ΔH/(R·Tᵢ)) / Σ tᵢ )`` with Tᵢ in kelvin, each reading
    weighted by the time ``tᵢ`` it stands for (so unevenly spaced readings count by duration,
    not by number). Worked examples: 90 min at 4 °C then 30 min at 12 °C give 6.82 °C;
    22 h at 5 °C then 2 h at 25 °C give 9.83 °C. The exponentials are factored by the
    coldest term so that nothing underflows.
    """
    segs = [(float(t), float(c)) for t, c in segments if t > 0]
    if not segs:
        raise ValueError("no time to average over")
    k = delta_h / r
    exps = [-k / (c + KELVIN) for _t, c in segs]
    top = max(exps)
    total = sum(t for t, _c in segs)
    mean = sum(t * math.exp(e - top) for (t, _c), e in zip(segs, exps, strict=True)) / total
    return k / -(top + math.log(mean)) - KELVIN


def q10_equivalent_hours(segments: Iterable[tuple[float, float]], storage_c: float, q10: float) -> float:
    """Hours at ``storage_c`` that age a product as much as these (hours, °C) segments.

    The Q10 model (Labuza, *Shelf-life dating of foods*, 1982): a reaction's rate is multiplied
    by Q10 for each 10 °C, so an hour at T ages like ``Q10 ** ((T - T_storage) / 10)`` hours at
    the storage temperature. Shelf life used is this against ``shelf_life_days × 24``.
    """
    return sum(hours * q10 ** ((c - storage_c) / 10.0) for hours, c in segments)


def held_segments(readings: Sequence[Reading], start: datetime, end: datetime,
                  max_hold: timedelta) -> tuple[list[tuple[datetime, datetime, Reading]], float]:
    """The interval [start, end) cut into (from, to, reading) pieces, each reading holding until the
    next (at most ``max_hold``); and the minutes no reading covers. A reading just before ``start``
    covers the start; before the first reading inside, that reading covers back up to ``max_hold``."""
    ordered = sorted(readings, key=lambda r: r.at)
    before = [r for r in ordered if r.at <= start]
    inside = [r for r in ordered if start < r.at < end]
    pieces: list[tuple[datetime, datetime, Reading]] = []
    if not before and inside and inside[0].at - start <= max_hold:
        pieces.append((start, inside[0].at, inside[0]))
    seq = before[-1:] + inside
    for i, r in enumerate(seq):
        begin = max(r.at, start)
        stop = min(seq[i + 1].at if i + 1 < len(seq) else end, r.at + max_hold, end)
        if stop > begin:
            pieces.append((begin, stop, r))
    covered = sum((b - a).total_seconds() for a, b, _r in pieces)
    return pieces, max((end - start).total_seconds() - covered, 0.0) / 60.0


# ----------------------------------------------------------------------------- spoilage


def _c(value: float) -> str:
    return f"{value:g}"


def _hm(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%H:%M")


def spoilage_risk(product: Product, legs: Sequence[Leg], rules: SpoilageRules | None = None,
                  days_left: float | None = None) -> Risk:
    """Minutes outside the product's range and the worst excursion per leg, the journey's mean kinetic
    temperature and the shelf life it used (Q10), as a level with reasons.

    ``days_left``: the lot's shelf life left when the journey began, if known (a journey that
    uses more than that is a reject).
    """
    rules = rules or SpoilageRules()
    found = _Levels()
    all_segments: list[tuple[float, float]] = []  # (minutes, °C)
    legs_out = []
    for leg in legs:
        pieces, unmonitored = held_segments(leg.temperatures, leg.start, leg.end, rules.max_hold)
        where = f"{leg.vehicle}'s {leg.compartment} compartment"
        above = sum((b - a).total_seconds() for a, b, r in pieces if r.value > product.max_c) / 60
        below = sum((b - a).total_seconds() for a, b, r in pieces if r.value < product.min_c) / 60
        hot = max((r for _a, _b, r in pieces), key=lambda r: r.value, default=None)
        cold = min((r for _a, _b, r in pieces), key=lambda r: r.value, default=None)
        all_segments += [((b - a).total_seconds() / 60, r.value) for a, b, r in pieces]
        legs_out.append({"vehicle": leg.vehicle, "compartment": leg.compartment, "minutes_above": round(above, 1),
                         "minutes_below": round(below, 1), "unmonitored_minutes": round(unmonitored, 1),
                         "max_c": hot.value if hot else None, "min_c": cold.value if cold else None})
        sides = ((above, hot, "above", product.max_c), (below, cold, "below", product.min_c))
        for minutes, worst, side, bound in sides:
            if minutes <= 0 or worst is None:
                continue
            excess = abs(worst.value - bound)
            reason = (f"{minutes:.0f} min {side} {_c(bound)} °C ({'max' if side == 'above' else 'min'} "
                      f"{worst.value:.1f} °C at {_hm(worst.at, rules.tz)}) in {where}")
            if minutes >= rules.reject_minutes:
                found.add("reject", reason)
            elif minutes >= rules.at_risk_minutes or (minutes >= rules.watch_minutes
                                                       and excess >= rules.at_risk_excess_c):
                found.add("at_risk", reason)
            elif minutes >= rules.watch_minutes:
                found.add("watch", reason)
        if unmonitored >= rules.unmonitored_watch_minutes:
            found.add("watch", f"no temperature reading for {unmonitored:.0f} min in {where}")

    figures: dict = {"legs": legs_out, "storage_c": product.storage_c}
    hours = sum(m for m, _c in all_segments) / 60
    if not all_segments:
        if legs:
            found.add("watch", "no temperature readings for the time aboard")
        return found.risk("not yet aboard a van: nothing to assess", figures)
    mkt = mean_kinetic_temperature(all_segments, rules.delta_h)
    q10 = product.q10 or rules.q10
    equivalent = q10_equivalent_hours([(m / 60, c) for m, c in all_segments], product.storage_c, q10)
    shelf_hours = product.shelf_life_days * 24
    used = equivalent / shelf_hours if shelf_hours > 0 else math.inf
    excess = (equivalent - hours) / shelf_hours if shelf_hours > 0 else math.inf
    figures.update(hours_monitored=round(hours, 2), mkt_c=round(mkt, 2), q10=q10,
                   equivalent_hours=round(equivalent, 2), shelf_life_used=round(used, 4),
                   shelf_life_excess=round(excess, 4))
    if mkt > product.max_c:
        found.add("at_risk", f"mean kinetic temperature {mkt:.1f} °C over {hours:.1f} h aboard, above the "
                             f"{_c(product.max_c)} °C limit")
    shelf = (f"aged as much as {equivalent:.1f} h at {_c(product.storage_c)} °C in {hours:.1f} h aboard: "
             f"{used:.1%} of its {_c(product.shelf_life_days)}-day shelf life, {excess:.1%} more than kept at "
             f"{_c(product.storage_c)} °C (Q10 {q10:g})")
    if days_left is not None and equivalent / 24 > days_left:
        found.add("reject", f"{shelf}; the lot had only {days_left:.1f} days left")
    elif excess >= rules.shelf_reject:
        found.add("reject", shelf)
    elif excess >= rules.shelf_at_risk:
        found.add("at_risk", shelf)
    elif excess >= rules.shelf_watch:
        found.add("watch", shelf)
    return found.risk(f"kept within {_c(product.min_c)}–{_c(product.max_c)} °C for {hours:.1f} h aboard "
                      f"(mean kinetic temperature {mkt:.1f} °C)", figures)


# ----------------------------------------------------------------------------- breakage


def shock_limit(product: Product, rules: BreakageRules) -> float:
    if product.shock_limit_g is not None:
        return product.shock_limit_g
    return rules.fragile_limit_g if product.fragile else rules.normal_limit_g


def breakage_risk(product: Product, legs: Sequence[Leg], damage: Sequence[Damage] = (),
                  rules: BreakageRules | None = None) -> Risk:
    """Shocks at or above the product's limit while the line was aboard, hard jolts below it, and
    drivers' damage reports, as a level with reasons."""
    rules = rules or BreakageRules()
    limit = shock_limit(product, rules)
    hard = limit * rules.hard_share
    kind = "fragile goods" if product.fragile and product.shock_limit_g is None else product.sku
    found = _Levels()
    figures: dict = {"limit_g": limit, "legs": []}
    for leg in legs:
        aboard = [s for s in leg.shocks if leg.start <= s.at <= leg.end]
        over = [s for s in aboard if s.value >= limit]
        jolts = [s for s in aboard if hard <= s.value < limit]
        figures["legs"].append({"vehicle": leg.vehicle, "shocks_over_limit": len(over), "hard_jolts": len(jolts),
                                "max_g": max((s.value for s in aboard), default=None)})
        if over:
            peak = max(over, key=lambda s: s.value)
            reason = (f"{len(over)} shock{'s' if len(over) > 1 else ''} at or above the {_c(limit)} g limit for "
                      f"{kind} while aboard {leg.vehicle} (max {peak.value:.1f} g at {_hm(peak.at, rules.tz)})")
            severe = len(over) >= rules.reject_count or peak.value >= rules.reject_factor * limit
            found.add("reject" if severe else "at_risk", reason)
        if len(jolts) >= rules.hard_watch_count:
            found.add("watch", f"{len(jolts)} hard jolts of {_c(round(hard, 1))}–{_c(limit)} g on {leg.vehicle} "
                               "while aboard")
    for d in damage:
        when = _hm(d.at, rules.tz)
        if d.own_order:
            found.add("reject", f"driver reported damage at the door at {when}: “{d.note}”")
        else:
            found.add("watch", f"damage reported on the same van at {when}"
                               f"{f' (order {d.order_ref})' if d.order_ref else ''}: “{d.note}”")
    return found.risk(f"no shock at or above the {_c(limit)} g limit while aboard, no damage reported", figures)
