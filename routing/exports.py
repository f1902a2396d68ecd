"""Route exports for people and maps: GeoJSON per route, a printable route sheet for the driver (PDF),
and a map of the day (PNG).

All read the depot's *current* plan of the day. GeoJSON follows RFC 7946: positions are
``[lon, lat]``; extra properties ride on the FeatureCollection as foreign members. The PDF embeds the
CJK font of core.pdf (as every PDF does), so Chinese names and addresses show in any viewer; the map is
drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch) and ASCII labels only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core.errors import NotFound
from core.pdf import document, paragraph_style, styles, table_style
from core.pdf import escape as esc
from core.timeutil import to_local
from fulfillment.models import Order, OrderLine
from routing.models import Plan, Route, RouteStop, UnservedOrder
from routing.service import local_hhmm
from warehouses.models import TEMP_CLASSES, Driver, Node, Vehicle


@dataclass
class _RouteView:
    plan: Plan
    route: Route  # the first trip
    depot: Node
    van: Vehicle
    breakdown: tuple[float, float] | None  # where the van broke down, if it did
    trips: list[Route]  # every trip of the van that day, in order (one route per trip)

    @property
    def stops(self) -> list[RouteStop]:
        return [s for r in self.trips for s in r.stops]

    @property
    def distance_m(self) -> float:
        return sum(r.distance_m for r in self.trips)

    @property
    def end_at(self):  # noqa: ANN201 - datetime
        return self.trips[-1].end_at


def _route(session: Session, day: date, vehicle_code: str) -> _RouteView:
    trips = list(session.scalars(
        select(Route).join(Plan, Route.plan_id == Plan.id).join(Vehicle, Route.vehicle_id == Vehicle.id)
        .where(Plan.day == day, Plan.status == "current", Vehicle.code == vehicle_code)
        .order_by(Route.trip, Route.id)
        .options(selectinload(Route.stops).selectinload(RouteStop.order).selectinload(Order.lines)
                 .selectinload(OrderLine.product))))
    if not trips:
        raise NotFound(f"no route for {vehicle_code} on {day}")
    route = trips[0]
    plan = route.plan
    return _RouteView(plan, route, plan.depot, route.vehicle, _breakdown_position(session, plan, vehicle_code),
                      trips)


def _breakdown_position(session: Session, plan: Plan, vehicle_code: str) -> tuple[float, float] | None:
    """The position recorded by the re-plan that followed this van's breakdown (routing.replan)."""
    for diff in session.scalars(select(Plan.diff).where(Plan.day == plan.day, Plan.depot_id == plan.depot_id)
                                .order_by(Plan.version.desc())):
        event = (diff or {}).get("event") or {}
        if event.get("type") == "breakdown" and event.get("vehicle_code") == vehicle_code and event.get("position"):
            lat, lon = event["position"]
            return float(lat), float(lon)
    return None


def reload_before(plan: Plan, route: Route | list[Route]) -> set[str]:
    """Stop ids before which the van goes back to its depot to load again: the first stop of each later
    trip (a route of its own, ``Route.trip``), and routing.replan's trips within one route."""
    routes = route if isinstance(route, list) else [route]
    starts: set[str] = set()
    for r in routes:
        trips = ((plan.diff or {}).get("trips") or {}).get(r.vehicle.code) or []
        starts |= {t["stop_ids"][0] for t in trips if t.get("load") == "depot" and t.get("stop_ids")}
        if r.stops:
            starts.add(r.stops[0].stop_id)
    first = next((r.stops[0].stop_id for r in routes if r.stops), None)
    return starts - {first}


def _window(order: Order) -> list[str]:
    return [f"{order.window_start:%H:%M}", f"{order.window_end:%H:%M}"]


def _items(order: Order) -> list[dict]:
    return [{"sku": ln.product.sku, "name": ln.product.name, "qty": ln.qty, "temp_class": ln.product.temp_class,
             "fragile": bool(ln.product.fragile)} for ln in order.lines]


# ----------------------------------------------------------------------------------- GeoJSON


