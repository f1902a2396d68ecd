"""`coldchain demo`: a short day end to end on embedded defaults exits 0 and writes its files; an
outcome that differs from what was staged (an alert missing, one not staged) makes it say so and
exit non-zero."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from scripts.demo import compare_staged
from tests.conftest import coldchain_cmd

# a short day: few orders, a second per depot, the first two hours of the vans' telemetry
SHORT_DAY = ["--orders", "20", "--time-limit", "1", "--telemetry-minutes", "120"]


def test_compare_staged_names_what_is_missing_and_what_was_not_staged() -> None:
    staged = [("VAN-13", "chilled", "temperature"), ("VAN-07", None, "shock"), ("VAN-02", "chilled", "door")]
    found = [("VAN-13", "chilled", "temperature"), ("VAN-02", "chilled", "door"), ("VAN-02", "chilled", "door"),
             ("VAN-05", "frozen", "door")]
    table, problems = compare_staged("alert", ("vehicle", "compartment", "kind"), staged, found)
    assert problems == [  # in key order: vehicle, compartment (none first), kind
        "alert too many: vehicle VAN-02, compartment chilled, kind door (staged 1, found 2)",
        "alert not staged: vehicle VAN-05, compartment frozen, kind door (staged 0, found 1)",
        "alert missing: vehicle VAN-07, compartment —, kind shock (staged 1, found 0)",
    ]
    assert table is not None and table.row_count == 4  # every key, the matching one too

    same_table, none = compare_staged("alert", ("vehicle", "compartment", "kind"), staged, staged[::-1],
                                      show="differences")
    assert none == [] and same_table is None


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLDCHAIN_DATABASE_URL", "COLDCHAIN_MQTT_URL", "COLDCHAIN_BROKER_URL", "COLDCHAIN_DATA_DIR")}
    return subprocess.run([*coldchain_cmd(), "demo", "--output", str(tmp_path / "out"), *SHORT_DAY, *extra],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_demo_short_day_exits_0_and_writes_its_files(tmp_path: Path) -> None:
    run = _demo(tmp_path)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "FAILED" not in log and "incident not staged" not in log, log[-4000:]
    out = tmp_path / "out"
    for name in ("nodes.csv", "products.csv", "stock.csv", "vehicles.csv", "drivers.csv", "orders.csv"):
        assert (out / "scenario" / name).stat().st_size > 0
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    allocations = json.loads((out / "allocations.json").read_text(encoding="utf-8"))
    assert plan["allocations"] == allocations["allocations"] and plan["routes"]
    assert isinstance(json.loads((out / "transfers.json").read_text()), list)
    assert isinstance(json.loads((out / "demand.json").read_text()), list)
    assert (out / "picklists.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "routes.png").read_bytes().startswith(b"\x89PNG")
    for van in {r["vehicle"] for r in plan["routes"]}:
        assert json.loads((out / "routes" / f"{van}.geojson").read_text())["type"] == "FeatureCollection"
        assert (out / "routes" / f"{van}.pdf").read_bytes().startswith(b"%PDF")
    alerts = json.loads((out / "alerts.json").read_text(encoding="utf-8"))
    # the demo compared them with what was staged (exit 0); here: the table it printed says so, row by row
    table = re.findall(r"│ (VAN-\d+) +│ (\S+) +│ (\w+) +│ (\d+) +│ (\d+) +│ ok +│", run.stdout)
    assert sorted((v, None if c == "—" else c, k) for v, c, k, _s, _f in table) == sorted(
        (a["vehicle"], a["compartment"], a["kind"]) for a in alerts)
    assert alerts and all(s == f for *_k, s, f in table)


@pytest.mark.slow
def test_demo_exits_1_and_names_the_alert_when_a_staged_incident_is_withheld(tmp_path: Path) -> None:
    run = _demo(tmp_path, "--withhold-incident", "door_left_open")
    log = run.stdout + run.stderr
    assert run.returncode == 1, log[-4000:]
    assert "door_left_open withheld from the stream but still expected" in log
    missing = re.findall(r"telemetry: alert missing: vehicle (VAN-\d+), compartment (\w+), kind door "
                         r"\(staged 1, found 0\)", log)
    assert missing and "coldchain demo FAILED: 1 difference(s)" in log, log[-4000:]
    alerts = json.loads((tmp_path / "out" / "alerts.json").read_text(encoding="utf-8"))
    assert (missing[0][0], missing[0][1], "door") not in {(a["vehicle"], a["compartment"], a["kind"]) for a in alerts}


def test_demo_refuses_an_unknown_incident_to_withhold(tmp_path: Path) -> None:
    run = _demo(tmp_path, "--withhold-incident", "meteor")
    assert run.returncode == 2 and "unknown incident meteor" in run.stderr
    assert not (tmp_path / "out").exists()
