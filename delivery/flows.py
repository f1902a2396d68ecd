"""Use cases that reach the driver's day from outside it, written once here, the highest room they touch
(ARCHITECTURE.md), and called alike by the API, the CLI and the Celery jobs.

A dispatcher's cancel or a re-plan can take the last stop still to visit off a route the driver has
started. The route must then finish as if its last stop had been done (delivery.service.finish_route):
left ``started``, the van would stay watched for silence (an alert for every van parked back at its
depot), the goods of its failed stops would never be recorded back at the depot, and the driver's app
would show a route that can never end. traceability.flows does the cancel and the re-plan; it may not
import delivery, so the step after them is here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session, aliased

from core import audit
from core.db import session_scope
from core.timeutil import utcnow
from delivery.lifecycle import STOP_DONE
from delivery.models import DeliveryEvent
from delivery.service import finish_route
from fulfillment.models import Order
from routing.models import Plan, Route, RouteStop
from routing.replan import Event
from traceability import flows as trace_flows
from warehouses.models import Driver, Node, Vehicle


def _routes_of(session: Session, order: Order) -> list[int]:
    """The started routes of the current plans that have a stop of this order still to visit, locked in id
    order (PostgreSQL) as a driver's stop event locks its route: a cancel and a delivery of the route's last
    two open stops then take turns, and whichever comes second sees the other's stop done and finishes the
    route (without the lock each would still count the other's stop open, and neither would)."""
    ids = list(session.scalars(
        select(Route.id).join(Plan, Plan.id == Route.plan_id).join(RouteStop, RouteStop.route_id == Route.id)
        .where(RouteStop.order_id == order.id, RouteStop.status.not_in(STOP_DONE), Route.status == "started",
               Plan.status == "current").distinct()))
    if ids:
        ids = list(session.scalars(select(Route.id).where(Route.id.in_(ids)).order_by(Route.id).with_for_update()))
    return ids


def _driver_of(session: Session, route: Route) -> int | None:
    """Who the route's finish is recorded for: whoever started it, else the van's driver (a re-plan's new
    version keeps the status and the start, while the started event stays on the route it was reported on)."""
    started = session.scalar(select(DeliveryEvent.driver_id).where(DeliveryEvent.route_id == route.id,
                                                                   DeliveryEvent.type == "started")
                             .order_by(DeliveryEvent.id.desc()))
    if started is not None:
        return started
    return session.scalar(select(Driver.id).where(Driver.vehicle_id == route.vehicle_id).order_by(Driver.id))


def finish_emptied_routes(session: Session, route_ids: Iterable[int], actor: str, why: str,
                          at: datetime | None = None) -> list[int]:
    """Finish each of these routes that is started and has no stop left to visit (none at all counts: every
    stop was dropped). Returns the ids finished; the audit log says who and why."""
    at = at or utcnow()
    open_stop = aliased(RouteStop)
    ids = sorted(set(route_ids))
    if not ids:
        return []
    emptied = session.scalars(
        select(Route).where(Route.id.in_(ids), Route.status == "started",
                            ~exists().where(open_stop.route_id == Route.id, open_stop.status.not_in(STOP_DONE)))
        .order_by(Route.id)).all()
    finished = []
    for route in emptied:
        driver_id = _driver_of(session, route)
        if driver_id is None:  # a started route always has its started event; nothing to record it for
            continue
        code = session.scalar(select(Vehicle.code).where(Vehicle.id == route.vehicle_id))
        if not finish_route(session, route.id, route.vehicle_id, code, driver_id, actor, at, utcnow()):
            continue  # finished meanwhile
        audit.append(session, actor, "route.finished", "route", route.id, {"vehicle": code, "trip": route.trip},
                     why=why)
        finished.append(route.id)
    return finished


def _started_routes(session: Session, *where: ColumnElement[bool]) -> list[int]:
    """The started routes of current plans (of one depot and day, with ``where`` on Plan and Node)."""
    return list(session.scalars(
        select(Route.id).join(Plan, Plan.id == Route.plan_id).join(Node, Node.id == Plan.depot_id)
        .where(Plan.status == "current", Route.status == "started", *where)))


def finish_emptied_depot_routes(session: Session, day: date, depot: str, actor: str,
                                at: datetime | None = None) -> list[int]:
    """:func:`finish_emptied_routes` over the started routes of a depot's current plan for the day (after a
    re-plan, whose cancel event takes the stop off the new version itself)."""
    started = _started_routes(session, Plan.day == day, Node.code == depot)
    return finish_emptied_routes(session, started, actor, "re-planned with no stop left to visit", at)


def sweep_emptied_routes(session: Session, at: datetime | None = None) -> list[int]:
    """Celery beat's safety net, every minute: finish any started route of a current plan left with nothing to
    visit, whatever left it so (a re-plan job that stopped between its commit and its finishing step, then
    could not repeat its cancel)."""
    return finish_emptied_routes(session, _started_routes(session), "system", "started with no stop left to visit",
                                 at)


def cancel_order(session: Session, order: Order, actor: str, reason: str | None = None,
                 at: datetime | None = None) -> Order:
    """traceability.flows.cancel_order, then a started route whose last open stop this was finishes."""
    routes = _routes_of(session, order)
    trace_flows.cancel_order(session, order, actor, reason=reason, at=at)
    finish_emptied_routes(session, routes, actor, f"its last stop to visit was cancelled ({order.ref})", at)
    return order


def replan_flow(day: date, event: Event | None, time_limit: float = 5.0, actor: str = "system",
                now: datetime | None = None, depot: str | None = None, workers: int = 1) -> dict:
    """traceability.flows.replan_flow, then the depot's started routes left with nothing to visit (a cancel
    in the event took their last stop) finish. The result's ``finished_routes`` counts them."""
    if depot is None and event is not None:
        depot = trace_flows.depot_for_event(day, event)
    out = trace_flows.replan_flow(day, event, time_limit=time_limit, actor=actor, now=now, depot=depot,
                                  workers=workers)
    with session_scope() as session:
        finished = finish_emptied_depot_routes(session, day, depot, actor, now)
    if finished:
        trace_flows.tell_the_rules()
    out["finished_routes"] = len(finished)
    return out
