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
        for name in ("coldchain.db", "coldchain.db-wal", "coldchain.db-shm"):
            (output / name).unlink(missing_ok=True)
    from core.db import reset_caches

    reset_caches()


def network_table(summary: dict) -> Table:
    table = Table(title="network", title_justify="left")
    for col in ("code", "kind", "name", "parent", "hours", "frozen_l", "chilled_l", "ambient_l", "area", "vans",
                "skus", "units"):
        table.add_column(col, justify="right" if col.endswith("_l") or col in ("vans", "skus", "units") else "left")
    for n in summary["nodes"]:
        table.add_row(n["code"], n["kind"], n["name"], n["parent"] or "", n["hours"], f"{n['frozen_l']:.0f}",
                      f"{n['chilled_l']:.0f}", f"{n['ambient_l']:.0f}", n["area"], str(n["vans"]), str(n["skus"]),
                      str(n["units"]))
    return table


def run_demo(output: Path, n_orders: int = 300) -> None:
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
    out.print(Panel.fit(
        f"{totals['flagships']} flagship stores, {totals['hubs']} community hubs, {totals['products']} products, "
        f"{totals['lots']} stock lots, {totals['vehicles']} vans, {totals['drivers']} drivers\n"
        f"order lines loaded for {day}: {orders.inserted + orders.unchanged + orders.updated} "
        f"(refused: {orders.rejected})\n"
        f"files under {output}/  —  {time.perf_counter() - started:.1f} s",
        title="coldchain demo"))
