"""The quality console (/console/quality): orders at risk worst first, alerts to acknowledge, rejected telemetry,
a van compartment's temperatures over a period, an order's and a lot's trace with charts and exports, and quality
holds. For quality staff (admin passes every role check).

Thin: every page calls the use cases the API calls (traceability.trace, traceability.service, telemetry.service,
traceability.exports) with the console's session user as the actor; forms are CSRF-checked by the console's base
and answer 303 to a page that says what happened. Errors of the use cases (404, 409, 422) come back as the
console's plain error pages or, for a form, as the page with the reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from api.console.quality_chart import Door, Limits, Shock, temperature_svg
from api.console.quality_views import (
    CLASS_ZH,
    LEVEL_ZH,
    TYPE_ZH,
    history_chart,
    leg_chart,
    minutes_outside,
    worst_excursion,
    worst_first,
)
from api.console.web import ConsoleUser, check_csrf, console_user
from api.console.web import page as render
from api.deps import SessionDep
from api.pagination import After, Code, page
from core.errors import Invalid, NotFound
from core.settings import get_settings
from core.timeutil import local_datetime, local_today, to_local, utcnow
from fulfillment.models import Order
from telemetry.models import Alert, TelemetryReject
from telemetry.service import acknowledge_alert, alert_view, alerts_query, reject_view, rejects_query
from traceability.exports import directory_for, export_lot, export_order
from traceability.service import compartment_history, hold_lot, holds_query, lot_legs, release_lot
from traceability.trace import assess_orders, at_risk, hold_view, lot_trace, order_trace
from warehouses.models import Compartment, LotHold, Node, Vehicle

router = APIRouter(prefix="/quality")
Staff = Annotated[ConsoleUser, console_user("quality")]
CSRF = [Depends(check_csrf)]

MAX_DAYS = 14  # a van compartment's chart covers at most this long (about 20,000 readings at one a minute)
AT_RISK_SHOWN = 500  # the day's orders at risk listed at most (worst first)
PAGE = 50
_CLASSES = ("frozen", "chilled", "ambient")


def _when(value: str | datetime | None) -> str:
    """A time as the business reads it: local MM-DD HH:MM."""
    if not value:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return f"{to_local(moment):%m-%d %H:%M}"


def _page(request: Request, name: str, tab: str, status_code: int = 200, **context: object) -> Response:
    """A quality page through the console's renderer (base.html: the user, the CSRF token, the nav)."""
    flash = {"acked": "已确认告警 Alert acknowledged.", "held": "批次已冻结 Lot put on hold.",
             "released": "批次已解除冻结 Lot released."}.get(request.query_params.get("done", ""))
    response = render(request, f"quality/{name}", getattr(request.state, "console_user", None), tab=tab,
                      flash=flash, when=_when, LEVEL_ZH=LEVEL_ZH, CLASS_ZH=CLASS_ZH, TYPE_ZH=TYPE_ZH,
                      minutes=minutes_outside, **context)
    response.status_code = status_code
    return response


def _local_input(moment: datetime) -> str:
    return f"{to_local(moment):%Y-%m-%dT%H:%M}"


# ----------------------------------------------------------------------------- orders at risk


@router.get("", response_class=HTMLResponse)
def home(request: Request, session: SessionDep, _user: Staff,
         day: Annotated[str | None, Query(alias="date", max_length=10)] = None) -> Response:
    """The landing page: the day's orders at risk (yesterday unless asked), worst first; the worst one on top
    with its reasons and a link to its trace (yesterday's worst excursion is one click from here)."""
    yesterday = local_today() - timedelta(days=1)
    try:
        chosen = datetime.strptime(day, "%Y-%m-%d").date() if day else yesterday
    except ValueError:
        return _page(request, "home.html", "home", 400, day=day, yesterday=yesterday, items=[], worst=None, more=False,
                     open_alerts=0, holds=0, error=f"不是日期 not a date: {day!r} (YYYY-MM-DD)")
    items, following = at_risk(session, chosen, limit=AT_RISK_SHOWN)
    open_alerts = session.scalar(select(func.count()).select_from(Alert).where(Alert.acknowledged_at.is_(None)))
    holds = session.scalar(select(func.count()).select_from(LotHold).where(LotHold.released_at.is_(None)))
    return _page(request, "home.html", "home", day=chosen, yesterday=yesterday, items=worst_first(items),
                 worst=worst_excursion(items), more=following is not None, open_alerts=open_alerts, holds=holds)


