"""A delivery day driven through the driver's service, with one van's telemetry stored: for the trace tests.

Built on tests/delivery/helpers.build_day (real allocation and OR-Tools planning, dated from the day the
tests run). VAN-01 (device TL-0001) leaves its depot at 08:00 local on DAY; stop i is delivered at
08:00 + 30·i min; the last stop reports a broken egg first. The van's chilled compartment reads 4 °C
every minute from 07:00 to 13:00 except for 30 minutes at 9 °C, ending 10 minutes before the last stop's
delivery (so the first stop's order saw no excursion, the last one's saw all 30 minutes); the frozen
compartment reads -19 °C throughout; the chilled door opens for 2 minutes at each stop; shocks 0.3 g.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from delivery.schemas import DamagedItem, RouteStartIn, StopEventIn
from delivery.service import driver_ref, start_route, stop_event
from telemetry.service import Fleet, Message, default_engine, store_batch
from tests.delivery.helpers import build_day, routes_by_van
from tests.support import local, zulu

VAN = "VAN-01"
WARM_C = 9.0


@dataclass
class DrivenDay:
    day: object
    leave: datetime
    refs: list[str]  # VAN-01's orders in stop order
    delivered: dict[str, datetime]
    warm_from: datetime
    warm_to: datetime
    damaged_ref: str
    evening: datetime


def readings_payloads(leave: datetime, warm_from: datetime, warm_to: datetime, stops_at: list[datetime],
                      device: str = "TL-0001") -> list[dict]:
    samples = []
    t, seq = leave - timedelta(hours=1), 1
    end = leave + timedelta(hours=5)
    while t < end:
        chilled = WARM_C if warm_from <= t < warm_to else 4.0
        door = "open" if any(s <= t < s + timedelta(minutes=2) for s in stops_at) else "closed"
        samples.append({"device": device, "seq": seq, "ts": zulu(t), "temp_c": {"chilled": chilled, "frozen": -19.0},
                        "door": {"chilled": door, "frozen": "closed"}, "shock_g": 0.3})
        t += timedelta(minutes=1)
        seq += 1
    return samples


def store_readings(session: Session, samples: list[dict], now: datetime, van: str = VAN) -> None:
    fleet = Fleet()
    fleet.load(session)
    engine = default_engine()
    for i in range(0, len(samples), 100):
        msg = Message(f"coldchain/v1/vehicles/{van}/telemetry", json.dumps(samples[i:i + 100]).encode(), now)
        out = store_batch(session, [msg], fleet, engine, now=now)
        assert out.rejected == 0 and out.stored == len(samples[i:i + 100]), out
    session.flush()


def drive_day(session: Session, tmp_path: Path, readings: bool = True) -> DrivenDay:
    day = build_day(session, tmp_path)
    route = routes_by_van(session, day)[VAN]
    refs = [s.order.ref for s in route.stops]
    assert len(refs) >= 3, f"the day needs at least three stops on {VAN}, got {refs}"
    stop_ids = [s.stop_id for s in route.stops]
    leave = local("08:00", day)
    evening = local("18:00", day)
    driver = driver_ref(session, "driver01")
    start_route(session, driver, RouteStartIn(date=day, at=leave), now=evening)
    delivered: dict[str, datetime] = {}
    arrivals = []
    for i, (ref, sid) in enumerate(zip(refs, stop_ids, strict=True), start=1):
        at = leave + timedelta(minutes=30 * i)
        arrivals.append(at - timedelta(minutes=4))
        stop_event(session, driver, sid, StopEventIn(type="arrived", at=at - timedelta(minutes=4)), now=evening)
        if i == len(refs):
            broke = StopEventIn(type="damaged", at=at - timedelta(minutes=2), note="蛋碎了一个",
                                items=[DamagedItem(sku="EGG-30", qty=1)])
            stop_event(session, driver, sid, broke, now=evening)
        stop_event(session, driver, sid, StopEventIn(type="delivered", at=at, recipient="本人"), now=evening)
        delivered[ref] = at
    last = delivered[refs[-1]]
    warm_from, warm_to = last - timedelta(minutes=40), last - timedelta(minutes=10)
    if readings:
        store_readings(session, readings_payloads(leave, warm_from, warm_to, arrivals), evening)
    return DrivenDay(day, leave, refs, delivered, warm_from, warm_to, refs[-1], evening)
