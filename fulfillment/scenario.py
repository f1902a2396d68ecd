"""A scenario folder (CONTRACTS.md section 4) is the network plus the orders: load both, in order."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from core import audit
from core.timeutil import utcnow
from fulfillment.service import load_orders_csv
from warehouses.models import ScenarioLoad
from warehouses.service import LoadReport, Progress, load_network

SCENARIO_FILES = ("nodes.csv", "products.csv", "stock.csv", "vehicles.csv", "drivers.csv", "orders.csv")


def count_rows(directory: Path) -> int:
    """Physical lines to process, for a progress bar (cheap: counts newlines)."""
    total = 0
    for name in SCENARIO_FILES:
        path = directory / name
        if path.exists():
            with path.open("rb") as f:
                total += max(sum(1 for _ in f) - 1, 0)
    return total


def load_scenario(session: Session, directory: Path, progress: Progress | None = None) -> LoadReport:
    """Load every file of the folder; the caller commits. Unknown folder → a report with a file error."""
    report = LoadReport()
    directory = Path(directory)
    load_network(session, directory, report, progress)
    orders = directory / "orders.csv"
    if orders.exists():
        load_orders_csv(session, orders, report)
        if progress:
            progress("orders.csv", sum(report.file("orders.csv").as_dict().values()))
    session.add(load := ScenarioLoad(directory=str(directory.resolve()), at=utcnow(),
                                     counts={k: v.as_dict() for k, v in report.counts.items()},
                                     rejected=[e.as_dict() for e in report.errors]))
    session.flush()
    audit.append(session, "scenario", "scenario.loaded", "scenario_load", load.id,
                 {"directory": load.directory, "counts": load.counts, "rejected": len(load.rejected)}, at=load.at)
    return report
