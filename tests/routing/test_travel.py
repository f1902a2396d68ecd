"""Travel models: the contract's geodesic x 1.3 default, the OSRM client, the cache."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from geopy.distance import geodesic

from core.geo import geodesic_matrix
from routing.travel import (
    CachedTravel,
    FileMatrixStore,
    GeodesicTravel,
    OsrmError,
    OsrmTravel,
    RedisMatrixStore,
    TravelModel,
    fast_geodesic_matrix,
    travel_model,
)
from tests.support import DAY, after, free_port

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


def test_fast_matrix_agrees_with_vincenty_on_city_and_far_pairs():
    """The local-radii formula on a city's pairs, Vincenty on the far ones: both within 2e-5 of the exact geodesic."""
    rng = np.random.default_rng(3)
    pts = [(30.66 + rng.uniform(-0.3, 0.3), 104.07 + rng.uniform(-0.3, 0.3)) for _ in range(300)]
    pts += [(31.5, 104.07), (39.9, 116.4), (30.66, 104.07)]  # 93 km north, Beijing, a duplicate of the centre
    fast = fast_geodesic_matrix(pts)
    exact = geodesic_matrix(pts)
    assert fast.shape == (303, 303) and np.all(np.diag(fast) == 0.0)
    rel = np.abs(fast - exact) / np.where(exact > 0, exact, 1.0)
    assert rel.max() < 2e-5
    assert np.allclose(fast, fast.T)


class _Counting(GeodesicTravel):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def matrix(self, points, speed_kmh):  # noqa: ANN001, ANN201
        self.calls += 1
        return super().matrix(points, speed_kmh)


def _stores(tmp_path: Path) -> dict:
    stores = {"file": FileMatrixStore(tmp_path / "matrices")}
    url = os.environ.get("COLDCHAIN_BROKER_URL", "")
    if url.startswith("redis://"):
        stores["redis"] = RedisMatrixStore(url)
    return stores


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_a_second_process_reads_the_days_matrix_from_the_shared_store(tmp_path: Path, kind: str):
    """Two caches over one store stand for two worker processes: what the first built, the second reads."""
    store = _stores(tmp_path).get(kind)
    if store is None:
        pytest.skip("the Redis store is tested in the run with COLDCHAIN_BROKER_URL=redis://…")
    namespace = uuid.uuid4().hex[:12]  # a database of its own
    one, two = _Counting(), _Counting()
    first = CachedTravel(one, store=store, namespace=namespace)
    second = CachedTravel(two, store=store, namespace=namespace)
    a = first.matrix(CHENGDU, 30.0, day=str(DAY))
    b = second.matrix(CHENGDU, 30.0, day=str(DAY))
    assert (one.calls, first.builds, first.shared_hits) == (1, 1, 0)
    assert (two.calls, second.builds, second.shared_hits) == (0, 0, 1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    second.matrix(CHENGDU, 25.0, day=str(DAY))  # another speed is another matrix
    other = CachedTravel(_Counting(), store=store, namespace=uuid.uuid4().hex[:12])
    other.matrix(CHENGDU, 30.0, day=str(DAY))  # another database does not read this one's
    assert (second.builds, other.builds) == (1, 1)


def test_a_cache_that_is_down_costs_a_rebuild_not_the_plan(caplog):  # noqa: ANN001
    model = _Counting()
    cache = CachedTravel(model, store=RedisMatrixStore(f"redis://127.0.0.1:{free_port()}/0"), namespace="x")
    seconds, _metres = cache.matrix(CHENGDU, 36.0, day=str(DAY))
    assert model.calls == 1 and seconds[0, 1] > 0
    assert "matrix cache read failed" in caplog.text and "matrix cache write failed" in caplog.text


def test_the_file_store_forgets_old_days(tmp_path: Path):
    store = FileMatrixStore(tmp_path, keep_days=2)
    store.put("k-old", str(after(-5)), b"old")
    store.put("k-new", str(DAY), b"new")
    assert store.get("k-new", str(DAY)) == b"new"
    assert store.get("k-old", str(after(-5))) is None
    assert not (tmp_path / str(after(-5))).exists()
