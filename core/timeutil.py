"""Local business time (CONTRACTS.md section 0): HH:MM strings are wall-clock in COLDCHAIN_TIMEZONE."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from core.settings import get_settings


def utcnow() -> datetime:
    return datetime.now(UTC)


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
