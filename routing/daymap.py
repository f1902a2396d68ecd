"""The day on a map: one data builder and one drawing script for every face that draws it.

The dispatcher's console (api/console/dispatch.py, live) and the demo's offline page
(scripts/demo_map.py, the day as it ran) both draw :func:`day_map`'s data with ``static/daymap.js``
(Leaflet, from the PyPI package xstatic-leaflet; the faces serve or copy both). Each face adds only
what it alone shows: the console the vans' live positions and the open alerts, the demo the damage
reports, the risk and where each alert began. Kept here, in routing, because plans, routes and
nodes are what it reads (the allocations come from fulfillment, a room routing may use).
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import get_settings
from fulfillment.models import Order
from fulfillment.service import day_allocations
from routing.service import day_routes
from warehouses.models import Node

STATIC = Path(__file__).resolve().parent / "static"
"""``daymap.js`` and ``daymap.css``: the drawing script and its styles, for the faces to serve or copy."""
FILES = ("daymap.js", "daymap.css")


def _rings(wkt_text: str | None) -> list[list[list[float]]] | None:
    """A service area's polygons as Leaflet rings of [lat, lon]."""
    if not wkt_text:
        return None
    from shapely import wkt

    shape = wkt.loads(wkt_text)
    polygons = getattr(shape, "geoms", [shape])
    return [[[round(y, 6), round(x, 6)] for x, y in poly.exterior.coords] for poly in polygons]


def day_map(session: Session, day: date) -> dict:
    """Everything both maps draw for ``day``: the nodes with their service areas (or the default radius),
    the allocations, the current routes with their stops (ETAs and status), and the orders left out
    (unallocated, unserved) with why and where. A fixed number of statements whatever the size of the day
    (tests/console/test_dispatch_speed.py counts them): the console reloads it on every plan change."""
    radius = get_settings().default_service_radius_km
    nodes = session.execute(select(Node).order_by(Node.kind, Node.code)).scalars().all()
    codes = {n.id: n.code for n in nodes}
    plan = {**day_allocations(session, day), **day_routes(session, day)}
    refs = {u["order_ref"] for u in plan["unallocated"]} | {u["order_ref"] for u in plan["unserved"]}
    where = {
        ref: (lat, lon, customer)
        for ref, lat, lon, customer in session.execute(
            select(Order.ref, Order.lat, Order.lon, Order.customer).where(Order.ref.in_(sorted(refs)))
        )
    }

    def placed(item: dict) -> dict:
        lat, lon, customer = where.get(item["order_ref"], (None, None, None))
        return {**item, "lat": lat, "lon": lon, "customer": customer}

    return {
        "date": day.isoformat(),
        **plan,
        "held": [],
        "nodes": [
            {"code": n.code, "kind": n.kind, "name": n.name, "lat": n.lat, "lon": n.lon,
             "parent": codes.get(n.parent_id), "area": _rings(n.service_area_wkt),
             "radius_km": None if n.service_area_wkt else radius}
            for n in nodes
        ],
        "unallocated_at": [placed(u) for u in plan["unallocated"]],
        "unserved_at": [placed(u) for u in plan["unserved"]],
    }  # fmt: skip
