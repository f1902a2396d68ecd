"""The fleet telemetry simulator: deterministic bytes; a stream that decodes to exactly the expected
samples and rejects; rules that raise exactly the expected alerts (the blip does not); and the whole
path end to end — database → simulate_fleet → broker → `coldchain ingest` → stored samples, rejects
and alerts."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select

from telemetry.decoding import decode_message, parse_topic
from telemetry.rules import RuleEngine
from telemetry.simulator import (
    WITHHOLDABLE,
    Message,
    PlannedStop,
    Scenario,
    Simulation,
    Tally,
    VanSpec,
    status_topic,
    tally,
)
from tests import scenario_files
from tests.support import DAY, coldchain_cmd, load_into, local, stop

START = local("08:00", DAY).astimezone(UTC)  # the vans' day under test (the decoder's clock is injected)
ALL = ("frozen", "chilled", "ambient")


def fleet(n: int = 4) -> list[VanSpec]:
    return [VanSpec(f"VAN-{i:02d}", f"TL-{i:04d}", (30.60 + 0.01 * i, 104.05), ALL if i % 2 else ("chilled", "ambient"))
            for i in range(n)]


def planned_fleet() -> list[VanSpec]:
    stops = tuple(PlannedStop(30.61 + 0.004 * k, 104.05 + 0.003 * k, START + timedelta(minutes=50 + 24 * k),
                              START + timedelta(minutes=50 + 24 * k + 7 + k % 3), ("chilled",) if k % 2 else ())
                  for k in range(10))
    return [VanSpec("VAN-P1", "TL-P1", (30.60, 104.05), ALL, stops, START + timedelta(minutes=30)),
            VanSpec("VAN-P2", "TL-P2", (30.62, 104.06), ("chilled",), stops[::2])]


CARGO = {"chilled": {"min_c": 0.0, "max_c": 4.0, "skus": ["STRAW-1"]},
         "frozen": {"min_c": -25.0, "max_c": -18.0, "skus": ["DUMP-1"]},
         "ambient": {"min_c": 10.0, "max_c": 25.0, "skus": ["SWEET-POTATO"]}}


def loaded_fleet(n: int = 4) -> list[VanSpec]:
    """Vans carrying strawberries (0-4 °C), dumplings (-18 °C or colder) and sweet potatoes (10-25 °C)."""
    from dataclasses import replace

    return [replace(v, cargo=CARGO) for v in fleet(n)]


def decode_all(vans: list[VanSpec], messages: list[Message], now: datetime):  # noqa: ANN201
    devices = {v.code: {v.device} for v in vans}
    for m in messages:
        yield m, decode_message(m.topic, m.payload, devices_of=devices, now=now)


def run_rules(vans: list[VanSpec], messages: list[Message], end: datetime) -> list:
    """Samples through the rule engine per van in arrival order (clock = publish time); tick at the end."""
    engine, states, events = RuleEngine(), {}, []
    cargo = {v.code: v.cargo for v in vans}  # what the ingestor would know each van carries
    for m, decoded in decode_all(vans, messages, end + timedelta(hours=1)):
        by_van = defaultdict(list)
        for s in decoded.samples:
            by_van[s.vehicle].append(s)
        for code, samples in by_van.items():
            states[code], evs = engine.for_cargo(cargo[code]).apply(states.get(code), samples, m.at, m.at)
            events += evs
    for code in sorted(states):
        states[code], evs = engine.for_cargo(cargo[code]).tick(states[code], end + timedelta(minutes=45), False)
        events += evs
    return events


def keys(alerts) -> list[tuple]:  # noqa: ANN001
    return sorted(((v, c or "", k) for v, c, k in alerts))


def test_same_seed_same_bytes() -> None:
    args = (fleet(3), START, START + timedelta(hours=3))
    a = Simulation(*args, seed=11, scenario=Scenario(garbage=True)).messages()
    b = Simulation(*args, seed=11, scenario=Scenario(garbage=True)).messages()
    c = Simulation(*args, seed=12, scenario=Scenario(garbage=True)).messages()
    assert a == b
    assert [m.payload for m in a] != [m.payload for m in c]
    assert [m.at for m in a] == sorted(m.at for m in a)


@pytest.mark.parametrize("vans", [fleet(4), planned_fleet()], ids=["wandering", "planned"])
def test_stream_decodes_to_expected_samples_and_rejects(vans: list[VanSpec]) -> None:
    end = START + timedelta(hours=6)
    sim = Simulation(vans, START, end, seed=3, scenario=Scenario(garbage=True))
    exp = sim.expected
    messages = sim.messages()
    assert exp.skipped == []
    assert len(messages) == exp.messages
    assert {i.kind for i in exp.incidents} == {"warming", "blip", "door_left_open", "hard_shock", "signal_loss"}

    valid: dict[tuple[str, int], object] = {}
    reasons, arrays, repeats, seen = [], 0, 0, set()
    for m, decoded in decode_all(vans, messages, end + timedelta(minutes=1)):
        reasons += [r.reason for r in decoded.rejects]
        for s in decoded.samples:
            assert m.topic.endswith(f"/{s.vehicle}/telemetry")
            valid[(s.device, s.seq)] = s
        if m.payload.startswith(b"["):
            arrays += 1
        repeats += m.payload in seen
        seen.add(m.payload)
        if decoded.samples and not m.payload.startswith(b"["):
            assert json.loads(m.payload)["ts"].endswith("Z")
    assert len(valid) == exp.samples
    assert sorted(reasons) == exp.reject_reasons
    assert {r.split(":")[0] for r in reasons} == {"not JSON", "not UTF-8", "missing field",
                                                  "value out of physical range"}
    assert arrays == exp.batches + 1 == 2  # the backlog, and its redelivery
    assert repeats == exp.duplicates >= 3
    for van in vans:  # seq +1 per sample; the one rejected 500 °C sample leaves the only hole
        seqs = sorted(q for d, q in valid if d == van.device)
        assert len(seqs) == exp.samples_by_vehicle[van.code]
        holes = seqs[-1] - seqs[0] + 1 - len(seqs)
        assert holes in (0, 1)
    assert sum(seqs[-1] - seqs[0] + 1 - len(seqs) for seqs in [sorted(q for d, q in valid if d == v.device)
                                                               for v in vans]) == 1
    temps = defaultdict(list)
    for s in valid.values():
        for cls, v in s.temp_c.items():
            temps[cls].append(v)
    assert min(temps["chilled"]) > 1.0 and max(temps["chilled"]) < 11
    assert min(temps["frozen"]) > -23 and max(temps["frozen"]) < -15


@pytest.mark.parametrize(("vans", "seed", "hours"), [(fleet(4), 1, 8), (fleet(2), 5, 3), (planned_fleet(), 2, 6),
                                                     (fleet(5), 9, 10), (loaded_fleet(4), 3, 8)])
def test_rules_raise_exactly_the_expected_alerts(vans: list[VanSpec], seed: int, hours: float) -> None:
    end = START + timedelta(hours=hours)
    sim = Simulation(vans, START, end, seed=seed, scenario=Scenario(garbage=True))
    assert sim.expected.skipped == []
    events = run_rules(vans, sim.messages(), end)
    opened = [(e.vehicle, e.compartment, e.kind) for e in events if e.action == "open"]
    assert keys(opened) == keys(sim.expected.alert_keys())
    assert {k for _v, _c, k in opened} == {"temperature", "door", "shock"}
    blip = next(i for i in sim.expected.incidents if i.kind == "blip")
    assert not any(e.vehicle == blip.vehicle and e.kind == "temperature" for e in events)
    final = {e.key: e for e in events}
    assert all(e.status == "closed" and not e.details.get("superseded") for e in final.values())


def test_loaded_vans_keep_to_their_products_and_excursions_cross_them() -> None:
    """With strawberries aboard the chilled compartment runs under 4 °C (not just under 8 °C), and the
    staged warming is an excursion over 4 °C that the rules, told the same cargo, raise."""
    vans = loaded_fleet(4)
    end = START + timedelta(hours=8)
    sim = Simulation(vans, START, end, seed=3, scenario=Scenario())
    warming = next(i for i in sim.expected.incidents if i.kind == "warming")
    temps = defaultdict(list)
    for _m, decoded in decode_all(vans, sim.messages(), end + timedelta(hours=1)):
        for smp in decoded.samples:
            staged = smp.vehicle == warming.vehicle or any(
                i.vehicle == smp.vehicle and i.kind == "blip" for i in sim.expected.incidents)
            for cls, v in smp.temp_c.items():
                if not staged:
                    temps[cls].append(v)
    assert max(temps["chilled"]) < 4.0 and min(temps["chilled"]) > 0.0
    assert max(temps["frozen"]) < -18.0 and min(temps["frozen"]) > -25.0
    assert min(temps["ambient"]) > 10.0 and max(temps["ambient"]) < 25.0
    events = run_rules(vans, sim.messages(), end)
    raised = [e for e in events if e.action == "open" and e.kind == "temperature"]
    assert [(e.vehicle, e.compartment) for e in raised] == [(warming.vehicle, warming.compartment)]
    assert raised[0].details["threshold_c"] == 4.0 and raised[0].details["cargo"] == ["STRAW-1"]


def test_quiet_day_raises_nothing() -> None:
    vans = fleet(3)
    end = START + timedelta(hours=4)
    sim = Simulation(vans, START, end, seed=4, scenario=Scenario.quiet())
    assert sim.expected.alerts == [] and sim.expected.rejects == 0 and sim.expected.duplicates == 0
    assert len(sim.messages()) == sim.expected.samples
    assert run_rules(vans, sim.messages(), end) == []


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def fleet_db(databases, tmp_path: Path, mqtt_url: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    """A throwaway database with the sample scenario (tagged van codes), tomorrow's orders allocated and
    planned; this process's configuration points at it for the test."""
    from core.db import reset_caches, session_scope
    from fulfillment.service import allocate_day
    from routing.service import plan_depot

    tag = uuid.uuid4().hex[:6].upper()
    day = DAY
    vans, devices = [f"VAN-{tag}-1", f"VAN-{tag}-2"], [f"TL-{tag}-1", f"TL-{tag}-2"]
    vehicles = scenario_files.FILES["vehicles.csv"]
    for old, new in (("VAN-01", vans[0]), ("VAN-02", vans[1]), ("TL-0001", devices[0]), ("TL-0002", devices[1])):
        vehicles = vehicles.replace(old, new)
    folder = scenario_files.write(tmp_path / "scen", {"vehicles.csv": vehicles,
                                                      "drivers.csv": "username,name,vehicle\n"})
    url = databases.new("sim")
    env = {**os.environ, "COLDCHAIN_DATABASE_URL": url, "COLDCHAIN_DATA_DIR": str(tmp_path),
           "COLDCHAIN_MQTT_URL": mqtt_url}
    load_into(url, folder)  # `coldchain scenario load`, in this process
    monkeypatch.setenv("COLDCHAIN_DATABASE_URL", url)
    monkeypatch.setenv("COLDCHAIN_DATA_DIR", str(tmp_path))
    reset_caches()
    try:
        with session_scope() as session:
            assert allocate_day(session, day, actor="test").allocated == 2  # a delivery and a pickup
        assert plan_depot(day, "FS-01", 1.0, actor="test")["stops"] == 1
        yield {"env": env, "day": day, "vans": vans, "devices": devices, "tag": tag}
    finally:
        monkeypatch.undo()
        reset_caches()