@router.get("/lookup")
def lookup(session: SessionDep, _user: Staff, q: Annotated[str, Query(min_length=1, max_length=64)]) -> Response:
    """An order reference or a lot code typed in the search box: its page (an order first)."""
    q = q.strip()
    if session.scalar(select(Order.id).where(Order.ref == q)) is not None:
        return RedirectResponse(f"/console/quality/orders/{quote(q, safe='')}", 303)
    return RedirectResponse(f"/console/quality/lots/{quote(q, safe='')}", 303)


# ----------------------------------------------------------------------------- alerts and rejects

AlertFilter = Literal["unacknowledged", "open", "acknowledged", "closed", "all"]


def _alert_item(alert: Alert) -> dict:
    item = alert_view(alert)
    start = alert.started_at - timedelta(hours=1)
    end = (alert.ended_at or utcnow()) + timedelta(hours=1)
    query = {"compartment": alert.compartment or "chilled", "from": _local_input(start), "to": _local_input(end)}
    item["chart_url"] = f"/console/quality/vehicles/{quote(item['vehicle'], safe='')}?{urlencode(query)}"
    return item


@router.get("/alerts", response_class=HTMLResponse)
def alerts(request: Request, session: SessionDep, _user: Staff, status: AlertFilter = "unacknowledged",
           after: After = None) -> Response:
    """Alerts, oldest first: by default every one nobody has acknowledged yet (open, or over and closed by the
    rules but never looked at); each with its van's chart around it and, until acknowledged, a form for it."""
    query = alerts_query(status if status in ("open", "acknowledged", "closed") else None)
    if status == "unacknowledged":
        query = query.where(Alert.acknowledged_at.is_(None))
    got = page(session, request, query, Alert.id, PAGE, after, _alert_item)
    return _page(request, "alerts.html", "alerts", status=status, **got)


