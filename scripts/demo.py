"""`coldchain demo`: the day of a sample city on embedded defaults, run now on a simulated clock.

Stages: the city loaded; orders allocated, pick lists issued; every depot planned (Celery); the
plan's exports; the day itself (scripts/demo_day.py: the clock steps through it while the vans
publish telemetry over MQTT into the ingestor and the drivers report through the driver API over
HTTP); quality staff acknowledge the alerts and look at the orders at risk; the audit chain is
verified and the auditors' exports written; the day's HTML map (scripts/demo_map.py).

Each stage also checks its outcome against what was staged, never against a number written
here: the city's rows against the files the generator wrote, allocation and routing against
the orders loaded, the stored samples, readings, rejects and alerts against what the
simulator staged (multisets of (vehicle, compartment, kind)), the stops, orders and delivery
events against the drivers' staged day. Any difference is printed as a table of expected vs
found, and `run_demo` returns 1 (the command's exit code).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.panel import Panel
from rich.table import Table

from scripts.console import err, out


def compare_staged(what: str, columns: Sequence[str], expected: Iterable[Any] | Mapping[Any, int],
                   found: Iterable[Any] | Mapping[Any, int], show: str = "all") -> tuple[Table | None, list[str]]:
    """Staged vs found as multisets of keys (tuples of ``columns``' values, or mappings key -> count).

    Returns a table (``show``: "all" rows, "differences" only, or None when all agree) and one
    problem line per differing key that names it column by column, e.g. "alert missing: vehicle
    VAN-13, compartment chilled, kind temperature (staged 1, found 0)"."""
    from telemetry.simulator import tally

    rows = tally(expected, found)
    problems: list[str] = []
    table = Table(*columns, "staged", "found", "", title=f"{what}s: staged vs found", title_justify="left")
    shown = 0
    for key, want, got in rows:
        parts = key if isinstance(key, tuple) else (key,)
        cells = ["—" if v is None else str(v) for v in parts]
        if want != got:
            verdict = "missing" if got < want else ("not staged" if want == 0 else "too many")
            named = ", ".join(f"{c} {v}" for c, v in zip(columns, cells, strict=True))
            problems.append(f"{what} {verdict}: {named} (staged {want}, found {got})")
        if show == "all" or (show == "differences" and want != got):
            table.add_row(*cells, str(want), str(got), "ok" if want == got else f"[bold red]{verdict}",
                          style=None if want == got else "red")
            shown += 1
    return (table if shown else None), problems


def _stage_check(stage: str, problems: list[str], table: Table | None = None) -> list[str]:
    """Print a stage's differences loudly; they also make the demo's exit code."""
    if table is not None:
        out.print(table)
    for p in problems:
        err.print(f"  [bold red]{stage}: {p}")
    return [f"{stage}: {p}" for p in problems]


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


def plan_stage(day, output: Path, time_limit: float, problems: list[str]) -> list[str]:  # noqa: ANN001
    """Plan every depot as Celery tasks on two local worker processes (the embedded transport).

    Checked: no depot failed, and every allocated delivery order is on exactly one stop or
    unserved with a reason."""
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
    modes = _order_modes(output / "scenario")
    allocated = {a["order_ref"] for a in plan["allocations"] if modes.get(a["order_ref"]) == "delivery"}
    placed = [s["order_ref"] for r in plan["routes"] for s in r["stops"]] + [u["order_ref"] for u in plan["unserved"]]
    table, found = compare_staged("delivery order", ("order",), {o: 1 for o in allocated}, placed,
                                  show="differences")
    found += [f"planning failed at {r['depot']}: {r['error']}" for r in results if "error" in r]
    found += [f"unserved without a reason: {u['order_ref']}" for u in plan["unserved"] if not u.get("reason")]
    problems += _stage_check("routes", found, table)
    return [f"{len(plan['routes'])} van routes, {stops} stops, {km:.0f} km; {len(plan['unserved'])} orders "
            f"unserved with a reason (plan.json)" + (f"; planning failed at {', '.join(failed)}" if failed else "")]


def _order_modes(scenario_dir: Path) -> dict[str, str]:
    """order_ref -> mode, as the generator wrote the orders."""
    import csv

    with (scenario_dir / "orders.csv").open(encoding="utf-8", newline="") as f:
        return {row["order_ref"]: row["mode"] for row in csv.DictReader(f)}


def exports_stage(day, output: Path, problems: list[str]) -> list[str]:  # noqa: ANN001
    """What dispatchers and drivers look at: the day's map, a route sheet and GeoJSON per van.

    Checked: the map and, for every van with a route, its GeoJSON and sheet exist and are not empty."""
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
    wanted = [output / "routes.png"] + [routes_dir / f"{van}.{ext}" for van in vans for ext in ("geojson", "pdf")]
    problems += _stage_check("exports", [f"{p} was not written" for p in wanted
                                         if not p.exists() or p.stat().st_size == 0])
    return [f"routes.png (map), routes/*.geojson and routes/*.pdf (driver route sheets) for {len(vans)} vans"]


@dataclass
class DayResult:
    """What the day stage leaves for the later stages and the summary."""

    alerts: list[dict] = field(default_factory=list)
    staged_alerts: int = 0
    drivers: Any = None  # demo_day.DriversOutcome
    staged: Any = None  # demo_day.Staged
    api: str = ""
    lines: list[str] = field(default_factory=list)


def day_stage(day, output: Path, problems: list[str], api: str, seed: int, speed: float,  # noqa: ANN001
              withhold: Sequence[str] = (), withhold_reports: Sequence[str] = ()) -> DayResult:
    """Drive the vans through the planned day on the simulated clock (scripts/demo_day.py).

    Checked against what was staged: samples stored per van, readings none lost and none stored
    twice, rejects by reason, alerts by (vehicle, compartment, kind) and none raised late; every
    driver report answered, every retry answered the stored answer byte for byte."""
    import contextlib
    import threading

    import httpx
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from sqlalchemy import func, select

    from core.db import session_scope
    from core.timeutil import simulated_clock, to_local
    from routing.models import Plan, Route
    from scripts import demo_day
    from scripts.console import mqtt_url_or_embedded
    from scripts.simulate import FleetPublisher, load_fleet
    from telemetry.ingest import Ingestor
    from telemetry.models import Alert, TelemetryReject, TelemetrySample
    from telemetry.service import alert_view, reading_counts
    from telemetry.simulator import Scenario, Simulation
    from traceability.service import sync_vans
    from warehouses.models import Vehicle

    result = DayResult(api=api)
    clock = simulated_clock()
    with session_scope() as session:  # the vans are loaded: the simulated vans keep inside their cargo's limits
        sync_vans(session, day=day)
    with session_scope(write=False) as session:  # the vans that go out (the others stay parked, unsimulated)
        out_today = sorted(session.scalars(select(Vehicle.code).join(Route, Route.vehicle_id == Vehicle.id)
                                           .join(Plan, Plan.id == Route.plan_id)
                                           .where(Plan.day == day, Plan.status == "current").distinct()))
        if not out_today:
            raise RuntimeError(f"no van has a route on {day}: nothing to drive")
        vans, start, end, n_routes, notes = load_fleet(session, day, out_today)
        staged, drivers = demo_day.stage_drivers(session, day, seed)
    with session_scope() as session:
        demo_day.ensure_logins(session, drivers)
    t0 = time.perf_counter()
    sim = Simulation(vans, start, end, seed=seed, scenario=Scenario(garbage=True, on_trips=True), withhold=withhold)
    expected = sim.expected
    messages = sim.messages()
    built = time.perf_counter() - t0
    notes += [f"incident not staged: {s}" for s in expected.skipped]
    notes += [f"{kind} withheld from the stream but still expected" for kind in sorted(sim.withhold)]
    notes += [f"drivers' {kind} reports withheld but still expected" for kind in sorted(set(withhold_reports))]
    sent_actions = [a for a in staged.actions if a.kind not in withhold_reports]
    err.print(f"[bold]5. the day[/] {to_local(start):%Y-%m-%d %H:%M}–{to_local(end):%H:%M} local on the simulated "
              f"clock ({clock.path}): {len(vans)} vans ({n_routes} trips) publish {len(messages)} MQTT messages; "
              f"{len(drivers)} drivers send {len(staged.actions)} reports over HTTP ({len(staged.failed)} failed "
              f"stops, {len(staged.damaged)} damaged, {staged.retries} sent twice); speed "
              f"{'max' if speed <= 0 else f'{speed:g}x'} (telemetry generated in {built:.1f} s)")
    for note in notes:
        err.print(f"  [yellow]{note}")

    def found_alerts() -> list[tuple[str, str | None, str]]:
        with session_scope(write=False) as session:
            return sorted((tuple(r) for r in session.execute(
                select(Vehicle.code, Alert.compartment, Alert.kind).join(Vehicle, Vehicle.id == Alert.vehicle_id))),
                key=lambda k: (k[0], k[1] or "", k[2]))

    staged_alerts = expected.alert_keys()
    clock.set(start)
    day_problems: list[str] = []
    with contextlib.ExitStack() as stack:
        url = mqtt_url_or_embedded(stack)
        http = stack.enter_context(httpx.Client(base_url=api, timeout=60))
        ingestor = Ingestor(url, client_id=f"coldchain-demo-ingest-{seed}", tick_every=demo_day.TICK_S,
                            batch_wait=0.005, on_tick=lambda session: sync_vans(session))
        thread = threading.Thread(target=ingestor.run, name="ingest", daemon=True)
        thread.start()
        stack.callback(thread.join, 30)
        stack.callback(ingestor.stop_event.set)
        if not ingestor.connected.wait(15):
            raise RuntimeError(f"the ingestor could not connect to {url}")
        t0 = time.perf_counter()
        phones = demo_day.Drivers(http, drivers, day)
        phones.fetch_routes(staged)
        err.print(f"  {len(phones.clients)} drivers logged in and fetched their routes in "
                  f"{time.perf_counter() - t0:.1f} s")
        publisher = FleetPublisher(url, [v.code for v in vans], f"{seed}-{int(time.time() * 1000) % 10**8}")
        stack.callback(publisher.close)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err) as bar:
            task = bar.add_task("the day", total=(end - start).total_seconds())
            margin = timedelta(minutes=5)
            busy = [(a - margin, b + margin) for v in vans for a, b in v.trips]
            t0 = time.perf_counter()
            day_problems += demo_day.run_day(clock, ingestor, publisher, messages, phones, sent_actions, start,
                                             end, speed, bar, task, busy)
            err.print(f"  the day ran in {time.perf_counter() - t0:.1f} s of wall time")
            # one more tick of the rule timer after the last sample (durations, silence): the clock moves on
            ticks = ingestor.stats.ticks
            clock.set(max(end, clock.now()) + timedelta(seconds=demo_day.TICK_S))
            deadline = time.monotonic() + 20
            while ingestor.stats.ticks <= ticks and time.monotonic() < deadline:
                time.sleep(0.05)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and found_alerts() != staged_alerts:
                time.sleep(0.25)
        result.drivers = phones.finish()
        day_problems += result.drivers.problems
        result.staged = staged
        ingest_stats = ingestor.stats.as_dict()
    with session_scope(write=False) as session:
        alerts = [alert_view(a) for a in session.scalars(select(Alert).order_by(Alert.started_at))]
        reasons = list(session.scalars(select(TelemetryReject.reason)))
        per_van = dict(session.execute(select(Vehicle.code, func.count()).select_from(TelemetrySample)
                                       .join(Vehicle, Vehicle.id == TelemetrySample.vehicle_id)
                                       .group_by(Vehicle.code)).all())
        readings = reading_counts(session, sim.valid_samples())
        span = [(what, *session.execute(select(func.min(col), func.max(col))).one())
                for what, col in (("stamped", TelemetrySample.ts), ("received", TelemetrySample.received_at))]
    (output / "alerts.json").write_text(json.dumps(alerts, ensure_ascii=False, indent=1))
    out.print(alerts_table(alerts))
    found = [(a["vehicle"], a["compartment"], a["kind"]) for a in alerts]
    alert_table, alert_problems = compare_staged("alert", ("vehicle", "compartment", "kind"), staged_alerts, found)
    alert_problems += [f"alert raised late: {a['vehicle']} {a['compartment'] or '—'} {a['kind']} at "
                       f"{a['started_at']}" for a in alerts if a["late"]]
    alert_problems += [f"alert off the planned day: {a['vehicle']} {a['kind']} started {a['started_at']}, raised "
                       f"{a['raised_at']}" for a in alerts
                       if {to_local(datetime.fromisoformat(a[k])).date() for k in ("started_at", "raised_at")} != {day}]
    reject_table, reject_problems = compare_staged("reject", ("reason",), expected.reject_reasons, reasons,
                                                   show="differences")
    sample_table, sample_problems = compare_staged("sample", ("vehicle",), expected.samples_by_vehicle, per_van,
                                                   show="differences")
    reading_problems = [] if readings.ok else [f"readings: {readings}"]
    reading_problems += [f"samples off the planned day: {what} {lo} to {hi}" for what, lo, hi in span
                         if {to_local(lo).date(), to_local(hi).date()} != {day}]
    out.print(alert_table)
    problems += _stage_check("the day", day_problems + sample_problems + reading_problems + reject_problems
                             + alert_problems, sample_table)
    if reject_table is not None:
        out.print(reject_table)
    result.alerts = alerts
    result.staged_alerts = len(staged_alerts)
    kinds = Counter(a["kind"] for a in alerts)
    staged_kinds = Counter(k for _v, _c, k in staged_alerts)
    d = result.drivers
    result.lines = [
        f"the day {day} on the simulated clock: {ingest_stats['received']} MQTT messages from {len(vans)} vans; "
        f"{sum(per_van.values())} of {expected.samples} samples stored, {readings.lost} readings lost and "
        f"{readings.twice} stored twice; {len(reasons)} bad messages kept with a reason (staged {expected.rejects})",
        f"alerts: {', '.join(f'{n} {k}' for k, n in sorted(kinds.items())) or 'none'} (staged: "
        f"{', '.join(f'{n} {k}' for k, n in sorted(staged_kinds.items())) or 'none'}; alerts.json)",
        f"drivers: {d.routes_fetched} routes fetched, {d.sent} reports sent over HTTP, {d.replays} sent again with "
        f"the same Idempotency-Key ({d.replays_identical} answered the stored answer), {d.refreshes} token refreshes",
    ]
    return result


