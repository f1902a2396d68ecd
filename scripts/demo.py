"""`coldchain demo`: the day of a sample city on embedded defaults.

Each stage prints what it did; files go under the output folder. Stages that later
issues add (allocation, routing, telemetry, delivery, audit) plug in here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.panel import Panel
from rich.table import Table

from scripts.console import err, out


def _embedded_environment(output: Path) -> None:
    """Point every embedded default at the output folder and start from a clean database."""
    output.mkdir(parents=True, exist_ok=True)
    os.environ["COLDCHAIN_DATA_DIR"] = str(output.resolve())
    if not os.environ.get("COLDCHAIN_DATABASE_URL"):
        for name in ("coldchain.db", "celery-broker.db", "celery-results.db"):
            for suffix in ("", "-wal", "-shm"):
                (output / f"{name}{suffix}").unlink(missing_ok=True)
    from core.db import reset_caches

    reset_caches()


def network_table(summary: dict) -> Table:
    table = Table(title="network", title_justify="left", pad_edge=False)
    for col, justify in (("code", "left"), ("name", "left"), ("parent", "left"), ("hours", "left"),
                         ("F/C/A litres", "right"), ("area", "left"), ("vans", "right"), ("skus", "right"),
                         ("units", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for n in summary["nodes"]:
        table.add_row(n["code"], n["name"].split(" (")[0][:10], n["parent"] or "—", n["hours"],
                      f"{n['frozen_l']:.0f}/{n['chilled_l']:.0f}/{n['ambient_l']:.0f}",
                      "polygon" if n["area"] == "polygon" else "5 km", str(n["vans"]), str(n["skus"]),
                      str(n["units"]))
    return table


def plan_stage(day, output: Path, time_limit: float) -> list[str]:  # noqa: ANN001
    """Plan every depot as Celery tasks on two local worker processes (the embedded transport)."""
    import json

    from core.db import session_scope
    from fulfillment.service import day_allocations
    from routing.service import day_routes
    from scripts.planning import plan_day

    err.print(f"[bold]3. routes[/] planning each depot as a Celery task, {time_limit:.0f} s per depot")
    results = plan_day(day, time_limit, workers=2, actor="demo")
    with session_scope() as session:
        plan = {"date": day.isoformat(), **day_allocations(session, day), **day_routes(session, day)}
    (output / "plan.json").write_text(json.dumps(plan, ensure_ascii=False, indent=1))
    stops = sum(len(r["stops"]) for r in plan["routes"])
    km = sum(r["distance_km"] for r in plan["routes"])
    failed = [r["depot"] for r in results if "error" in r]
    return [f"{len(plan['routes'])} van routes, {stops} stops, {km:.0f} km; {len(plan['unserved'])} orders "
            f"unserved with a reason (plan.json)" + (f"; planning failed at {', '.join(failed)}" if failed else "")]


def exports_stage(day, output: Path) -> list[str]:  # noqa: ANN001
    """What dispatchers and drivers look at: the day's map, a route sheet and GeoJSON per van."""
    import json

    from sqlalchemy import select

    from core.db import session_scope
    from routing.exports import day_map_png, route_geojson, route_sheet_pdf
    from routing.models import Plan, Route

    routes_dir = output / "routes"
    routes_dir.mkdir(exist_ok=True)
    with session_scope() as session:
        day_map_png(session, day, output / "routes.png")
        vans = sorted({r.vehicle.code for r in session.scalars(
            select(Route).join(Plan).where(Plan.day == day, Plan.status == "current"))})
        for van in vans:
            (routes_dir / f"{van}.geojson").write_text(json.dumps(route_geojson(session, day, van), ensure_ascii=False))
            route_sheet_pdf(session, day, van, routes_dir / f"{van}.pdf")
    err.print(f"[bold]4. exports[/] map routes.png; GeoJSON and a driver's route sheet for {len(vans)} vans")
    return [f"routes.png (map), routes/*.geojson and routes/*.pdf (driver route sheets) for {len(vans)} vans"]


