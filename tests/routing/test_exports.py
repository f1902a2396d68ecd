"""Route exports: GeoJSON per route, the driver's route sheet PDF, the day map PNG."""

from __future__ import annotations

import json
import struct
from datetime import timedelta
from pathlib import Path

import pytest

from core.errors import NotFound
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day
from routing.exports import day_map_png, route_geojson, route_sheet_pdf
from routing.replan import breakdown, replan
from routing.service import day_routes, plan_depot
from tests.support import DAY, by_van, current, same, start_route
from tests.support import replan_scenario as scenario


@pytest.fixture
def planned(session, tmp_path: Path):  # noqa: ANN001, ANN201
    load_scenario(session, scenario(tmp_path))
    allocate_day(session, DAY)
    plan_depot(DAY, "FS-01", time_limit=1, sessions=same(session))
    return session


def test_geojson_has_the_depot_the_stops_and_the_path_in_lon_lat_order(planned) -> None:  # noqa: ANN001
    exported = {r["vehicle"]: r for r in day_routes(planned, DAY)["routes"]}
    gj = route_geojson(planned, DAY, "VAN-01")
    json.dumps(gj)  # plain JSON
    assert gj["type"] == "FeatureCollection"
    assert gj["properties"]["vehicle"] == "VAN-01" and gj["properties"]["depot"] == "FS-01"
    kinds = [f["properties"]["kind"] for f in gj["features"]]
    stops = exported["VAN-01"]["stops"]
    assert kinds == ["depot"] + ["stop"] * len(stops) + ["route"]
    depot = gj["features"][0]
    assert depot["geometry"] == {"type": "Point", "coordinates": [104.08, 30.657]}  # FS-01 is lat 30.657, lon 104.08
    points = gj["features"][1:-1]
    for f, s in zip(points, stops, strict=True):
        assert f["geometry"]["coordinates"] == [s["lon"], s["lat"]]
        p = f["properties"]
        assert (p["order_ref"], p["stop_id"], p["status"], p["arrive"]) == \
            (s["order_ref"], s["stop_id"], "planned", s["arrive"])
        assert p["eta"].startswith(f"{DAY}T") and p["eta"].endswith("+08:00")
        assert len(p["window"]) == 2 and all(len(w) == 5 for w in p["window"])
    line = gj["features"][-1]["geometry"]
    assert line["type"] == "LineString"
    assert line["coordinates"] == [[104.08, 30.657]] + [[s["lon"], s["lat"]] for s in stops] + [[104.08, 30.657]]
    for lon, lat in line["coordinates"]:
        assert 104 < lon < 105 and 30 < lat < 31
    with pytest.raises(NotFound):
        route_geojson(planned, DAY, "VAN-99")


def test_route_sheet_is_a_pdf_naming_the_van(planned, tmp_path: Path) -> None:  # noqa: ANN001
    out = route_sheet_pdf(planned, DAY, "VAN-03", tmp_path / "sheets" / "VAN-03.pdf")
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    assert b"VAN-03" in data  # in the document's title
    assert len(data) > 2000


def test_day_map_is_a_png_and_shows_a_breakdown(planned, tmp_path: Path) -> None:  # noqa: ANN001
    routes = by_van(current(planned))
    start_route(planned, routes["VAN-01"])
    start_route(planned, routes["VAN-03"])
    now = routes["VAN-01"].start_at + timedelta(minutes=20)
    replan(DAY, "FS-01", breakdown("VAN-01", now, (30.67, 104.07)), time_limit=1, now=now, sessions=same(planned))
    gj = route_geojson(planned, DAY, "VAN-01")
    assert gj["properties"]["status"] == "broken"
    assert gj["features"][-1]["geometry"]["coordinates"][-1] == [104.07, 30.67]  # the path ends where it broke
    # VAN-03 delivers what it carries, goes back to load VAN-01's orders, delivers them: the path shows it
    rescue = route_geojson(planned, DAY, "VAN-03")
    stops = [f for f in rescue["features"] if f["properties"]["kind"] == "stop"]
    again = [i for i, f in enumerate(stops) if f["properties"]["reload_before"]]
    assert len(again) == 1 and 0 < again[0] < len(stops)
    path = rescue["features"][-1]["geometry"]["coordinates"]
    assert path[again[0] + 1] == [104.08, 30.657] and path.count([104.08, 30.657]) == 3
    for depot in (None, "FS-01"):
        out = day_map_png(planned, DAY, tmp_path / f"map-{depot}.png", depot=depot)
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])
        assert 600 <= width <= 2000 and 600 <= height <= 2000
        assert len(data) > 20_000  # something was drawn
    sheet = route_sheet_pdf(planned, DAY, "VAN-03", tmp_path / "VAN-03.pdf")
    assert sheet.read_bytes().startswith(b"%PDF")
