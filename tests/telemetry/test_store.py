"""Storing telemetry in the database: the shared contract cases, dedup, rejects, alerts from a batch."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from fulfillment.scenario import load_scenario
from telemetry.models import Alert, TelemetryReading, TelemetryReject, TelemetrySample
from telemetry.service import Fleet, Message, default_engine, store_batch, tick_all
from tests import scenario_files
from tests.support import CLOCK, SHARED, zulu

NOW = CLOCK


def _when(token: str, now: datetime) -> str:
    m = re.fullmatch(r"NOW([+-])(\d+)([dhms])(?:(\d+)s)?", token)
    if not m:
        return token
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[m.group(3)]
    delta = timedelta(**{unit: int(m.group(2))}) + timedelta(seconds=int(m.group(4) or 0))
    moment = now + delta if m.group(1) == "+" else now - delta
    return moment.isoformat().replace("+00:00", "Z")


def _materialise(payload, now: datetime):  # noqa: ANN001, ANN202
    if isinstance(payload, str):
        return payload.encode("latin-1").decode("unicode_escape").encode("latin-1")
    text = json.dumps(payload)
    text = re.sub(r'"(NOW[+-][0-9a-z]+)"', lambda m: json.dumps(_when(m.group(1), now)), text)
    return text.encode()


def contract_cases() -> list[dict]:
    """The shared contract cases; the copy kept beside the tests when shared/ is not there."""
    path = SHARED / "examples" / "telemetry-cases.jsonl"
    if not path.exists():
        path = Path(__file__).with_name("telemetry-cases.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_contract_cases_end_to_end_in_the_database(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path))
    fleet = Fleet()
    fleet.load(session)
    engine = default_engine()
    seen = []
    for case in contract_cases():
        msg = Message(case["topic"], _materialise(case["payload"], NOW), NOW)
        outcome = store_batch(session, [msg], fleet, engine, now=NOW)
        seen.append((case["case"], outcome.stored, outcome.duplicates, outcome.rejected))
    by_case = {c: (s, d, r) for c, s, d, r in seen}
    assert by_case["one sample"] == (1, 0, 0)
    assert by_case["the same sample again (QoS 1 redelivery)"] == (0, 1, 0)
    assert by_case["a backlog burst, out of order"] == (2, 0, 0)
    assert by_case["a batch with one bad sample"] == (1, 0, 1)
    assert by_case["the same garbage twice"] == (0, 0, 1)
    assert by_case["not UTF-8"] == (0, 0, 1)
    stored = session.scalars(select(TelemetrySample.seq).where(TelemetrySample.device == "TL-0001")
                             .order_by(TelemetrySample.seq)).all()
    assert stored == [1, 2, 3, 4, 9]
    reasons = session.scalars(select(TelemetryReject.reason).order_by(TelemetryReject.id)).all()
    expected_rejects = sum(1 for c in contract_cases() if c["expect"].startswith("rejected"))
    assert len(reasons) == expected_rejects + 1  # + the bad element of the batch
    assert "missing field: seq" in reasons and "unknown vehicle: VAN-99" in reasons
    readings = dict(session.execute(select(TelemetryReading.kind, func.count()).group_by(TelemetryReading.kind)).all())
    assert readings["temperature"] == 5 and readings["position"] == 1 and readings["door"] == 2


def test_a_long_excursion_in_one_backlog_raises_one_late_alert(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path))
    fleet = Fleet()
    fleet.load(session)
    start = NOW - timedelta(hours=1)
    backlog = [{"device": "TL-0001", "seq": 100 + i, "ts": (start + timedelta(minutes=i)).isoformat(),
                "temp_c": {"chilled": 11.5 if 5 <= i < 25 else 4.0}} for i in range(40)]
    msg = Message("coldchain/v1/vehicles/VAN-01/telemetry", json.dumps(backlog[::-1]).encode(), NOW)
    outcome = store_batch(session, [msg, msg], fleet, default_engine(), now=NOW)
    assert (outcome.stored, outcome.duplicates) == (40, 40)
    alerts = session.scalars(select(Alert)).all()
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert.kind, alert.compartment, alert.status, alert.late) == ("temperature", "chilled", "closed", True)
    assert alert.peak == 11.5 and alert.started_at == start + timedelta(minutes=5)
    assert 19 <= alert.minutes_out <= 21
    # the same backlog again changes nothing
    again = store_batch(session, [msg], fleet, default_engine(), now=NOW)
    assert again.stored == 0 and again.alerts == []
    assert session.scalar(select(func.count()).select_from(Alert)) == 1


def test_tick_raises_silence_for_an_active_van(session, tmp_path: Path) -> None:
    from telemetry.service import set_active

    load_scenario(session, scenario_files.write(tmp_path))
    fleet = Fleet()
    fleet.load(session)
    engine = default_engine()
    one = {"device": "TL-0002", "seq": 1, "ts": (NOW - timedelta(minutes=1)).isoformat(), "temp_c": {"chilled": 3.0}}
    store_batch(session, [Message("coldchain/v1/vehicles/VAN-02/telemetry", json.dumps(one).encode(), NOW)],
                fleet, engine, now=NOW)
    set_active(session, "VAN-02", True, now=NOW)
    # the first tick sees the route active; ten quiet minutes later the van is reported silent
    assert tick_all(session, engine, now=NOW + timedelta(minutes=1)) == []
    assert tick_all(session, engine, now=NOW + timedelta(minutes=10)) == []
    raised = tick_all(session, engine, now=NOW + timedelta(minutes=11, seconds=1))
    assert [(a["vehicle"], a["kind"], a["status"]) for a in raised] == [("VAN-02", "silence", "open")]


def test_stored_readings_are_exactly_the_decoded_ones(session, tmp_path: Path) -> None:
    """The PostgreSQL fast path formats COPY lines itself: it must store what readings_of() says."""
    from telemetry.decoding import decode_message, readings_of

    load_scenario(session, scenario_files.write(tmp_path))
    fleet = Fleet()
    fleet.load(session)
    payload = json.dumps({"device": "TL-0001", "seq": 77, "ts": zulu(NOW - timedelta(minutes=1))[:-1] + ".250Z",
                          "temp_c": {"chilled": 3.25, "frozen": -18.5}, "door": {"chilled": "open"},
                          "shock_g": 1.5, "pos": [30.6571, 104.0662], "battery": 0.82}).encode()
    msg = Message("coldchain/v1/vehicles/VAN-01/telemetry", payload, NOW)
    store_batch(session, [msg], fleet, default_engine(), now=NOW)
    expected = sorted((r.kind, r.compartment or "", r.value, r.value2, r.ts)
                      for r in readings_of(decode_message(msg.topic, payload, devices_of=fleet.devices_of(session),
                                                          now=NOW).samples[0]))
    stored = sorted(session.execute(select(TelemetryReading.kind, TelemetryReading.compartment, TelemetryReading.value,
                                           TelemetryReading.value2, TelemetryReading.ts)
                                    .where(TelemetryReading.seq == 77)).all())
    assert [tuple(r) for r in stored] == expected and len(expected) == 6


def test_the_rule_timer_runs_on_a_network_without_vans(session) -> None:  # noqa: ANN001
    """A fresh stack's ingestor ticks before any scenario is loaded: nothing to do, and no error."""
    from telemetry.models import VehicleRuleState
    from telemetry.service import default_engine, tick_all
    from traceability.service import sync_vans
    from warehouses.models import Vehicle

    assert session.scalar(select(func.count()).select_from(Vehicle)) == 0
    sync_vans(session)
    assert tick_all(session, default_engine()) == []
    assert session.scalar(select(func.count()).select_from(VehicleRuleState)) == 0


