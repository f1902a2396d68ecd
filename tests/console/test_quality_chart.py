"""The quality console's temperature chart (api/console/quality_chart.py, pure) and the compartment history
behind the van page (traceability.service.compartment_history: readings, doors, limits in force from custody)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from xml.etree import ElementTree

from api.console.quality_chart import Door, Limits, Shock, find_excursions, temperature_svg
from core.settings import get_settings
from tests.support import local
from tests.traceability.helpers import VAN, WARM_C, drive_day
from traceability.service import compartment_history

SVG = "{http://www.w3.org/2000/svg}"


def _classes(svg: str, cls: str) -> list[ElementTree.Element]:
    root = ElementTree.fromstring(svg)  # well-formed XML, or this raises
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def test_chart_shades_excursions_per_span_of_limits_and_marks_doors_and_shocks() -> None:
    tz = get_settings().tz
    start = local("08:00")
    readings = [(start + timedelta(minutes=i), 9.0 if 60 <= i < 90 else 5.0) for i in range(240)]
    # 4 °C from 10:00 (strawberries loaded): 5 °C is an excursion from then on, 9 °C only above 8 before
    limits = [Limits(start, start + timedelta(hours=2), 0.0, 8.0, "chilled default"),
              Limits(start + timedelta(hours=2), start + timedelta(hours=4), 0.0, 4.0, "STRAWBERRY-500G 草莓")]
    svg = temperature_svg(readings, start=start, end=start + timedelta(hours=4), limits=limits,
                          doors=[Door(start + timedelta(minutes=30), start + timedelta(minutes=32))],
                          shocks=[Shock(start + timedelta(minutes=100), 4.6)], tz=tz, title="VAN-01 冷藏舱 <&>")
    runs = _classes(svg, "excursion")
    assert [r.get("data-minutes") for r in runs] == ["30", "120"], svg
    assert len(_classes(svg, "limit-high")) == 2 and len(_classes(svg, "limit-low")) == 2
    assert len(_classes(svg, "door")) == 1 and len(_classes(svg, "shock")) == 1
    assert "冷藏舱 &lt;&amp;&gt;" in svg and "草莓" in svg
    ticks = re.findall(r">(\d\d:\d\d)</text>", svg)
    assert ticks == ["09:00", "10:00", "11:00"], ticks  # local time, on the hour


def test_chart_without_readings_says_so_and_long_periods_are_thinned() -> None:
    tz = get_settings().tz
    start = local("00:00")
    empty = temperature_svg([], start=start, end=start + timedelta(hours=1), tz=tz)
    assert _classes(empty, "empty") and not _classes(empty, "temp")
    week = [(start + timedelta(minutes=i), 4.0 + (i % 7)) for i in range(7 * 24 * 60)]
    svg = temperature_svg(week, start=start, end=start + timedelta(days=7), tz=tz)
    points = sum(len(p.get("points").split()) for p in _classes(svg, "temp"))
    assert points <= 2 * 760, points
    assert len(svg) < 100_000
    assert find_excursions(week, [Limits(start, start + timedelta(days=7), None, 9.5)], start + timedelta(days=7))


def test_compartment_history_has_the_warm_interval_and_the_cargo_limits(session, tmp_path: Path) -> None:  # noqa: ANN001
    d = drive_day(session, tmp_path)
    start, end = d.leave - timedelta(hours=1), d.leave + timedelta(hours=5)
    got = compartment_history(session, VAN, "chilled", start, end)
    assert len(got["temperatures"]) == 360
    assert max(v for _t, v in got["temperatures"]) == WARM_C
    assert len(got["door_openings"]) == len(d.refs)
    spans = got["limits"]
    # nothing aboard before the van is loaded: the class default; then the products' tightest range
    assert spans[0]["start"] == start and spans[0]["skus"] == [] and spans[0]["max_c"] == 8.0
    loaded = [s for s in spans if s["skus"]]
    assert loaded and loaded[0]["start"] == d.leave
    assert all(s["max_c"] <= 8.0 for s in loaded)
    assert spans[-1]["end"] == end
    runs = find_excursions(got["temperatures"], [Limits(s["start"], s["end"], s["min_c"], s["max_c"])
                                                 for s in spans], end)
    assert any(r["from"] == d.warm_from and r["to"] == d.warm_to for r in runs), runs
    assert [a.kind for a in got["alerts"]] == ["temperature"]


def test_worst_first_and_lot_legs_on_a_driven_day(session, tmp_path: Path) -> None:  # noqa: ANN001
    from sqlalchemy import select

    from api.console.quality_views import minutes_outside, worst_first
    from traceability.models import CustodyEvent
    from traceability.risk import LEVELS
    from traceability.service import lot_legs
    from traceability.trace import at_risk

    d = drive_day(session, tmp_path)
    items, _more = at_risk(session, d.day, limit=100)
    ranked = worst_first(items)
    assert ranked[0]["order_ref"] == d.refs[-1], [i["order_ref"] for i in ranked]  # 30 min at 9 °C
    assert minutes_outside(ranked[0]) >= 30
    worst = [max(LEVELS.index(i["spoilage_risk"]["level"]), LEVELS.index(i["breakage_risk"]["level"])) for i in ranked]
    assert worst == sorted(worst, reverse=True)
    lot = session.scalars(select(CustodyEvent.lot).where(CustodyEvent.type == "loaded",
                                                         CustodyEvent.compartment == "chilled")).first()
    legs = lot_legs(session, lot)
    assert legs and legs[0]["vehicle"] == VAN and legs[0]["start"] == d.leave and legs[0]["end"] is not None
    assert legs[0]["qty"] == sum(e.qty for e in session.scalars(
        select(CustodyEvent).where(CustodyEvent.lot == lot, CustodyEvent.type == "loaded")))
