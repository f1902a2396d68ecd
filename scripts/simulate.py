"""`coldchain simulate-fleet`: publish a simulated day of van telemetry over real MQTT.

Reads the vans (and the day's current plans, if any) from the configured database, read
only; runs the pure generator (telemetry/simulator.py); publishes with paho-mqtt 2 (MQTT 5,
QoS 1) paced by accelerated time: ``speed`` 60 = one simulated minute per second, 0 = as
fast as the broker takes it.

One MQTT client per van, as on the road: each van has its own session and its own last
will (``offline``, retained, on ``coldchain/v1/vehicles/{code}/status``) and says
``online`` (retained) whenever it (re)connects — one shared client could carry only one will,
so a crashed simulator would leave every other van "online" for ever. The cost is one
socket and one paho network thread per van: fine for the tens of vans of a city (a
hundred vans are a hundred idle threads); above that, run several simulators on subsets
of ``vehicles``. At the end each van publishes ``offline`` itself and disconnects cleanly.

Device clocks: the ingestor rejects samples more than 5 minutes in the future, so a day
that is not over yet (the demo plans tomorrow) cannot be published with its own dates.
By default (``clock_shift_days=None``) the device clocks are set back by whole days,
the fewest that keep every sample in the past when it is published; local times of day
stay as planned. The shift is printed and returned. Under a simulated clock
(``COLDCHAIN_CLOCK``, core/timeutil.py) "now" is that clock, so a day it stands on needs no
shift; `coldchain demo` does not use this pacing at all: it steps the clock itself
(scripts/demo_day.py) and publishes with :class:`FleetPublisher`.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlparse

from rich.console import Console

from telemetry.simulator import PlannedStop, Scenario, Simulation, VanSpec, status_topic

SILENCE_S = 10 * 60  # telemetry.rules.RuleConfig.silence_s: counted on arrival (wall) time
MAX_AGE_DAYS = 30  # telemetry.decoding.MAX_AGE


def load_fleet(session, day: dt.date,  # noqa: ANN001
               vehicles: list[str] | None = None) -> tuple[list[VanSpec], dt.datetime, dt.datetime, int, list[str]]:
    """Vans with a device, their planned stops of ``day`` (current plans), and the day's span.

    Returns ``(vans, start, end, routes, notes)``. The span runs from the earliest shift
    start (or route start) to the latest shift end (or route end), in UTC.
    """
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from core.timeutil import local_datetime
    from fulfillment.models import Order, OrderLine
    from routing.models import Plan, Route, RouteStop
    from telemetry.models import VehicleRuleState
    from warehouses.models import Vehicle

    query = (select(Vehicle).options(selectinload(Vehicle.compartments), selectinload(Vehicle.depot))
             .order_by(Vehicle.code))
    if vehicles:
        query = query.where(Vehicle.code.in_(vehicles))
    rows = list(session.scalars(query))
    notes: list[str] = []
    if vehicles:
        missing = sorted(set(vehicles) - {v.code for v in rows})
        if missing:
            raise ValueError(f"unknown vehicle(s): {', '.join(missing)}")
    routes = session.scalars(
        select(Route).join(Plan, Route.plan_id == Plan.id)
        .where(Plan.day == day, Plan.status == "current", Route.vehicle_id.in_([v.id for v in rows]))
        .options(selectinload(Route.stops).selectinload(RouteStop.order).selectinload(Order.lines)
                 .selectinload(OrderLine.product))
    ).all()
    # what the rules know each van carries (traceability's sync): the simulated vans keep to it
    cargo = dict(session.execute(select(VehicleRuleState.vehicle_id, VehicleRuleState.cargo)).all())
    by_van: dict[int, list[Route]] = {}
    for route in routes:
        if route.stops:
            by_van.setdefault(route.vehicle_id, []).append(route)

    vans: list[VanSpec] = []
    starts: list[dt.datetime] = []
    ends: list[dt.datetime] = []
    for v in rows:
        if not v.device:
            notes.append(f"{v.code}: no telemetry device fitted, not simulated")
            continue
        present = tuple(c.temp_class for c in v.compartments if c.capacity_l > 0) or ("ambient",)
        starts.append(local_datetime(day, v.shift_start).astimezone(dt.UTC))
        ends.append(local_datetime(day, v.shift_end).astimezone(dt.UTC))
        stops: list[PlannedStop] = []
        trips: list[tuple[dt.datetime, dt.datetime]] = []
        route_start = route_end = None
        for route in sorted(by_van.get(v.id, []), key=lambda r: r.start_at):
            route_start = min(route_start or route.start_at, route.start_at)
            route_end = max(route_end or route.end_at, route.end_at)
            for s in route.stops:
                used = tuple(sorted({line.product.temp_class for line in s.order.lines} & set(present)))
                stops.append(PlannedStop(s.order.lat, s.order.lon, s.arrive_at, s.depart_at, used))
            trips.append((route.start_at, max(s.depart_at for s in route.stops)))
        if route_start is not None:
            starts.append(route_start)
            ends.append(route_end)
        vans.append(VanSpec(v.code, v.device, (v.depot.lat, v.depot.lon), present, tuple(stops),
                            route_start, route_end, cargo=cargo.get(v.id), trips=tuple(trips)))
    if not vans:
        raise ValueError("no van with a telemetry device to simulate")
    return vans, min(starts), max(ends), sum(len(r) for r in by_van.values()), notes


def shift_days_needed(start: dt.datetime, end: dt.datetime, speed: float, now: dt.datetime) -> int:
    """Fewest whole days to set device clocks back so that no sample is in the future when published."""
    if speed <= 0:
        ahead = (end - now).total_seconds()
    elif speed >= 1:
        ahead = (end - now).total_seconds() - (end - start).total_seconds() / speed
    else:
        ahead = (start - now).total_seconds()
    return max(0, math.ceil(ahead / 86400))


def _client(url: str, code: str, tag: str):  # noqa: ANN202
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    u = urlparse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"coldchain-sim-{code}-{tag}",
                         protocol=mqtt.MQTTv5)
    client.will_set(status_topic(code), b"offline", qos=1, retain=True)
    client.user_data_set({"online": 0})

    def on_connect(client, userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        try:  # say "online" at every (re)connection; an exception here would kill paho's thread
            if not reason_code.is_failure:
                client.publish(status_topic(code), b"online", qos=1, retain=True)
                userdata["online"] += 1
        except Exception:
            pass

    client.on_connect = on_connect
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(u.hostname or "127.0.0.1", u.port or 1883, keepalive=30)
    client.loop_start()
    return client


class FleetPublisher:
    """One MQTT client per van (see the module docstring), connected; publish, then close.

    ``close`` says ``offline`` for every van and returns how many status messages were sent."""

    def __init__(self, mqtt_url: str, codes: Sequence[str], tag: str) -> None:
        from telemetry.decoding import parse_topic

        self._parse = parse_topic
        self.url = mqtt_url
        self.clients: dict[str, Any] = {}
        self.infos: list[Any] = []
        self.published = 0
        try:
            for code in codes:
                self.clients[code] = _client(mqtt_url, code, tag)
            deadline = time.monotonic() + 15
            while not all(c.is_connected() and c.user_data_get()["online"] for c in self.clients.values()):
                if time.monotonic() > deadline:
                    raise ConnectionError(f"the broker at {mqtt_url} did not accept every van's connection")
                time.sleep(0.02)
        except BaseException:
            self.close()
            raise

    def publish(self, topic: str, payload: bytes) -> None:
        self.infos.append(self.clients[self._parse(topic)].publish(topic, payload, qos=1))
        self.published += 1

    def wait(self, timeout: float = 60) -> None:
        """Until the broker acknowledged every message published so far."""
        for info in self.infos:
            info.wait_for_publish(timeout)
        self.infos.clear()

    def close(self) -> int:
        status = sum(client.user_data_get()["online"] for client in self.clients.values())
        for code, client in self.clients.items():
            try:
                client.publish(status_topic(code), b"offline", qos=1, retain=True).wait_for_publish(5)
                status += 1
            except Exception:  # the broker may be gone; the will covers it
                pass
            client.disconnect()
            client.loop_stop()
        self.clients = {}
        return status


def simulate_fleet(mqtt_url: str, *, date: dt.date | dt.datetime, speed: float = 60.0,
                   vehicles: list[str] | None = None, seed: int = 0, garbage: bool = False,
                   incidents: bool = True, duration_min: float | None = None, console: Console | None = None,
                   interval_s: float = 30.0, clock_shift_days: int | None = None, withhold: Sequence[str] = (),
                   keep_samples: bool = False) -> dict[str, Any]:
    """Publish the simulated day of the configured fleet to ``mqtt_url``; return what was sent and expected.

    ``date``: the local day (its vans' shifts and current plans); ``speed``: simulated seconds
    per wall second (0: no pacing); ``vehicles``: van codes (None: every van with a device);
    ``incidents``: stage warming, blip, door left open, hard shock, signal loss and duplicates;
    ``garbage``: also publish one message of each unusable kind; ``duration_min``: simulate
    only the first minutes of the span; ``clock_shift_days``: set device clocks back by this
    many days (None: as few as keep every sample in the past); ``withhold``: incidents to leave
    out of the stream while still expecting them (to see a check fail, telemetry/simulator.py);
    ``keep_samples``: also return ``valid_samples``, every sample a correct ingestor stores.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from core.db import session_scope
    from core.timeutil import to_local, utcnow

    if speed < 0:
        raise ValueError("speed must be >= 0")
    if console is None:
        from scripts.console import err as console
    day = date.date() if isinstance(date, dt.datetime) else date
    with session_scope() as session:
        vans, start, end, n_routes, notes = load_fleet(session, day, vehicles)
    if duration_min is not None:
        if duration_min <= 0:
            raise ValueError("duration_min must be positive")
        end = min(end, start + dt.timedelta(minutes=duration_min))
    now = utcnow()
    shift = shift_days_needed(start, end, speed, now) if clock_shift_days is None else clock_shift_days
    if shift:
        notes.append(f"device clocks set back {shift} day(s) so that no sample is in the future")
    if (now - (start - dt.timedelta(days=shift))).days >= MAX_AGE_DAYS:
        notes.append(f"samples older than {MAX_AGE_DAYS} days: the ingestor will reject them as too old")
    scenario = Scenario(garbage=garbage) if incidents else replace(Scenario.quiet(), garbage=garbage)
    sim = Simulation(vans, start, end, interval_s=interval_s, seed=seed, scenario=scenario,
                     clock_offset=-dt.timedelta(days=shift), withhold=withhold)
    expected = sim.expected
    messages = sim.messages()
    notes += [f"incident not staged: {s}" for s in expected.skipped]
    notes += [f"{kind} withheld from the stream but still expected" for kind in sorted(sim.withhold)]
    maybe: list[dict[str, Any]] = []
    for inc in expected.incidents:
        if inc.kind == "signal_loss" and speed > 0 and (inc.end - inc.start).total_seconds() / speed >= SILENCE_S:
            maybe.append({"vehicle": inc.vehicle, "compartment": None, "kind": "silence"})
    if maybe:
        notes.append("at this speed a signal loss lasts over 10 wall-clock minutes: a silence alert is raised "
                     "if the van's route is active")
    console.print(f"simulating {len(vans)} vans ({n_routes} planned routes) from "
                  f"{to_local(start):%Y-%m-%d %H:%M} to {to_local(end):%H:%M} local, every {interval_s:g} s, "
                  f"seed {seed}, speed {'max' if speed == 0 else f'{speed:g}x'}: {len(messages)} messages to "
                  f"{mqtt_url}")
    for note in notes:
        console.print(f"  [yellow]{note}")

    tag = f"{seed}-{int(time.time() * 1000) % 10**8}"
    started = time.monotonic()
    publisher = FleetPublisher(mqtt_url, [van.code for van in vans], tag)
    try:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("telemetry", total=len(messages))
            last_update = 0.0
            for m in messages:
                if speed > 0:
                    wait = (m.at - start).total_seconds() / speed - (time.monotonic() - started)
                    if wait > 0:
                        time.sleep(wait)
                publisher.publish(m.topic, m.payload)
                published = publisher.published
                if time.monotonic() - last_update > 0.1:
                    last_update = time.monotonic()
                    bar.update(task, completed=published,
                               description=f"telemetry {to_local(m.at - dt.timedelta(days=shift)):%H:%M}")
            bar.update(task, completed=published, description="waiting for acks")
            publisher.wait()
            bar.update(task, description="telemetry sent")
    finally:
        status = publisher.close()
    published = publisher.published
    seconds = time.monotonic() - started
    console.print(f"published {published} telemetry messages and {status} status messages in {seconds:.1f} s; "
                  f"expected: {expected.samples} samples, {expected.rejects} rejects, "
                  f"{len(expected.alerts)} alerts")
    result = {
        **expected.to_dict(),
        "published": published,
        "status_published": status,
        "vehicles": [v.code for v in vans],
        "routes": n_routes,
        "date": day.isoformat(),
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": end.isoformat().replace("+00:00", "Z"),
        "clock_shift_days": shift,
        "speed": speed,
        "seed": seed,
        "seconds": round(seconds, 2),
        "maybe_alerts": maybe,
        "notes": notes,
        "withheld": sorted(sim.withhold),
    }
    if keep_samples:
        result["valid_samples"] = list(sim.valid_samples())
    return result
