"""The clock every room reads (core.timeutil.utcnow): the real time by default, a simulated one shared through a
file when COLDCHAIN_CLOCK names it (the demo); tokens are judged by it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.errors import Unauthorized
from core.security import issue_token, read_token
from core.settings import get_settings
from core.timeutil import FileClock, reset_clock, utcnow
from tests.support import DAY, coldchain_cmd, local


@pytest.fixture
def simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileClock]:
    path = tmp_path / "clock"
    clock = FileClock(path)
    clock.set(local("09:30", DAY))
    monkeypatch.setenv("COLDCHAIN_CLOCK", f"file:{path}")
    get_settings.cache_clear()
    reset_clock()
    yield clock
    monkeypatch.delenv("COLDCHAIN_CLOCK")
    get_settings.cache_clear()
    reset_clock()


def test_unset_the_clock_is_the_real_time() -> None:
    before = datetime.now(UTC)
    now = utcnow()
    assert before <= now <= datetime.now(UTC) and now.tzinfo is not None


def test_a_standing_clock_answers_its_time_until_it_is_moved(simulated: FileClock) -> None:
    assert utcnow() == local("09:30", DAY) == utcnow()
    simulated.set(local("11:05", DAY))
    assert utcnow() == local("11:05", DAY)


def test_a_running_clock_moves_at_its_speed(simulated: FileClock) -> None:
    start = local("12:00", DAY)
    simulated.set(start, speed=3600)
    first = utcnow()
    assert start <= first < start + timedelta(hours=1)
    time.sleep(0.05)
    assert utcnow() - first >= timedelta(seconds=0.05 * 3600 * 0.9)


def test_another_process_given_the_file_reads_the_same_time(simulated: FileClock, tmp_path: Path) -> None:
    simulated.set(local("14:15", DAY))
    code = "from core.timeutil import utcnow; print(utcnow().isoformat())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "COLDCHAIN_DATA_DIR": str(tmp_path)},
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert datetime.fromisoformat(out) == local("14:15", DAY)


def test_tokens_are_judged_by_the_clock(simulated: FileClock) -> None:
    """Issued at a simulated time a day ahead (the real clock would call it not yet valid), valid then,
    expired once the simulated clock passes its lifetime."""
    token = issue_token("driver01", "driver", minutes=15)
    assert read_token(token)["sub"] == "driver01"
    simulated.set(local("09:44", DAY))
    assert read_token(token)["sub"] == "driver01"
    simulated.set(local("09:46", DAY))
    with pytest.raises(Unauthorized, match="expired"):
        read_token(token)


def test_a_missing_clock_file_is_named(simulated: FileClock) -> None:
    simulated.path.unlink()
    with pytest.raises(RuntimeError, match="clock file .* is missing"):
        utcnow()


def test_a_clock_setting_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "COLDCHAIN_DATA_DIR": str(tmp_path), "COLDCHAIN_CLOCK": "tomorrow"}
    run = subprocess.run([*coldchain_cmd(), "audit", "verify"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "COLDCHAIN_CLOCK must be file:PATH" in run.stderr, run.stderr
