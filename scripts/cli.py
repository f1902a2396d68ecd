"""The `coldchain` command line (CONTRACTS.md section 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from scripts.console import ensure_schema, err, load_with_progress, mqtt_url_or_embedded, print_json, progress_bar

app = typer.Typer(help="coldchain: cold-chain fulfillment, routing, telemetry and traceability.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
scenario_app = typer.Typer(help="Scenario folders (CONTRACTS.md section 4).", no_args_is_help=True)
user_app = typer.Typer(help="Logins and roles.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")
app.add_typer(user_app, name="user")
app.add_typer(db_app, name="db")
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION."""
    from core import migrate
    from core.db import get_engine

    migrate.upgrade(get_engine(), revision)
    err.print(f"database at {migrate.current(get_engine())}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="target revision, or 'base'")) -> None:
    """Revert migrations down to REVISION."""
    from core import migrate
    from core.db import get_engine

    migrate.downgrade(get_engine(), revision)
    err.print(f"database at {migrate.current(get_engine())}")


@scenario_app.command("load")
def scenario_load(
    directory: Annotated[Path, typer.Argument(help="folder with nodes.csv, products.csv, ...")],
    json_out: Annotated[bool, typer.Option("--json", help="print the load report as JSON")] = False,
) -> None:
    """Load a scenario; print each refused row as FILE:LINE: FIELD: REASON; exit 1 if any."""
    if not directory.is_dir():
        err.print(f"[red]{directory}: not a directory")
        raise typer.Exit(2)
    ensure_schema()
    report = load_with_progress(directory)
    for error in report.errors:
        typer.echo(str(error))
    if json_out:
        print_json(report.as_dict())
    table = Table("file", "inserted", "updated", "unchanged", "rejected", title="scenario load")
    for name, c in report.counts.items():
        table.add_row(name, str(c.inserted), str(c.updated), str(c.unchanged), str(c.rejected))
    err.print(table)
    raise typer.Exit(0 if report.ok else 1)


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[str, typer.Option(help="dispatcher, driver, quality or admin")],
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Create or update a login."""
    from core.db import session_scope
    from warehouses.service import upsert_user

    if not password_stdin:
        err.print("[red]give the password on standard input with --password-stdin")
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")
    ensure_schema()
    try:
        with session_scope() as session:
            _user, created = upsert_user(session, username, role, password)
    except ValueError as exc:
        err.print(f"[red]{exc}")
        raise typer.Exit(2) from exc
    err.print(f"{'created' if created else 'updated'} user {username} ({role})")


@audit_app.command("verify")
def audit_verify(
    batch: Annotated[int, typer.Option(help="records read per query")] = 5000,
    json_out: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Walk the audit chain in id order; exit 0 when intact, else 1 and print the id of the first bad record."""
    from core import audit
    from core.db import session_scope

    ensure_schema()
    with session_scope(write=False) as session:
        total = audit.count(session)
        with progress_bar() as bar:
            task = bar.add_task("verifying audit_log", total=total)
            verdict = audit.verify(session, batch=max(batch, 1), progress=lambda n: bar.advance(task, n))
    if json_out:
        print_json(verdict.as_dict())
    elif verdict.ok:
        typer.echo(f"audit log intact: {verdict.records} records; head {verdict.head_id} {verdict.head_hash}")
    else:
        typer.echo(f"first bad record: {verdict.first_bad}: {verdict.reason}")
    raise typer.Exit(0 if verdict.ok else 1)


trace_app = typer.Typer(help="Traceability exports auditors use (FSMA 204, EPCIS 2.0, PDF).", no_args_is_help=True)
app.add_typer(trace_app, name="trace")


@trace_app.command("export")
def trace_export(
    order_ref: Annotated[str | None, typer.Argument(help="the order (omit with --lot or --from/--to)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="fsma, epcis or pdf (a period: fsma or epcis)")] = "fsma",
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: the export's own name)")] = None,
    lot: Annotated[str | None, typer.Option("--lot", help="a lot code: its recall view (every order it went into)")]
    = None,
    first: Annotated[datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="first local day")] = None,
    last: Annotated[datetime | None, typer.Option("--to", formats=["%Y-%m-%d"], help="last local day")] = None,
) -> None:
    """Write an order's or a lot's FSMA 204 spreadsheet, EPCIS 2.0 document or PDF report, or a period's
    spreadsheet or EPCIS document (written batch by batch as it is read). Exit 1 when there is nothing of
    that name, 2 on a wrong combination of options or a bad period."""
    from core.db import session_scope
    from core.errors import DomainError
    from traceability import exports

    chosen = [x for x in (order_ref, lot, first or last) if x]
    if len(chosen) != 1 or (first is None) != (last is None):
        err.print("[red]give one of: ORDER_REF, --lot LOT, or --from DAY --to DAY")
        raise typer.Exit(2)
    if fmt not in exports.FORMATS or (first and fmt not in exports.PERIOD_FORMATS):
        err.print(f"[red]--format must be one of {', '.join(exports.FORMATS)}"
                  f" ({' or '.join(exports.PERIOD_FORMATS)} for a period)")
        raise typer.Exit(2)
    ensure_schema()
    try:
        with session_scope(write=False) as session:
            if order_ref:
                data, _media, name = exports.export_order(session, order_ref, fmt)
            elif lot:
                data, _media, name = exports.export_lot(session, lot, fmt)
            else:
                exports.period_bounds(first.date(), last.date())
                ext = "csv" if fmt == "fsma" else "jsonld"
                path = out or Path(f"{'fsma204' if fmt == 'fsma' else 'epcis'}-{first:%Y-%m-%d}-{last:%Y-%m-%d}.{ext}")
                size = 0
                with path.open("wb") as fh:
                    for chunk in exports.period_chunks(session, first.date(), last.date(), fmt):
                        fh.write(chunk)
                        size += len(chunk)
                err.print(f"wrote {path} ({size} bytes)")
                return
    except DomainError as exc:
        err.print(f"[red]{exc}")
        raise typer.Exit(2 if exc.status_code == 422 else 1) from exc
    path = out or Path(name)
    path.write_bytes(data)
    err.print(f"wrote {path} ({len(data)} bytes)")


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          access_log: Annotated[bool, typer.Option(help="one log line per request (off: less CPU per request)")]
          = True) -> None:
    """Run the HTTP API with uvicorn (migrations first): uvloop and httptools (uvicorn[standard])."""
    import uvicorn

    ensure_schema()
    uvicorn.run("api.app:app", host=host, port=port, workers=workers, log_level="info", access_log=access_log,
                loop="uvloop", http="httptools")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="worker processes")] = 2,
    queues: Annotated[str | None, typer.Option(help="comma-separated queues (default COLDCHAIN_CELERY_QUEUE)")]
    = None,
    beat: Annotated[bool, typer.Option(help="also run the periodic scheduler in this worker")] = False,
) -> None:
    """Start a Celery worker on the configured broker (embedded SQLite transport when unset)."""
    from core.celery_app import celery_app
    from core.settings import get_settings

    ensure_schema()
    queues = queues or get_settings().celery_queue
    argv = ["worker", f"--concurrency={concurrency}", f"--queues={queues}", "--loglevel=INFO",
            "--without-gossip", "--without-mingle"]
    if beat:
        argv.append("--beat")
    celery_app.worker_main(argv)


