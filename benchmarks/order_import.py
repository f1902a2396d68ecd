"""Order import and scenario load benchmark: order lines/s into PostgreSQL, end to end.

    python -m benchmarks.order_import [--lines 100000] [--nodes 2000] [--bad 0] [--database URL]

A synthetic city (warehouses.samplegen) is written as a scenario folder; its network (nodes,
products, stock lots, vans, drivers) and the stock's custody "received" are loaded into a fresh
database made for the run (timed: the scenario load), then an orders file of exactly ``--lines``
order lines goes through the path of ``coldchain orders import`` (fulfillment.service.load_orders_csv
with the cut-off; timed: the import, commit included). ``--bad K`` spoils K lines in K orders
(an unknown SKU, a quantity of 0, a latitude of 123) so the cost of reporting shows too.
Afterwards the rows are counted against the file (orders, lines, events, audit records) and the
audit chain is verified (not timed). The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path


def write_orders(src: Path, dst: Path, lines: int, bad: int) -> tuple[int, set[str]]:
    """The first ``lines`` order lines of ``src`` into ``dst``, ``bad`` of them spoiled (spread evenly);
    returns (lines written, refs of the spoiled orders)."""
    with src.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        rows = [r for _, r in zip(range(lines), reader, strict=False)]
    spoiled: set[str] = set()
    step = max(1, len(rows) // bad) if bad else 0
    spoilers = (("sku", "NO-SUCH-SKU"), ("qty", "0"), ("lat", "123"))
    for k in range(bad):
        row = rows[min(len(rows) - 1, k * step + step // 2)]
        field, value = spoilers[k % len(spoilers)]
        if field == "lat" and not row["lat"]:
            field, value = "qty", "0"  # a later row of its order: lat comes from the first row
        row[field] = value
        spoiled.add(row["order_ref"])
    with dst.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows), spoiled


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from warehouses import samplegen

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=100_000, help="order lines in the imported file")
    ap.add_argument("--nodes", type=int, default=2000, help="nodes of the synthetic city (scenario load)")
    ap.add_argument("--bad", type=int, default=0, help="order lines to spoil")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--database", default=os.environ.get("COLDCHAIN_BENCH_DATABASE_URL",
                                                          "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args(argv)
    con = Console(width=max(Console().width, 110))
    day = (time_now_local() + timedelta(days=2)).date()  # after the cut-off whatever the hour: no order moves
    t = time.perf_counter()
    scenario = samplegen.synthetic(args.nodes, args.lines // 2 + 1000, day, seed=args.seed)
    folder = Path(tempfile.mkdtemp(prefix="coldchain-import-bench-"))
    samplegen.write_scenario(scenario, folder)
    n_lines, spoiled = write_orders(folder / "orders.csv", folder / "import.csv", args.lines, args.bad)
    con.print(f"generated {args.nodes:,} nodes, {len(scenario.stock):,} lots and {n_lines:,} order lines in "
              f"{time.perf_counter() - t:.1f} s (not timed); load average {os.getloadavg()[0]:.2f} on "
              f"{os.cpu_count()} CPUs")
    try:
        return _measure(args, con, folder, n_lines, spoiled)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(args, con, folder: Path, n_lines: int, spoiled: set[str]) -> int:  # noqa: ANN001
    from rich.table import Table
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from benchmarks.throwaway import throwaway_database
    from core import audit
    from core.settings import get_settings
    from fulfillment.models import Order, OrderEvent, OrderLine
    from fulfillment.service import load_orders_csv
    from traceability.flows import receive_stock
    from traceability.models import CustodyEvent
    from warehouses.models import StockLot
    from warehouses.service import LoadReport, load_network

    with throwaway_database(args.database, "bench_import") as (_url, engine):
        with Session(engine) as session:
            t = time.perf_counter()
            net_report = LoadReport()
            load_network(session, folder, net_report)
            receive_stock(session)
            session.commit()
            load_s = time.perf_counter() - t
        load_avg_import = os.getloadavg()[0]
        with Session(engine) as session:
            report = LoadReport()
            t, cpu = time.perf_counter(), time.process_time()
            refs = load_orders_csv(session, folder / "import.csv", report, actor="import", source="import",
                                   apply_cutoff=True)
            session.commit()
            import_s, import_cpu = time.perf_counter() - t, time.process_time() - cpu
        with Session(engine) as session:
            count = lambda model: session.scalar(select(func.count()).select_from(model))  # noqa: E731
            orders, lines, events = count(Order), count(OrderLine), count(OrderEvent)
            lots, received = count(StockLot), count(CustodyEvent)
            t = time.perf_counter()
            verdict = audit.verify(session)
            verify_s = time.perf_counter() - t
    c = report.file("import.csv")
    bad_lines = {e.line for e in report.errors}
    table = Table(title=f"order import and scenario load on PostgreSQL ({get_settings().timezone})",
                  title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("scenario load: nodes / stock lots / custody received", f"{args.nodes:,} / {lots:,} / {received:,}")
    table.add_row("[bold]scenario load s (network, stock, custody, audit, commit)", f"[bold]{load_s:.2f}")
    table.add_row("order lines in the file / spoiled", f"{n_lines:,} / {args.bad}")
    table.add_row("lines imported / refused (their whole orders)", f"{c.inserted:,} / {c.rejected:,}")
    table.add_row("orders imported / refused", f"{len(refs):,} / {len(spoiled):,}")
    table.add_row("errors reported (FILE:LINE: FIELD: REASON) / lines named", f"{len(report.errors):,} / "
                                                                             f"{len(bad_lines):,}")
    table.add_row("rows stored: orders / lines / events", f"{orders:,} / {lines:,} / {events:,}")
    table.add_row("[bold]import s (read, validate, write, commit)", f"[bold]{import_s:.2f}")
    table.add_row("[bold]order lines/s", f"[bold]{n_lines / import_s:,.0f}")
    table.add_row("CPU s of this process in the import (PostgreSQL's not counted)",
                  f"{import_cpu:.2f} ({n_lines / import_cpu:,.0f} lines per CPU-second)")
    table.add_row("audit chain", f"{'verified' if verdict.ok else 'BROKEN: ' + str(verdict.reason)}, "
                                 f"{verdict.records:,} records ({verify_s:.1f} s, not timed)")
    table.add_row("load average at the import (2 cores, shared)", f"{load_avg_import:.2f}")
    con.print(table)
    for e in report.errors[:6]:
        con.print(f"  {e}")
    ok = (verdict.ok and orders == len(refs) and lines == c.inserted and events == orders
          and c.inserted + c.rejected == n_lines and verdict.records == orders + received + 0)
    if not ok:
        con.print("[red]FAILED: the stored rows do not match the file")
        return 1
    return 0


def time_now_local():  # noqa: ANN201
    from core.settings import get_settings
    from core.timeutil import utcnow

    return utcnow().astimezone(get_settings().tz)


if __name__ == "__main__":
    raise SystemExit(main())
