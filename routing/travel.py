"""Travel models: where a van can go and how long it takes.

Every model answers ``matrix(points, speed_kmh) -> (seconds, metres)``, two square
``float`` arrays indexed ``[from][to]`` over ``points`` (``(lat, lon)`` in WGS-84 degrees).

* :class:`GeodesicTravel` - the default of CONTRACTS.md section 5: geodesic (WGS-84)
  distance times 1.3, driven at the van's ``speed_kmh``. Vectorised Vincenty inverse
  formula (agrees with ``geopy.distance.geodesic`` to well under a millimetre on city
  distances); the few pairs where Vincenty does not converge (nearly antipodal points)
  fall back to geopy.
* :class:`OsrmTravel` - an OSRM ``/table`` service (road durations and distances), used
  when a URL is configured; ``speed_kmh`` is ignored, OSRM's profile decides. Pairs OSRM
  cannot route are filled from the fallback model.
* :class:`CachedTravel` - an in-memory LRU cache keyed by (day, depot, points).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

Point = tuple[float, float]  # (lat, lon) degrees

ROAD_FACTOR = 1.3  # CONTRACTS.md section 5

_A = 6378137.0
_F = 1 / 298.257223563
_B = (1 - _F) * _A


@runtime_checkable
class TravelModel(Protocol):
    def matrix(self, points: Sequence[Point], speed_kmh: float) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, metres) between every pair of points."""
        ...


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
        if not ok.all():
            from geopy.distance import geodesic

            for k in np.nonzero(~ok)[0]:
                s[k] = geodesic(tuple(pts[i[k]]), tuple(pts[j[k]])).meters
        d[i, j] = s
        d[j, i] = s
    return d


def _vincenty(lat1, lon1, lat2, lon2, iterations: int = 100, tol: float = 1e-12):
    """Vincenty's inverse formula on arrays; returns (metres, converged)."""
    u1 = np.arctan((1 - _F) * np.tan(lat1))
    u2 = np.arctan((1 - _F) * np.tan(lat2))
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
        c = _F / 16 * cos2_alpha * (4 + _F * (4 - 3 * cos2_alpha))
        new = big_l[todo] + (1 - c) * _F * sin_alpha * (
            sigma + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1 + 2 * cos_2sm**2)))
        done = np.abs(new - lt) < tol
        lam[todo] = new
        if done.any():
            u_sq = cos2_alpha[done] * (_A**2 - _B**2) / _B**2
            a = 1 + u_sq / 16384 * (4096 + u_sq * (-768 + u_sq * (320 - 175 * u_sq)))
            b = u_sq / 1024 * (256 + u_sq * (-128 + u_sq * (74 - 47 * u_sq)))
            ss, cs, c2 = sin_sigma[done], cos_sigma[done], cos_2sm[done]
            delta = b * ss * (c2 + b / 4 * (cs * (-1 + 2 * c2**2)
                                            - b / 6 * c2 * (-3 + 4 * ss**2) * (-3 + 4 * c2**2)))
            s = _B * a * (sigma[done] - delta)
            idx = todo[done]
            good = np.isfinite(s)
            out[idx[good]] = s[good]
            ok[idx[good]] = True
            todo = todo[~done]
    return out, ok


class GeodesicTravel:
    """Geodesic distance x ``detour`` at a constant speed (the contract's default model)."""

    def __init__(self, detour: float = ROAD_FACTOR):
        self.detour = detour

    def matrix(self, points: Sequence[Point], speed_kmh: float) -> tuple[np.ndarray, np.ndarray]:
        if speed_kmh <= 0:
            raise ValueError("speed_kmh must be positive")
        metres = geodesic_matrix(points) * self.detour
        seconds = metres / (speed_kmh / 3.6)
        return seconds, metres


class OsrmError(RuntimeError):
    pass