def alerts_table(alerts: list[dict]) -> Table:
    from core.timeutil import to_local

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
    return table


def deliveries_check(day, staged) -> tuple[list[str], dict]:  # noqa: ANN001
    """The database against what the drivers were staged to do: stops delivered and failed, damage,
    order statuses, one delivery event per report (retries added none), every trip finished."""
    from sqlalchemy import func, select

    from core.db import session_scope
    from core.timeutil import local_datetime
    from delivery.models import DeliveryEvent, StopDamage
    from fulfillment.models import Order
    from routing.models import Plan, Route, RouteStop

    with session_scope(write=False) as session:
        stops = dict(session.execute(
            select(Order.ref, RouteStop.status).join(Order, Order.id == RouteStop.order_id)
            .join(Route, Route.id == RouteStop.route_id).join(Plan, Plan.id == Route.plan_id)
            .where(Plan.day == day, Plan.status == "current")).all())
        statuses = dict(session.execute(select(Order.ref, Order.status).where(Order.ref.in_(list(stops)))).all())
        events = dict(session.execute(select(DeliveryEvent.type, func.count()).group_by(DeliveryEvent.type)).all())
        damage = {ref: int(q) for ref, q in session.execute(
            select(Order.ref, func.sum(StopDamage.qty)).join(Order, Order.id == StopDamage.order_id)
            .group_by(Order.ref))}
        routes = Counter(session.scalars(select(Route.status).join(Plan, Plan.id == Route.plan_id)
                                         .where(Plan.day == day, Plan.status == "current")).all())
        on_time = 0  # delivered, and the van was at the door within the order's window
        delivered = set(session.scalars(select(DeliveryEvent.stop_pk).where(DeliveryEvent.type == "delivered")))
        for stop_pk, at, first, last in session.execute(
                select(DeliveryEvent.stop_pk, DeliveryEvent.at, Order.window_start, Order.window_end)
                .join(RouteStop, RouteStop.id == DeliveryEvent.stop_pk)
                .join(Order, Order.id == RouteStop.order_id).where(DeliveryEvent.type == "arrived")):
            on_time += stop_pk in delivered and local_datetime(day, first) <= at <= local_datetime(day, last)
    problems: list[str] = []
    want_stop = [(ref, "delivered") for ref in staged.delivered] + [(ref, "failed") for ref in staged.failed]
    problems += compare_staged("stop", ("order", "status"), want_stop, list(stops.items()), show="none")[1]
    want_status = [(ref, "delivered") for ref in staged.delivered] + [(ref, "reattempt") for ref in staged.failed]
    problems += compare_staged("order status", ("order", "status"), want_status,
                               [(r, statuses[r]) for r in stops], show="none")[1]
    reports = Counter(a.kind for a in staged.actions)
    want_events = {"started": reports["start"], "finished": staged.trips, "arrived": reports["arrived"],
                   "delivered": reports["delivered"], "failed": reports["failed"], "damaged": reports["damaged"]}
    problems += [f"{x} (each report once: a retry must add nothing)" for x in
                 compare_staged("delivery event", ("type",), want_events, events, show="none")[1]]
    problems += compare_staged("damaged unit", ("order",), {ref: q for ref, (_sku, q) in staged.damaged.items()},
                               damage, show="none")[1]
    if set(routes) - {"done"}:
        problems.append(f"trips not finished: {dict(routes)}")
    figures = {"stops": len(stops), "delivered": sum(v == "delivered" for v in stops.values()),
               "failed": sum(v == "failed" for v in stops.values()), "on_time": on_time,
               "damaged": len(damage), "events": sum(events.values())}
    return problems, figures


