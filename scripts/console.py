"""Where the command line writes: machines read stdout, people read stderr (CONTRACTS.md section 1)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)
out = Console(highlight=False)
for _console in (err, out):
    if not _console.is_terminal:  # logs and CI: do not squeeze tables into 80 columns
        _console.width = max(_console.width, 140)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server this process starts (the demo's API, a test's)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def coldchain_argv() -> list[str]:
    """How to start another `coldchain` command: the installed script beside this Python, else the module."""
    script = Path(sys.executable).with_name("coldchain")
    return [str(script)] if script.exists() else [sys.executable, "-m", "scripts.cli"]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)


def ensure_schema() -> None:
    """Migrations run before any command that touches the database (full-stack template habit)."""
    from core import migrate
    from core.db import get_engine

    migrate.upgrade(get_engine())


def load_with_progress(directory: Path):  # noqa: ANN201
    """Load a scenario folder in one transaction, with a progress bar on stderr."""
    from core.db import session_scope
    from fulfillment.scenario import count_rows
    from traceability.flows import load_scenario  # the load, and its stock received at the nodes (custody)

    total = count_rows(directory)
    with progress_bar() as bar, session_scope() as session:
        task = bar.add_task(f"loading {directory.name}", total=total)
        report = load_scenario(session, directory, lambda _name, n: bar.advance(task, n))
        bar.update(task, completed=total)
    return report


def mqtt_url_or_embedded(stack):  # noqa: ANN001, ANN201
    """The configured broker, or an embedded one started for this process (its URL printed)."""
    from core.settings import get_settings

    url = get_settings().mqtt_url
    if url:
        return url
    from telemetry.broker import start_embedded_broker

    broker = stack.enter_context(start_embedded_broker())
    err.print(f"embedded MQTT broker at [bold]{broker.url}[/] (MQTT 5; 3.1.1 at {broker.url_v311})")
    return broker.url