def test_last_positions_takes_one_statement_for_every_van(session, tmp_path: Path) -> None:  # noqa: ANN001
    """The dispatcher's map asks for every van's last fix: the newest one in the window per van, in one statement."""
    from sqlalchemy import event

    from telemetry.service import last_positions

    load_scenario(session, scenario_files.write(tmp_path))
    fleet = Fleet()
    fleet.load(session)
    base = NOW - timedelta(minutes=30)

    def fixes(device: str, lat0: float) -> list[dict]:
        return [{"device": device, "seq": i, "ts": zulu(base + timedelta(minutes=i)), "pos": [lat0 + i / 1000, 104.0]}
                for i in range(25)]

    topic = "coldchain/v1/vehicles/{}/telemetry"
    store_batch(session, [Message(topic.format("VAN-01"), json.dumps(fixes("TL-0001", 30.6)).encode(), NOW),
                          Message(topic.format("VAN-02"), json.dumps(fixes("TL-0002", 30.7)[:5]).encode(), NOW)],
                fleet, default_engine(), now=NOW)
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(session.get_bind(), "before_cursor_execute", listener)
    try:
        one = last_positions(session, ["VAN-01"], NOW)
        n_one = len(statements)
        both = last_positions(session, ["VAN-01", "VAN-02"], NOW, max_age=timedelta(minutes=60))
        n_both = len(statements) - n_one
    finally:
        event.remove(session.get_bind(), "before_cursor_execute", listener)
    assert n_one == n_both == 1
    assert set(one) == {"VAN-01"}  # VAN-02's fixes are 26-30 min old: outside the default 15 minutes
    assert one["VAN-01"][:2] == (30.6 + 24 / 1000, 104.0) and both["VAN-01"] == one["VAN-01"]
    assert both["VAN-02"][:2] == (30.7 + 4 / 1000, 104.0)
    assert both["VAN-02"][2] == base + timedelta(minutes=4)