def quality_stage(day, output: Path, api: str, problems: list[str], result: DayResult) -> dict:  # noqa: ANN001
    """Quality staff over the API: acknowledge every alert, list the orders at risk, fetch the exports of the
    worst one. Checked: every alert acknowledged in the database; every order reported damaged is at risk."""
    import httpx
    from sqlalchemy import func, select

    from core.db import session_scope
    from scripts import demo_day
    from scripts.console import progress_bar
    from telemetry.models import Alert

    err.print("[bold]6. quality[/] alerts acknowledged and orders at risk, over the API")
    found: list[str] = []
    audit_dir = output / "audit"
    audit_dir.mkdir(exist_ok=True)
    order = None
    with httpx.Client(base_url=api, timeout=120) as http:
        quality = demo_day.ApiClient(http, demo_day.QUALITY_USER, demo_day.DEMO_PASSWORD)
        alerts = quality.pages("/api/v1/alerts")
        with progress_bar() as bar:
            task = bar.add_task("6. acknowledging alerts", total=len(alerts))
            for a in alerts:
                r = quality.request("POST", f"/api/v1/alerts/{a['id']}/ack",
                                    json={"note": f"demo: {a['kind']} on {a['vehicle']} checked with the driver"})
                if r.status_code != 200:
                    found.append(f"ack of alert {a['id']} answered {r.status_code}: {r.text[:200]}")
                bar.advance(task)
        at_risk = quality.pages("/api/v1/trace/at-risk", params={"date": day.isoformat()})
        (output / "at_risk.json").write_text(json.dumps(at_risk, ensure_ascii=False, indent=1))
        if at_risk:
            levels = ("ok", "watch", "at_risk", "reject")

            def worst(o: dict) -> tuple[int, int]:
                return (max(levels.index(o["spoilage_risk"]["level"]), levels.index(o["breakage_risk"]["level"])),
                        levels.index(o["spoilage_risk"]["level"]))
            order = max(at_risk, key=worst)["order_ref"]
            for fmt, name in (("pdf", f"{order}-trace.pdf"), ("epcis", f"{order}-epcis.json")):
                r = quality.request("GET", f"/api/v1/trace/orders/{order}/export", params={"format": fmt})
                if r.status_code != 200:
                    found.append(f"export {fmt} of {order} answered {r.status_code}: {r.text[:200]}")
                else:
                    (audit_dir / name).write_bytes(r.content)
    with session_scope(write=False) as session:
        unacked = session.scalar(select(func.count()).select_from(Alert).where(Alert.acknowledged_at.is_(None)))
        total = session.scalar(select(func.count()).select_from(Alert))
    if unacked:
        found.append(f"{unacked} of {total} alerts not acknowledged in the database")
    if len(alerts) != total:
        found.append(f"GET /alerts listed {len(alerts)} alerts, the database holds {total}")
    risky = {o["order_ref"] for o in at_risk}
    found += [f"order {ref} was reported damaged but is not at risk" for ref in sorted(result.staged.damaged)
              if ref not in risky]
    problems += _stage_check("quality", found)
    return {"alerts_acked": total - (unacked or 0), "at_risk": len(at_risk), "worst": order,
            "spoilage": sum(o["spoilage_risk"]["level"] != "ok" for o in at_risk),
            "breakage": sum(o["breakage_risk"]["level"] != "ok" for o in at_risk)}


