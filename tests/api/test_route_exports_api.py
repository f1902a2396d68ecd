"""Dispatchers get a van's route as GeoJSON, its printable sheet and the day's map, and re-plan over HTTP."""

from __future__ import annotations

from pathlib import Path

from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day
from routing.service import plan_depot
from tests import scenario_files
from tests.support import DAY, assert_problem, same
from tests.support import PLAN_MORE as MORE


def test_route_exports_and_replan(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path, append={"orders.csv": MORE}))
    allocate_day(session, DAY)
    plan_depot(DAY, "FS-01", time_limit=1, sessions=same(session))
    headers = token("dispatcher")
    gj = api.get(f"/api/v1/plans/{DAY}/routes/VAN-01/geojson", headers=headers)
    assert gj.status_code == 200 and gj.headers["content-type"].startswith("application/geo+json")
    features = gj.json()["features"]
    line = next(f for f in features if f["geometry"]["type"] == "LineString")
    lon, lat = line["geometry"]["coordinates"][0]
    assert 103 < lon < 105 and 30 < lat < 31
    sheet = api.get(f"/api/v1/plans/{DAY}/routes/VAN-01/sheet.pdf", headers=headers)
    assert sheet.headers["content-type"] == "application/pdf" and sheet.content[:5] == b"%PDF-"
    png = api.get(f"/api/v1/plans/{DAY}/map.png", headers=headers)
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert_problem(api.get(f"/api/v1/plans/{DAY}/routes/VAN-99/geojson", headers=headers), 404)
    assert_problem(api.get(f"/api/v1/plans/{DAY}/routes/VAN-01/geojson", headers=token("driver")), 403)
    body = assert_problem(api.post(f"/api/v1/plans/{DAY}/replan", json={"type": "cancel_order"},
                                   headers=headers), 422)
    assert body["pointer"] == "/order_ref"
    queued = api.post(f"/api/v1/plans/{DAY}/replan", json={"type": "cancel_order", "order_ref": "B1",
                                                               "time_limit": 1}, headers=headers)
    assert queued.status_code == 202, queued.text  # a job: tests/api/test_replan_job.py runs it on a worker
    assert queued.json()["depot"] == "FS-01"
