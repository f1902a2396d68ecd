"""Re-planning takes a van on the road from its last GPS fix (telemetry), not from the last stop it reported."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from geopy.distance import geodesic

from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day
from routing.replan import replan
from routing.service import plan_depot
from telemetry.service import Fleet, Message, default_engine, store_batch
from tests.support import DAY, by_van, current, same, start_route
from tests.support import replan_scenario as scenario
from traceability.service import van_positions


def test_a_van_between_stops_goes_on_from_its_gps_fix(session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario(tmp_path))
    allocate_day(session, DAY)
    plan_depot(DAY, "FS-01", time_limit=1, sessions=same(session))
    van = by_van(current(session))["VAN-03"]
    start_route(session, van)
    first = van.stops[0]
    now = first.arrive_at - timedelta(minutes=4)  # on its way to the first stop
    depot = (van.plan.depot.lat, van.plan.depot.lon)
    here = (round((depot[0] + first.order.lat) / 2, 5), round((depot[1] + first.order.lon) / 2, 5))
    fixes = [(now - timedelta(minutes=40), (30.0, 104.0)),  # too old to count
             (now - timedelta(minutes=2), here),
             (now + timedelta(minutes=1), (30.9, 104.9))]  # after the re-planning time
    samples = [{"device": "TL-0003", "seq": k, "ts": at.isoformat(), "pos": list(pos)}
               for k, (at, pos) in enumerate(fixes)]
    fleet = Fleet()
    fleet.load(session)
    store_batch(session, [Message("coldchain/v1/vehicles/VAN-03/telemetry", json.dumps(samples).encode(),
                                  now + timedelta(minutes=2))], fleet, default_engine(), now=now + timedelta(minutes=2))

    positions = van_positions(session, "FS-01", now)
    assert positions == {"VAN-03": here}
    assert van_positions(session, "FS-01", now - timedelta(minutes=20)) == {}  # the old fix is stale by then

    replan(DAY, "FS-01", None, time_limit=1, now=now, sessions=same(session), positions=positions)
    after = by_van(current(session))["VAN-03"]
    leg = after.stops[0]
    from_fix = geodesic(here, (leg.order.lat, leg.order.lon)).meters * 1.3
    assert abs(leg.leg_m - from_fix) < 0.01 * from_fix + 1  # the first leg starts at the fix
    assert leg.arrive_at >= now
