"""An invalid setting is one plain line per variable and exit code 2, for every command, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import coldchain_cmd

BAD = {
    "COLDCHAIN_SECRET_KEY": ("short", "at least 32 characters"),
    "COLDCHAIN_TIMEZONE": ("Mars/Olympus", "IANA"),
    "COLDCHAIN_TOKEN_MINUTES": ("soon", "integer"),
    "COLDCHAIN_MQTT_URL": ("http://127.0.0.1:1883", "mqtt://host:port"),
    "COLDCHAIN_ORDER_CUTOFF": ("25:00", "HH:MM"),
    "COLDCHAIN_DEFAULT_SERVICE_RADIUS_KM": ("-1", "greater than 0"),
}


@pytest.mark.parametrize("command", [["serve"], ["allocate", "--date", "2030-01-01"], ["ingest"], ["worker"],
                                     ["audit", "verify"], ["demo"]])
def test_every_invalid_setting_is_named_on_one_line_with_exit_2(command: list[str], tmp_path) -> None:  # noqa: ANN001
    env = {**os.environ, "COLDCHAIN_DATA_DIR": str(tmp_path), **{k: v for k, (v, _why) in BAD.items()}}
    run = subprocess.run([*coldchain_cmd(), *command], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "ValidationError" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == len(BAD), run.stderr
    for name, (_value, why) in BAD.items():
        line = next((line for line in lines if f" {name}: " in line), None)
        assert line is not None, f"{name} not named in:\n{run.stderr}"
        assert why in line, line
    assert "short" not in run.stderr, "the secret itself must not be printed"


def test_a_valid_setting_is_not_reported(tmp_path) -> None:  # noqa: ANN001
    env = {**os.environ, "COLDCHAIN_DATA_DIR": str(tmp_path), "COLDCHAIN_TOKEN_MINUTES": "0"}
    run = subprocess.run([*coldchain_cmd(), "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert [line for line in run.stderr.splitlines() if line.strip()] == [
        "configuration error: COLDCHAIN_TOKEN_MINUTES: Input should be greater than or equal to 1 (got '0'); "
        "expected >= 1, <= 1440, minutes an access token lives"]
