"""Where the command line writes: machines read stdout, people read stderr (CONTRACTS.md section 1)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)
out = Console(highlight=False)
for _console in (err, out):
    if not _console.is_terminal:  # logs and CI: do not squeeze tables into 80 columns
        _console.width = max(_console.width, 140)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")
    sys.stdout.flush()


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, transient=False)
