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

from core.geo import ROAD_FACTOR, Point, geodesic_matrix


@runtime_checkable
class TravelModel(Protocol):
    def matrix(self, points: Sequence[Point], speed_kmh: float) -> tuple[np.ndarray, np.ndarray]:
        """(seconds, metres) between every pair of points."""
        ...


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
