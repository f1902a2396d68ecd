"""Small builders for allocation tests: positions in km around a fixed point."""

from __future__ import annotations

import math
from datetime import date, timedelta

import shapely
from geographiclib.geodesic import Geodesic

from fulfillment.allocation import Lot, Node, Order, Product

LAT0, LON0 = 30.6586, 104.0647
DAY = date(2026, 11, 24)
_G = Geodesic.WGS84


def at(east_km: float = 0.0, north_km: float = 0.0) -> tuple[float, float]:
    """(lat, lon) reached from the origin by going north then east, geodesically."""
    r = _G.Direct(LAT0, LON0, 0.0, north_km * 1000.0)
    r = _G.Direct(r["lat2"], r["lon2"], 90.0, east_km * 1000.0)
    return r["lat2"], r["lon2"]


def square(east_km: float, north_km: float, half_km: float) -> shapely.Polygon:
    """A lon/lat square of about 2*half_km around a point."""
    lat, lon = at(east_km, north_km)
    dlat = half_km / 110.9
    dlon = half_km / (111.32 * math.cos(math.radians(lat)))
    return shapely.box(lon - dlon, lat - dlat, lon + dlon, lat + dlat)


def node(code, east=0.0, north=0.0, *, kind="hub", area=None, van=True, parent=None, **cap) -> Node:
    lat, lon = at(east, north)
    return Node(code, kind, lat, lon, parent, area, van, **cap)


def lot(node_code, sku, name, qty, days=10, hold=False) -> Lot:
    return Lot(node_code, sku, name, qty, DAY + timedelta(days=days), hold)


def order(ref, east=0.0, north=0.0, lines=(("MILK", 1),), *, mode="delivery", pickup=None, split=False,
          day=DAY) -> Order:
    lat, lon = at(east, north)
    return Order(ref, mode, day, lat, lon, tuple(lines), pickup, split)


PRODUCTS = [
    Product("MILK", "chilled", 1.0),
    Product("EGG", "chilled", 2.0),
    Product("DUMPLING", "frozen", 1.5),
    Product("RICE", "ambient", 5.0),
]
