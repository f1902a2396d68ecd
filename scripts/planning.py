"""Running a day's planning jobs from the command line (and the demo) with progress bars."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from datetime import date

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scripts.console import err


@contextlib.contextmanager
def local_workers(count: int):  # noqa: ANN201
    """Start `count` Celery worker processes for the duration (embedded defaults have no other)."""
    procs = []
    if count > 0:
        cmd = [sys.executable, "-m", "scripts.cli", "worker", "--concurrency", str(count)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      env={**os.environ}))
    try:
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def plan_day(day: date, time_limit: float, workers: int | None, actor: str) -> list[dict]:
    """Queue one task per depot, show each one's progress, return their results."""
    from core.db import session_scope
    from core.settings import get_settings
    from routing.service import depots_of_day
    from traceability.tasks import plan_depot_task

    with session_scope() as session:
        depots = depots_of_day(session, day)
    if not depots:
        err.print(f"no delivery orders allocated for {day}; run `coldchain allocate --date {day}` first")
        return []
    if workers is None:
        workers = 0 if get_settings().broker_url else 2
    results: dict[str, dict] = {}
    with local_workers(workers):
        jobs = {d: plan_depot_task.delay(day.isoformat(), d, time_limit, actor) for d in depots}
        columns = (TextColumn("[bold]{task.description:<8}"), BarColumn(), TextColumn("{task.fields[status]}"),
                   TimeElapsedColumn())
        with Progress(*columns, console=err) as bar:
            tasks = {d: bar.add_task(d, total=1.0, status="queued") for d in depots}
            deadline = time.monotonic() + max(120.0, time_limit * len(depots) * 3 + 60)
            while len(results) < len(jobs) and time.monotonic() < deadline:
                for d, job in jobs.items():
                    if d in results:
                        continue
                    meta = job.backend.get_task_meta(job.id)  # one read: state and info agree
                    state, info = meta.get("status"), meta.get("result")
                    if state == "PROGRESS" and isinstance(info, dict):
                        bar.update(tasks[d], completed=info.get("fraction", 0), status="solving")
                    elif state == "SUCCESS":
                        results[d] = info
                        r = results[d]
                        bar.update(tasks[d], completed=1.0,
                                   status=f"{r.get('vans', r['routes'])} vans, {r['stops']} stops, "
                                          f"{r['routes']} trips, {r['distance_km']} km, cost {r.get('cost', 0):.1f}")
                    elif state in ("FAILURE", "REVOKED"):
                        results[d] = {"depot": d, "error": f"{type(info).__name__}: {info}"}
                        bar.update(tasks[d], status=f"[red]failed: {info}")
                time.sleep(0.2)
        for d in jobs:
            results.setdefault(d, {"depot": d, "error": "timed out waiting for a worker"})
    # seconds: the task's own, from its start (read, matrices, solve, store): the time limit is a wall
    table = Table("depot", "vans", "trips", "stops", "unserved", "km", "cost", "seconds", title=f"plans for {day}",
                  title_justify="left")
    for d in depots:
        r = results[d]
        if "error" in r:
            table.add_row(d, "[red]" + r["error"][:60], "", "", "", "", "", "")
        else:
            table.add_row(d, str(r.get("vans", r["routes"])), str(r["routes"]), str(r["stops"]), str(r["unserved"]),
                          f"{r['distance_km']:.1f}", f"{r.get('cost', 0):.1f}",
                          f"{r.get('timing', {}).get('total', r['seconds']):.1f}")
    err.print(table)
    return [results[d] for d in depots]