def test_end_to_end_through_broker_and_ingestor(fleet_db, mqtt_url: str) -> None:  # noqa: ANN001
    from rich.console import Console

    from core.db import get_engine
    from scripts.simulate import simulate_fleet
    from telemetry.models import Alert, TelemetryReject, TelemetrySample
    from telemetry.service import reading_counts
    from warehouses.models import Vehicle

    engine = get_engine()
    log_path = Path(fleet_db["env"]["COLDCHAIN_DATA_DIR"]) / "ingest-sim.log"  # a file: never an unread pipe
    with log_path.open("w") as err:
        proc = subprocess.Popen([*coldchain_cmd(), "ingest", "--client-id", f"coldchain-ingest-sim-{fleet_db['tag']}",
                                 "--tick-every", "1", "--session-expiry", "300"], env=fleet_db["env"],
                                stdout=subprocess.DEVNULL, stderr=err)
    proc.log_path = log_path  # type: ignore[attr-defined]  (read by stop())
    try:
        # connected and subscribed (the broker's SUBACK; its persistent session keeps what comes after), as
        # tests.support.Run.wait_subscribed waits, rather than a fixed sleep
        deadline = time.monotonic() + 60
        while "subscription granted" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "no subscription within 60 s\n" + log_path.read_text(errors="replace")
            time.sleep(0.1)
        console = Console(stderr=True, quiet=True)
        result = simulate_fleet(mqtt_url, date=fleet_db["day"], speed=0, vehicles=None, seed=2, garbage=True,
                                incidents=True, duration_min=None, console=console, keep_samples=True)
        assert result["routes"] == 1 and result["clock_shift_days"] >= 1  # tomorrow's plan, stamped in the past
        assert result["skipped"] == [] and result["published"] == result["messages"]
        assert sorted(result["vehicles"]) == sorted(fleet_db["vans"])
        expected = keys((a["vehicle"], a["compartment"], a["kind"]) for a in result["alerts"])
        assert {k for _v, _c, k in expected} == {"temperature", "door", "shock"}

        def snapshot() -> tuple[int, list[str], list[tuple]]:
            with engine.connect() as conn:
                n = conn.scalar(select(func.count()).select_from(TelemetrySample))
                reasons = sorted(conn.scalars(select(TelemetryReject.reason)))
                rows = conn.execute(select(Vehicle.code, Alert.compartment, Alert.kind, Alert.details, Alert.status)
                                    .join(Vehicle, Vehicle.id == Alert.vehicle_id)).all()
            return n, reasons, rows

        deadline = time.monotonic() + 25
        while True:
            n, reasons, rows = snapshot()
            real = keys((v, c, k) for v, c, k, _d, _s in rows)  # every alert raised, superseded ones too
            done = n >= result["samples"] and len(reasons) >= result["rejects"] and real == expected
            if done and all(s == "closed" for *_x, s in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert n == result["samples"]
        with engine.connect() as conn:  # the staged duplicates: none may land twice among the readings
            counts = reading_counts(conn, result["valid_samples"])
        assert (counts.lost, counts.twice) == (0, 0) and counts.ok, counts
        assert reasons == result["reject_reasons"]
        assert real == expected
        # replaying hours of history in seconds, the ingestor may carry a last reading (a door open
        # at a stop) forward to its clock and later supersede that alert: never open, never unmarked
        assert all(s == "closed" for *_x, s in rows)

        # the vans' retained status: offline after the run
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        got: dict[str, bytes] = {}
        u = urlparse(mqtt_url)
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-check-{fleet_db['tag']}",
                          protocol=mqtt.MQTTv5)
        sub.on_message = lambda _c, _u, msg: got.setdefault(msg.topic, bytes(msg.payload))
        sub.connect(u.hostname, u.port or 1883)
        sub.loop_start()
        for van in fleet_db["vans"]:
            sub.subscribe(status_topic(van), qos=1)
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        for van in fleet_db["vans"]:  # leave nothing retained on a shared broker
            sub.publish(status_topic(van), b"", qos=1, retain=True).wait_for_publish(5)
        sub.loop_stop()
        sub.disconnect()
        assert got == {status_topic(v): b"offline" for v in fleet_db["vans"]}
        assert all(parse_topic(t) is None for t in got)
    finally:
        log = stop(proc)
    assert "Traceback" not in log, log


