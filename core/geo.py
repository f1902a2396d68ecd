"""Distances on the WGS-84 ellipsoid, in one place for every room.

CONTRACTS.md measures "within 5 km" and the default travel model by the geodesic (WGS-84)
distance; allocation ranks thousands of candidates at once, routing fills matrices, the
sample-city generator and the fleet simulator place points. Each needs a different speed /
accuracy trade, so this module offers the exact geodesic (geographiclib, the library geopy
itself calls) and two vectorised approximations whose errors were measured against it:

* :func:`geodesic_km` - exact, one pair at a time.
* :func:`geodesic_matrix` - exact to well under a millimetre on city distances (Vincenty's
  inverse formula on numpy arrays; the rare pairs where it does not converge, nearly
  antipodal points, go to geographiclib).
* :func:`local_km` / :func:`local_km1` - flat around the mid-latitude with the ellipsoid's
  radii of curvature there: relative error below 1.2e-5 for pairs up to 60 km apart
  (20,000 random pairs), which is what radius tests and the simulator need.
* :func:`haversine_km` - the mean-radius sphere (within 0.56 % of geodesic), for ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from geographiclib.geodesic import Geodesic

Point = tuple[float, float]  # (lat, lon) degrees

A_M = 6378137.0  # WGS-84 semi-major axis, metres
F = 1 / 298.257223563  # WGS-84 flattening
B_M = (1 - F) * A_M
A_KM = A_M / 1000.0
EARTH_R_KM = 6371.0088  # mean radius (IUGG), for haversine
ROAD_FACTOR = 1.3  # CONTRACTS.md section 5: road distance = geodesic x 1.3 unless a road server is configured
_E2 = F * (2.0 - F)
_GEOD = Geodesic(A_KM, F)
_GEOD_M = Geodesic.WGS84
_DIST = Geodesic.DISTANCE


def geodesic_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Exact WGS-84 geodesic distance in km (the same number as ``geopy.distance.geodesic(...).km``)."""
    return _GEOD.Inverse(lat1, lon1, lat2, lon2, _DIST)["s12"]


def haversine_km(lat1, lon1, lat2, lon2):  # noqa: ANN001, ANN201 - scalars or numpy arrays
    """Great-circle distance on the mean-radius sphere; numpy-vectorised."""
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    h = np.sin((p2 - p1) * 0.5) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) * 0.5) ** 2
    return 2.0 * EARTH_R_KM * np.arcsin(np.sqrt(np.minimum(h, 1.0)))