def telemetry_stage(day, output: Path) -> list[str]:  # noqa: ANN001
    """Drive the vans: simulated telemetry over real MQTT into the ingestor, rules raise alerts."""
    import contextlib
    import json
    import threading
    from collections import Counter
    from datetime import datetime

    from sqlalchemy import func, select

    from core.db import session_scope
    from core.timeutil import to_local
    from scripts.cli import mqtt_url_or_embedded
    from scripts.simulate import simulate_fleet
    from telemetry.ingest import Ingestor
    from telemetry.models import Alert, TelemetryReject, TelemetrySample
    from telemetry.service import alert_view
    from traceability.service import sync_vans

    err.print("[bold]5. telemetry[/] vans publish over MQTT; the ingestor stores and raises alerts")
    with session_scope() as session:  # the vans are loaded: the rules learn each compartment's products
        sync_vans(session, day=day)
    with contextlib.ExitStack() as stack:
        url = mqtt_url_or_embedded(stack)
        ingestor = Ingestor(url, client_id="coldchain-demo-ingest", tick_every=5.0)
        thread = threading.Thread(target=ingestor.run, name="ingest", daemon=True)
        thread.start()
        ingestor.connected.wait(15)
        sent = simulate_fleet(url, date=day, speed=0, garbage=True, incidents=True, console=err)
        expected = sent["samples"]
        deadline = time.monotonic() + 120
        stored = -1
        while time.monotonic() < deadline:
            with session_scope(write=False) as session:
                now_stored = session.scalar(select(func.count()).select_from(TelemetrySample))
            if now_stored == stored and ingestor.inbox.empty() and (not expected or now_stored >= expected):
                break
            stored = now_stored
            time.sleep(1.0)
        ingestor.stop_event.set()
        thread.join(30)
    with session_scope(write=False) as session:
        alerts = [alert_view(a) for a in session.scalars(select(Alert).order_by(Alert.started_at))]
        rejects = session.scalar(select(func.count()).select_from(TelemetryReject))
    (output / "alerts.json").write_text(json.dumps(alerts, ensure_ascii=False, indent=1))
    table = Table("vehicle", "compartment", "kind", "started", "ended", "peak", "limit (set by)", "min", "late",
                  title="alerts", title_justify="left")

    def local(iso: str | None) -> str:
        return to_local(datetime.fromisoformat(iso)).strftime("%m-%d %H:%M") if iso else ""

    def limit(details: dict | None) -> str:
        d = details or {}
        for key in ("threshold_c", "threshold_g", "threshold_minutes"):
            if key in d:
                cargo = d.get("cargo") or []
                by = f" ({', '.join(cargo[:2])}{', …' if len(cargo) > 2 else ''})" if cargo else ""
                return f"{d[key]:g}{by}"
        return ""

    for a in alerts:
        table.add_row(a["vehicle"], a["compartment"] or "", a["kind"], local(a["started_at"]),
                      local(a["ended_at"]), "" if a["peak"] is None else f"{a['peak']:.1f}",
                      limit(a.get("details")), f"{a['minutes_out']:.0f}", "yes" if a["late"] else "")
    out.print(table)
    kinds = Counter(a["kind"] for a in alerts)
    return [f"telemetry: {sent['published']} MQTT messages from {len(sent['vehicles'])} vans; "
            f"{stored} of {sent['samples']} samples stored once, {rejects} bad messages kept with a reason "
            f"(expected {sent['rejects']}); alerts: {', '.join(f'{n} {k}' for k, n in kinds.items()) or 'none'}, "
            f"expected {len(sent['alerts'])} (alerts.json)"]


def run_demo(output: Path, n_orders: int = 300, time_limit: float = 3.0) -> None:
    from core.timeutil import local_tomorrow
    from warehouses import samplegen

    started = time.perf_counter()
    _embedded_environment(output)
    from core.db import session_scope
    from scripts.cli import ensure_schema, load_with_progress
    from warehouses.service import network_summary

    day = local_tomorrow()
    scenario_dir = output / "scenario"
    samplegen.write_scenario(samplegen.chengdu(day, n_orders=n_orders), scenario_dir)
    err.print(f"[bold]1. city[/] Chengdu sample for {day} written to {scenario_dir}")
    ensure_schema()
    report = load_with_progress(scenario_dir)
    for error in report.errors:
        err.print(f"  [yellow]{error}")
    with session_scope() as session:
        summary = network_summary(session)
    out.print(network_table(summary))
    totals = summary["totals"]
    orders = report.file("orders.csv")
    lines = [
        f"{totals['flagships']} flagship stores, {totals['hubs']} community hubs, {totals['products']} products, "
        f"{totals['lots']} stock lots, {totals['vehicles']} vans, {totals['drivers']} drivers",
        f"order lines loaded for {day}: {orders.inserted + orders.unchanged + orders.updated} "
        f"(refused: {orders.rejected})",
    ]
    lines += allocate_stage(day, output)
    lines += plan_stage(day, output, time_limit)
    lines += exports_stage(day, output)
    lines += telemetry_stage(day, output)
    lines.append(f"files under {output}/  —  {time.perf_counter() - started:.1f} s")
    out.print(Panel.fit("\n".join(lines), title="coldchain demo"))


def allocate_stage(day, output: Path) -> list[str]:  # noqa: ANN001
    """Allocate, propose transfers, print pick lists (PDF) and the demand sheet."""
    import json
    from collections import Counter

    from core.db import session_scope
    from fulfillment.picklists import demand, pick_lists, render_pdf
    from fulfillment.service import allocate_day, day_allocations, suggest_transfers_for
    from traceability.flows import record_picks

    with session_scope() as session:
        outcome = allocate_day(session, day, actor="demo")
    with session_scope() as session:
        plan = day_allocations(session, day)
        transfers = suggest_transfers_for(session, day)
        lists = pick_lists(session, day)
        record_picks(session, day, actor="demo")  # custody: picked as the pick lists are issued
        needs = demand(session, day)
    err.print(f"[bold]2. allocation[/] {outcome.allocated} orders allocated, {outcome.unallocated} not "
              f"({outcome.seconds:.2f} s)")
    reasons = Counter(u["reason"].split(" (")[0] for u in plan["unallocated"])
    table = Table("reason", "orders", title="unallocated orders", title_justify="left")
    for reason, n in reasons.most_common():
        table.add_row(reason, str(n))
    out.print(table)
    pdf = render_pdf(lists, output / "picklists.pdf")
    (output / "allocations.json").write_text(json.dumps({"date": day.isoformat(), **plan}, ensure_ascii=False,
                                                        indent=1))
    (output / "transfers.json").write_text(json.dumps(transfers, ensure_ascii=False, indent=1))
    (output / "demand.json").write_text(json.dumps(needs, ensure_ascii=False, indent=1))
    return [
        f"allocated {outcome.allocated} orders to {len({a['node'] for a in plan['allocations']})} nodes; "
        f"{outcome.unallocated} unallocated, each with a reason (allocations.json)",
        f"{len(transfers)} transfer proposals flagship → hub (transfers.json); "
        f"pick lists for {len(lists)} nodes ({pdf.name}); to buy: "
        f"{sum(r['to_buy'] for r in needs)} units (demand.json)",
    ]
