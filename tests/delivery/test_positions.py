"""Re-planning takes the newest of a van's own GPS fix and its driver's phone position."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from delivery.schemas import PositionIn
from delivery.service import driver_ref, record_position
from telemetry.service import Fleet, Message, default_engine, store_batch
from tests.delivery.helpers import build_day
from traceability.service import van_positions


def test_newest_of_gps_and_phone(session, tmp_path: Path) -> None:  # noqa: ANN001
    build_day(session, tmp_path, depots=())
    now = datetime.now(UTC).replace(microsecond=0)
    fleet = Fleet()
    fleet.load(session)

    def gps(at: datetime, pos: tuple[float, float], seq: int) -> None:
        sample = {"device": "TL-0001", "seq": seq, "ts": at.isoformat(), "pos": list(pos)}
        store_batch(session, [Message("coldchain/v1/vehicles/VAN-01/telemetry", json.dumps(sample).encode(), now)],
                    fleet, default_engine(), now=now)

    driver = driver_ref(session, "driver01")
    assert driver is not None and driver.vehicle_code == "VAN-01"
    gps(now - timedelta(minutes=6), (30.601, 104.001), 1)
    record_position(session, driver, PositionIn(at=now - timedelta(minutes=3), position=(30.602, 104.002)), now=now)
    assert van_positions(session, "FS-01", now) == {"VAN-01": (30.602, 104.002)}  # the phone is newer
    gps(now - timedelta(minutes=1), (30.603, 104.003), 2)
    assert van_positions(session, "FS-01", now) == {"VAN-01": (30.603, 104.003)}  # now the tracker is
    # neither counts when older than 15 minutes, nor after the time asked about
    assert van_positions(session, "FS-01", now + timedelta(minutes=30)) == {}
    assert van_positions(session, "FS-01", now - timedelta(minutes=4)) == {"VAN-01": (30.601, 104.001)}
    three = driver_ref(session, "driver03")
    record_position(session, three, PositionIn(at=now - timedelta(minutes=20), position=(30.7, 104.1)), now=now)
    assert "VAN-03" not in van_positions(session, "FS-01", now)
    record_position(session, three, PositionIn(position=(30.71, 104.11)), now=now)
    assert van_positions(session, "FS-01", now)["VAN-03"] == (30.71, 104.11)
    from telemetry.models import DriverPosition

    rows = session.scalars(select(DriverPosition).order_by(DriverPosition.id)).all()
    assert [(r.vehicle_id is not None, r.driver_id) for r in rows][-1] == (True, three.id)