def audit_stage(day, output: Path, problems: list[str], worst: str | None) -> dict:  # noqa: ANN001
    """Verify the audit chain; write the day's FSMA 204 spreadsheet and the chain's verdict.

    Checked: the chain is intact; the worst order's exports (quality stage) and the spreadsheet exist."""
    from core import audit
    from core.db import session_scope
    from scripts.console import progress_bar
    from traceability import exports

    audit_dir = output / "audit"
    audit_dir.mkdir(exist_ok=True)
    with session_scope(write=False) as session:
        total = audit.count(session)
        with progress_bar() as bar:
            task = bar.add_task("7. audit chain", total=total)
            verdict = audit.verify(session, progress=lambda n: bar.advance(task, n))
        fsma = exports.fsma_for_period(session, day - timedelta(days=1), day)
    fsma_path = audit_dir / f"fsma204-{day.isoformat()}.csv"
    fsma_path.write_bytes(fsma)
    (audit_dir / "audit-verify.json").write_text(json.dumps(verdict.as_dict(), indent=1))
    found = [] if verdict.ok else [f"audit chain broken at record {verdict.first_bad}: {verdict.reason}"]
    wanted = [fsma_path] + ([audit_dir / f"{worst}-trace.pdf", audit_dir / f"{worst}-epcis.json"] if worst else [])
    found += [f"{p} was not written" for p in wanted if not p.exists() or p.stat().st_size == 0]
    problems += _stage_check("audit", found)
    return {"verified": verdict.ok, "records": verdict.records, "fsma_rows": max(0, fsma.count(b"\n") - 1)}