orders_app = typer.Typer(help="Orders.", no_args_is_help=True)
transfers_app = typer.Typer(help="Stock transfers between flagships and hubs.", no_args_is_help=True)
export_app = typer.Typer(help="Exports for machines and people.", no_args_is_help=True)
app.add_typer(orders_app, name="orders")
app.add_typer(transfers_app, name="transfers")
app.add_typer(export_app, name="export")
DateOpt = Annotated[datetime, typer.Option("--date", formats=["%Y-%m-%d"], help="local day, YYYY-MM-DD")]


@orders_app.command("import")
def orders_import(file: Annotated[Path, typer.Argument(help="orders CSV (CONTRACTS.md section 4 columns)")]) -> None:
    """Import orders placed now: the cut-off moves late ones to the next day; bad rows are named."""
    from core.db import session_scope
    from fulfillment.service import load_orders_csv
    from warehouses.service import LoadReport

    if not file.is_file():
        err.print(f"[red]{file}: no such file")
        raise typer.Exit(2)
    ensure_schema()
    report = LoadReport()
    with session_scope() as session:
        load_orders_csv(session, file, report, actor="import", source="import", apply_cutoff=True)
    for error in report.errors:
        typer.echo(str(error))
    for note in report.notes:
        err.print(f"[yellow]{note}")
    c = report.file(file.name)
    err.print(f"order lines: {c.inserted} new, {c.updated} updated, {c.unchanged} unchanged, {c.rejected} refused")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def allocate(
    day: DateOpt,
    json_out: Annotated[bool, typer.Option("--json", help="print allocations as JSON")] = False,
) -> None:
    """Allocate the day's orders to the nearest node that can serve them, reserving lots FEFO."""
    from core.db import session_scope
    from fulfillment.service import allocate_day, day_allocations

    ensure_schema()
    with session_scope() as session:
        outcome = allocate_day(session, day.date(), actor="cli")
    err.print(f"{day:%Y-%m-%d}: {outcome.allocated} orders allocated, {outcome.unallocated} unallocated "
              f"in {outcome.seconds:.2f} s")
    with session_scope() as session:
        plan = day_allocations(session, day.date())
    if json_out:
        print_json({"date": f"{day:%Y-%m-%d}", **plan})
    else:
        for miss in plan["unallocated"][:50]:
            err.print(f"  [yellow]{miss['order_ref']}[/]: {miss['reason']}")


