"""Travel models: the contract's geodesic x 1.3 default, the OSRM client, the cache."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from geopy.distance import geodesic

from routing.travel import CachedTravel, GeodesicTravel, OsrmError, OsrmTravel, TravelModel, travel_model
from tests.support import DAY, after

DATA = Path(__file__).parent / "data"
CHENGDU = [(30.6571, 104.0662), (30.6122, 104.0691), (30.6897, 104.0311)]


def test_default_model_agrees_with_geopy_geodesic_times_1_3():
    rng = np.random.default_rng(7)
    pts = [(30.66 + rng.uniform(-0.4, 0.4), 104.07 + rng.uniform(-0.4, 0.4)) for _ in range(40)]
    pts += [(30.66, 104.07), (30.66, 104.07), (-33.87, 151.21), (51.5, -0.12), (0.0, 179.9), (0.0, -179.9)]
    seconds, metres = GeodesicTravel().matrix(pts, speed_kmh=36.0)
    for i in range(len(pts)):
        for j in range(len(pts)):
            want = geodesic(pts[i], pts[j]).meters * 1.3
            assert metres[i, j] == pytest.approx(want, rel=1e-3, abs=1e-6)
    assert np.allclose(seconds, metres / 10.0)  # 36 km/h = 10 m/s
    assert metres[len(pts) - 6 + 0, len(pts) - 6 + 1] == 0.0  # same point twice


def test_models_share_one_interface():
    assert isinstance(GeodesicTravel(), TravelModel)
    assert isinstance(OsrmTravel("http://osrm:5000"), TravelModel)
    assert isinstance(travel_model(None), GeodesicTravel)
    assert isinstance(travel_model("http://osrm:5000"), OsrmTravel)


def test_osrm_table_from_a_recorded_response():
    recorded = json.loads((DATA / "osrm_table_chengdu.json").read_text())
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=recorded)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    seconds, metres = OsrmTravel("http://osrm.local:5000/", client=client).matrix(CHENGDU, 30.0)
    req = seen[0]
    assert req.url.path == ("/table/v1/driving/104.066200,30.657100;104.069100,30.612200;"
                            "104.031100,30.689700")
    assert req.url.params["annotations"] == "duration,distance"
    assert seconds[0, 1] == 612.4 and seconds[2, 1] == 815.2
    assert metres[0, 2] == 10984.6
    assert np.all(np.diag(seconds) == 0)


def test_osrm_unroutable_pairs_fall_back_and_errors_are_raised():
    recorded = json.loads((DATA / "osrm_table_chengdu.json").read_text())
    recorded["durations"][0][2] = None
    recorded["distances"][0][2] = None
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=recorded)))
    model = OsrmTravel("http://osrm", client=client)
    seconds, metres = model.matrix(CHENGDU, 36.0)
    assert model.filled == 1
    assert metres[0, 2] == pytest.approx(geodesic(CHENGDU[0], CHENGDU[2]).meters * 1.3, rel=1e-6)
    assert seconds[0, 2] == pytest.approx(metres[0, 2] / 10.0)

    bad = httpx.Client(transport=httpx.MockTransport(
        lambda r: httpx.Response(400, json={"code": "InvalidQuery", "message": "Query string malformed"})))
    with pytest.raises(OsrmError, match="400"):
        OsrmTravel("http://osrm", client=bad).matrix(CHENGDU, 36.0)


def test_osrm_large_tables_are_split_into_blocks():
    def handler(request: httpx.Request) -> httpx.Response:
        coords = [tuple(map(float, c.split(","))) for c in request.url.path.split("/")[-1].split(";")]
        src = [int(x) for x in request.url.params.get("sources", "").split(";") if x] or range(len(coords))
        dst = ([int(x) for x in request.url.params.get("destinations", "").split(";") if x]
               or range(len(coords)))

        def fake(a, b):  # a fake road: 1000 s per degree of longitude plus latitude difference
            return abs(a[0] - b[0]) * 1000 + abs(a[1] - b[1]) * 1000

        dur = [[fake(coords[i], coords[j]) for j in dst] for i in src]
        dis = [[x * 10 for x in row] for row in dur]
        return httpx.Response(200, json={"code": "Ok", "durations": dur, "distances": dis})

    pts = [(30.0 + 0.01 * k, 104.0 + 0.02 * k) for k in range(7)]
    client = httpx.Client(transport=httpx.MockTransport(handler))
    whole = OsrmTravel("http://osrm", client=client, max_table=100).matrix(pts, 30)
    split = OsrmTravel("http://osrm", client=client, max_table=4).matrix(pts, 30)
    assert np.allclose(whole[0], split[0]) and np.allclose(whole[1], split[1])
    assert whole[0][0, 6] == pytest.approx(0.06 * 1000 + 0.12 * 1000)


def test_cache_is_keyed_by_day_depot_and_points():
    calls = []

    class Counting(GeodesicTravel):
        def matrix(self, points, speed_kmh):
            calls.append(len(points))
            return super().matrix(points, speed_kmh)

    cache = CachedTravel(Counting(), maxsize=2)
    a = cache.matrix(CHENGDU, 30.0, day=str(DAY), depot="HUB-07")
    b = cache.matrix(CHENGDU, 30.0, day=str(DAY), depot="HUB-07")
    assert len(calls) == 1 and a[0] is b[0]
    cache.matrix(CHENGDU, 30.0, day=str(after(1)), depot="HUB-07")
    cache.matrix(CHENGDU[:2], 30.0, day=str(DAY), depot="HUB-07")
    assert len(calls) == 3
    cache.matrix(CHENGDU, 30.0, day=str(DAY), depot="HUB-07")  # evicted (LRU of 2)
    assert len(calls) == 4
    with pytest.raises(ValueError):
        a[0][0, 1] = 1.0  # cached matrices are read-only
