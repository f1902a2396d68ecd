"""Local business time (CONTRACTS.md section 0): HH:MM strings are wall-clock in COLDCHAIN_TIMEZONE.

The clock: every room asks :func:`utcnow` for "now" (never ``datetime.now``), so one setting can
give a whole deployment another time. Unset (the default), it is the real time. With
``COLDCHAIN_CLOCK=file:PATH`` it is a simulated clock kept in ``PATH`` by whoever drives it
(`coldchain demo`): the API server, the Celery workers, the ingestor and the demo's own
process, given the same file, read the same simulated instant, so a day that is planned for
tomorrow can be run now, its samples, alerts, deliveries and audit records all stamped on it in
the order they happen. The file holds ``SIMULATED_ISO WALL_EPOCH SPEED``: the simulated time
at a wall-clock instant and how many simulated seconds pass per wall second (0: the clock stands
still until the driver moves it, which is how the demo steps through a day and keeps every
process in step however loaded the machine is).
"""

from __future__ import annotations

import os
import time as _time
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from core.settings import get_settings


class FileClock:
    """A simulated clock shared by processes through a small file (see the module docstring).

    Reading costs one ``stat`` per call; the file is parsed again only when it was replaced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._key: tuple[int, int, int] | None = None
        self._anchor: tuple[datetime, float, float] = (datetime.now(UTC), _time.time(), 1.0)

    def now(self) -> datetime:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise RuntimeError(f"COLDCHAIN_CLOCK: the clock file {self.path} is missing (is the demo running?)") \
                from None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            self._anchor = self._read()
            self._key = key
        sim, wall, speed = self._anchor
        return sim + timedelta(seconds=(_time.time() - wall) * speed) if speed else sim

    def _read(self) -> tuple[datetime, float, float]:
        text = self.path.read_text(encoding="ascii").split()
        try:
            sim = datetime.fromisoformat(text[0])
            if sim.tzinfo is None:
                raise ValueError("a naive time")
            return sim.astimezone(UTC), float(text[1]), float(text[2])
        except (IndexError, ValueError) as exc:
            raise RuntimeError(f"COLDCHAIN_CLOCK: {self.path} does not hold 'ISO-TIME WALL-EPOCH SPEED' ({exc})") \
                from None

    def set(self, moment: datetime, speed: float = 0.0) -> None:
        """Move the clock to ``moment`` (aware), running at ``speed`` from now on (0: standing still).

        Written to a temporary file and renamed over the old one, so a reader never sees half of it."""
        if moment.tzinfo is None:
            raise ValueError("the clock takes an aware datetime")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{moment.astimezone(UTC).isoformat()} {_time.time():.6f} {speed:g}\n", encoding="ascii")
        os.replace(tmp, self.path)


_clock: FileClock | None = None
_resolved = False


def simulated_clock() -> FileClock | None:
    """The simulated clock named by ``COLDCHAIN_CLOCK``, or None for the real time."""
    global _clock, _resolved
    if not _resolved:
        spec = get_settings().clock
        _clock = FileClock(Path(spec.removeprefix("file:"))) if spec else None
        _resolved = True
    return _clock


def reset_clock() -> None:
    """Read ``COLDCHAIN_CLOCK`` again on the next call (tests and the demo change it at run time)."""
    global _clock, _resolved
    _clock, _resolved = None, False


def utcnow() -> datetime:
    """Now, in UTC: the real time, or the simulated clock when ``COLDCHAIN_CLOCK`` names one."""
    clock = _clock if _resolved else simulated_clock()
    return datetime.now(UTC) if clock is None else clock.now()


def parse_hhmm(text: str) -> time:
    """Parse 'HH:MM' strictly; ValueError names what is wrong."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected HH:MM, got {text!r}")
    hour, minute = int(parts[0]), int(parts[1])
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise ValueError(f"time out of range: {text!r}")
    return time(hour, minute)


def local_datetime(day: date, at: time) -> datetime:
    """A local wall-clock time on a local day, as an aware datetime in the business zone."""
    return datetime.combine(day, at, tzinfo=get_settings().tz)


def to_local(moment: datetime) -> datetime:
    return moment.astimezone(get_settings().tz)


def local_today() -> date:
    return utcnow().astimezone(get_settings().tz).date()


def local_tomorrow() -> date:
    return local_today() + timedelta(days=1)


def local_at(day: date, seconds: float) -> datetime:
    """Seconds since local midnight of `day` (a solver's times) as an aware UTC datetime."""
    midnight = datetime.combine(day, time(0), tzinfo=get_settings().tz)
    return (midnight + timedelta(seconds=float(seconds))).astimezone(UTC)


def local_hhmm(moment: datetime) -> str:
    """An aware datetime as local HH:MM (CONTRACTS.md section 5's times)."""
    return moment.astimezone(get_settings().tz).strftime("%H:%M")
