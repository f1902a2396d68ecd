"""The demo's HTML map of the day as it ran: every trip, each stop as it ended (delivered, failed, damage
reported, with the order's risk), the nodes and their service areas, the orders left out with why, and
where each alert began.

The data is routing.daymap.day_map's, the one the dispatcher's console draws, with what only the demo
shows added (damage, risk, alerts); the drawing is the same script (routing/static/daymap.js), copied
beside the page (``daymap/``) with Leaflet from the PyPI package xstatic-leaflet (``leaflet/``), so the
page opens without a network. There are no map tiles for the same reason (a plain background, a scale).
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>coldchain — {day}</title>
<link rel="stylesheet" href="leaflet/leaflet.css">
<link rel="stylesheet" href="daymap/daymap.css">
<script src="leaflet/leaflet.js"></script>
<script src="daymap/daymap.js"></script>
<style>
 body {{ margin: 0; font: 14px system-ui, "Noto Sans CJK SC", sans-serif; }}
 #map {{ position: absolute; top: 0; bottom: 0; left: 0; right: 340px; background: #f4f1ea; }}
 #side {{ position: absolute; top: 0; bottom: 0; right: 0; width: 340px; overflow: auto; padding: 8px;
         box-sizing: border-box; border-left: 1px solid #ccc; }}
 h1 {{ font-size: 16px; margin: 4px 0 8px; }} h2 {{ font-size: 14px; margin: 12px 0 4px; }}
 td {{ padding: 1px 3px; font-size: 12px; }} .bad {{ color: #b00; }}
</style></head><body>
<div id="map"></div>
<div id="side"><h1>{day}: the day as it ran</h1>
<p id="summary"></p>
<p>Lines: each van's trips as planned. Numbered stops in the van's colour, filled by how they ended (the legend).
Triangles: where an alert began. No map tiles (the page works offline).</p>
<div id="alerts"></div><div id="left"></div></div>
<script>
const DATA = {data};
const drawn = DayMap.create("map", {{ alerts: true }}).draw(DATA);
const esc = DayMap.escape;
const ended = (status) => DATA.routes.reduce((n, r) => n + r.stops.filter((s) => s.status === status).length, 0);
document.getElementById("summary").textContent = `${{DATA.routes.length}} trips · ${{drawn.stops}} stops · ` +
  `${{ended("delivered")}} delivered · ${{ended("failed")}} failed · ${{drawn.left.length}} not on a route`;
let rows = `<h2>alerts (${{DATA.alerts.length}})</h2><table class="alerts">`;
DATA.alerts.forEach((a) => {{
  rows += `<tr><td>${{esc(a.vehicle)}}</td><td>${{esc(a.kind)}}</td><td>${{esc(a.compartment || "")}}</td>` +
          `<td>${{esc(a.started)}}</td><td>${{a.ack ? "acknowledged" : '<span class="bad">open</span>'}}</td></tr>`;
}});
document.getElementById("alerts").innerHTML = rows + "</table>";
let left = `<h2>not on a route (${{drawn.left.length}})</h2><table class="left">`;
drawn.left.forEach((u) => {{
  left += `<tr><td>${{esc(u.order_ref)}}</td><td>${{u.what}}</td><td>${{esc(u.reason)}}</td></tr>`;
}});
document.getElementById("left").innerHTML = left + "</table>";
document.body.dataset.drawn = "1";
</script></body></html>
"""


def leaflet_dir() -> Path:
    """Leaflet's files as the xstatic-leaflet package ships them."""
    import xstatic.pkg.leaflet as leaflet

    return Path(leaflet.BASE_DIR)


def _copy_assets(output: Path) -> None:
    """Leaflet (xstatic-leaflet) and the shared drawing script beside the page, replacing older copies."""
    from routing.daymap import FILES, STATIC

    for name in ("leaflet", "daymap"):
        if (output / name).exists():
            shutil.rmtree(output / name)
    src = leaflet_dir()
    (output / "leaflet").mkdir(parents=True)
    for file in ("leaflet.js", "leaflet.css"):
        shutil.copy2(src / file, output / "leaflet" / file)
    shutil.copytree(src / "images", output / "leaflet" / "images")
    (output / "daymap").mkdir()
    for file in FILES:
        shutil.copy2(STATIC / file, output / "daymap" / file)


def write_day_map(day: date, output: Path) -> Path:
    """Write ``output/map.html`` (with ``output/leaflet/`` and ``output/daymap/``) from the database's view
    of the day: routing.daymap.day_map, plus each stop's damage and risk (``output/at_risk.json``, written
    by the demo before) and the day's alerts with where each began."""
    from sqlalchemy import select

    from core.db import session_scope
    from core.timeutil import to_local
    from delivery.models import StopDamage
    from routing.daymap import day_map
    from routing.models import RouteStop
    from telemetry.models import Alert
    from telemetry.service import last_positions
    from warehouses.models import Vehicle

    risk: dict[str, str] = {}
    at_risk = output / "at_risk.json"
    if at_risk.exists():
        for o in json.loads(at_risk.read_text(encoding="utf-8")):
            risk[o["order_ref"]] = f"spoilage {o['spoilage_risk']['level']}, breakage {o['breakage_risk']['level']}"
    with session_scope(write=False) as session:
        data = day_map(session, day)
        damaged = set(session.scalars(select(RouteStop.stop_id).join(StopDamage, StopDamage.stop_pk == RouteStop.id)))
        alerts = []
        for alert, code in session.execute(select(Alert, Vehicle.code).join(Vehicle, Vehicle.id == Alert.vehicle_id)
                                           .order_by(Alert.started_at)):
            pos = last_positions(session, [code], alert.started_at).get(code)
            alerts.append({"vehicle": code, "kind": alert.kind, "compartment": alert.compartment,
                           "started": f"{to_local(alert.started_at):%H:%M}", "ack": alert.acknowledged_at is not None,
                           "pos": [pos[0], pos[1]] if pos else None})
    for r in data["routes"]:
        for s in r["stops"]:
            s["damaged"] = s["stop_id"] in damaged
            s["risk"] = risk.get(s["order_ref"])
    data["alerts"] = alerts
    _copy_assets(output)
    text = json.dumps(data, ensure_ascii=False, default=str).replace("</", "<\\/")
    path = output / "map.html"
    path.write_text(PAGE.format(day=day.isoformat(), data=text), encoding="utf-8")
    return path
