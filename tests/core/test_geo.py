"""The one module of distances: each approximation against the exact geodesic, within the error it claims."""

from __future__ import annotations

import math
import random

import numpy as np
from geopy.distance import geodesic

from core import geo


def _pairs(n: int, seed: int = 3, spread_deg: float = 0.5) -> list[tuple[float, float, float, float]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        lat, lon = rng.uniform(-60, 60), rng.uniform(-179, 179)
        out.append((lat, lon, lat + rng.uniform(-spread_deg, spread_deg), lon + rng.uniform(-spread_deg, spread_deg)))
    return out


def test_geodesic_km_is_geopys_number() -> None:
    for la1, lo1, la2, lo2 in _pairs(200):
        assert abs(geo.geodesic_km(la1, lo1, la2, lo2) - geodesic((la1, lo1), (la2, lo2)).km) < 1e-9


def test_the_matrix_agrees_with_the_exact_geodesic_to_a_millimetre() -> None:
    pts = [(30.5 + i * 0.013, 103.9 + (i * 7 % 11) * 0.02) for i in range(40)] + [(0.0, 0.0), (0.5, 179.7)]
    d = geo.geodesic_matrix(pts)
    assert d.shape == (42, 42) and np.allclose(d, d.T) and not d.diagonal().any()
    for i in range(0, 42, 5):
        for j in range(1, 42, 7):
            assert abs(d[i, j] - geo.geodesic_km(*pts[i], *pts[j]) * 1000) < 1e-3


def test_local_and_haversine_stay_within_their_stated_errors() -> None:
    pairs = _pairs(2000, spread_deg=0.35)  # up to ~50 km apart
    exact = np.array([geo.geodesic_km(*p) for p in pairs])
    la1, lo1, la2, lo2 = (np.array(c) for c in zip(*pairs, strict=True))
    local = geo.local_km(la1, lo1, la2, lo2)
    assert np.max(np.abs(local - exact) / exact) < 1.2e-5
    assert np.max(np.abs(geo.haversine_km(la1, lo1, la2, lo2) - exact) / exact) < 5.6e-3
    for p, e in zip(pairs[:100], exact[:100], strict=True):
        assert abs(geo.local_km1(*p) - e) / e < 1.2e-5
        assert abs(geo.haversine_km1(*p) - geo.haversine_km(*p)) < 1e-9


def test_offset_moves_by_the_distance_asked() -> None:
    lat, lon = 30.657, 104.066
    for east, north in ((5.0, 0.0), (0.0, -3.0), (2.5, 4.0)):
        p = geo.offset(lat, lon, east, north)
        assert abs(geo.geodesic_km(lat, lon, *p) - (east**2 + north**2) ** 0.5) < 2e-3
    box = geo.circle_box(lat, lon, 5.0)
    for bearing in range(0, 360, 15):
        p = geo.offset(lat, lon, 5 * math.sin(math.radians(bearing)), 5 * math.cos(math.radians(bearing)))
        assert box[0] <= p[1] <= box[2] and box[1] <= p[0] <= box[3]