def route_geojson(session: Session, day: date, vehicle_code: str) -> dict:
    """The van's route of the day as a GeoJSON FeatureCollection: the depot, each stop, and the path."""
    v = _route(session, day, vehicle_code)
    depot, route = v.depot, v.route
    trip_of = {s.stop_id: r.trip or 1 for r in v.trips for s in r.stops}
    home = [depot.lon, depot.lat]
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": home},
                 "properties": {"kind": "depot", "code": depot.code, "name": depot.name}}]
    path = [home]
    reloads = reload_before(v.plan, v.trips)
    for s in v.stops:
        o = s.order
        at = [o.lon, o.lat]
        if s.stop_id in reloads:
            path.append(home)  # back to the depot to load the next trip
        path.append(at)
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": at}, "properties": {
            "kind": "stop", "stop_id": s.stop_id, "seq": s.seq, "order_ref": o.ref, "status": s.status,
            "eta": to_local(s.arrive_at).isoformat(), "arrive": local_hhmm(s.arrive_at),
            "depart": local_hhmm(s.depart_at),
            "window": _window(o), "address": o.address, "customer": o.customer,
            "reload_before": s.stop_id in reloads, "trip": trip_of[s.stop_id]}})
    if route.status == "broken" and v.breakdown:
        stop = [v.breakdown[1], v.breakdown[0]]
        path.append(stop)
        features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": stop},
                         "properties": {"kind": "breakdown", "vehicle": v.van.code}})
    else:
        path.append(home)
    features.append({"type": "Feature", "geometry": {"type": "LineString", "coordinates": path},
                     "properties": {"kind": "route", "vehicle": v.van.code, "status": route.status,
                                    "distance_km": round(v.distance_m / 1000, 3)}})
    return {"type": "FeatureCollection", "features": features,
            "properties": {"date": day.isoformat(), "vehicle": v.van.code, "depot": depot.code,
                           "status": route.status, "start": local_hhmm(route.start_at),
                           "end": local_hhmm(v.end_at), "distance_km": round(v.distance_m / 1000, 3),
                           "plan_version": v.plan.version, "stops": len(v.stops), "trips": len(v.trips),
                           "trip_times": [{"trip": r.trip or 1, "start": local_hhmm(r.start_at),
                                           "end": local_hhmm(r.end_at)} for r in v.trips]}}


# --------------------------------------------------------------------------------------- PDF


