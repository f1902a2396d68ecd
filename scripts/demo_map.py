"""The demo's HTML map of the day: every trip as planned, each stop as it ended, the nodes, and where each
alert began. Leaflet comes from the PyPI package xstatic-leaflet and is copied beside the page
(``leaflet/``), so the page opens without a network; there are no map tiles for the same reason (the
routes, stops and nodes are drawn on a plain background, with a scale)."""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path

PAGE = """<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>coldchain — {day}</title>
<link rel="stylesheet" href="leaflet/leaflet.css">
<script src="leaflet/leaflet.js"></script>
<style>
 body {{ margin: 0; font: 14px system-ui, sans-serif; }}
 #map {{ position: absolute; top: 0; bottom: 0; left: 0; right: 320px; background: #f4f1ea; }}
 #side {{ position: absolute; top: 0; bottom: 0; right: 0; width: 320px; overflow: auto; padding: 8px;
         box-sizing: border-box; border-left: 1px solid #ccc; }}
 h1 {{ font-size: 16px; margin: 4px 0 8px; }} td {{ padding: 1px 3px; font-size: 12px; }} .bad {{ color: #b00; }}
</style></head><body>
<div id="map"></div>
<div id="side"><h1>{day}: the day as it ran</h1>
<p>Lines: each van's trips as planned. Stops: <b style="color:#2a2">delivered</b>, <b style="color:#d00">failed</b>,
<b style="color:#e90">damaged</b>, <b style="color:#888">not served</b>. Squares: flagships and hubs.
Triangles: where an alert began. No map tiles (the page works offline).</p>
<div id="alerts"></div></div>
<script>
const DATA = {data};
const map = L.map('map', {{ zoomSnap: 0.25 }});
L.control.scale({{ metric: true, imperial: false }}).addTo(map);
const all = [];
const colors = ['#1f77b4', '#9467bd', '#17becf', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#2ca02c', '#ff7f0e'];
DATA.routes.forEach((r, i) => {{
  const line = [r.depot].concat(r.stops.map(s => [s.lat, s.lon])).concat([r.depot]);
  L.polyline(line, {{ color: colors[i % colors.length], weight: 2, opacity: 0.7 }})
    .bindTooltip(`${{r.vehicle}} trip ${{r.trip}} ${{r.start}}–${{r.end}}`).addTo(map);
  r.stops.forEach(s => {{
    all.push([s.lat, s.lon]);
    const c = s.damaged ? '#e90' : s.status === 'delivered' ? '#2a2' : s.status === 'failed' ? '#d00' : '#888';
    L.circleMarker([s.lat, s.lon], {{ radius: 5, color: c, fillColor: c, fillOpacity: 0.9, weight: 1 }})
      .bindPopup(`<b>${{s.order_ref}}</b> ${{r.vehicle}}<br>ETA ${{s.arrive}}<br>${{s.status}}` +
                 (s.damaged ? '<br>damage reported' : '') + (s.risk ? `<br>risk: ${{s.risk}}` : '')).addTo(map);
  }});
}});
DATA.nodes.forEach(n => {{
  all.push([n.lat, n.lon]);
  const size = n.kind === 'flagship' ? 14 : 9;
  L.marker([n.lat, n.lon], {{ icon: L.divIcon({{ className: '', iconSize: [size, size],
    html: `<div style="width:${{size}}px;height:${{size}}px;background:#333;border:2px solid #fff"></div>` }}) }})
    .bindTooltip(`${{n.code}} ${{n.name}}`).addTo(map);
}});
let rows = '<h1>alerts</h1><table>';
DATA.alerts.forEach(a => {{
  rows += `<tr><td>${{a.vehicle}}</td><td>${{a.kind}}</td><td>${{a.compartment || ''}}</td><td>${{a.started}}</td>` +
          `<td>${{a.ack ? 'acknowledged' : '<span class="bad">open</span>'}}</td></tr>`;
  if (a.pos) {{
    L.marker(a.pos, {{ icon: L.divIcon({{ className: '', iconSize: [16, 16],
      html: '<div style="font-size:16px;color:#c00">&#9650;</div>' }}) }})
      .bindPopup(`<b>${{a.kind}}</b> ${{a.vehicle}} ${{a.compartment || ''}}<br>${{a.started}}`).addTo(map);
  }}
}});
document.getElementById('alerts').innerHTML = rows + '</table>';
if (all.length) map.fitBounds(all, {{ padding: [20, 20] }}); else map.setView([30.66, 104.06], 11);
</script></body></html>
"""


def leaflet_dir() -> Path:
    """Leaflet's files as the xstatic-leaflet package ships them."""
    import xstatic.pkg.leaflet as leaflet

    return Path(leaflet.BASE_DIR)


def write_day_map(day: date, output: Path) -> Path:
    """Write ``output/map.html`` (and ``output/leaflet/``) from the database's view of the day."""
    from sqlalchemy import select

    from core.db import session_scope
    from core.timeutil import to_local
    from delivery.models import StopDamage
    from routing.models import RouteStop
    from routing.service import day_routes
    from telemetry.models import Alert
    from telemetry.service import last_positions
    from warehouses.models import Node, Vehicle

    risk: dict[str, str] = {}
    at_risk = output / "at_risk.json"
    if at_risk.exists():
        for o in json.loads(at_risk.read_text(encoding="utf-8")):
            risk[o["order_ref"]] = f"spoilage {o['spoilage_risk']['level']}, breakage {o['breakage_risk']['level']}"
    with session_scope(write=False) as session:
        routes = day_routes(session, day)["routes"]
        damaged = set(session.scalars(select(RouteStop.stop_id).join(StopDamage, StopDamage.stop_pk == RouteStop.id)))
        nodes = {n.code: n for n in session.scalars(select(Node))}
        alerts = []
        for alert, code in session.execute(select(Alert, Vehicle.code).join(Vehicle, Vehicle.id == Alert.vehicle_id)
                                           .order_by(Alert.started_at)):
            pos = last_positions(session, [code], alert.started_at).get(code)
            alerts.append({"vehicle": code, "kind": alert.kind, "compartment": alert.compartment,
                           "started": f"{to_local(alert.started_at):%H:%M}", "ack": alert.acknowledged_at is not None,
                           "pos": [pos[0], pos[1]] if pos else None})
        node_list = [{"code": n.code, "name": n.name, "kind": n.kind, "lat": n.lat, "lon": n.lon}
                     for n in nodes.values()]
    for r in routes:
        depot = nodes.get(r["depot"])
        r["depot"] = [depot.lat, depot.lon] if depot else [r["stops"][0]["lat"], r["stops"][0]["lon"]]
        for s in r["stops"]:
            s["damaged"] = s["stop_id"] in damaged
            s["risk"] = risk.get(s["order_ref"])
    target = output / "leaflet"
    if target.exists():
        shutil.rmtree(target)
    src = leaflet_dir()
    target.mkdir(parents=True)
    for name in ("leaflet.js", "leaflet.css"):
        shutil.copy2(src / name, target / name)
    shutil.copytree(src / "images", target / "images")
    data = {"day": day.isoformat(), "routes": routes, "nodes": node_list, "alerts": alerts}
    text = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    path = output / "map.html"
    path.write_text(PAGE.format(day=day.isoformat(), data=text), encoding="utf-8")
    return path