# ------------------------------------------------- what was staged, as data (the demo compares with it)


def test_valid_samples_are_exactly_what_the_stream_decodes_to() -> None:
    vans = fleet(3)
    end = START + timedelta(hours=4)
    sim = Simulation(vans, START, end, seed=3, scenario=Scenario(garbage=True))
    decoded = {(s.device, s.seq): s.to_dict() for _m, d in decode_all(vans, sim.messages(), end + timedelta(hours=1))
               for s in d.samples}
    valid = list(sim.valid_samples())
    assert len(valid) == len({(s["device"], s["seq"]) for s in valid}) == sim.expected.samples
    assert {(s["device"], s["seq"]) for s in valid} == set(decoded)
    assert all(500.0 not in s["temp_c"].values() for s in valid)  # the rejected sample is not owed


def test_tally_compares_multisets_key_by_key() -> None:
    rows = tally([("VAN-01", "chilled", "door"), ("VAN-02", None, "shock")],
                 [("VAN-01", "chilled", "door"), ("VAN-01", "chilled", "door"), ("VAN-03", "frozen", "temperature")])
    assert rows == [Tally(("VAN-01", "chilled", "door"), 1, 2), Tally(("VAN-02", None, "shock"), 1, 0),
                    Tally(("VAN-03", "frozen", "temperature"), 0, 1)]
    assert [r.ok for r in tally({"a": 2}, ["a", "a"])] == [True]  # a mapping counts, an iterable repeats