def run_demo(output: Path, n_orders: int = 300, time_limit: float = 3.0, withhold: Sequence[str] = (),
             seed: int = 0, speed: float = 1800.0, withhold_reports: Sequence[str] = ()) -> int:
    """Run the day; 0 when every stage's outcome is what was staged, else 1 (each difference printed)."""
    from core.timeutil import local_datetime, local_tomorrow, parse_hhmm
    from scripts import demo_day
    from scripts.demo_map import write_day_map
    from warehouses import samplegen

    started = time.perf_counter()
    _embedded_environment(output)
    day = local_tomorrow()
    # the evening before: orders taken before the cut-off, allocated, planned; then the day itself
    demo_day.use_simulated_clock(output, local_datetime(day - timedelta(days=1), parse_hhmm("17:00")))
    from core.db import session_scope
    from scripts.console import ensure_schema, load_with_progress
    from warehouses.service import network_summary

    problems: list[str] = []
    scenario_dir = output / "scenario"
    scenario = samplegen.chengdu(day, n_orders=n_orders, seed=seed or 7)
    samplegen.write_scenario(scenario, scenario_dir)
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
    problems += city_check(scenario, report, totals)
    lines = [
        f"{totals['flagships']} flagship stores, {totals['hubs']} community hubs, {totals['products']} products, "
        f"{totals['lots']} stock lots, {totals['vehicles']} vans, {totals['drivers']} drivers",
        f"order lines loaded for {day}: {orders.inserted + orders.unchanged + orders.updated} "
        f"(refused: {orders.rejected})",
    ]
    stages: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        stages[name] = round(time.perf_counter() - mark, 1)
        mark = time.perf_counter()

    lap("1. city")
    with demo_day.ApiServer(output) as server:  # starting while the day is planned
        lines += allocate_stage(day, output, problems)
        lap("2. allocation")
        lines += plan_stage(day, output, time_limit, problems)
        lap("3. routes")
        lines += exports_stage(day, output, problems)
        lap("4. exports")
        api = server.ready()
        err.print(f"API (uvicorn) at {api} on the simulated clock; its log in {output / 'api.log'}")
        lap("API start")
        result = day_stage(day, output, problems, api, seed, speed, withhold, withhold_reports)
        lines += result.lines
        delivery_problems, deliveries = deliveries_check(day, result.staged)
        problems += _stage_check("deliveries", delivery_problems)
        lap("5. the day")
        quality = quality_stage(day, output, api, problems, result)
        lap("6. quality")
    audited = audit_stage(day, output, problems, quality["worst"])
    lap("7. audit")
    map_path = write_day_map(day, output)
    lap("8. map")
    problems += _stage_check("map", [] if map_path.exists() and map_path.stat().st_size else [f"{map_path} missing"])
    n_orders_loaded = len(_order_modes(scenario_dir))
    allocated = len({a["order_ref"] for a in json.loads((output / "allocations.json").read_text())["allocations"]})
    figures = {"orders": n_orders_loaded, "allocated": allocated, "on_routes": deliveries["stops"],
               "served": deliveries["delivered"], "failed": deliveries["failed"], "on_time": deliveries["on_time"],
               "damaged": deliveries["damaged"], "alerts": len(result.alerts), "alerts_staged": result.staged_alerts,
               "alerts_acknowledged": quality["alerts_acked"], "orders_at_risk": quality["at_risk"],
               "audit_chain_verified": audited["verified"], "audit_records": audited["records"],
               "retries": result.drivers.replays, "retries_identical": result.drivers.replays_identical,
               "problems": problems}
    seconds = time.perf_counter() - started
    figures["seconds"] = round(seconds, 1)
    figures["stage_seconds"] = stages
    figures["load_average"] = round(os.getloadavg()[0], 2)
    (output / "summary.json").write_text(json.dumps(figures, ensure_ascii=False, indent=1))
    lines.append("seconds per stage: " + ", ".join(f"{k} {v:g}" for k, v in stages.items()))
    lines.append(f"files under {output}/  —  {seconds:.1f} s (load average {os.getloadavg()[0]:.1f})")
    out.print(Panel.fit("\n".join(lines), title="coldchain demo"))
    out.print(summary_table(day, figures))
    if problems:
        err.print(Panel.fit("\n".join(problems), title=f"[bold]coldchain demo FAILED: {len(problems)} "
                            "difference(s) from what was staged", border_style="red"))
        return 1
    return 0