@router.post("/alerts/{alert_id}/ack", dependencies=CSRF)
def acknowledge(request: Request, alert_id: int, session: SessionDep, user: Staff,
                note: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """The API's acknowledgement (telemetry.service.acknowledge_alert), the note required, the user as actor."""
    if not note.strip():
        raise Invalid("a note is required: say what was done or decided", pointer="/note")
    if not 1 <= alert_id <= 2**31 - 1:
        raise NotFound(f"no alert {alert_id}")
    acknowledge_alert(session, alert_id, user.username, note.strip())
    return RedirectResponse(f"/console/quality/alerts?status=all&done=acked#alert-{alert_id}", 303)


@router.get("/rejected", response_class=HTMLResponse)
def rejected(request: Request, session: SessionDep, _user: Staff, after: After = None) -> Response:
    """Telemetry messages the ingestor could not use, with their reasons, a page at a time."""
    got = page(session, request, rejects_query(), TelemetryReject.id, PAGE, after, reject_view)
    return _page(request, "rejected.html", "rejected", **got)


# ----------------------------------------------------------------------------- a van compartment


@router.get("/vehicles", response_class=HTMLResponse)
def vehicles(request: Request, session: SessionDep, _user: Staff) -> Response:
    """Every van with a link per compartment to its chart (yesterday, local)."""
    classes: dict[int, list[str]] = {}
    for vid, cls in session.execute(select(Compartment.vehicle_id, Compartment.temp_class)
                                    .where(Compartment.capacity_l > 0)):
        classes.setdefault(vid, []).append(cls)
    rows = session.execute(select(Vehicle.id, Vehicle.code, Node.code).join(Node, Node.id == Vehicle.depot_id)
                           .order_by(Vehicle.code)).all()
    vans = [{"code": code, "depot": depot, "compartments": sorted(classes.get(vid, []), key=_CLASSES.index)}
            for vid, code, depot in rows]
    start = local_datetime(local_today() - timedelta(days=1), datetime.min.time())
    return _page(request, "vehicles.html", "vehicles", vans=vans, period_from=_local_input(start),
                 period_to=_local_input(start + timedelta(days=1)))


def _parse_local(text: str | None, field: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise Invalid(f"{field}: not a time {text!r} (YYYY-MM-DDTHH:MM)", pointer=f"query:{field}") from exc
    return moment.replace(tzinfo=get_settings().tz) if moment.tzinfo is None else moment


@router.get("/vehicles/{code}", response_class=HTMLResponse)
def vehicle(request: Request, code: Code, session: SessionDep, _user: Staff,
            compartment: Literal["frozen", "chilled", "ambient"] = "chilled",
            start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
            end: Annotated[str | None, Query(alias="to", max_length=40)] = None) -> Response:
    """A compartment's temperatures over a period (local from/to; yesterday by default) with the limits in force
    drawn, excursions against them shaded, door openings and shocks marked, and the alerts of the period."""
    vid = session.scalar(select(Vehicle.id).where(Vehicle.code == code))
    if vid is None:
        raise NotFound(f"no vehicle {code}")
    compartments = sorted(session.scalars(select(Compartment.temp_class).where(Compartment.vehicle_id == vid)),
                          key=_CLASSES.index)
    context = {"code": code, "compartment": compartment, "compartments": compartments or ["chilled"],
               "tz": get_settings().timezone, "max_days": MAX_DAYS, "chart": None}
    try:
        a = _parse_local(start, "from") or local_datetime(local_today() - timedelta(days=1), datetime.min.time())
        b = _parse_local(end, "to") or a + timedelta(days=1)
        if b <= a:
            raise Invalid("'to' must be later than 'from'", pointer="query:to")
        if b - a > timedelta(days=MAX_DAYS):
            raise Invalid(f"the period is longer than {MAX_DAYS} days: choose a shorter one", pointer="query:to")
    except Invalid as exc:
        return _page(request, "vehicle.html", "vehicles", 422, period_from=start or "", period_to=end or "",
                     error=str(exc.detail if hasattr(exc, "detail") else exc), **context)
    history = compartment_history(session, code, compartment, a, b)
    return _page(request, "vehicle.html", "vehicles", **{**context, "chart": history_chart(history, get_settings().tz)},
                 history=history, period_from=_local_input(a), period_to=_local_input(b))


# ----------------------------------------------------------------------------- an order, a lot


def _van_url(vehicle: str | None, compartment: str, start: datetime, end: datetime) -> str:
    query = {"compartment": compartment, "from": _local_input(start - timedelta(minutes=30)),
             "to": _local_input(end + timedelta(minutes=30))}
    return f"/console/quality/vehicles/{quote(vehicle or '', safe='')}?{urlencode(query)}"


@router.get("/orders/{order_ref}", response_class=HTMLResponse)
def order(request: Request, order_ref: Code, session: SessionDep, _user: Staff) -> Response:
    """An order's trace: risk with reasons, each leg's chart (the products' range, excursions shaded, doors and
    shocks), the custody timeline, and the three exports."""
    trace = order_trace(session, order_ref)
    directory = directory_for(session, trace["custody"])
    tz = get_settings().tz
    legs = []
    for leg in trace["legs"]:
        start = datetime.fromisoformat(leg["from"])
        end = datetime.fromisoformat(leg["to"] or trace["assessed_at"])
        legs.append({**leg, "chart": leg_chart(leg, directory, tz, trace["assessed_at"]),
                     "van_url": _van_url(leg["vehicle"], leg["compartment"], start, end)})
    return _page(request, "order.html", "home", trace=trace, legs=legs)


@router.get("/orders/{order_ref}/export")
def order_export(request: Request, order_ref: Code, session: SessionDep, _user: Staff,
                 fmt: Annotated[Literal["epcis", "fsma", "pdf"], Query(alias="format")]) -> Response:
    """The API's export (traceability.exports.export_order) with the console's login; rawData points at the API."""
    data, media, filename = export_order(session, order_ref, fmt, api_base=str(request.base_url).rstrip("/"))
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/lots/{lot}", response_class=HTMLResponse)
def lot_page(request: Request, lot: Code, session: SessionDep, _user: Staff) -> Response:
    """A lot: every order it went into with their risk, a chart per time aboard a van, where the rest is, its
    holds with the hold or release form, and its custody."""
    trace = lot_trace(session, lot)
    refs = [o["order_ref"] for o in trace["orders"]]
    orders = session.scalars(select(Order).where(Order.ref.in_(refs)).order_by(Order.id)).all() if refs else []
    risks = {a["order_ref"]: a for a in assess_orders(session, orders)}
    tz = get_settings().tz
    now = utcnow()
    legs = []
    for leg in lot_legs(session, lot, now):
        end = leg["end"] or now
        history = compartment_history(session, leg["vehicle"], leg["compartment"], leg["start"], end)
        band = [Limits(leg["start"], end, leg["min_c"], leg["max_c"], leg["sku"] or "")]
        chart = temperature_svg(history["temperatures"], start=leg["start"], end=end, tz=tz, limits=band,
                                title=f"{leg['vehicle']} {CLASS_ZH.get(leg['compartment'], leg['compartment'])}"
                                      f"（{lot}）",
                                doors=[Door(datetime.fromisoformat(o["opened"]),
                                            datetime.fromisoformat(o["closed"]) if o["closed"] else None)
                                       for o in history["door_openings"]],
                                shocks=[Shock(at, g) for at, g in history["shocks"]])
        legs.append({**leg, "chart": chart})
    return _page(request, "lot.html", "holds", lot=trace, risks=risks, legs=legs)


@router.get("/lots/{lot}/export")
def lot_export(request: Request, lot: Code, session: SessionDep, _user: Staff,
               fmt: Annotated[Literal["epcis", "fsma", "pdf"], Query(alias="format")] = "fsma") -> Response:
    """The API's lot export (traceability.exports.export_lot: a recall's view) with the console's login."""
    data, media, filename = export_lot(session, lot, fmt, api_base=str(request.base_url).rstrip("/"))
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# ----------------------------------------------------------------------------- holds


@router.get("/holds", response_class=HTMLResponse)
def holds(request: Request, session: SessionDep, _user: Staff, after: After = None) -> Response:
    """Lots on hold, oldest first, each with a release form; a form to put another lot on hold."""
    got = page(session, request, holds_query(active=True), LotHold.id, PAGE, after, hold_view)
    return _page(request, "holds.html", "holds", **got)


def _reason(reason: str) -> str:
    if not reason.strip():
        raise Invalid("a reason is required: it is kept with the hold and in the audit log", pointer="/reason")
    return reason.strip()


@router.post("/holds", dependencies=CSRF)
def new_hold(session: SessionDep, user: Staff, lot: Annotated[str, Form(max_length=64)] = "",
             reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    """Put a lot on hold from the holds page (the API's use case, traceability.service.hold_lot)."""
    if not lot.strip():
        raise Invalid("a lot code is required", pointer="/lot")
    hold_lot(session, lot.strip(), _reason(reason), user.username)
    return RedirectResponse(f"/console/quality/lots/{quote(lot.strip(), safe='')}?done=held", 303)


@router.post("/lots/{lot}/hold", dependencies=CSRF)
def hold(lot: Code, session: SessionDep, user: Staff, reason: Annotated[str, Form(max_length=2000)] = "") -> Response:
    hold_lot(session, lot, _reason(reason), user.username)
    return RedirectResponse(f"/console/quality/lots/{quote(lot, safe='')}?done=held", 303)


@router.post("/lots/{lot}/release", dependencies=CSRF)
def release(lot: Code, session: SessionDep, user: Staff, reason: Annotated[str, Form(max_length=2000)] = "",
            back: Annotated[str, Form(max_length=10)] = "") -> Response:
    release_lot(session, lot, _reason(reason), user.username)
    target = "/console/quality/holds?done=released" if back == "holds" else \
        f"/console/quality/lots/{quote(lot, safe='')}?done=released"
    return RedirectResponse(target, 303)

