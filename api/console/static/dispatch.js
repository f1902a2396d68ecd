// The dispatcher's page: the day's map (routing/static/daymap.js over Leaflet from the xstatic-leaflet package)
// and the day's work: the panels, the buttons, the live stream.
"use strict";
(() => {
  const { post, get, el } = window.Console;
  const root = document.getElementById("dispatch");
  const day = root.dataset.day;
  const base = root.dataset.base;
  // the map is routing/static/daymap.js (shared with the demo's page); this page adds its panels
  const dayMap = window.DayMap.create("map", { tileUrl: root.dataset.tileUrl,
                                               tileAttribution: root.dataset.tileAttribution });

  function draw(data) {
    const drawn = dayMap.draw(data);
    const depotSelect = document.getElementById("plan-depot");
    const chosen = depotSelect.value;
    depotSelect.replaceChildren(el("option", { value: "" }, "every depot"));
    const nodeList = document.getElementById("nodes");
    nodeList.replaceChildren();
    for (const n of data.nodes) {
      depotSelect.append(el("option", { value: n.code }, `${n.code} ${n.name}`));
      nodeList.append(el("li", { class: "node-name" }, el("b", {}, n.name), " ", el("span", { class: "muted" },
        `${n.code} · ${n.kind}`)));
    }
    depotSelect.value = chosen;

    const tbody = document.querySelector("#routes tbody");
    tbody.replaceChildren();
    for (const r of data.routes) {
      const c = dayMap.colour(r.vehicle);
      const sheet = `${base}/routes/${encodeURIComponent(r.vehicle)}/sheet.pdf?date=${day}`;
      tbody.append(el("tr", {}, el("td", {}, el("span", { class: "badge", style: `background:${c};color:#fff` },
        r.vehicle), r.trip > 1 ? ` trip ${r.trip}` : ""), el("td", {}, r.depot), el("td", {}, r.stops.length),
        el("td", {}, `${r.start}–${r.end}`), el("td", {}, el("a", { href: sheet, target: "_blank" }, "PDF"))));
    }
    document.getElementById("route-count").textContent = data.routes.length;

    const left = document.querySelector("#left tbody");
    left.replaceChildren();
    for (const u of drawn.left) {
      left.append(el("tr", { class: `left-${u.what}` }, el("td", {}, u.order_ref, el("br"),
        el("span", { class: `badge ${u.what === "unallocated" ? "bad" : "warn"}` }, u.what)), el("td", {}, u.reason)));
    }
    document.getElementById("left-count").textContent = drawn.left.length;

    const vanSelect = document.getElementById("replan-van");
    const keep = vanSelect.value;
    vanSelect.replaceChildren(...drawn.vans.map((v) => el("option", { value: v }, v)));
    if (keep) vanSelect.value = keep;
    document.getElementById("summary").textContent =
      `${data.date}: ${data.nodes.length} depots · ${data.routes.length} routes · ${drawn.stops} stops · ` +
      `${data.unallocated.length} unallocated · ${data.unserved.length} unserved`;
    root.dataset.loaded = String(Date.now());
  }

  async function load() {
    const started = performance.now();
    const data = await get(`${base}/data?date=${day}`);
    if (!data) return;
    const fetched = performance.now();
    draw(data);
    root.dataset.fetchMs = String(Math.round(fetched - started));
    root.dataset.drawMs = String(Math.round(performance.now() - fetched));
    root.dataset.sinceNavigationMs = String(Math.round(performance.now()));
  }

  const showPositions = (list) => dayMap.showPositions(list);

  function showAlerts(list) {
    const ul = document.getElementById("alerts");
    document.getElementById("alert-count").textContent = list.length;
    document.getElementById("alert-count").className = list.length ? "badge bad" : "badge";
    if (!list.length) { ul.replaceChildren(el("li", { class: "muted" }, "No open alerts.")); return; }
    ul.replaceChildren(...list.map((a) => el("li", { class: "alert", "data-alert": a.id },
      el("b", {}, a.vehicle), " ", el("span", { class: "badge bad" }, a.kind),
      a.compartment ? ` ${a.compartment}` : "", a.peak !== null ? ` · peak ${a.peak}` : "",
      ` · since ${a.started_at ? new Date(a.started_at).toLocaleTimeString() : "?"}`,
      a.at_risk.length ? el("div", { class: "muted" }, "at risk: ",
        a.at_risk.map((p) => `${p.name} (${p.sku}) ×${p.qty} → ${p.order_refs.join(", ")}`).join("; "))
        : el("div", { class: "muted" }, "nothing aboard that compartment"))));
  }

  function live() {
    const status = document.getElementById("live");
    const source = new EventSource(`${base}/events?date=${day}`);
    source.onopen = () => { status.textContent = "● live"; };
    source.onerror = () => { status.textContent = "○ reconnecting"; };
    source.addEventListener("alerts", (e) => showAlerts(JSON.parse(e.data)));
    source.addEventListener("positions", (e) => showPositions(JSON.parse(e.data)));
    let first = true;
    source.addEventListener("plan", () => { if (first) { first = false; return; } load(); });
  }

  function fail(target, err) { target.replaceChildren(el("p", { class: "error", role: "alert" }, err.message)); }

  async function watchJobs(links, target) {
    target.replaceChildren();
    const rows = links.map((l) => {
      const bar = el("div");
      const label = el("span", { class: "muted" }, `${l.depot}: queued`);
      target.append(el("div", { class: "job", "data-job": l.job }, label, el("div", { class: "progress" }, bar)));
      return { ...l, bar, label, done: false };
    });
    const results = [];
    while (rows.some((r) => !r.done)) {
      for (const r of rows.filter((x) => !x.done)) {
        const job = await get(`${base}/jobs/${r.job}`);
        const p = job.progress || {};
        let pct = job.state === "SUCCESS" ? 100 : p.fraction !== undefined ? 100 * p.fraction : 10;
        if (job.state === "STARTED") pct = Math.max(pct, 15);
        r.bar.style.width = `${Math.min(100, pct)}%`;
        r.label.textContent = `${r.depot}: ${job.state.toLowerCase()}` + (p.stage ? ` (${p.stage})` : "");
        if (job.state === "SUCCESS" || job.state === "FAILURE") {
          r.done = true;
          r.label.textContent = job.state === "SUCCESS" ? `${r.depot}: done` : `${r.depot}: failed — ${job.error}`;
          r.label.className = job.state === "SUCCESS" ? "ok-text" : "error";
          results.push(job);
        }
      }
      await new Promise((ok) => setTimeout(ok, 400));
    }
    return results;
  }

  document.getElementById("import-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = document.getElementById("import-result");
    const form = new FormData(e.target);
    form.append("csrf_token", window.Console.csrf);
    try {
      const r = await post(`${base}/import`, form);
      out.replaceChildren(el("p", {}, `${r.orders} orders taken, ${r.lines.rejected ?? r.rejected.length} rows refused.`));
      if (r.rejected.length) {
        out.append(el("table", { class: "import-errors" }, el("tr", {}, el("th", {}, "Line"), el("th", {}, "Field"),
          el("th", {}, "Why")), [...r.rejected].sort((a, b) => a.line - b.line).map((x) => el("tr", {}, el("td", {}, `${x.file}:${x.line}`),
          el("td", {}, x.field), el("td", {}, x.reason)))));
      }
      load();
    } catch (err) { fail(out, err); }
  });

  document.getElementById("allocate").addEventListener("click", async (e) => {
    const out = document.getElementById("allocate-result");
    e.target.disabled = true;
    try {
      const r = await post(`${base}/allocate`, { date: day });
      out.replaceChildren(el("p", { class: "allocated" }, `${r.allocated} orders allocated, ` +
        `${r.unallocated.length} unallocated (${r.seconds} s).`));
      load();
    } catch (err) { fail(out, err); } finally { e.target.disabled = false; }
  });

  async function showTransfers(note) {
    const out = document.getElementById("transfers");
    try {
      const r = await get(`${base}/transfers?date=${day}`);
      const accept = (t) => async (e) => {
        e.target.disabled = true;
        try {
          const moved = await post(`${base}/transfers/accept`, { date: day, from: t.from, to: t.to, sku: t.sku,
                                                                 lot: t.lot, qty: t.qty });
          showTransfers(el("p", { class: "accepted" }, `Moved ${moved.qty} × ${moved.sku} (lot ${moved.lot}) ` +
            `from ${moved.from} to ${moved.to}. Allocate the day again to use it.`));
        } catch (err) { fail(out, err); }
      };
      out.replaceChildren(...(note ? [note] : []), r.transfers.length ? el("table", { class: "transfers" },
        el("tr", {}, el("th", {}, "Move"), el("th", {}, "Lot"), el("th", {}, "For"), el("th", {})),
        r.transfers.map((t) => el("tr", {}, el("td", {}, `${t.qty} × ${t.sku}: ${t.from} → ${t.to}`),
          el("td", {}, `${t.lot} (until ${t.expires})`), el("td", {}, t.order_refs.join(", ")),
          el("td", {}, el("button", { type: "button", class: "accept", onclick: accept(t) }, "Accept")))))
        : el("p", { class: "muted" }, "No transfer would help the day's unallocated orders."));
    } catch (err) { fail(out, err); }
  }
  document.getElementById("show-transfers").addEventListener("click", () => showTransfers());

  document.getElementById("plan-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = document.getElementById("plan-progress");
    const button = e.target.querySelector("button");
    const depot = e.target.depot.value;
    button.disabled = true;
    try {
      const r = await post(`${base}/plan`, { date: day, time_limit: Number(e.target.time_limit.value),
                                             depots: depot ? [depot] : null });
      const results = await watchJobs(r.jobs, out);
      out.append(el("p", { class: "planned" }, `${results.filter((j) => j.state === "SUCCESS").length} of ` +
        `${results.length} depots planned.`));
      await load();
    } catch (err) { fail(out, err); } finally { button.disabled = false; }
  });

  document.getElementById("replan-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = document.getElementById("replan-result");
    const button = e.target.querySelector("button");
    button.disabled = true;
    try {
      const link = await post(`${base}/replan`, { date: day, vehicle: e.target.vehicle.value, at: e.target.at.value });
      const [job] = await watchJobs([link], out);
      if (job.state === "SUCCESS") out.append(diffView(job.result));
      await load();
    } catch (err) { fail(out, err); } finally { button.disabled = false; }
  });

  function diffView(result) {
    const d = (result && (result.diff || result)) || {};
    const moved = d.moved || [];
    const etas = (d.etas || []).filter((x) => x.old !== x.new || x.old_vehicle !== x.vehicle);
    const unserved = d.unserved || [];
    return el("div", { class: "diff" },
      el("p", {}, `${moved.length} orders moved to another van, ${etas.length} ETAs changed, ` +
        `${unserved.length} left unserved.`),
      el("table", {}, el("tr", {}, el("th", {}, "Order"), el("th", {}, "Van"), el("th", {}, "ETA")),
        moved.map((m) => el("tr", { class: "moved" }, el("td", {}, m.order_ref), el("td", {}, `${m.from} → ${m.to}`),
          el("td", {}, (etas.find((x) => x.order_ref === m.order_ref) || {}).new || ""))),
        etas.filter((x) => !moved.some((m) => m.order_ref === x.order_ref)).map((x) => el("tr", {},
          el("td", {}, x.order_ref), el("td", {}, x.vehicle), el("td", {}, `${x.old || "–"} → ${x.new}`))),
        unserved.map((u) => el("tr", { class: "unserved" }, el("td", {}, u.order_ref), el("td", {}, u.was || ""),
          el("td", {}, `unserved: ${u.reason}`)))));
  }

  load().catch((err) => { document.getElementById("summary").textContent = `could not load the day: ${err.message}`; });
  live();
})();
