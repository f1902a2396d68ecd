"""Storing telemetry: decode a batch of MQTT messages, store each sample once, keep every
reject, run the rules with their state in the database, and return the alerts to publish.

The ingestor calls `store_batch` with messages it has not yet acknowledged; it acks them
only after the transaction commits, so a crash at any point loses nothing and a replay
stores nothing twice ((device, seq) is the primary key of telemetry_samples).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, MetaData, Table, select, text
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.orm import Session

from core.bulk import copy_rows
from core.timeutil import utcnow
from telemetry.decoding import Sample, decode_message, readings_of
from telemetry.models import Alert, TelemetryReading, TelemetryReject, TelemetrySample, VehicleRuleState
from telemetry.rules import AlertEvent, RuleConfig, RuleEngine, VehicleState
from warehouses.models import Vehicle


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    received_at: datetime
    mid: int | None = None


@dataclass
class BatchOutcome:
    messages: int = 0
    samples: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    alerts: list[dict] = field(default_factory=list)


class Fleet:
    """vehicle code -> (vehicle id, devices fitted), reloaded when an unknown code shows up
    (at most every few seconds, so a flood of garbage cannot hammer the database)."""

    def __init__(self, refresh_every: float = 5.0) -> None:
        self._by_code: dict[str, tuple[int, frozenset[str]]] = {}
        self._loaded = 0.0
        self._refresh_every = refresh_every
        self._lock = threading.Lock()

    def load(self, session: Session) -> None:
        rows = session.execute(select(Vehicle.code, Vehicle.id, Vehicle.device)).all()
        with self._lock:
            self._by_code = {code: (vid, frozenset([device] if device else [])) for code, vid, device in rows}
            self._loaded = time.monotonic()

    def devices_of(self, session: Session):  # noqa: ANN201
        def lookup(code: str) -> frozenset[str] | None:
            entry = self._by_code.get(code)
            if entry is None and time.monotonic() - self._loaded > self._refresh_every:
                self.load(session)
                entry = self._by_code.get(code)
            return entry[1] if entry else None

        return lookup

    def vehicle_id(self, code: str) -> int:
        return self._by_code[code][0]

    def code_of(self, vehicle_id: int) -> str | None:
        return next((c for c, (vid, _d) in self._by_code.items() if vid == vehicle_id), None)


def ensure_partitions(session: Session, days: Iterable[datetime]) -> None:
    """Create the day partitions of telemetry_readings that a batch needs (PostgreSQL only).

    Done in the batch's own transaction (a savepoint) so that it works whatever holds
    locks; the ingestor also makes today's and tomorrow's ahead of time, outside any batch,
    so this is rare (an old backlog) and brief.
    """
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for day in sorted({d.astimezone(UTC).date() for d in days}):
        name = f"telemetry_readings_p{day:%Y%m%d}"
        if session.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}):
            continue
        start, end = day.isoformat(), (day + timedelta(days=1)).isoformat()
        ddl = (f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF telemetry_readings "
               f"FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')")
        try:
            with session.begin_nested():
                session.execute(text(ddl))
        except (IntegrityError, ProgrammingError):  # another ingestor made it at the same moment
            pass


def _insert(session: Session, model, rows: list[dict], conflict_nothing: bool = False, returning=None):  # noqa: ANN001, ANN202
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(model)
    if conflict_nothing:
        stmt = stmt.on_conflict_do_nothing()
    if returning is not None:
        stmt = stmt.returning(*returning)
        return session.execute(stmt, rows).all()
    session.execute(stmt, rows)
    return None


_INCOMING = Table("incoming_samples", MetaData(), *(Column(c.name, c.type) for c in TelemetrySample.__table__.columns))


def insert_new_samples(session: Session, rows: list[dict]) -> set[tuple[str, int]]:
    """Insert samples not seen before; return the (device, seq) keys that were new.

    PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT ... ON CONFLICT DO
    NOTHING RETURNING (one round trip for the whole batch). SQLite: INSERT OR IGNORE ... RETURNING.
    """
    if session.get_bind().dialect.name != "postgresql":
        return set(_insert(session, TelemetrySample.__table__, rows, conflict_nothing=True,
                           returning=(TelemetrySample.device, TelemetrySample.seq)))
    session.execute(text("CREATE TEMP TABLE IF NOT EXISTS incoming_samples (LIKE telemetry_samples "
                         "INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"))
    copy_rows(session, _INCOMING, rows)
    result = session.execute(text(
        "INSERT INTO telemetry_samples SELECT DISTINCT ON (device, seq) * FROM incoming_samples "
        "ON CONFLICT DO NOTHING RETURNING device, seq"))
    keys = {(d, q) for d, q in result}
    session.execute(text("TRUNCATE incoming_samples"))
    return keys


def store_batch(session: Session, messages: Sequence[Message], fleet: Fleet, engine: RuleEngine,
                now: datetime | None = None) -> BatchOutcome:
    """Decode, store once, keep rejects, apply the rules. The caller commits, then acks."""
    now = now or utcnow()
    out = BatchOutcome(messages=len(messages))
    lookup = fleet.devices_of(session)
    samples: dict[tuple[str, int], tuple[Sample, datetime]] = {}
    rejects: list[dict] = []
    for msg in messages:
        decoded = decode_message(msg.topic, msg.payload, devices_of=lookup, now=now)
        for reject in decoded.rejects:
            rejects.append({"received_at": msg.received_at, "topic": reject.topic, "payload": reject.payload,
                            "reason": reject.reason, "batch_index": reject.index})
        for sample in decoded.samples:
            out.samples += 1
            samples.setdefault((sample.device, sample.seq), (sample, msg.received_at))
    if rejects:
        copy_rows(session, TelemetryReject.__table__, rejects)
        out.rejected = len(rejects)
    if not samples:
        out.duplicates = out.samples
        return out

    rows = [{"device": s.device, "seq": s.seq, "vehicle_id": fleet.vehicle_id(s.vehicle), "ts": s.ts,
             "received_at": received} for s, received in samples.values()]
    new_keys = insert_new_samples(session, rows)
    out.stored = len(new_keys)
    out.duplicates = out.samples - out.stored
    fresh = [(s, received) for key, (s, received) in samples.items() if key in new_keys]
    if not fresh:
        return out
    ensure_partitions(session, [s.ts for s, _r in fresh])
    readings = []
    for s, _received in fresh:
        vid = fleet.vehicle_id(s.vehicle)
        for r in readings_of(s):
            readings.append({"ts": r.ts, "device": r.device, "seq": r.seq, "kind": r.kind,
                             "compartment": r.compartment or "", "vehicle_id": vid, "value": r.value,
                             "value2": getattr(r, "value2", None)})
    copy_rows(session, TelemetryReading.__table__, readings)

    by_vehicle: dict[str, list[tuple[Sample, datetime]]] = defaultdict(list)
    for s, received in fresh:
        by_vehicle[s.vehicle].append((s, received))
    states = _lock_states(session, [fleet.vehicle_id(v) for v in by_vehicle], now)
    for code in sorted(by_vehicle):
        vid = fleet.vehicle_id(code)
        row = states[vid]
        state = VehicleState.from_dict(row.state) if row.state else None
        group = by_vehicle[code]
        arrived = max(received for _s, received in group)
        state, events = engine.apply(state, [s for s, _r in group], now, arrived)
        row.state = state.to_dict()
        row.updated_at = now
        latest = max(s.ts for s, _r in group)
        row.last_sample_at = max(latest, row.last_sample_at) if row.last_sample_at else latest
        if events:
            out.alerts.extend(apply_alert_events(session, events, {code: vid}, now))
    session.flush()
    return out


def _lock_states(session: Session, vehicle_ids: list[int], now: datetime) -> dict[int, VehicleRuleState]:
    """Rule state rows of these vans, created if missing, locked in id order (no deadlocks between ingestors)."""
    ids = sorted(set(vehicle_ids))
    _insert(session, VehicleRuleState, [{"vehicle_id": v, "state": {}, "updated_at": now, "active": False}
                                        for v in ids], conflict_nothing=True)
    query = select(VehicleRuleState).where(VehicleRuleState.vehicle_id.in_(ids)).order_by(VehicleRuleState.vehicle_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return {row.vehicle_id: row for row in session.scalars(query.execution_options(populate_existing=True))}


def apply_alert_events(session: Session, events: Iterable[AlertEvent], vehicle_ids: dict[str, int],
                       now: datetime) -> list[dict]:
    """Open, update or close alert rows; return each changed alert as CONTRACTS.md section 3 shows it."""
    changed: list[Alert] = []
    for ev in events:
        alert = session.scalar(select(Alert).where(Alert.key == ev.key))
        if alert is None:
            alert = Alert(key=ev.key, vehicle_id=vehicle_ids[ev.vehicle], compartment=ev.compartment, kind=ev.kind,
                          status="open", started_at=ev.started_at, raised_at=now, minutes_out=0, late=ev.late)
            session.add(alert)
        alert.started_at = ev.started_at
        alert.ended_at = ev.ended_at
        alert.peak = ev.peak
        alert.minutes_out = ev.minutes
        alert.late = alert.late or ev.late
        alert.details = ev.details or None
        if ev.status == "closed":
            alert.status = "closed"
        elif alert.status == "closed":
            alert.status = "open"
        changed.append(alert)
    session.flush()
    codes = {v: c for c, v in vehicle_ids.items()}
    return [alert_view(a, codes[a.vehicle_id]) for a in changed]


def alert_view(alert: Alert, vehicle_code: str | None = None) -> dict:
    return {
        "id": alert.id, "vehicle": vehicle_code or alert.vehicle.code, "compartment": alert.compartment,
        "kind": alert.kind, "status": alert.status, "started_at": _iso(alert.started_at),
        "ended_at": _iso(alert.ended_at), "peak": alert.peak, "minutes_out": round(alert.minutes_out, 2),
        "late": alert.late, "details": alert.details or {}, "raised_at": _iso(alert.raised_at),
        "acknowledged_by": alert.acknowledged_by, "acknowledged_at": _iso(alert.acknowledged_at),
        "ack_note": alert.ack_note,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def tick_all(session: Session, engine: RuleEngine, now: datetime | None = None) -> list[dict]:
    """Evaluate every van's open conditions against the clock (durations, silence)."""
    now = now or utcnow()
    codes = dict(session.execute(select(Vehicle.id, Vehicle.code)).all())
    query = select(VehicleRuleState).order_by(VehicleRuleState.vehicle_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    alerts: list[dict] = []
    for row in session.scalars(query):
        code = codes.get(row.vehicle_id)
        if code is None:
            continue
        state = VehicleState.from_dict(row.state) if row.state else None
        state, events = engine.tick(state, now, row.active, vehicle=code)
        row.state = state.to_dict()
        row.updated_at = now
        alerts.extend(apply_alert_events(session, events, {code: row.vehicle_id}, now))
    session.flush()
    return alerts


def set_active(session: Session, vehicle_code: str, active: bool, now: datetime | None = None) -> None:
    """A van on an active route is watched for silence; the driver's route start sets this."""
    now = now or utcnow()
    vid = session.scalar(select(Vehicle.id).where(Vehicle.code == vehicle_code))
    if vid is None:
        raise ValueError(f"unknown vehicle {vehicle_code}")
    row = _lock_states(session, [vid], now)[vid]
    row.active = active
    row.updated_at = now


def default_engine() -> RuleEngine:
    return RuleEngine(RuleConfig())