def haversine_km1(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """haversine_km for two points in plain Python (no numpy call overhead in tight loops)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    h = math.sin((p2 - p1) * 0.5) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl * 0.5) ** 2
    return 2.0 * EARTH_R_KM * math.asin(math.sqrt(min(h, 1.0)))


def local_km(lat1, lon1, lat2, lon2):  # noqa: ANN001, ANN201 - scalars or numpy arrays
    """Short-distance approximation on the ellipsoid (see the module docstring for its error); vectorised."""
    pm = np.radians((np.asarray(lat1) + lat2) * 0.5)
    sp = np.sin(pm)
    w = np.sqrt(1.0 - _E2 * sp * sp)
    n_r = A_KM / w
    m_r = A_KM * (1.0 - _E2) / (w * w * w)
    dlon = (np.asarray(lon2) - lon1 + 540.0) % 360.0 - 180.0
    return np.hypot(m_r * np.radians(np.asarray(lat2) - lat1), n_r * np.cos(pm) * np.radians(dlon))


def local_km1(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """local_km for two points in plain Python."""
    pm = math.radians((lat1 + lat2) * 0.5)
    sp = math.sin(pm)
    w = math.sqrt(1.0 - _E2 * sp * sp)
    dlon = (lon2 - lon1 + 540.0) % 360.0 - 180.0
    return math.hypot(A_KM * (1.0 - _E2) / (w * w * w) * math.radians(lat2 - lat1),
                      A_KM / w * math.cos(pm) * math.radians(dlon))


def offset(lat: float, lon: float, east_km: float, north_km: float) -> Point:
    """The point ``east_km`` east and ``north_km`` north of (lat, lon), on the local ellipsoid (the inverse of
    :func:`local_km1` for short moves): how the generator and the simulator place points around a site."""
    sp = math.sin(math.radians(lat))
    w = math.sqrt(1.0 - _E2 * sp * sp)
    m_r = A_KM * (1.0 - _E2) / (w * w * w)
    n_r = A_KM / w
    return (lat + math.degrees(north_km / m_r), lon + math.degrees(east_km / (n_r * math.cos(math.radians(lat)))))


def circle_box(lat: float, lon: float, radius_km: float) -> tuple[float, float, float, float]:
    """A (min lon, min lat, max lon, max lat) box that surely holds every point within radius_km of (lat, lon)."""
    r = radius_km * 1.02
    dlat = r / 110.5  # a degree of latitude is >= 110.57 km
    clat = min(89.9, abs(lat) + dlat)
    dlon = min(180.0, r / (111.33 * math.cos(math.radians(clat))))
    return (lon - dlon, lat - dlat, lon + dlon, lat + dlat)


def geodesic_matrix(points: Sequence[Point]) -> np.ndarray:
    """WGS-84 geodesic distances in metres between every pair of points."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    n = len(pts)
    if n == 0:
        return np.zeros((0, 0))
    lat = np.radians(pts[:, 0])
    lon = np.radians(pts[:, 1])
    i, j = np.triu_indices(n, k=1)
    d = np.zeros((n, n))
    if len(i):
        s, ok = _vincenty(lat[i], lon[i], lat[j], lon[j])
        for k in np.nonzero(~ok)[0]:
            s[k] = _GEOD_M.Inverse(*pts[i[k]], *pts[j[k]], _DIST)["s12"]
        d[i, j] = s
        d[j, i] = s
    return d


def _vincenty(lat1, lon1, lat2, lon2, iterations: int = 100, tol: float = 1e-12):  # noqa: ANN001, ANN202
    """Vincenty's inverse formula on arrays of radians; returns (metres, converged)."""
    u1 = np.arctan((1 - F) * np.tan(lat1))
    u2 = np.arctan((1 - F) * np.tan(lat2))
    sin_u1, cos_u1 = np.sin(u1), np.cos(u1)
    sin_u2, cos_u2 = np.sin(u2), np.cos(u2)
    big_l = lon2 - lon1
    lam = big_l.copy()
    m = len(lam)
    ok = np.zeros(m, dtype=bool)
    out = np.zeros(m)
    todo = np.arange(m)
    for _ in range(iterations):
        if not len(todo):
            break
        lt = lam[todo]
        su1, cu1, su2, cu2 = sin_u1[todo], cos_u1[todo], sin_u2[todo], cos_u2[todo]
        sin_lam, cos_lam = np.sin(lt), np.cos(lt)
        sin_sigma = np.hypot(cu2 * sin_lam, cu1 * su2 - su1 * cu2 * cos_lam)
        cos_sigma = su1 * su2 + cu1 * cu2 * cos_lam
        sigma = np.arctan2(sin_sigma, cos_sigma)
        with np.errstate(invalid="ignore", divide="ignore"):
            sin_alpha = np.where(sin_sigma > 0, cu1 * cu2 * sin_lam / sin_sigma, 0.0)
            cos2_alpha = 1 - sin_alpha**2
            cos_2sm = np.where(cos2_alpha > 0, cos_sigma - 2 * su1 * su2 / cos2_alpha, 0.0)
        c = F / 16 * cos2_alpha * (4 + F * (4 - 3 * cos2_alpha))
        new = big_l[todo] + (1 - c) * F * sin_alpha * (
            sigma + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1 + 2 * cos_2sm**2)))
        done = np.abs(new - lt) < tol
        lam[todo] = new
        if done.any():
            u_sq = cos2_alpha[done] * (A_M**2 - B_M**2) / B_M**2
            a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
            b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
            ss, cs, c2 = sin_sigma[done], cos_sigma[done], cos_2sm[done]
            delta = b * ss * (c2 + b / 4 * (cs * (-1 + 2 * c2**2)
                                            - b / 6 * c2 * (-3 + 4 * ss**2) * (-3 + 4 * c2**2)))
            s = B_M * a * (sigma[done] - delta)
            idx = todo[done]
            good = np.isfinite(s)
            out[idx[good]] = s[good]
            ok[idx[good]] = True
            todo = todo[~done]
    return out, ok