@app.command()
def plan(
    day: DateOpt,
    time_limit: Annotated[float, typer.Option(
        "--time-limit", help="seconds per depot, a wall: each depot's plan is stored within it plus a fraction "
                             "of a second, counted from its task's start (README 'Time limit')")] = 10.0,
    local_workers: Annotated[int | None, typer.Option(
        help="Celery worker processes to start for this run (default: 2 on embedded defaults, 0 with a broker)")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the plan (CONTRACTS.md section 5)")] = False,
) -> None:
    """Plan routes for every depot of the day, each depot an independent Celery task.

    Objective, from vehicles.csv: serve as many orders as possible first (an unserved order costs more
    than any van and kilometre), then the least total cost: each used van's fixed_cost plus cost_per_km
    times its kilometres. When a day does not fit one load per van, a van may go out again (up to 3
    trips), back at its depot for COLDCHAIN_RELOAD_MINUTES (default 20) between trips; its fixed_cost
    counts once. The table shows vans, trips, stops, unserved, km and cost per depot.
    """
    from scripts.planning import plan_day

    ensure_schema()
    results = plan_day(day.date(), time_limit, local_workers, actor="cli")
    failed = [r for r in results if "error" in r]
    if json_out:
        from core.db import session_scope
        from fulfillment.service import day_allocations
        from routing.service import day_routes

        with session_scope() as session:
            print_json({"date": f"{day:%Y-%m-%d}", **day_allocations(session, day.date()),
                        **day_routes(session, day.date())})
    raise typer.Exit(1 if failed else 0)


@app.command("solve-vrplib")
def solve_vrplib(
    file: Annotated[Path, typer.Argument(help="a Solomon (.txt) or VRPLIB (.vrp) instance")],
    time_limit: Annotated[float, typer.Option("--time-limit", help="seconds of wall time")] = 30.0,
    workers: Annotated[int | None, typer.Option(help="solver processes (default: every core)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print CONTRACTS.md section 6 JSON")] = False,
) -> None:
    """Solve a benchmark instance with the same routing model that plans real days."""
    from routing.vrplib import check_solution, read_instance, solve_file

    if not file.is_file():
        err.print(f"[red]{file}: no such file")
        raise typer.Exit(2)
    try:
        read_instance(str(file))
    except (ValueError, KeyError, IndexError) as exc:
        err.print(f"[red]{file}: not a Solomon or VRPLIB instance ({exc})")
        raise typer.Exit(2) from exc
    with progress_bar() as bar:
        task = bar.add_task(f"solving {file.name}", total=100)
        result = solve_file(str(file), time_limit, workers=workers,
                            progress=lambda f: bar.update(task, completed=round(f * 100)))
        bar.update(task, completed=100)
    problems = check_solution(str(file), result["routes"])
    if problems:
        err.print(f"[red]infeasible: {problems[:5]}")
    err.print(f"{result['instance']}: {result['vehicles']} vehicles, distance {result['distance']:.2f} "
              f"in {result['seconds']:.1f} s")
    if json_out:
        print_json(result)
    raise typer.Exit(1 if problems else 0)


@app.command()
def picklists(
    day: DateOpt,
    node: Annotated[str | None, typer.Option(help="one node's list only")] = None,
    out: Annotated[Path, typer.Option(help="folder for the PDF")] = Path("."),
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Each node's pick list (PDF, grouped by temperature class) and the consolidated demand per SKU."""
    from core.db import session_scope
    from fulfillment.picklists import demand, render_pdf
    from traceability.flows import issue_pick_lists  # the lists, and custody "picked" as they are issued

    ensure_schema()
    with session_scope() as session:
        lists = issue_pick_lists(session, day.date(), node, actor="cli")
        needs = demand(session, day.date())
    pdf = render_pdf(lists, out / f"picklists-{day:%Y-%m-%d}{'-' + node if node else ''}.pdf")
    err.print(f"{len(lists)} pick lists written to {pdf}")
    if json_out:
        print_json({"date": f"{day:%Y-%m-%d}", "pick_lists": lists, "demand": needs})
        return
    table = Table("sku", "name", "ordered", "reserved", "free on hand", "to buy", title="demand")
    for r in needs:
        table.add_row(r["sku"], r["name"] or "", str(r["ordered"]), str(r["reserved"]), str(r["free_on_hand"]),
                      str(r["to_buy"]))
    err.print(table)


@transfers_app.command("suggest")
def transfers_suggest(day: DateOpt, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Propose flagship → hub transfers for orders the nearest hub could not serve (proposals only)."""
    from core.db import session_scope
    from fulfillment.service import suggest_transfers_for

    ensure_schema()
    with session_scope() as session:
        proposals = suggest_transfers_for(session, day.date())
    if json_out:
        print_json({"date": f"{day:%Y-%m-%d}", "transfers": proposals})
        return
    table = Table("from", "to", "sku", "lot", "qty", "expires", "orders", title=f"transfer proposals {day:%Y-%m-%d}")
    for t in proposals:
        table.add_row(t["from"], t["to"], t["sku"], t["lot"], str(t["qty"]), t["expires"], ", ".join(t["order_refs"]))
    err.print(table)


@export_app.command("plan")
def export_plan(day: DateOpt, json_out: Annotated[bool, typer.Option("--json")] = True) -> None:
    """The day's allocations and routes (CONTRACTS.md section 5) as JSON on stdout."""
    from core.db import session_scope
    from fulfillment.service import day_allocations

    ensure_schema()
    with session_scope() as session:
        plan = {"date": f"{day:%Y-%m-%d}", **day_allocations(session, day.date()), "routes": [], "unserved": []}
        try:
            from routing.service import day_routes
        except ImportError:
            day_routes = None
        if day_routes is not None:
            plan.update(day_routes(session, day.date()))
    print_json(plan)


@app.command()
def ingest(
    client_id: Annotated[str, typer.Option(help="fixed MQTT client id: the persistent session's name")] =
    "coldchain-ingest",
    shared_group: Annotated[str | None, typer.Option(help="MQTT 5 shared subscription group ($share/GROUP/...)")]
    = None,
    batch_size: Annotated[int, typer.Option(help="messages per database transaction at most")] = 2000,
    tick_every: Annotated[float, typer.Option(help="seconds between rule evaluations against the clock")] = 30.0,
    session_expiry: Annotated[int, typer.Option(help="seconds the broker keeps the session (and queues "
                                                     "messages) while the ingestor is away")] = 7 * 24 * 3600,
    processes: Annotated[int, typer.Option(min=1, help="ingestor processes sharing the stream through "
                                                       "$share (one is bound to one core)")] = 1,
) -> None:
    """Ingest van telemetry from MQTT into the database and raise alerts."""
    import contextlib
    import logging

    from telemetry.ingest import run_ingestor, run_pool
    from traceability.service import sync_vans

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    ensure_schema()
    options = {"client_id": client_id, "shared_group": shared_group, "batch_size": batch_size,
               "tick_every": tick_every, "session_expiry": session_expiry, "on_tick": sync_vans}
    with contextlib.ExitStack() as stack:
        url = mqtt_url_or_embedded(stack)
        if processes > 1:
            run_pool(url, processes, **options)
            err.print("ingestors stopped")
        else:
            stats = run_ingestor(url, **options)
            err.print(f"ingestor stopped: {stats.as_dict()}", soft_wrap=True, highlight=False)  # one log line


@app.command()
def status(
    max_lag: Annotated[float, typer.Option(help="seconds of silence before a van on a route counts as stale")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json", help="print the status as JSON")] = False,
) -> None:
    """The stack's vital signs: telemetry lag, stale vans, rejects, open alerts, the audit chain.

    Exits 1 when a van on a route has been silent longer than --max-lag, so a monitor can poll it.
    """
    from core.db import session_scope
    from telemetry.operations import status as read_status

    ensure_schema()
    with session_scope() as session:
        st = read_status(session, max_lag_s=max_lag)
    if json_out:
        print_json(st.as_dict())
    else:
        last = st.last_reject
        table = Table(title="coldchain status", show_header=False)
        rows = [("vans on a route", str(st.active_vans)),
                ("newest sample", f"{st.newest_sample_at or '-'} (lag {st.lag_s if st.lag_s is not None else '-'} s)"),
                (f"stale (> {st.max_lag_s:g} s)", ", ".join(st.stale_vans) or "none"),
                ("rejected in the last hour", str(st.rejected_last_hour)),
                ("last reject", f"{last['received_at']} {last['reason']}" if last else "-"),
                ("open alerts", f"{st.open_alerts} (oldest {st.oldest_open_alert_at or '-'})"),
                ("audit records", f"{st.audit_records} (last {st.audit_last_at or '-'}; "
                                  "verify: coldchain audit verify)")]
        for key, value in rows:
            table.add_row(key, value)
        err.print(table)
    if not st.healthy:
        raise typer.Exit(1)


replan_app = typer.Typer(help="Re-plan a depot's day while the vans are out.", no_args_is_help=True)
app.add_typer(replan_app, name="replan")
TimeLimitOpt = Annotated[float, typer.Option("--time-limit", help="seconds for the solver")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the diff and summary as JSON")]


def _run_replan(day: datetime, event, time_limit: float, json_out: bool) -> None:  # noqa: ANN001
    from core.errors import DomainError
    from delivery.flows import replan_flow

    ensure_schema()
    try:
        out = replan_flow(day.date(), event, time_limit=time_limit, actor="cli")
    except DomainError as exc:
        err.print(f"[red]{exc.detail}")
        raise typer.Exit(1) from exc
    err.print(f"{out['depot']}: {out['reason']}: plan v{out['version']}, {out['stops']} stops on {out['routes']} "
              "routes, "
              f"{len(out['moved'])} moved, {len(out['unserved'])} newly unserved")
    for m in out["moved"]:
        err.print(f"  {m['order_ref']}: {m['from']} -> {m['to']}")
    for u in out["unserved"]:
        err.print(f"  [yellow]{u['order_ref']}[/]: {u['reason']}")
    if json_out:
        print_json(out)


@replan_app.command("breakdown")
def replan_breakdown(
    vehicle: Annotated[str, typer.Argument(help="the van that broke down")],
    day: DateOpt,
    at: Annotated[str, typer.Option(help="when: local HH:MM or RFC 3339 with a zone")],
    lat: Annotated[float | None, typer.Option(help="where it stands")] = None,
    lon: Annotated[float | None, typer.Option()] = None,
    time_limit: TimeLimitOpt = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """A van broke down: its undelivered orders go to the other vans (reloaded from depot stock)."""
    from routing.replan import breakdown, parse_at

    position = (lat, lon) if lat is not None and lon is not None else None
    _run_replan(day, breakdown(vehicle, parse_at(day.date(), at), position), time_limit, json_out)


@replan_app.command("add-order")
def replan_add_order(
    order_ref: Annotated[str, typer.Argument(help="an order allocated to a depot, on no route yet")],
    day: DateOpt, time_limit: TimeLimitOpt = 5.0, json_out: JsonOpt = False,
) -> None:
    """Fit an allocated order into its depot's day."""
    from routing.replan import add_order

    _run_replan(day, add_order(order_ref), time_limit, json_out)


@replan_app.command("cancel-order")
def replan_cancel_order(
    order_ref: Annotated[str, typer.Argument()],
    day: DateOpt,
    reason: Annotated[str | None, typer.Option(help="kept with the order's events")] = None,
    time_limit: TimeLimitOpt = 5.0, json_out: JsonOpt = False,
) -> None:
    """Cancel an order (its stock goes back) and re-plan its depot without it."""
    from routing.replan import cancel_order

    _run_replan(day, cancel_order(order_ref, reason), time_limit, json_out)


@export_app.command("route")
def export_route(
    vehicle: Annotated[str, typer.Argument(help="van code")],
    day: DateOpt,
    sheet: Annotated[Path | None, typer.Option(help="also write the driver's route sheet PDF here")] = None,
) -> None:
    """One van's route of the day as GeoJSON on stdout (RFC 7946, [lon, lat])."""
    from core.db import session_scope
    from core.errors import DomainError
    from routing.exports import route_geojson, route_sheet_pdf

    ensure_schema()
    with session_scope() as session:
        try:
            gj = route_geojson(session, day.date(), vehicle)
            if sheet is not None:
                err.print(f"route sheet written to {route_sheet_pdf(session, day.date(), vehicle, sheet)}")
        except DomainError as exc:
            err.print(f"[red]{exc.detail}")
            raise typer.Exit(1) from exc
    print_json(gj)


@export_app.command("map")
def export_map(
    day: DateOpt,
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("routes.png"),
    depot: Annotated[str | None, typer.Option(help="one depot only")] = None,
) -> None:
    """A PNG map of the day's routes, coloured per van, over the service areas."""
    from core.db import session_scope
    from routing.exports import day_map_png

    ensure_schema()
    with session_scope() as session:
        path = day_map_png(session, day.date(), out, depot=depot)
    err.print(f"map written to {path}")


@app.command("simulate-fleet")
def simulate_fleet_cmd(
    day: Annotated[datetime | None, typer.Option(
        "--date", formats=["%Y-%m-%d"], help="local day whose vans and current plans to simulate (default: today)")]
    = None,
    speed: Annotated[float, typer.Option(
        help="simulated seconds per wall second (60: a minute a second); 0: as fast as the broker takes it")] = 60.0,
    vehicle: Annotated[list[str] | None, typer.Option(
        "--vehicle", help="van code to simulate, repeatable (default: every van with a telemetry device)")] = None,
    seed: Annotated[int, typer.Option(help="random seed: the same seed publishes the same bytes")] = 0,
    garbage: Annotated[bool, typer.Option(
        "--garbage/--no-garbage", help="also publish one unusable message of each kind (not JSON, not UTF-8, "
        "no seq, 500 °C)")] = False,
    incidents: Annotated[bool, typer.Option(
        "--incidents/--no-incidents", help="stage a warming compartment, a short blip, a door left open, a hard "
        "shock, a signal loss sent as one backlog, and duplicate deliveries")] = True,
    duration_min: Annotated[float | None, typer.Option(
        "--duration-min", help="simulate only the first N minutes of the day")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="print what was published and what the ingestor should make of it, as JSON")] = False,
) -> None:
    """Publish realistic van telemetry to the configured broker (an embedded one if COLDCHAIN_MQTT_URL is unset)."""
    import contextlib

    from core.timeutil import local_today
    from scripts.simulate import simulate_fleet

    ensure_schema()
    with contextlib.ExitStack() as stack:
        url = mqtt_url_or_embedded(stack)
        try:
            result = simulate_fleet(url, date=day.date() if day else local_today(), speed=speed,
                                    vehicles=vehicle or None, seed=seed, garbage=garbage, incidents=incidents,
                                    duration_min=duration_min, console=err)
        except ValueError as exc:
            err.print(f"[red]{exc}")
            raise typer.Exit(2) from exc
    if json_out:
        print_json(result)


@app.command()
def beat() -> None:
    """Run Celery beat, the clock for periodic jobs (telemetry rules on a timer)."""
    from core.celery_app import celery_app
    from core.settings import get_settings

    schedule = get_settings().ensure_data_dir() / "celerybeat-schedule"
    celery_app.start(["beat", "--loglevel=INFO", f"--schedule={schedule}"])


@app.command()
def demo(
    output: Annotated[Path, typer.Option(help="where the demo writes its files")] = Path("demo-output"),
    orders: Annotated[int, typer.Option(help="orders to generate for tomorrow")] = 300,
    time_limit: Annotated[float, typer.Option("--time-limit", help="routing seconds per depot")] = 3.0,
    seed: Annotated[int, typer.Option(help="seed of the city, the incidents and the drivers' day (0: the sample's)")]
    = 0,
    speed: Annotated[float, typer.Option(help="at most this many simulated seconds per wall second (0: as fast as "
                                              "the machine goes)", min=0)] = 1800.0,
    withhold_report: Annotated[list[str] | None, typer.Option(
        "--withhold-report", hidden=True,
        help="leave the drivers' reports of a kind (failed, damaged) unsent while still expecting what they do: "
        "the demo must then fail")] = None,
    withhold_incident: Annotated[list[str] | None, typer.Option(
        "--withhold-incident", hidden=True,
        help="leave a staged incident (warming, door_left_open, hard_shock) out of the telemetry while still "
        "expecting its alert: the demo must then fail")] = None,
) -> None:
    """The whole day on embedded defaults; writes its files under ./demo-output/.

    Exits 1 when any stage's outcome differs from what was staged (each difference printed)."""
    from scripts.demo import run_demo
    from telemetry.simulator import WITHHOLDABLE

    bad = sorted(set(withhold_incident or ()) - set(WITHHOLDABLE))
    if bad:
        err.print(f"[red]--withhold-incident: unknown incident {', '.join(bad)} (one of {', '.join(WITHHOLDABLE)})")
        raise typer.Exit(2)
    bad = sorted(set(withhold_report or ()) - {"failed", "damaged"})
    if bad:
        err.print(f"[red]--withhold-report: unknown report {', '.join(bad)} (failed or damaged)")
        raise typer.Exit(2)
    raise typer.Exit(run_demo(output, orders, time_limit, withhold=withhold_incident or (), seed=seed, speed=speed,
                              withhold_reports=withhold_report or ()))


def check_settings() -> None:
    """Every command starts by reading the settings: an invalid one is one line per variable and exit 2."""
    from core.settings import ConfigError, get_settings

    try:
        get_settings()
    except ConfigError as exc:
        for line in exc.lines:
            err.print(f"[red]configuration error:[/] {line}", highlight=False, soft_wrap=True)
        sys.exit(2)


def main() -> None:
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    if not any(arg in ("--help", "-h") for arg in sys.argv[1:2]) and len(sys.argv) > 1:
        check_settings()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)


if __name__ == "__main__":
    main()