class OsrmTravel:
    """Road durations and distances from an OSRM ``/table/v1`` service."""

    def __init__(self, base_url: str, profile: str = "driving", client=None, timeout: float = 30.0,
                 max_table: int = 100, fallback: TravelModel | None = None):
        self.base_url = base_url.rstrip("/")
        self.profile = profile
        self._client = client
        self.timeout = timeout
        self.max_table = max(2, int(max_table))
        self.fallback = fallback or GeodesicTravel()
        self.filled = 0  # pairs OSRM could not route, filled from the fallback in the last call

    def _get(self, url: str, params: dict) -> dict:
        import httpx

        client = self._client or httpx.Client(timeout=self.timeout)
        try:
            resp = client.get(url, params=params)
        finally:
            if self._client is None:
                client.close()
        if resp.status_code != 200:
            raise OsrmError(f"OSRM answered {resp.status_code}: {resp.text[:200]}")
        body = resp.json()
        if body.get("code") != "Ok":
            raise OsrmError(f"OSRM error {body.get('code')}: {body.get('message', '')}")
        return body

    def matrix(self, points: Sequence[Point], speed_kmh: float) -> tuple[np.ndarray, np.ndarray]:
        pts = [(float(a), float(b)) for a, b in points]
        n = len(pts)
        seconds = np.full((n, n), np.nan)
        metres = np.full((n, n), np.nan)
        half = max(1, self.max_table // 2) if n > self.max_table else n
        blocks = [list(range(k, min(n, k + half))) for k in range(0, n, half)] if n else []
        for src in blocks:
            for dst in blocks:
                if n <= self.max_table:
                    coords, s_idx, d_idx = pts, src, dst
                    params = {"annotations": "duration,distance"}
                else:
                    union = src + [x for x in dst if x not in src]
                    coords = [pts[x] for x in union]
                    pos = {x: k for k, x in enumerate(union)}
                    s_idx, d_idx = src, dst
                    params = {"annotations": "duration,distance",
                              "sources": ";".join(str(pos[x]) for x in src),
                              "destinations": ";".join(str(pos[x]) for x in dst)}
                path = ";".join(f"{lon:.6f},{lat:.6f}" for lat, lon in coords)
                body = self._get(f"{self.base_url}/table/v1/{self.profile}/{path}", params)
                dur = np.asarray([[np.nan if x is None else x for x in row] for row in body["durations"]],
                                 dtype=float)
                dis = body.get("distances")
                dis = (np.asarray([[np.nan if x is None else x for x in row] for row in dis], dtype=float)
                       if dis is not None else np.full(dur.shape, np.nan))
                seconds[np.ix_(s_idx, d_idx)] = dur
                metres[np.ix_(s_idx, d_idx)] = dis
                if n <= self.max_table:
                    break
            if n <= self.max_table:
                break
        missing = np.isnan(seconds) | np.isnan(metres)
        np.fill_diagonal(missing, False)
        self.filled = int(missing.sum())
        if self.filled:
            fs, fm = self.fallback.matrix(pts, speed_kmh)
            seconds = np.where(np.isnan(seconds), fs, seconds)
            metres = np.where(np.isnan(metres), fm, metres)
        np.fill_diagonal(seconds, 0.0)
        np.fill_diagonal(metres, 0.0)
        return seconds, metres


def points_key(points: Sequence[Point]) -> str:
    h = hashlib.sha1()
    for lat, lon in points:
        h.update(f"{float(lat):.7f},{float(lon):.7f};".encode())
    return h.hexdigest()


class CachedTravel:
    """In-memory LRU cache in front of another model, keyed by (day, depot, points, speed)."""

    def __init__(self, model: TravelModel, maxsize: int = 64):
        self.model = model
        self.maxsize = maxsize
        self._cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def matrix(self, points: Sequence[Point], speed_kmh: float, *, day: str | None = None,
               depot: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        key = (day, depot, round(float(speed_kmh), 6), points_key(points))
        got = self._cache.get(key)
        if got is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return got
        self.misses += 1
        sec, met = self.model.matrix(points, speed_kmh)
        sec = np.array(sec, dtype=float)
        met = np.array(met, dtype=float)
        sec.setflags(write=False)
        met.setflags(write=False)
        self._cache[key] = (sec, met)
        while len(self._cache) > self.maxsize:
            self._cache.popitem(last=False)
        return sec, met

    def clear(self) -> None:
        self._cache.clear()


def travel_model(osrm_url: str | None = None, **kwargs) -> TravelModel:
    """OSRM when a URL is given, else the geodesic x 1.3 default."""
    if osrm_url:
        return OsrmTravel(osrm_url, **kwargs)
    return GeodesicTravel()