@pytest.mark.parametrize("kind", WITHHOLDABLE)
def test_a_withheld_incident_stays_expected_but_raises_nothing(kind: str) -> None:
    vans = fleet(4)
    end = START + timedelta(hours=6)
    staged = Simulation(vans, START, end, seed=1, scenario=Scenario(garbage=True))
    withheld = Simulation(vans, START, end, seed=1, scenario=Scenario(garbage=True), withhold=[kind])
    assert withheld.expected.alert_keys() == staged.expected.alert_keys()
    incident = next(i for i in withheld.expected.incidents if i.kind == kind)
    alert_kind = {"warming": "temperature", "door_left_open": "door", "hard_shock": "shock"}[kind]
    raised = keys((e.vehicle, e.compartment, e.kind) for e in run_rules(vans, withheld.messages(), end)
                  if e.action == "open")
    assert keys(staged.expected.alert_keys()) == sorted(raised + [(incident.vehicle, incident.compartment or "",
                                                                   alert_kind)])


def test_withholding_an_unknown_incident_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot withhold blip"):
        Simulation(fleet(2), START, START + timedelta(hours=3), withhold=["blip"])


def test_on_trips_every_incident_falls_inside_a_trip_and_the_signal_loss_expects_silence() -> None:
    """A day run on a simulated clock (the demo): incidents while goods are aboard, the warming over the class's
    default limit whatever the cargo, and the signal loss's 20 minutes raising a silence alert."""
    from dataclasses import replace

    base = planned_fleet()
    vans = [replace(v, cargo=CARGO, trips=((v.route_start or v.stops[0].arrive - timedelta(minutes=10),
                                            v.stops[-1].depart),)) for v in base]
    end = START + timedelta(hours=7)
    sim = Simulation(vans, START, end, seed=2, scenario=Scenario(garbage=True, on_trips=True))
    assert sim.expected.skipped == []
    trips = {v.code: v.trips for v in vans}
    for inc in sim.expected.incidents:
        assert any(a <= inc.start and inc.end <= b for a, b in trips[inc.vehicle]), inc
    assert {k for _v, _c, k in sim.expected.alert_keys()} == {"temperature", "door", "shock", "silence"}
    warming = next(i for i in sim.expected.incidents if i.kind == "warming")
    peak = max(s["temp_c"][warming.compartment] for s in sim.valid_samples()
               if s["device"] == next(v.device for v in vans if v.code == warming.vehicle))
    assert peak > 8.0  # over the chilled default, not only over the strawberries' 4 °C
    off = Simulation(vans, START, end, seed=2, scenario=Scenario(garbage=True))
    assert "silence" not in {k for _v, _c, k in off.expected.alert_keys()}
