// The day on a Leaflet map: one script for the dispatcher's console and the demo's offline page.
// It draws routing.daymap.day_map's data (nodes and service areas, each van's trips with numbered stops
// coloured by how they ended, the orders left out with why) and what a face adds: alerts where they began
// (data.alerts, the demo), the vans' last fixes (showPositions, the console). Needs Leaflet (window.L) only:
// no network, no build step. Marker classes (route-line, stop-num, node, left, van-pos, alert-pos) are what
// the browser tests count (the legend's swatches are key-stop, not stop-num).
"use strict";
window.DayMap = (() => {
  const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
                   "#469990", "#800000", "#808000", "#000075", "#bfef45", "#fabed4", "#dcbeff", "#ffd8b1"];
  const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escape = (text) => String(text ?? "").replace(/[&<>"']/g, (c) => ENTITIES[c]);
  const STATUS_TEXT = { planned: "to visit", arrived: "at the door", delivered: "delivered", failed: "failed" };

  // The legend, folded (a <details>) on a narrow map such as a phone's, where it would hide the stops.
  function legend(withAlerts, open) {
    const control = L.control({ position: "bottomleft" });
    control.onAdd = () => {
      const div = L.DomUtil.create("details", "daymap-legend");
      div.open = open;
      const stop = (cls, text) => `<span class="key-stop ${cls}">1</span> ${text}`;
      const rows = [stop("stop-planned", "to visit"), stop("stop-delivered", "delivered"),
        stop("stop-failed", "failed"), stop("stop-planned stop-damaged", "damage reported"),
        '<span class="key-node"></span> flagship / hub', '<span class="key-left key-unallocated"></span> unallocated',
        '<span class="key-left key-unserved"></span> unserved'];
      if (withAlerts) rows.push('<span class="key-alert">&#9650;</span> alert began');
      div.innerHTML = `<summary>Legend</summary>${rows.map((row) => `<div>${row}</div>`).join("")}`;
      L.DomEvent.disableClickPropagation(div);
      return div;
    };
    return control;
  }

  // element: the map's element or its id; options: tileUrl, tileAttribution (none: a plain background),
  // alerts (true: an alerts layer and its legend row).
  function create(element, options = {}) {
    const map = L.map(element, { zoomSnap: 0.25 });
    if (options.tileUrl) {
      L.tileLayer(options.tileUrl, { maxZoom: 19, attribution: options.tileAttribution || "" }).addTo(map);
    }
    L.control.scale({ metric: true, imperial: false }).addTo(map);
    map.setView([30.66, 104.06], 11);
    const layers = { areas: L.layerGroup().addTo(map), nodes: L.layerGroup().addTo(map),
                     routes: L.layerGroup().addTo(map), left: L.layerGroup().addTo(map),
                     alerts: L.layerGroup().addTo(map), vans: L.layerGroup().addTo(map) };
    const named = { "Service areas": layers.areas, "Depots": layers.nodes, "Routes": layers.routes,
                    "Not on a route": layers.left };
    named[options.alerts ? "Alerts" : "Vans"] = options.alerts ? layers.alerts : layers.vans;
    L.control.layers(null, named, { collapsed: true }).addTo(map);
    legend(Boolean(options.alerts), map.getContainer().clientWidth > 600).addTo(map);
    const colourOf = {};
    const colour = (van) => colourOf[van] || (colourOf[van] = COLOURS[Object.keys(colourOf).length % COLOURS.length]);
    let fitted = false;

    function drawNodes(nodes, bounds) {
      for (const n of nodes) {
        const flagship = n.kind === "flagship";
        const style = { color: flagship ? "#12263f" : "#0b6bcb", weight: 1, fillOpacity: 0.05, className: "area" };
        if (n.area) n.area.forEach((ring) => L.polygon(ring, style).addTo(layers.areas));
        else if (n.radius_km) L.circle([n.lat, n.lon], { ...style, radius: n.radius_km * 1000 }).addTo(layers.areas);
        L.circleMarker([n.lat, n.lon], { radius: flagship ? 9 : 6, color: "#12263f", weight: 2,
          fillColor: flagship ? "#12263f" : "#fff", fillOpacity: 1, className: `node node-${n.kind}` })
          .bindPopup(`<b>${escape(n.name)}</b><br>${escape(n.code)} · ${flagship ? "flagship" : "hub"}` +
                     (n.parent ? `<br>supplied from ${escape(n.parent)}` : ""))
          .bindTooltip(escape(n.name)).addTo(layers.nodes);
        bounds.push([n.lat, n.lon]);
      }
    }

    function drawRoutes(data, bounds) {
      const depots = Object.fromEntries(data.nodes.map((n) => [n.code, [n.lat, n.lon]]));
      let stops = 0;
      for (const r of data.routes) {
        const c = colour(r.vehicle);
        const depot = depots[r.depot];
        const line = (depot ? [depot] : []).concat(r.stops.map((s) => [s.lat, s.lon]));
        if (depot) line.push(depot);
        L.polyline(line, { color: c, weight: 3, opacity: 0.85, className: "route-line" })
          .bindPopup(`<b>${escape(r.vehicle)}</b> trip ${r.trip} from ${escape(r.depot)}<br>${r.start}–${r.end} · ` +
                     `${r.stops.length} stops · ${r.distance_km} km`).addTo(layers.routes);
        r.stops.forEach((s, i) => {
          stops += 1;
          const cls = `stop-num stop-${escape(s.status)}${s.damaged ? " stop-damaged" : ""}`;
          const icon = L.divIcon({ className: "", html: `<div class="${cls}" style="--van:${c}">${i + 1}</div>`,
                                   iconSize: [22, 22], iconAnchor: [11, 11] });
          L.marker([s.lat, s.lon], { icon, keyboard: false })
            .bindPopup(`<b>${escape(s.order_ref)}</b> · stop ${i + 1} of ${escape(r.vehicle)}` +
                       (r.trip > 1 ? ` (trip ${r.trip})` : "") + `<br>ETA ${s.arrive} (leaves ${s.depart})<br>` +
                       escape(STATUS_TEXT[s.status] || s.status) + (s.damaged ? "<br>damage reported" : "") +
                       (s.risk ? `<br>risk: ${escape(s.risk)}` : "")).addTo(layers.routes);
          bounds.push([s.lat, s.lon]);
        });
      }
      return stops;
    }

    function drawLeft(data) {
      const outs = data.unallocated_at.map((u) => ({ ...u, what: "unallocated" }))
        .concat(data.unserved_at.map((u) => ({ ...u, what: "unserved" })));
      for (const u of outs) {
        if (u.lat === null || u.lon === null) continue;
        L.circleMarker([u.lat, u.lon], { radius: 5, color: u.what === "unallocated" ? "#b42318" : "#b54708",
          weight: 2, fillOpacity: 0.6, className: `left left-${u.what}` })
          .bindPopup(`<b>${escape(u.order_ref)}</b> ${u.what}<br>${escape(u.reason)}`).addTo(layers.left);
      }
      return outs;
    }

    function drawAlerts(alerts) {
      for (const a of alerts) {
        if (!a.pos) continue;
        const icon = L.divIcon({ className: "", html: '<div class="alert-pos">&#9650;</div>', iconSize: [16, 16],
                                 iconAnchor: [8, 12] });
        L.marker(a.pos, { icon, zIndexOffset: 500 })
          .bindPopup(`<b>${escape(a.kind)}</b> ${escape(a.vehicle)} ${escape(a.compartment || "")}<br>` +
                     `began ${escape(a.started)}${a.ack ? " · acknowledged" : " · open"}`).addTo(layers.alerts);
      }
    }

    // Draw (or redraw) the day; returns what was drawn: { vans, stops, left } for the face's own panels.
    function draw(data) {
      for (const [name, layer] of Object.entries(layers)) if (name !== "vans") layer.clearLayers();
      const bounds = [];
      drawNodes(data.nodes, bounds);
      const stops = drawRoutes(data, bounds);
      const left = drawLeft(data);
      if (data.alerts) drawAlerts(data.alerts);
      if (!fitted && bounds.length) { map.fitBounds(bounds, { padding: [20, 20] }); fitted = true; }
      return { vans: [...new Set(data.routes.map((r) => r.vehicle))].sort(), stops, left };
    }

    const vanMarkers = {};
    // The vans' last fixes [{vehicle, lat, lon, ts}]: moved in place, the ones gone taken off.
    function showPositions(list) {
      const seen = new Set();
      for (const p of list) {
        seen.add(p.vehicle);
        const icon = L.divIcon({ className: "", iconSize: null, iconAnchor: [0, 0],
          html: `<div class="van-pos" title="${escape(p.vehicle)}">${escape(p.vehicle)}</div>` });
        const text = `<b>${escape(p.vehicle)}</b><br>last fix ${new Date(p.ts).toLocaleTimeString()}`;
        if (vanMarkers[p.vehicle]) vanMarkers[p.vehicle].setLatLng([p.lat, p.lon]).setPopupContent(text);
        else vanMarkers[p.vehicle] = L.marker([p.lat, p.lon], { icon, zIndexOffset: 1000 }).bindPopup(text).addTo(layers.vans);
      }
      for (const [code, marker] of Object.entries(vanMarkers)) {
        if (!seen.has(code)) { layers.vans.removeLayer(marker); delete vanMarkers[code]; }
      }
    }

    return { map, layers, colour, draw, showPositions };
  }

  return { create, escape, COLOURS };
})();
