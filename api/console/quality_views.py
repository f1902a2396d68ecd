"""What the quality console's pages show, built from the services' own answers (traceability.trace,
traceability.service, telemetry.service): the worst-first order of a day's orders at risk, and the charts of a
trace's legs and of a van compartment's period. No queries of its own beyond the services'.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo

from api.console.quality_chart import Door, Limits, Shock, temperature_svg
from traceability import risk
from traceability.exports import Directory, temperatures

LEVEL_ZH = {"ok": "正常", "watch": "关注", "at_risk": "有风险", "reject": "拒收"}
CLASS_ZH = {"frozen": "冷冻舱", "chilled": "冷藏舱", "ambient": "常温舱"}
TYPE_ZH = {"received": "入库", "picked": "拣货", "loaded": "装车", "delivered": "签收", "failed": "投递失败",
           "returned": "退回", "disposed": "销毁"}


def _t(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def minutes_outside(assessed: dict) -> float:
    """Minutes the order's products spent outside their range, summed over products and legs (the figures
    traceability.risk.spoilage_risk reports)."""
    return sum(leg.get("minutes_above", 0) + leg.get("minutes_below", 0)
               for p in assessed["spoilage_risk"].get("products", ())
               for leg in (p.get("figures") or {}).get("legs", ()))


def worst_first(items: Sequence[dict]) -> list[dict]:
    """Orders at risk, worst first: the worse of the two levels, then the longer time outside the range, then
    the worse breakage level; ties by order reference (a stable page)."""
    def key(item: dict) -> tuple:
        s = risk.LEVELS.index(item["spoilage_risk"]["level"])
        b = risk.LEVELS.index(item["breakage_risk"]["level"])
        return (-max(s, b), -minutes_outside(item), -b, item["order_ref"])

    return sorted(items, key=key)


def worst_excursion(items: Sequence[dict]) -> dict | None:
    """The order whose products spent longest outside their range (then the worse spoilage level): the day's
    worst excursion, shown on top of the landing page; None when no order left its range."""
    warm = [i for i in items if minutes_outside(i) > 0]
    if not warm:
        return None
    return max(warm, key=lambda i: (minutes_outside(i), risk.LEVELS.index(i["spoilage_risk"]["level"]),
                                    i["order_ref"]))


def leg_chart(leg: dict, directory: Directory, tz: tzinfo, assessed_at: str | None = None) -> str:
    """One leg of an order's trace as an SVG chart: the allowed range of the products in it (the tightest, as
    the PDF report draws it), excursions shaded, the compartment's door openings and the hard shocks."""
    start = _t(leg["from"])
    end = _t(leg.get("to")) or _t(assessed_at) or start
    skus = [ln["sku"] for ln in leg.get("lines", ()) if ln.get("sku")]
    lo, hi = directory.band(skus)
    names = "、".join(dict.fromkeys(directory.product_name(s) for s in skus))
    title = f"{leg.get('vehicle')} {CLASS_ZH.get(leg['compartment'], leg['compartment'])}（{names}）"
    return temperature_svg(
        temperatures(leg), start=start, end=end, tz=tz, title=title,
        limits=[Limits(start, end, lo, hi, names)] if lo is not None or hi is not None else [],
        doors=[Door(_t(d["opened"]), _t(d.get("closed"))) for d in leg.get("door_openings", ())],
        shocks=[Shock(_t(s["ts"]), float(s["value"])) for s in leg.get("shocks", ())])


def history_chart(history: dict, tz: tzinfo) -> str:
    """A van compartment's period (traceability.service.compartment_history) as an SVG chart: the limits the
    rules applied then, span by span, excursions against them shaded, door openings and shocks marked."""
    cls = history["compartment"]
    limits = [Limits(s["start"], s["end"], s["min_c"], s["max_c"],
                     ("、".join(s["skus"]) if s["skus"] else f"{cls} default"))
              for s in history["limits"]]
    return temperature_svg(
        history["temperatures"], start=history["start"], end=history["end"], tz=tz, limits=limits,
        title=f"{history['vehicle']} {CLASS_ZH.get(cls, cls)}",
        doors=[Door(_t(d["opened"]), _t(d.get("closed"))) for d in history["door_openings"]],
        shocks=[Shock(at, g) for at, g in history["shocks"]])
