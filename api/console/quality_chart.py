"""A compartment's temperature over time as an inline SVG: the limits in force drawn, excursions shaded, door
openings and shocks marked. Pure: plain data in, SVG text out (no database, no HTTP).

Server-rendered SVG needs no third-party JavaScript, draws in any browser (a phone included), scales with its
container (viewBox), prints, and can be checked in a test by its elements: ``rect.excursion`` per run outside
the limits, ``path.limit`` per bound, ``line.door`` per door opening, ``path.shock`` per shock. Text is set in
the page's font stack (Chinese included); every mark has a ``<title>`` (a tooltip on hover or long press).

Excursions are found by traceability.exports.excursions (the same sample-and-hold runs the PDF report shades),
separately inside each span of constant limits, so a limit that tightens mid-period (strawberries loaded)
shades from then on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from xml.sax.saxutils import escape, quoteattr

from traceability.exports import excursions

GAP = timedelta(minutes=15)  # a reading holds at most this long (traceability.risk's max_hold): a gap breaks the line


@dataclass(frozen=True, slots=True)
class Limits:
    """The allowed range over [start, end): ``lo``/``hi`` None where there is no bound; ``why`` names who set it."""

    start: datetime
    end: datetime
    lo: float | None
    hi: float | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Door:
    opened: datetime
    closed: datetime | None  # None: still open at the end of the period


@dataclass(frozen=True, slots=True)
class Shock:
    at: datetime
    g: float


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def find_excursions(readings: Sequence[tuple[datetime, float]], limits: Sequence[Limits],
                    end: datetime) -> list[dict]:
    """Runs outside the limits in force: traceability.exports.excursions inside each span of constant limits."""
    runs: list[dict] = []
    for span in limits:
        inside = [(t, v) for t, v in readings if span.start <= t < span.end]
        if inside:
            runs += [{**run, "why": span.why}
                     for run in excursions(inside, (span.lo, span.hi), end=min(span.end, end))]
    return runs


def _ticks(start: datetime, end: datetime, tz: tzinfo, count: int = 6) -> list[tuple[datetime, str]]:
    """About ``count`` round local times between start and end, labelled HH:MM (with the date over a day)."""
    span = (end - start).total_seconds()
    steps = [60 * m for m in (5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 10080)]
    step = next((s for s in steps if span / s <= count), steps[-1])
    local = start.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight + timedelta(seconds=((local - midnight).total_seconds() // step + 1) * step)
    fmt = "%m-%d %H:%M" if span > 86400 else "%H:%M"
    out, t = [], first
    while t < end.astimezone(tz):
        out.append((t, t.strftime(fmt)))
        t += timedelta(seconds=step)
    return out


def _thin(points: Sequence[tuple[datetime, float]], columns: int) -> list[tuple[datetime, float]]:
    """At most about 2 points per pixel column (each column's minimum and maximum, in time order): a week of
    minute readings still draws fast and no peak is lost."""
    if len(points) <= 2 * columns:
        return list(points)
    t0, t1 = points[0][0], points[-1][0]
    width = (t1 - t0).total_seconds() / columns or 1.0
    out: list[tuple[datetime, float]] = []
    bucket: list[tuple[datetime, float]] = []
    index = 0
    for p in points:
        i = int((p[0] - t0).total_seconds() / width)
        if i != index and bucket:
            lo, hi = min(bucket, key=lambda x: x[1]), max(bucket, key=lambda x: x[1])
            out += sorted({lo, hi})
            bucket = []
        index = i
        bucket.append(p)
    if bucket:
        lo, hi = min(bucket, key=lambda x: x[1]), max(bucket, key=lambda x: x[1])
        out += sorted({lo, hi})
    return out


def temperature_svg(readings: Sequence[tuple[datetime, float]], *, start: datetime, end: datetime,
                    limits: Sequence[Limits] = (), doors: Sequence[Door] = (), shocks: Sequence[Shock] = (),
                    tz: tzinfo, title: str = "", width: int = 760, height: int = 280,
                    labels: dict[str, str] | None = None) -> str:
    """The chart as an ``<svg>`` element. ``readings``: (time, °C) of one compartment in [start, end), any order;
    ``limits``: the allowed range per span; ``labels``: the words on the chart (defaults in Chinese and English)."""
    words = {"temp": "温度 Temperature", "allowed": "允许范围 Allowed", "excursion": "超温 Excursion",
             "door": "门开 Door open", "shock": "震动 Shock", "none": "此期间没有温度读数 No temperature readings",
             **(labels or {})}
    readings = sorted(readings)
    if end <= start:
        end = start + timedelta(minutes=1)
    left, right, top, bottom = 46, 12, 26 if title else 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _t, v in readings]
    bounds = [b for span in limits for b in (span.lo, span.hi) if b is not None]
    lo_v = min(values + bounds, default=0.0)
    hi_v = max(values + bounds, default=10.0)
    pad = max((hi_v - lo_v) * 0.08, 1.0)
    lo_v, hi_v = lo_v - pad, hi_v + pad
    total = (end - start).total_seconds()

    def x(t: datetime) -> float:
        return left + max(0.0, min(1.0, (t - start).total_seconds() / total)) * plot_w

    def y(v: float) -> float:
        return top + (1 - (v - lo_v) / (hi_v - lo_v)) * plot_h

    def hm(t: datetime) -> str:
        return t.astimezone(tz).strftime("%m-%d %H:%M")

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="temp-chart" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label={quoteattr(title or words["temp"])} preserveAspectRatio="xMidYMid meet">']
    if title:
        out.append(f'<text class="title" x="{left}" y="16" font-size="13">{escape(title)}</text>')
    out.append(f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
               f'stroke="#bbb"/>')
    # the allowed band per span of constant limits, and each bound as a dashed line
    for span in limits:
        a, b = x(max(span.start, start)), x(min(span.end, end))
        if b <= a:
            continue
        band_top = y(span.hi) if span.hi is not None else top
        band_bottom = y(span.lo) if span.lo is not None else top + plot_h
        tip = escape(f"{words['allowed']} {_num(span.lo)} … {_num(span.hi)} °C {span.why}".strip())
        out.append(f'<rect class="band" x="{a:.1f}" y="{band_top:.1f}" width="{b - a:.1f}" '
                   f'height="{max(band_bottom - band_top, 0):.1f}" fill="#2e7d32" fill-opacity="0.10">'
                   f'<title>{tip}</title></rect>')
        for side, bound in (("high", span.hi), ("low", span.lo)):
            if bound is not None:
                out.append(f'<path class="limit limit-{side}" d="M{a:.1f},{y(bound):.1f}H{b:.1f}" stroke="#2e7d32" '
                           f'stroke-dasharray="5 3" fill="none"><title>{escape(f"{_num(bound)} °C {span.why}")}'
                           f'</title></path>')
    # excursions: shaded from the first reading outside to the next one inside
    runs = find_excursions(readings, limits, end)
    for run in runs:
        a, b = x(run["from"]), x(run["to"])
        word = "高于" if run["side"] == "above" else "低于"
        tip = (f"{words['excursion']} {hm(run['from'])}–{run['to'].astimezone(tz):%H:%M}, {run['minutes']:.0f} min "
               f"{word} {_num(run['bound'])} °C, peak {run['peak']:.1f} °C")
        out.append(f'<rect class="excursion" data-side="{run["side"]}" data-minutes="{run["minutes"]:.0f}" '
                   f'x="{a:.1f}" y="{top}" width="{max(b - a, 1.5):.1f}" height="{plot_h}" fill="#c62828" '
                   f'fill-opacity="0.22"><title>{escape(tip)}</title></rect>')
    # axes: y every few degrees, x at round local times
    span_v = hi_v - lo_v
    step_v = next(s for s in (0.5, 1, 2, 5, 10, 20, 50, 100) if span_v / s <= 7)
    v = (lo_v // step_v + 1) * step_v
    while v < hi_v:
        out.append(f'<path class="grid" d="M{left},{y(v):.1f}H{left + plot_w}" stroke="#e0e0e0"/>'
                   f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:g}</text>')
        v += step_v
    out.append(f'<text x="4" y="{top + 10}" font-size="11">°C</text>')
    for t, label in _ticks(start, end, tz):
        out.append(f'<path class="grid" d="M{x(t):.1f},{top}V{top + plot_h}" stroke="#eee"/>'
                   f'<text x="{x(t):.1f}" y="{top + plot_h + 15}" font-size="11" text-anchor="middle">'
                   f'{escape(label)}</text>')
    # the temperature, broken where no reading covers the time
    pieces: list[list[tuple[datetime, float]]] = []
    for point in _thin(readings, plot_w):
        if pieces and point[0] - pieces[-1][-1][0] <= GAP:
            pieces[-1].append(point)
        else:
            pieces.append([point])
    for piece in pieces:
        d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in piece)
        if len(piece) == 1:
            out.append(f'<circle class="temp" cx="{x(piece[0][0]):.1f}" cy="{y(piece[0][1]):.1f}" r="2" '
                       f'fill="#1565c0"/>')
        else:
            out.append(f'<polyline class="temp" points="{d}" fill="none" stroke="#1565c0" stroke-width="1.5"/>')
    if not readings:
        out.append(f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" font-size="13" '
                   f'text-anchor="middle">{escape(words["none"])}</text>')
    for door in doors:
        a = x(door.opened)
        b = x(door.closed) if door.closed is not None else x(end)
        closed = f"{door.closed.astimezone(tz):%H:%M}" if door.closed else "…"
        out.append(f'<line class="door" x1="{a:.1f}" x2="{a:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#ef6c00" '
                   f'stroke-dasharray="3 2"><title>{escape(words["door"])} {hm(door.opened)}–{closed}</title></line>'
                   f'<rect class="door-open" x="{a:.1f}" y="{top}" width="{max(b - a, 1):.1f}" height="6" '
                   f'fill="#ef6c00"/>')
    for shock in shocks:
        a = x(shock.at)
        base = top + plot_h
        out.append(f'<path class="shock" d="M{a - 5:.1f},{base + 12}L{a + 5:.1f},{base + 12}L{a:.1f},{base + 3}Z" '
                   f'fill="#6a1b9a"><title>{escape(words["shock"])} {shock.g:.1f} g {hm(shock.at)}</title></path>')
    # legend
    lx, ly = left, height - 8
    items = [("#1565c0", words["temp"]), ("#2e7d32", words["allowed"]), ("#c62828", words["excursion"]),
             ("#ef6c00", words["door"]), ("#6a1b9a", words["shock"])]
    for colour, label in items:
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{lx + 14}" y="{ly}" font-size="11">{escape(label)}</text>')
        lx += 14 + 7 * len(label) + 14
    out.append("</svg>")
    return "".join(out)
