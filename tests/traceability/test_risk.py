"""Spoilage and breakage risk (traceability/risk.py): the formulas against worked examples and
hand calculations, the time weighting of uneven readings, and the level thresholds."""

from __future__ import annotations

from datetime import datetime, time, timedelta

import pytest

from core.settings import get_settings
from core.timeutil import local_tomorrow
from traceability.risk import (
    BreakageRules,
    Damage,
    Leg,
    Product,
    Reading,
    SpoilageRules,
    breakage_risk,
    held_segments,
    mean_kinetic_temperature,
    q10_equivalent_hours,
    spoilage_risk,
)

STRAWBERRY = Product("STRAW-1", min_c=0, max_c=4, shelf_life_days=4, fragile=True)
MILK = Product("MILK-1L", min_c=0, max_c=8, shelf_life_days=7)


def start() -> datetime:
    return datetime.combine(local_tomorrow(), time(8, 0), tzinfo=get_settings().tz)


def leg(profile: list[tuple[int, float]], every: int = 1, shocks: list[tuple[int, float]] = ()) -> Leg:
    """A leg from (minutes, °C) pieces, one reading every `every` minutes; shocks at (minute, g)."""
    t0 = start()
    readings, minute = [], 0
    for minutes, value in profile:
        for m in range(0, minutes, every):
            readings.append(Reading(t0 + timedelta(minutes=minute + m), value))
        minute += minutes
    return Leg("VAN-03", "chilled", t0, t0 + timedelta(minutes=minute), readings,
               [Reading(t0 + timedelta(minutes=m), g) for m, g in shocks])


# ----------------------------------------------------------------------------- formulas


def test_mean_kinetic_temperature_worked_examples() -> None:
    assert round(mean_kinetic_temperature([(90, 4.0), (30, 12.0)]), 2) == 6.82
    assert round(mean_kinetic_temperature([(22 * 60, 5.0), (2 * 60, 25.0)]), 2) == 9.83
    assert mean_kinetic_temperature([(60, 3.0)]) == pytest.approx(3.0)  # one temperature is its own MKT
    with pytest.raises(ValueError):
        mean_kinetic_temperature([])


def test_q10_example_computed_by_hand() -> None:
    """Strawberries, 0-4 °C, 4-day shelf life: storage temperature 2 °C (the middle of the range), Q10 = 3.

    1 h at 2 °C ages like 1 h at 2 °C. 1 h at 12 °C is 10 °C warmer: the rate is 3 ** (10 / 10) = 3,
    so it ages like 3 h. Together 4 h of the 4 × 24 = 96 h shelf life: 4 / 96 = 4.17 % used,
    of which (4 - 2) / 96 = 2.08 % beyond what the 2 h themselves use.
    """
    assert STRAWBERRY.storage_c == 2.0
    assert q10_equivalent_hours([(1, 2.0), (1, 12.0)], 2.0, 3.0) == pytest.approx(4.0)
    risk = spoilage_risk(STRAWBERRY, [leg([(60, 2.0), (60, 12.0)])],
                         SpoilageRules(at_risk_minutes=1e9, reject_minutes=1e9, at_risk_excess_c=1e9))
    assert risk.figures["equivalent_hours"] == pytest.approx(4.0)
    assert risk.figures["shelf_life_used"] == pytest.approx(4 / 96, abs=1e-4)
    assert risk.figures["shelf_life_excess"] == pytest.approx(2 / 96, abs=1e-4)
    assert any("4.2% of its 4-day shelf life" in r for r in risk.reasons)


def test_uneven_spacing_is_weighted_by_time_not_by_count() -> None:
    """Readings at 0, 10 and 90 min (4 °C, 4 °C, 12 °C) over 120 min: 90 min at 4 °C then 30 at 12 °C,
    as the worked example (6.82 °C). Counting readings alone would give two thirds of the weight to 4 °C."""
    t0 = start()
    readings = [Reading(t0, 4.0), Reading(t0 + timedelta(minutes=10), 4.0), Reading(t0 + timedelta(minutes=90), 12.0)]
    the_leg = Leg("VAN-03", "chilled", t0, t0 + timedelta(minutes=120), readings)
    rules = SpoilageRules(max_hold=timedelta(hours=2))
    pieces, unmonitored = held_segments(readings, the_leg.start, the_leg.end, rules.max_hold)
    assert [((b - a).total_seconds() / 60, r.value) for a, b, r in pieces] == [(10, 4.0), (80, 4.0), (30, 12.0)]
    assert unmonitored == 0
    risk = spoilage_risk(MILK, [the_leg], rules)
    assert risk.figures["mkt_c"] == 6.82
    by_count = mean_kinetic_temperature([(1, 4.0), (1, 4.0), (1, 12.0)])
    assert round(by_count, 2) != 6.82
    # with the default 15-minute hold, the 80 minutes without a reading are unmonitored, not assumed
    pieces, unmonitored = held_segments(readings, the_leg.start, the_leg.end, timedelta(minutes=15))
    assert unmonitored == pytest.approx(120 - 10 - 15 - 15)
    assert "no temperature reading for 80 min in VAN-03's chilled compartment" in spoilage_risk(MILK, [the_leg]).reasons


