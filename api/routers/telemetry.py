"""Telemetry and alerts for dispatchers and quality staff (CONTRACTS.md section 3).

Stored readings of a van (keyset-paged on the readings table's own key through an opaque
cursor), the messages the ingestor could not use, and alerts with their acknowledgement.
Every filter runs in SQL; every error is problem+json. Nothing here publishes on MQTT: the
ingestor publishes the alerts it raises.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, Field, StringConstraints

from api.deps import Caller, SessionDep, require
from api.pagination import Code, Limit, page
from api.schemas import STAFF, AlertOut, Page, Reading, Reject, Watch, problems
from core.errors import Invalid, NotFound
from core.timeutil import local_today
from telemetry import operations
from telemetry.models import Alert, TelemetryReject
from telemetry.service import (
    ReadingKey,
    acknowledge_alert,
    alert_view,
    alerts_query,
    list_readings,
    reject_view,
    rejects_query,
    vehicle_id_of,
    watch_view,
)
from traceability.service import held_on_routes

router = APIRouter(tags=["telemetry"], responses=STAFF)
Watchers = Annotated[Caller, Depends(require("dispatcher", "quality"))]
Quality = Annotated[Caller, Depends(require("quality"))]

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_UNENCODED_PLUS = re.compile(r"(\d{2}:\d{2}(?:\.\d+)?) (\d{2}:\d{2})$")


def _rfc3339(value: object) -> object:
    """RFC 3339 with a zone, nothing looser (no bare dates, no epoch numbers, no missing zone).

    A '+' left unencoded in a query string arrives as a space: '08:00:00 08:00' is read back
    as '08:00:00+08:00'.
    """
    if not isinstance(value, str):
        return value
    text = _UNENCODED_PLUS.sub(r"\1+\2", value.strip())
    if not _RFC3339.fullmatch(text):
        raise ValueError("expected an RFC 3339 time with a zone, such as 2026-11-23T08:00:00Z or "
                         "2026-11-23T16:00:00+08:00")
    return text


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before the year 1 in UTC
        raise ValueError("time out of range") from exc


Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_utc)]
MAX_ID = 2**31 - 1  # ids are INTEGER columns: a larger value would fail in SQL, not match nothing
After = Annotated[int | None, Query(ge=0, le=MAX_ID, description="cursor from the previous page's next link")]
ReadingKind = Literal["temperature", "door", "shock", "position", "battery"]
Compartment = Literal["frozen", "chilled", "ambient", "none"]
AlertStatus = Literal["open", "acknowledged", "closed"]
Cursor = Annotated[str | None, Query(max_length=400, description="cursor from the previous page's next link")]
AlertKind = Literal["temperature", "door", "shock", "silence", "battery"]


@router.get("/telemetry/vehicles/{vehicle_code}/readings", response_model=Page[Reading])
def readings(vehicle_code: Code, request: Request, session: SessionDep, _caller: Watchers,
             start: Annotated[Instant | None, Query(alias="from", description="from this time (included), RFC 3339")]
             = None,
             end: Annotated[Instant | None, Query(alias="to", description="up to this time (excluded), RFC 3339")]
             = None,
             kind: ReadingKind | None = None,
             compartment: Annotated[Compartment | None, Query(
                 description="a compartment class, or none for readings of no compartment")] = None,
             limit: Limit = 100,
             after: Cursor = None) -> dict:
    """Stored readings of one van in [from, to), oldest first; position values are [lat, lon]."""
    if start is not None and end is not None and end <= start:
        raise Invalid("'to' must be later than 'from'", pointer="query:to")
    cursor = None
    if after is not None:
        try:
            cursor = ReadingKey.decode(after)
        except ValueError as exc:
            raise Invalid(str(exc), pointer="query:after") from exc
    vehicle_id = vehicle_id_of(session, vehicle_code)
    if vehicle_id is None:
        raise NotFound(f"no vehicle {vehicle_code}")
    stored_compartment = "" if compartment == "none" else compartment
    items, following = list_readings(session, vehicle_id, start=start, end=end, kind=kind,
                                     compartment=stored_compartment, after=cursor, limit=limit)
    next_url = (str(request.url.include_query_params(after=following.encode(), limit=limit))
                if following is not None else None)
    return {"items": items, "next": next_url}


@router.get("/telemetry/vehicles/{vehicle_code}/watch", response_model=Watch)
def watch(vehicle_code: Code, session: SessionDep, _caller: Watchers) -> dict:
    """What the alert rules watch on this van now: whether it is on an active route (silence alerts), what it
    carries per compartment, the temperature limits in force (class defaults tightened by the products), and
    any lot on quality hold on its unfinished routes (yesterday's on: routes run past midnight)."""
    vehicle_id = vehicle_id_of(session, vehicle_code)
    if vehicle_id is None:
        raise NotFound(f"no vehicle {vehicle_code}")
    return {**watch_view(session, vehicle_id, vehicle_code),
            "held_lots": held_on_routes(session, vehicle_code=vehicle_code, unfinished_only=True,
                                        from_day=local_today() - timedelta(days=1))}


@router.get("/telemetry/rejected", response_model=Page[Reject])
def rejected(request: Request, session: SessionDep, _caller: Quality,
             since: Annotated[Instant | None, Query(description="received at or after this time, RFC 3339")] = None,
             limit: Limit = 100, after: After = None) -> dict:
    """Messages the ingestor could not use, oldest first: topic, raw payload and reason."""
    return page(session, request, rejects_query(since), TelemetryReject.id, limit, after, reject_view)


@router.get("/alerts", response_model=Page[AlertOut])
def alerts(request: Request, session: SessionDep, _caller: Watchers, status: AlertStatus | None = None,
           vehicle: Annotated[str | None, Query(max_length=64, description="a vehicle code")] = None,
           kind: AlertKind | None = None, limit: Limit = 100, after: After = None) -> dict:
    """Alerts, oldest first; without status, all of them."""
    return page(session, request, alerts_query(status, vehicle, kind), Alert.id, limit, after, alert_view)


class AckIn(BaseModel):
    note: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] = Field(
        description="what quality staff did or decided (1 to 2000 characters)")


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut, responses=problems(409))
def acknowledge(alert_id: int, body: AckIn, session: SessionDep, caller: Quality) -> dict:
    """Acknowledge once: an open alert becomes acknowledged; a closed one stays closed but
    records who acknowledged it, when, and the note. A second acknowledgement answers 409."""
    if not 1 <= alert_id <= MAX_ID:
        raise NotFound(f"no alert {alert_id}")
    return alert_view(acknowledge_alert(session, alert_id, caller.username, body.note))



class LastReject(BaseModel):
    received_at: datetime
    topic: str
    reason: str


class StackStatus(BaseModel):
    """The operator's vital signs (docs/operations.md, "What to watch")."""

    at: datetime
    healthy: bool
    active_vans: int
    newest_sample_at: datetime | None
    lag_s: float | None
    stale_vans: list[str]
    max_lag_s: float
    rejected_last_hour: int
    last_reject: LastReject | None
    open_alerts: int
    oldest_open_alert_at: datetime | None
    audit_records: int
    audit_last_at: datetime | None


@router.get("/status", response_model=StackStatus)
def stack_status(session: SessionDep, _: Watchers,
                 max_lag_s: Annotated[float, Query(gt=0, le=86400, description="seconds of silence before an "
                                                   "active van counts as stale")] = 120.0) -> dict:
    return operations.status(session, max_lag_s=max_lag_s).as_dict()