def summary_table(day, f: dict) -> Table:  # noqa: ANN001
    """The day in figures, each read back from the database (summary.json holds the same; the test compares
    them with the database)."""
    table = Table("figure", "value", "", title=f"summary of {day}", title_justify="left")
    table.add_row("orders", str(f["orders"]), "")
    table.add_row("allocated", str(f["allocated"]), f"{f['on_routes']} on the vans' routes")
    table.add_row("served", str(f["served"]), f"{f['failed']} failed, back in the dispatcher's queue")
    table.add_row("on time", str(f["on_time"]), "delivered, at the door within the order's window")
    table.add_row("alerts", str(f["alerts"]), f"staged {f['alerts_staged']}; acknowledged {f['alerts_acknowledged']}")
    table.add_row("orders at risk", str(f["orders_at_risk"]), f"{f['damaged']} reported damaged")
    table.add_row("audit chain verified", "yes" if f["audit_chain_verified"] else "NO", f"{f['audit_records']} records")
    return table


def city_check(scenario, report, totals: dict) -> list[str]:  # noqa: ANN001
    """Every row the generator wrote loaded (none refused), and the network counts match the files."""
    problems = [f"{e}" for e in report.errors]
    files: dict[str, int] = {}
    for name, _columns, rows in scenario.tables():
        files[name] = len(rows)
    loaded = {name: c.inserted + c.updated + c.unchanged for name, c in report.counts.items()}
    table, differ = compare_staged("row", ("file",), files, loaded, show="differences")
    kinds = [n["kind"] for n in scenario.nodes]
    staged = {"flagships": kinds.count("flagship"), "hubs": kinds.count("hub"), "products": len(scenario.products),
              "lots": len(scenario.stock), "vehicles": len(scenario.vehicles), "drivers": len(scenario.drivers)}
    net_table, net_differ = compare_staged("network count", ("of",), staged, {k: totals[k] for k in staged},
                                           show="differences")
    if net_table is not None:
        out.print(net_table)
    return _stage_check("city", problems + differ + net_differ, table)


def allocate_stage(day, output: Path, problems: list[str]) -> list[str]:  # noqa: ANN001
    """Allocate, propose transfers, print pick lists (PDF) and the demand sheet.

    Checked: every order loaded is allocated or unallocated with a reason, and none is both."""
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
    staged = dict.fromkeys(_order_modes(output / "scenario"), 1)
    placed = sorted({a["order_ref"] for a in plan["allocations"]}) + [u["order_ref"] for u in plan["unallocated"]]
    check_table, found = compare_staged("order", ("order",), staged, placed, show="differences")
    found += [f"unallocated without a reason: {u['order_ref']}" for u in plan["unallocated"] if not u.get("reason")]
    problems += _stage_check("allocation", found, check_table)
    return [
        f"allocated {outcome.allocated} orders to {len({a['node'] for a in plan['allocations']})} nodes; "
        f"{outcome.unallocated} unallocated, each with a reason (allocations.json)",
        f"{len(transfers)} transfer proposals flagship → hub (transfers.json); "
        f"pick lists for {len(lists)} nodes ({pdf.name}); to buy: "
        f"{sum(r['to_buy'] for r in needs)} units (demand.json)",
    ]
