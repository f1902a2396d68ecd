"""A cancel that takes the last stop still to visit off a started route finishes it (delivery.flows): the route
``done`` with a ``finished`` event, the failed stops' goods back at the depot, the van no longer watched for
silence. Left started, the van would raise silence alerts parked at its depot and its route would never end.

Built on tests/delivery/helpers.build_day (real allocation and OR-Tools planning, dated from the day the tests
run)."""

from __future__ import annotations

from datetime import datetime, timedelta
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


def _reattempt_on_van01(session: Session, day) -> tuple[str, int, datetime]:  # noqa: ANN001
    """VAN-01 out, its first stop failed, VAN-03 broken down: the re-plan puts the re-attempt back on VAN-01's
    started route as a stop to visit. Returns (the order's ref, VAN-01's route id, when it was re-planned)."""
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
    return ref, route.id, moved_at


def test_a_cancel_that_leaves_stops_to_visit_does_not_finish_the_route(api, session: Session, day, token) -> None:  # noqa: ANN001
    ref, route_id, _moved_at = _reattempt_on_van01(session, day)
    resp = api.post(f"/api/v1/orders/{ref}/cancel", json={"reason": "客户取消"}, headers=token("dispatcher"))
    assert resp.status_code == 200, resp.text
    route = routes_by_van(session, day)["VAN-01"]
    assert route.status == "started"
    assert [s for s in route.stops if s.status == "planned"] and ref not in {
        s.order.ref for s in route.stops if s.status == "planned"}
    assert session.scalar(select(func.count()).select_from(DeliveryEvent).where(
        DeliveryEvent.route_id == route_id, DeliveryEvent.type == "finished")) == 0
    audit.flush(session)
    assert session.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "route.finished")) == 0


@pytest.mark.parametrize("how", ["api", "replan", "sweep"])
def test_cancelling_the_last_open_stop_of_a_started_route_finishes_it(api, session: Session, day, token,  # noqa: ANN001
                                                                      how: str) -> None:
    ref, _route_id, moved_at = _reattempt_on_van01(session, day)
    route = routes_by_van(session, day)["VAN-01"]
    driver = driver_ref(session, "driver01")
    again = [s for s in route.stops if s.order.ref == ref and s.status == "planned"]
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
    if how == "api":  # POST /orders/{ref}/cancel, over HTTP
        resp = api.post(f"/api/v1/orders/{ref}/cancel", json={"reason": "客户取消"},
                        headers=token("dispatcher", "dispatcher"))
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
    else:
        replan(day, "FS-01", cancel_event(ref, "客户取消"), time_limit=1, actor="dispatcher", now=cancelled_at,
               sessions=same(session), cancel=trace_flows.cancel_order)
        assert routes_by_van(session, day)["VAN-01"].status == "started"  # what the re-plan alone leaves
        if how == "replan":  # delivery.flows.replan_flow's step after the re-plan
            flows.finish_emptied_depot_routes(session, day, "FS-01", "dispatcher", cancelled_at)
        else:  # Celery beat's safety net, had the re-plan job stopped before that step
            assert flows.sweep_emptied_routes(session, cancelled_at) == [routes_by_van(session, day)["VAN-01"].id]
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
    assert [(a.actor, a.entity_id) for a in said] == [("system" if how == "sweep" else "dispatcher", str(route.id))]
    assert said[0].why == {"api": f"its last stop to visit was cancelled ({ref})",
                           "replan": "re-planned with no stop left to visit",
                           "sweep": "started with no stop left to visit"}[how]
    # and finishing twice finds nothing more to do
    assert flows.finish_emptied_depot_routes(session, day, "FS-01", "dispatcher", cancelled_at) == []
    assert flows.sweep_emptied_routes(session, cancelled_at) == []