# ----------------------------------------------------------------------------- levels


@pytest.mark.parametrize(("profile", "level"), [
    ([(180, 2.0)], "ok"),
    ([(60, 2.0), (4, 5.0), (60, 2.0)], "ok"),  # 4 min outside: under the 5-minute watch
    ([(60, 2.0), (10, 5.0), (60, 2.0)], "watch"),
    ([(60, 2.0), (6, 7.5), (60, 2.0)], "at_risk"),  # short, but 3.5 °C over the limit
    ([(60, 2.0), (40, 6.0), (60, 2.0)], "at_risk"),
    ([(30, 2.0), (150, 6.0)], "reject"),
])
def test_spoilage_levels(profile, level) -> None:  # noqa: ANN001
    risk = spoilage_risk(STRAWBERRY, [leg(profile)])
    assert risk.level == level, risk.reasons


def test_spoilage_reasons_read_like_a_quality_officer_writes() -> None:
    risk = spoilage_risk(STRAWBERRY, [leg([(60, 2.0), (40, 6.0), (2, 9.1), (60, 2.0)])])
    assert risk.level == "at_risk"
    assert risk.reasons[0] == "42 min above 4 °C (max 9.1 °C at 09:40) in VAN-03's chilled compartment"
    cold = spoilage_risk(MILK, [leg([(60, 2.0), (45, -1.5), (60, 2.0)])])
    assert cold.reasons[0].startswith("45 min below 0 °C (min -1.5 °C at 09:00)")
    fine = spoilage_risk(MILK, [leg([(120, 4.0)])])
    assert fine.level == "ok" and fine.reasons[0].startswith("kept within 0–8 °C for 2.0 h aboard")


def test_shelf_life_and_the_lot_s_remaining_days() -> None:
    # 3 h at 12 °C for strawberries: like 3 * 3 = 9 h at 2 °C, 6 h more: 6/96 = 6.25 % -> watch by shelf life
    rules = SpoilageRules(at_risk_minutes=1e9, reject_minutes=1e9, at_risk_excess_c=1e9, watch_minutes=1e9)
    risk = spoilage_risk(STRAWBERRY, [leg([(180, 12.0)])], rules)
    assert risk.figures["equivalent_hours"] == pytest.approx(9.0)
    assert risk.figures["shelf_life_excess"] == pytest.approx(6 / 96, abs=1e-4)
    shelf = next(r for r in risk.reasons if r.startswith("aged as much as 9.0 h at 2 °C in 3.0 h aboard"))
    assert "6.2% more than kept at 2 °C" in shelf
    assert risk.level == "at_risk"  # the MKT (12 °C) is above the 4 °C limit
    assert spoilage_risk(STRAWBERRY, [leg([(180, 12.0)])], rules, days_left=0.25).level == "reject"


def test_breakage_levels_and_reasons() -> None:
    eggs = Product("EGG-30", 0, 8, 21, fragile=True)
    # fragile: 3.0 g is over the 2.5 g limit
    risk = breakage_risk(eggs, [leg([(120, 4.0)], shocks=[(40, 3.0)])])
    assert risk.level == "at_risk"
    assert risk.reasons == ["1 shock at or above the 2.5 g limit for fragile goods while aboard VAN-03 "
                            "(max 3.0 g at 08:40)"]
    # the same shock is a hard jolt for milk (limit 4 g), and one jolt is no finding
    assert breakage_risk(MILK, [leg([(120, 4.0)], shocks=[(40, 3.0)])]).level == "ok"
    assert breakage_risk(MILK, [leg([(120, 4.0)], shocks=[(10, 3.0), (20, 2.6), (30, 3.9)])]).level == "watch"
    # twice the limit, or three shocks over it: reject
    assert breakage_risk(eggs, [leg([(120, 4.0)], shocks=[(40, 5.0)])]).level == "reject"
    assert breakage_risk(eggs, [leg([(120, 4.0)], shocks=[(10, 2.6), (20, 2.7), (30, 2.6)])]).level == "reject"
    # shocks outside the time aboard do not count
    assert breakage_risk(eggs, [leg([(60, 4.0)], shocks=[(90, 9.0)])]).level == "ok"
    # a limit set per product, and configurable rules
    assert breakage_risk(Product("VASE", 0, 30, 999, shock_limit_g=1.0), [leg([(60, 4.0)], shocks=[(5, 1.2)])]
                         ).level == "at_risk"
    assert breakage_risk(eggs, [leg([(60, 4.0)], shocks=[(5, 3.0)])], rules=BreakageRules(fragile_limit_g=3.5)
                         ).level == "ok"


def test_damage_reported_by_drivers() -> None:
    at = start() + timedelta(hours=2)
    own = breakage_risk(MILK, [leg([(60, 4.0)])], [Damage(at, "carton split")])
    assert own.level == "reject" and own.reasons == ["driver reported damage at the door at 10:00: “carton split”"]
    other = breakage_risk(MILK, [leg([(60, 4.0)])], [Damage(at, "eggs cracked", own_order=False, order_ref="B7")])
    assert other.level == "watch" and "(order B7)" in other.reasons[0]
