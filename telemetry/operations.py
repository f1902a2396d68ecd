"""What an operator watches on a running stack: is telemetry arriving, how far behind is it,
what is being rejected, what is open, how long is the audit chain.

Everything here reads small tables or indexed ranges (the per-van rule state, rejects by
arrival time, open alerts), so it can be polled every minute at national scale; walking the
audit chain is `coldchain audit verify`, not this.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.audit import AuditLog
from core.timeutil import utcnow
from telemetry.models import Alert, TelemetryReject, VehicleRuleState
from warehouses.models import Vehicle


@dataclass
class Status:
    at: datetime
    active_vans: int
    newest_sample_at: datetime | None
    lag_s: float | None  # now minus the newest sample of any active van: how far the stored stream trails
    stale_vans: list[str] = field(default_factory=list)  # active vans silent for longer than max_lag_s
    max_lag_s: float = 120.0
    rejected_last_hour: int = 0
    last_reject: dict | None = None
    open_alerts: int = 0
    oldest_open_alert_at: datetime | None = None
    audit_records: int = 0
    audit_last_at: datetime | None = None

    @property
    def healthy(self) -> bool:
        """Healthy when every van on a route has reported within ``max_lag_s``."""
        return not self.stale_vans

    def as_dict(self) -> dict:
        out = asdict(self)
        out["healthy"] = self.healthy
        return out


def status(session: Session, *, max_lag_s: float = 120.0, now: datetime | None = None) -> Status:
    """Read the stack's vital signs (see the module docstring for what each one tells)."""
    now = now or utcnow()
    active = session.execute(
        select(Vehicle.code, VehicleRuleState.last_sample_at)
        .join(Vehicle, Vehicle.id == VehicleRuleState.vehicle_id)
        .where(VehicleRuleState.active.is_(True))
        .order_by(Vehicle.code)
    ).all()
    newest = max((at for _c, at in active if at is not None), default=None)
    stale = [code for code, at in active if at is None or (now - at).total_seconds() > max_lag_s]
    hour_ago = now - timedelta(hours=1)
    rejected = session.scalar(select(func.count()).select_from(TelemetryReject)
                              .where(TelemetryReject.received_at >= hour_ago)) or 0
    last = session.execute(select(TelemetryReject.received_at, TelemetryReject.topic, TelemetryReject.reason)
                           .order_by(TelemetryReject.received_at.desc()).limit(1)).first()
    open_count, oldest = session.execute(select(func.count(), func.min(Alert.started_at))
                                         .where(Alert.status == "open")).one()
    # the chain's ids are consecutive from 1, so the newest record's id is the count (no table scan)
    newest_record = session.execute(select(AuditLog.id, AuditLog.at).order_by(AuditLog.id.desc()).limit(1)).first()
    records, last_at = newest_record if newest_record else (0, None)
    return Status(
        at=now, active_vans=len(active), newest_sample_at=newest,
        lag_s=round((now - newest).total_seconds(), 1) if newest else None,
        stale_vans=stale, max_lag_s=max_lag_s, rejected_last_hour=rejected,
        last_reject={"received_at": last[0], "topic": last[1], "reason": last[2]} if last else None,
        open_alerts=open_count or 0, oldest_open_alert_at=oldest, audit_records=records or 0, audit_last_at=last_at,
    )
