"""A cancel that takes the last stop still to visit off a started route finishes it (delivery.flows): the route
``done`` with a ``finished`` event, the failed stops' goods back at the depot, the van no longer watched for
silence. Left started, the van would raise silence alerts parked at its depot and its route would never end.

Built on tests/delivery/helpers.build_day (real allocation and OR-Tools planning, dated from the day the tests
run)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import audit
from core.audit import AuditLog
from delivery import flows
from delivery.models import DeliveryEvent
from delivery.schemas import RouteStartIn, StopEventIn
from delivery.service import driver_ref, start_route, stop_event
from fulfillment.models import Order
from routing.replan import breakdown, replan
from routing.replan import cancel_order as cancel_event
from telemetry.models import VehicleRuleState
from tests.delivery.helpers import build_day_received, routes_by_van
from tests.support import same
from traceability import flows as trace_flows
from traceability.models import CustodyEvent


@pytest.fixture
def day(session: Session, tmp_path: Path):  # noqa: ANN201
    return build_day_received(session, tmp_path)


@pytest.mark.parametrize("how", ["api", "replan"])
def test_cancelling_the_last_open_stop_of_a_started_route_finishes_it(session: Session, day, how: str) -> None:  # noqa: ANN001
    route = routes_by_van(session, day)["VAN-01"]
    first, *_rest = sorted(route.stops, key=lambda s: s.seq)
    driver = driver_ref(session, "driver01")
    leave = route.start_at
    start_route(session, driver, RouteStartIn(date=day, at=leave), now=leave)
    order = first.order
    ref, failed_id = order.ref, first.stop_id
    at = leave + timedelta(minutes=20)
    stop_event(session, driver, failed_id, StopEventIn(type="failed", at=at, reason="not_home"), now=at)
    # VAN-03 breaks down: the re-attempt comes back onto VAN-01's started route, as a stop to visit
    moved_at = at + timedelta(minutes=5)
    replan(day, "FS-01", breakdown("VAN-03", moved_at), time_limit=1, actor="dispatcher", now=moved_at,
           sessions=same(session), cancel=trace_flows.cancel_order)
    route = routes_by_van(session, day)["VAN-01"]
    assert route.status == "started"
    again = [s for s in route.stops if s.order.ref == ref and s.status == "planned"]
    assert len(again) == 1, [(s.order.ref, s.status) for s in route.stops]
    # every other stop delivered: the re-attempt is the only one left to visit
    others = sorted((s for s in route.stops if s.status == "planned" and s.order.ref != ref), key=lambda s: s.seq)
    assert others
    t = moved_at
    for stop in others:
        t += timedelta(minutes=10)
        stop_event(session, driver, stop.stop_id, StopEventIn(type="arrived", at=t - timedelta(minutes=2)), now=t)
        stop_event(session, driver, stop.stop_id, StopEventIn(type="delivered", at=t, recipient="本人"), now=t)
    assert routes_by_van(session, day)["VAN-01"].status == "started"
    assert session.scalar(select(VehicleRuleState.active).where(VehicleRuleState.vehicle_id == route.vehicle_id))
    audit.flush(session)
    appended = session.scalar(select(func.max(AuditLog.id))) or 0

    cancelled_at = t + timedelta(minutes=5)
    order = session.get(Order, again[0].order_id)
    if how == "api":
        flows.cancel_order(session, order, "dispatcher", "客户取消", at=cancelled_at)
    else:
        replan(day, "FS-01", cancel_event(ref, "客户取消"), time_limit=1, actor="dispatcher", now=cancelled_at,
               sessions=same(session), cancel=trace_flows.cancel_order)
        assert routes_by_van(session, day)["VAN-01"].status == "started"  # what the re-plan alone leaves
        flows.finish_emptied_depot_routes(session, day, "FS-01", "dispatcher", cancelled_at)
    session.flush()

    route = routes_by_van(session, day)["VAN-01"]
    assert route.status == "done", [(s.order.ref, s.status) for s in route.stops]
    assert not [s for s in route.stops if s.status not in ("delivered", "failed")]
    finished = session.scalars(select(DeliveryEvent).where(DeliveryEvent.route_id == route.id,
                                                           DeliveryEvent.type == "finished")).all()
    assert [(e.driver_id, e.from_status, e.to_status) for e in finished] == [(driver.id, "started", "finished")]
    # the goods of the failed attempt came back with the van: returned, once, what was loaded
    custody = session.scalars(select(CustodyEvent).where(CustodyEvent.order_id == order.id)
                              .order_by(CustodyEvent.id)).all()
    loaded = sorted((e.line_id, e.lot_id, e.qty) for e in custody if e.type == "loaded")
    back = sorted((e.line_id, e.lot_id, e.qty) for e in custody if e.type == "returned")
    assert loaded and back == loaded
    # the van is no longer watched for silence; the log says who finished the route and why
    session.expire_all()
    assert session.scalar(select(VehicleRuleState.active).where(VehicleRuleState.vehicle_id == route.vehicle_id)) \
        is False
    audit.flush(session)
    said = session.scalars(select(AuditLog).where(AuditLog.id > appended, AuditLog.action == "route.finished")).all()
    assert [(a.actor, a.entity_id) for a in said] == [("dispatcher", str(route.id))]
    # and finishing twice finds nothing more to do
    assert flows.finish_emptied_depot_routes(session, day, "FS-01", "dispatcher", cancelled_at) == []