def route_sheet_pdf(session: Session, day: date, vehicle_code: str, path: Path) -> Path:
    """A printable route sheet for the driver: the van's stops in order, what to hand over, where to sign."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Spacer, Table

    v = _route(session, day, vehicle_code)
    depot, route, van = v.depot, v.route, v.van
    driver = session.scalar(select(Driver).where(Driver.vehicle_id == van.id))
    sheet = styles()
    base = paragraph_style("cell", sheet["Normal"], fontSize=8, leading=10)
    title = paragraph_style("title", sheet["Title"], bold=True, fontSize=16)
    head = paragraph_style("head", base, fontSize=9, leading=12)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = document(path, pagesize=landscape(A4), leftMargin=10 * mm, rightMargin=10 * mm,
                   topMargin=10 * mm, bottomMargin=10 * mm, title=f"Route sheet {van.code} {day}",
                   author="coldchain", subject=f"{van.code} {depot.code} {day}")
    compartments = ", ".join(f"{c} {van.capacity_l(c):g} l" for c in TEMP_CLASSES if van.capacity_l(c))
    story: list = [Paragraph(f"Route sheet 送货单 — {esc(van.code)} — {day.isoformat()}", title)]
    info = [
        [Paragraph(f"<b>Van</b> {esc(van.code)} ({esc(compartments)})", head),
         Paragraph(f"<b>Driver</b> {esc(driver.name) if driver else '-'}", head),
         Paragraph(f"<b>Depot</b> {esc(depot.code)} {esc(depot.name)}", head)],
        [Paragraph(f"<b>Start</b> {local_hhmm(route.start_at)}  <b>End</b> {local_hhmm(v.end_at)}"
                   + (f"  <b>Trips</b> {len(v.trips)}" if len(v.trips) > 1 else ""), head),
         Paragraph(f"<b>Distance</b> {v.distance_m / 1000:.1f} km  <b>Stops</b> {len(v.stops)}", head),
         Paragraph(f"<b>Plan</b> v{v.plan.version} {esc(route.status)}"
                   + (f" — {esc(v.plan.reason)}" if v.plan.reason else ""), head)],
    ]
    info_table = Table(info, colWidths=[92 * mm, 92 * mm, 93 * mm])
    info_table.setStyle(table_style(("BOX", (0, 0), (-1, -1), 0.5, colors.grey),
                                    ("VALIGN", (0, 0), (-1, -1), "TOP"), size=9))
    story += [info_table, Spacer(1, 4 * mm)]

    rows = [[Paragraph(f"<b>{h}</b>", base) for h in
             ("#", "ETA", "window", "order", "address / contact", "items", "status", "signature 签收")]]
    reloads = reload_before(v.plan, v.trips)
    leaves = {r.stops[0].stop_id: r for r in v.trips[1:] if r.stops}  # a later trip's own departure
    reload_rows = []
    for s in v.stops:
        o = s.order
        if s.stop_id in reloads:
            reload_rows.append(len(rows))
            trip = leaves.get(s.stop_id)
            when = f" — trip {trip.trip} leaves {local_hhmm(trip.start_at)}" if trip is not None else ""
            rows.append([Paragraph("", base), Paragraph("", base), Paragraph("", base), Paragraph("", base),
                         Paragraph(f"<b>back to {esc(depot.code)}: load the next trip 回仓装货{when}</b>", base),
                         Paragraph("", base), Paragraph("", base), Paragraph("", base)])
        items = []
        for it in _items(o):
            mark = ' <font color="red"><b>FRAGILE 易碎</b></font>' if it["fragile"] else ""
            items.append(f"{it['qty']} × {esc(it['sku'])} {esc(it['name'])} [{it['temp_class']}]{mark}")
        contact = " ".join(x for x in (esc(o.customer), esc(o.phone)) if x)
        rows.append([
            Paragraph(str(s.seq), base), Paragraph(local_hhmm(s.arrive_at), base),
            Paragraph("-".join(_window(o)), base), Paragraph(esc(o.ref), base),
            Paragraph(f"{esc(o.address) or f'{o.lat:.5f}, {o.lon:.5f}'}<br/>{contact}", base),
            Paragraph("<br/>".join(items) or "-", base), Paragraph(esc(s.status), base),
            Spacer(1, 16 * mm),  # room to sign
        ])
    # the order column fits a sample ref (CD-261202-0267) on one line; the signature box gives up the room
    table = Table(rows, repeatRows=1, colWidths=[8 * mm, 13 * mm, 22 * mm, 26 * mm, 62 * mm, 80 * mm, 18 * mm,
                                                 48 * mm])
    table.setStyle(table_style(
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde7f0")),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        *[("BACKGROUND", (0, r), (-1, r), colors.HexColor("#fff3cd")) for r in reload_rows],
    ))
    story.append(table if v.stops else Paragraph("No stops on this route.", base))
    doc.build(story)
    return path


# --------------------------------------------------------------------------------------- PNG


def day_map_png(session: Session, day: date, path: Path, depot: str | None = None) -> Path:
    """Every current route of the day (or one depot's) coloured per van over the depots' service areas."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from shapely import wkt

    query = (select(Plan).where(Plan.day == day, Plan.status == "current")
             .options(selectinload(Plan.routes).selectinload(Route.stops).selectinload(RouteStop.order),
                      selectinload(Plan.unserved).selectinload(UnservedOrder.order))
             .order_by(Plan.depot_id))
    if depot is not None:
        node = session.scalar(select(Node).where(Node.code == depot))
        if node is None:
            raise NotFound(f"unknown depot {depot}")
        query = query.where(Plan.depot_id == node.id)
    plans = session.scalars(query).all()

    fig = Figure(figsize=(9, 9), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    palette = list(colormaps["tab10"].colors)
    lats: list[float] = []
    colour = 0
    for plan in plans:
        node = plan.depot
        if node.service_area_wkt:
            area = wkt.loads(node.service_area_wkt)
            for poly in getattr(area, "geoms", [area]):
                xs, ys = poly.exterior.xy
                ax.fill(xs, ys, color="#9ecae1", alpha=0.25, zorder=1)
                ax.plot(xs, ys, color="#6baed6", linewidth=1, zorder=1)
        ax.scatter([node.lon], [node.lat], marker="s", s=90, color="black", zorder=5)
        ax.annotate(node.code, (node.lon, node.lat), textcoords="offset points", xytext=(6, 6), fontsize=9,
                    fontweight="bold", zorder=6)
        lats.append(node.lat)
        for route in plan.routes:
            if not route.stops and route.status != "broken":
                continue
            c = palette[colour % len(palette)]
            colour += 1
            reloads = reload_before(plan, route)
            xs, ys = [node.lon], [node.lat]
            for s in route.stops:
                if s.stop_id in reloads:
                    xs.append(node.lon)
                    ys.append(node.lat)
                xs.append(s.order.lon)
                ys.append(s.order.lat)
            broken = None
            if route.status == "broken":
                broken = _breakdown_position(session, plan, route.vehicle.code)
            if broken:
                xs.append(broken[1])
                ys.append(broken[0])
            else:
                xs.append(node.lon)
                ys.append(node.lat)
            trip = f" trip {route.trip}" if (route.trip or 1) > 1 else ""
            label = (f"{route.vehicle.code}{trip} ({len(route.stops)} stops"
                     f"{', broken' if route.status == 'broken' else ''})")
            ax.plot(xs, ys, color=c, linewidth=2, linestyle="--" if route.status == "broken" else "-", label=label,
                    zorder=3)
            done = [s for s in route.stops if s.status in ("delivered", "failed")]
            todo = [s for s in route.stops if s.status not in ("delivered", "failed")]
            ax.scatter([s.order.lon for s in todo], [s.order.lat for s in todo], color=c, s=36, zorder=4)
            ax.scatter([s.order.lon for s in done], [s.order.lat for s in done], color="white", edgecolors=c,
                       s=36, zorder=4)
            for s in route.stops:
                ax.annotate(str(s.seq), (s.order.lon, s.order.lat), textcoords="offset points", xytext=(4, -9),
                            fontsize=7, color=c, zorder=6)
                lats.append(s.order.lat)
            if broken:
                ax.scatter([broken[1]], [broken[0]], marker="X", s=120, color="red", zorder=6)
        if plan.unserved:
            ax.scatter([u.order.lon for u in plan.unserved], [u.order.lat for u in plan.unserved], marker="x",
                       color="grey", s=40, zorder=4, label=f"{node.code} unserved ({len(plan.unserved)})")
    if lats:
        ax.set_aspect(1 / math.cos(math.radians(sum(lats) / len(lats))))
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no routes", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"Routes {day.isoformat()}" + (f" - {depot}" if depot else ""))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.grid(True, linewidth=0.3, alpha=0.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path), format="png")
    return path
