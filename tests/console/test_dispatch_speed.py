"""The dispatcher's map at size: its data endpoints run a fixed number of SQL statements whatever the size
of the day (no N+1), and a day of 40 depots and 2,000 stops loads in the browser (time printed, not asserted:
the machine is shared)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from tests.console.conftest import PASSWORD
from tests.stack import Stack
from tests.support import DAY, local


def build_day(session: Session, day: date, depots: int, vans: int, stops: int, tag: str | None = None) -> dict:
    """Insert a planned day directly (factories, no solver): ``depots`` hubs with ``vans`` vans each, one
    current plan per depot, each van one route of ``stops`` stops, and per depot one unserved and one
    unallocated order. Returns the counts, for the checks."""
    from fulfillment.models import Order, OrderLine
    from routing.models import Plan, Route, RouteStop, UnservedOrder
    from warehouses.models import Node, Product, Vehicle

    tag = tag or uuid.uuid4().hex[:5]
    product = Product(
        sku=f"{tag}-EGG",
        name="土鸡蛋",
        temp_class="chilled",
        fragile=True,
        unit_l=3.0,
        unit_kg=1.8,
        shelf_life_days=21,
        min_c=0,
        max_c=8,
    )
    session.add(product)
    now = datetime.now(UTC)
    start = local("08:00", day)
    n_stops = 0

    def order(ref: str, lat: float, lon: float, status: str) -> Order:
        made = Order(
            ref=ref,
            delivery_date=day,
            mode="delivery",
            lat=lat,
            lon=lon,
            window_start=clock(8),
            window_end=clock(18),
            customer="王女士",
            placed_at=now,
            source="test",
            status=status,
            status_reason="no van can reach it in its window" if status == "unallocated" else None,
        )
        made.lines = [OrderLine(line_no=1, product=product, qty=2)]
        return made

    for d in range(depots):
        lat, lon = 30.40 + 0.05 * (d % 8), 103.80 + 0.06 * (d // 8)
        node = Node(
            code=f"{tag}-H{d:02d}",
            kind="hub" if d % 10 else "flagship",
            name=f"测试社区店{d:02d}",
            lat=lat,
            lon=lon,
            opens=clock(7),
            closes=clock(22),
        )
        plan = Plan(
            day=day,
            depot=node,
            version=1,
            status="current",
            created_at=now,
            created_by="test",
            time_limit=1,
            seconds=0.1,
            distance_m=0,
            cost=0,
        )
        for v in range(vans):
            van = Vehicle(
                code=f"{tag}-V{d:02d}{v:02d}",
                depot=node,
                max_kg=800,
                shift_start=clock(8),
                shift_end=clock(18),
                speed_kmh=30,
                cost_per_km=1,
                fixed_cost=50,
            )
            route = Route(
                plan=plan,
                vehicle=van,
                trip=1,
                start_at=start,
                end_at=start + timedelta(hours=6),
                distance_m=20_000,
                cost=70,
            )
            for s in range(stops):
                at = start + timedelta(minutes=10 * (s + 1))
                stop_order = order(
                    f"{tag}-{d:02d}{v:02d}{s:03d}", lat + 0.002 * (s % 10), lon + 0.002 * (s // 10), "planned"
                )
                route.stops.append(
                    RouteStop(
                        stop_id=uuid.uuid4().hex[:16],
                        seq=s + 1,
                        order=stop_order,
                        arrive_at=at,
                        service_at=at,
                        depart_at=at + timedelta(minutes=5),
                        leg_m=900,
                    )
                )
                n_stops += 1
        plan.unserved = [
            UnservedOrder(
                order=order(f"{tag}-{d:02d}-U", lat - 0.01, lon, "allocated"),
                reason="time window 07:00-07:30 ends before the earliest arrival 08:14",
            )
        ]
        session.add_all([plan, order(f"{tag}-{d:02d}-X", lat + 0.01, lon, "unallocated")])
    session.flush()
    return {"depots": depots, "routes": depots * vans, "stops": n_stops, "tag": tag}


class Statements:
    """Counts the SQL statements sent on a connection while it is open."""

    def __init__(self, session: Session) -> None:
        self.conn = session.connection()
        self.n = 0

    def _count(self, *_args: object) -> None:
        self.n += 1

    def __enter__(self) -> Statements:
        event.listen(self.conn, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.conn, "before_cursor_execute", self._count)


def test_the_map_and_alert_data_take_the_same_statements_for_5_or_50_routes(session) -> None:  # noqa: ANN001
    from api.console.dispatch import open_alerts
    from core.timeutil import utcnow
    from routing.daymap import day_map
    from telemetry.rules import AlertEvent
    from telemetry.service import apply_alert_events
    from warehouses.models import Vehicle

    counts = {}
    for routes, day in ((5, DAY + timedelta(days=30)), (50, DAY + timedelta(days=31))):
        built = build_day(session, day, depots=routes // 5, vans=5, stops=4)
        vans = session.scalars(select(Vehicle).where(Vehicle.code.like(f"{built['tag']}-V%"))).all()
        events = [
            AlertEvent(
                action="open",
                key=f"speed-{v.code}",
                vehicle=v.code,
                compartment="chilled",
                kind="temperature",
                status="open",
                started_at=local("10:00", day),
                ended_at=None,
                peak=10.0,
                minutes=5.0,
                late=False,
            )
            for v in vans
        ]
        apply_alert_events(session, events, {v.code: v.id for v in vans}, utcnow())
        session.expire_all()
        with Statements(session) as seen:
            data = day_map(session, day)
        assert len(data["routes"]) == built["routes"] and len(data["unserved_at"]) == built["depots"]
        assert sum(len(r["stops"]) for r in data["routes"]) == built["stops"]
        assert all(u["lat"] is not None for u in data["unallocated_at"] + data["unserved_at"])
        session.expire_all()
        with Statements(session) as alerts_seen:
            alerts = open_alerts(session)
        assert sum(1 for a in alerts if a["at_risk"]) >= routes
        counts[routes] = (seen.n, alerts_seen.n)
    print(f"\nSQL statements (map data, open alerts): 5 routes {counts[5]}, 50 routes {counts[50]}")
    assert counts[5] == counts[50], f"the statements grow with the day: {counts}"


@pytest.mark.slow
def test_a_day_of_40_depots_and_2000_stops_loads_in_the_browser(databases, browser, tmp_path) -> None:  # noqa: ANN001
    """Printed, not asserted tight: the map of 40 depots and 2,000 stops (200 routes of 10), data and drawing."""
    from core.db import make_engine
    from warehouses.service import upsert_user

    with Stack(databases, tmp_path, f"speed{uuid.uuid4().hex[:4]}") as stack:
        stack.cli("db", "upgrade")
        engine = make_engine(stack.env["COLDCHAIN_DATABASE_URL"])
        started = time.monotonic()
        with Session(engine) as session, session.begin():
            built = build_day(session, DAY, depots=40, vans=5, stops=10)
            upsert_user(session, "speed-dispatcher", "dispatcher", PASSWORD)
        engine.dispose()
        inserted = time.monotonic() - started
        stack.start(workers=0)
        context = browser.new_context(viewport={"width": 1366, "height": 860})
        tab = context.new_page()
        try:
            tab.goto(f"{stack.base}/console/login")
            tab.fill("input[name=username]", "speed-dispatcher")
            tab.fill("input[name=password]", PASSWORD)
            with tab.expect_navigation():
                tab.click("button[type=submit]")
            timings = []
            for _ in range(2):  # the first load warms the server's caches; both are reported
                t0 = time.monotonic()
                tab.goto(f"{stack.base}/console/dispatch?date={DAY}")
                tab.wait_for_selector("#dispatch[data-loaded]", timeout=60_000)
                got = tab.evaluate(
                    "({...document.getElementById('dispatch').dataset, "
                    "html: performance.getEntriesByType('navigation')[0].responseEnd})"
                )
                timings.append((time.monotonic() - t0, got))
            drawn = tab.evaluate(
                "[document.querySelectorAll('path.route-line').length, document.querySelectorAll('.stop-num').length]"
            )
            from tests.console.conftest import screenshot

            screenshot(tab, "dispatch-2000-stops")
        finally:
            context.close()
    assert drawn == [built["routes"], built["stops"]], drawn
    print(
        f"\nmap of {built['depots']} depots, {built['routes']} routes, {built['stops']} stops "
        f"(rows inserted in {inserted:.1f} s): page to drawn map "
        + ", ".join(
            f"{total:.2f} s (in the page: drawn {int(t['sinceNavigationMs']) / 1000:.2f} s after navigation "
            f"start; page HTML {t['html'] / 1000:.2f} s, data fetch {int(t['fetchMs']) / 1000:.2f} s, "
            f"draw {int(t['drawMs']) / 1000:.2f} s)"
            for total, t in timings
        )
        + " [shared machine, other sessions running]"
    )
