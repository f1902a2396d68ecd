"""Telemetry and alerts over real HTTP: readings paged by cursor, rejects, alerts and their acknowledgement."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, select

from fulfillment.scenario import load_scenario
from telemetry.models import Alert
from telemetry.service import Fleet, Message, default_engine, readings_query, store_batch
from tests import scenario_files
from tests.support import CLOCK, assert_problem, zulu
from warehouses.models import Vehicle

NOW = CLOCK
T0 = NOW - timedelta(hours=2)
TOPIC = "coldchain/v1/vehicles/{}/telemetry"


@pytest.fixture(scope="module", autouse=True)
def telemetry_routes(live_app):  # noqa: ANN001, ANN201
    """Until api/app.py includes the telemetry router, include it in the test server (then a no-op)."""
    from api.routers.telemetry import router

    if "/api/v1/alerts" not in {getattr(r, "path", None) for r in live_app.app.routes}:
        live_app.app.include_router(router, prefix="/api/v1")


iso = zulu


def sample(seq: int, minute: float, device: str = "TL-0001", **extra: object) -> dict:
    return {"device": device, "seq": seq, "ts": iso(T0 + timedelta(minutes=minute)), **extra}


def store(session, vehicle: str, samples: list, received: datetime = NOW) -> None:  # noqa: ANN001
    fleet = Fleet()
    fleet.load(session)
    store_batch(session, [Message(TOPIC.format(vehicle), json.dumps(samples).encode(), received)], fleet,
                default_engine(), now=NOW)


@pytest.fixture
def fleet_data(session, tmp_path: Path) -> list[dict]:  # noqa: ANN001
    """20 samples of VAN-01 (two pairs sharing a timestamp) and a few of VAN-02; returns VAN-01's."""
    load_scenario(session, scenario_files.write(tmp_path))
    van1 = []
    for i in range(20):
        minute = i if i not in (7, 13) else i - 1  # seq 6 and 7, 12 and 13 share their ts
        extra: dict = {"temp_c": {"frozen": -19.0 - i / 10, "chilled": 3.5}}
        if i % 5 == 0:
            extra["door"] = {"chilled": "open" if i % 10 == 0 else "closed"}
        if i % 4 == 0:
            extra["pos"] = [30.65 + i / 1000, 104.06 + i / 1000]
        if i % 6 == 0:
            extra.update(shock_g=1.5, battery=0.8)
        van1.append(sample(i, minute, **extra))
    store(session, "VAN-01", van1[::-1])  # a backlog, newest first: the API still lists oldest first
    store(session, "VAN-02", [sample(i, i, device="TL-0002", temp_c={"chilled": 4.0}) for i in range(5)])
    return van1


def expected_readings(samples: list[dict]) -> list[tuple]:
    rows = []
    for s in samples:
        for cls, v in s.get("temp_c", {}).items():
            rows.append((s["ts"], s["device"], s["seq"], "temperature", cls, v))
        for cls, state in s.get("door", {}).items():
            rows.append((s["ts"], s["device"], s["seq"], "door", cls, 1.0 if state == "open" else 0.0))
        if "shock_g" in s:
            rows.append((s["ts"], s["device"], s["seq"], "shock", None, s["shock_g"]))
        if "pos" in s:
            rows.append((s["ts"], s["device"], s["seq"], "position", None, s["pos"]))
        if "battery" in s:
            rows.append((s["ts"], s["device"], s["seq"], "battery", None, s["battery"]))
    return sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3], r[4] or ""))


def as_tuple(item: dict) -> tuple:
    return (item["ts"], item["device"], item["seq"], item["kind"], item["compartment"], item["value"])


def follow(api, url: str, headers: dict, params: dict | None = None) -> tuple[list[dict], int]:  # noqa: ANN001
    """Every item of a list, following next links; also how many pages it took."""
    items, pages = [], 0
    resp = api.get(url, params=params, headers=headers)
    while True:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"items", "next"}
        items += body["items"]
        pages += 1
        if body["next"] is None:
            return items, pages
        assert pages < 100
        resp = api.get(body["next"], headers=headers)


def test_readings_page_through_every_reading_once_in_order(api, token, fleet_data) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    expected = expected_readings(fleet_data)
    url = "/api/v1/telemetry/vehicles/VAN-01/readings"
    items, pages = follow(api, url, headers, {"limit": 7})
    assert [as_tuple(i) for i in items] == expected
    assert len({(i["ts"], i["device"], i["seq"], i["kind"], i["compartment"]) for i in items}) == len(expected)
    assert pages == -(-len(expected) // 7)
    one_page = api.get(url, headers=headers).json()
    assert one_page["next"] is None and [as_tuple(i) for i in one_page["items"]] == expected
    position = next(i for i in items if i["kind"] == "position")
    assert position == {"device": "TL-0001", "seq": 0, "ts": iso(T0), "compartment": None, "kind": "position",
                        "value": [30.65, 104.06]}
    # quality staff see the same; VAN-02's readings are its own
    assert len(follow(api, url, token("quality"), {"limit": 1000})[0]) == len(expected)
    van2 = api.get("/api/v1/telemetry/vehicles/VAN-02/readings", headers=headers).json()["items"]
    assert {i["device"] for i in van2} == {"TL-0002"} and len(van2) == 5


def test_readings_filter_by_time_kind_and_compartment(api, token, fleet_data) -> None:  # noqa: ANN001
    headers = token("quality")
    url = "/api/v1/telemetry/vehicles/VAN-01/readings"
    # [from, to): the sample at 'from' is in, the one at 'to' is out; a +08:00 zone means the same instant
    start = (T0 + timedelta(minutes=3)).astimezone(datetime.strptime("+0800", "%z").tzinfo)
    params = {"from": start.isoformat(), "to": iso(T0 + timedelta(minutes=9)), "limit": 4}
    items, _pages = follow(api, url, headers, params)
    assert sorted({i["seq"] for i in items}) == [3, 4, 5, 6, 7, 8]
    assert [as_tuple(i) for i in items] == [r for r in expected_readings(fleet_data)
                                           if iso(T0 + timedelta(minutes=3)) <= r[0] < iso(T0 + timedelta(minutes=9))]
    chilled = follow(api, url, headers, {"kind": "temperature", "compartment": "chilled", "limit": 6})[0]
    assert len(chilled) == 20 and {(i["kind"], i["compartment"], i["value"]) for i in chilled} == {
        ("temperature", "chilled", 3.5)}
    doors = api.get(url, params={"kind": "door"}, headers=headers).json()["items"]
    assert [(i["seq"], i["value"]) for i in doors] == [(0, 1.0), (5, 0.0), (10, 1.0), (15, 0.0)]
    unplaced = api.get(url, params={"compartment": "none"}, headers=headers).json()["items"]
    assert {i["kind"] for i in unplaced} == {"shock", "position", "battery"}
    assert {i["compartment"] for i in unplaced} == {None}
    # an unencoded '+' arrives as a space; it is still the +08:00 zone
    raw = api.get(f"{url}?from={start.isoformat()}&kind=temperature&compartment=frozen", headers=headers).json()
    assert [i["seq"] for i in raw["items"]] == list(range(3, 20))
    none = api.get(url, params={"from": iso(NOW), "to": iso(NOW + timedelta(hours=1))}, headers=headers).json()
    assert none == {"items": [], "next": None}


def test_readings_refuse_bad_requests_as_problems(api, token, fleet_data) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    url = "/api/v1/telemetry/vehicles/VAN-01/readings"
    assert_problem(api.get("/api/v1/telemetry/vehicles/VAN-99/readings", headers=headers), 404)
    for bad in (iso(NOW)[:-1], "yesterday", iso(NOW)[:10], "1700000000", f"{NOW.year}-13-40T08:00:00Z",
                "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"):
        body = assert_problem(api.get(url, params={"from": bad}, headers=headers), 422)
        assert [e["pointer"] for e in body["errors"]] == ["query:from"], body
        assert "query:from" in body["detail"]
    assert "query:to" in assert_problem(api.get(url, params={"to": "08:00"}, headers=headers), 422)["detail"]
    backwards = {"from": iso(T0 + timedelta(hours=1)), "to": iso(T0)}
    assert assert_problem(api.get(url, params=backwards, headers=headers), 422)["pointer"] == "query:to"
    for cursor in ("garbage", base64.urlsafe_b64encode(b'["x"]').decode(), "",
                   *(base64.urlsafe_b64encode(json.dumps(c).encode()).decode() for c in (
                       [iso(T0), "TL-0001", 2**31, "door", ""], ["0001-01-01T00:00:00+01:00", "TL-0001", 1, "door", ""],
                       [iso(T0), "TL-0001", 1, "smell", ""], [iso(T0)[:-1], "TL-0001", 1, "door", ""],
                       {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}))):
        assert assert_problem(api.get(url, params={"after": cursor}, headers=headers), 422)["pointer"] == "query:after"
    for params in ({"limit": 0}, {"limit": 1001}, {"kind": "humidity"}, {"compartment": "deep"}):
        assert_problem(api.get(url, params=params, headers=headers), 422)


def test_roles(api, token, fleet_data) -> None:  # noqa: ANN001
    driver, dispatcher = token("driver"), token("dispatcher")
    readings = "/api/v1/telemetry/vehicles/VAN-01/readings"
    for path in (readings, "/api/v1/alerts", "/api/v1/telemetry/rejected"):
        assert_problem(api.get(path, headers=driver), 403)
        assert_problem(api.get(path), 401)
    assert_problem(api.get("/api/v1/telemetry/rejected", headers=dispatcher), 403)
    assert_problem(api.post("/api/v1/alerts/1/ack", json={"note": "seen"}, headers=dispatcher), 403)
    assert_problem(api.post("/api/v1/alerts/1/ack", json={"note": "seen"}, headers=driver), 403)
    assert api.get(readings, headers=token("admin")).status_code == 200


def test_rejected_shows_raw_payload_and_reason(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path))
    fleet = Fleet()
    fleet.load(session)
    engine = default_engine()
    topic = TOPIC.format("VAN-01")
    batch = json.dumps([sample(1, 1, temp_c={"chilled": 4.0}), {"device": "TL-0001", "ts": iso(T0)}]).encode()
    for payload, received in ((b"\xff\xfe\x00garbage", NOW - timedelta(hours=1)), (b"not json", NOW),
                              (batch, NOW + timedelta(seconds=1))):
        store_batch(session, [Message(topic, payload, received)], fleet, engine, now=NOW)
    quality = token("quality")
    items, pages = follow(api, "/api/v1/telemetry/rejected", quality, {"limit": 1})
    assert pages == 3
    binary, text, element = items
    assert binary["payload_encoding"] == "base64" and base64.b64decode(binary["payload"]) == b"\xff\xfe\x00garbage"
    assert binary["reason"] == "not UTF-8" and binary["topic"] == topic and binary["batch_index"] is None
    assert binary["received_at"] == iso(NOW - timedelta(hours=1))
    assert (text["payload"], text["payload_encoding"], text["reason"]) == ("not json", "utf-8", "not JSON")
    assert element["batch_index"] == 1 and element["reason"] == "missing field: seq"
    assert json.loads(element["payload"]) == {"device": "TL-0001", "ts": iso(T0)}
    assert set(binary) == {"id", "received_at", "topic", "payload", "payload_encoding", "reason", "batch_index"}
    recent = api.get("/api/v1/telemetry/rejected", params={"since": iso(NOW - timedelta(minutes=1))},
                     headers=quality).json()
    assert [i["reason"] for i in recent["items"]] == ["not JSON", "missing field: seq"] and recent["next"] is None
    assert_problem(api.get("/api/v1/telemetry/rejected", params={"since": iso(NOW)[:16]}, headers=quality), 422)


@pytest.fixture
def alerts(session, tmp_path: Path) -> dict[str, int]:  # noqa: ANN001
    """A closed late temperature alert raised by the rules, an open door alert and an open shock alert of VAN-02."""
    load_scenario(session, scenario_files.write(tmp_path))
    backlog = [sample(100 + i, i, temp_c={"chilled": 11.5 if 5 <= i < 25 else 4.0}) for i in range(40)]
    store(session, "VAN-01", backlog)
    vans = dict(session.execute(select(Vehicle.code, Vehicle.id)).all())
    for key, code, kind, compartment in (("t-door", "VAN-01", "door", "chilled"), ("t-shock", "VAN-02", "shock", None)):
        session.add(Alert(key=key, vehicle_id=vans[code], compartment=compartment, kind=kind, status="open",
                          started_at=NOW - timedelta(minutes=5), raised_at=NOW, minutes_out=5.0, late=False,
                          peak=3.2 if kind == "shock" else None))
    session.flush()
    return {a.kind: a.id for a in session.scalars(select(Alert))}


def test_alerts_list_and_filter(api, token, alerts) -> None:  # noqa: ANN001
    headers = token("dispatcher")
    items, pages = follow(api, "/api/v1/alerts", headers, {"limit": 2})
    assert pages == 2 and [i["id"] for i in items] == sorted(alerts.values())
    temp = next(i for i in items if i["kind"] == "temperature")
    assert (temp["vehicle"], temp["compartment"], temp["status"], temp["late"], temp["peak"]) == (
        "VAN-01", "chilled", "closed", True, 11.5)
    assert temp["started_at"] == iso(T0 + timedelta(minutes=5)) and temp["ended_at"] is not None
    assert {"id", "vehicle", "compartment", "kind", "status", "started_at", "ended_at", "peak", "late",
            "minutes_out", "acknowledged_by", "acknowledged_at", "ack_note"} <= set(temp)

    def ids(**params: str) -> list[int]:
        resp = api.get("/api/v1/alerts", params=params, headers=headers)
        assert resp.status_code == 200, resp.text
        return [i["id"] for i in resp.json()["items"]]

    assert ids(status="open") == sorted([alerts["door"], alerts["shock"]])
    assert ids(status="closed") == [alerts["temperature"]]
    assert ids(status="acknowledged") == []
    assert ids(vehicle="VAN-02") == [alerts["shock"]]
    assert ids(vehicle="VAN-01", status="open") == [alerts["door"]]
    assert ids(kind="temperature") == [alerts["temperature"]]
    assert ids(vehicle="VAN-99") == []
    body = assert_problem(api.get("/api/v1/alerts", params={"status": "pending"}, headers=headers), 422)
    assert "query:status" in body["detail"]
    assert_problem(api.get("/api/v1/alerts", params={"kind": "smoke"}, headers=headers), 422)
    assert_problem(api.get("/api/v1/alerts", params={"after": "x"}, headers=headers), 422)
    assert_problem(api.get("/api/v1/alerts", params={"after": 2**31}, headers=headers), 422)
    assert ids(after=str(2**31 - 1)) == []


def test_acknowledge_flow(api, token, alerts) -> None:  # noqa: ANN001
    quality = token("quality", username="qa-lin")
    door = alerts["door"]
    done = api.post(f"/api/v1/alerts/{door}/ack", json={"note": "  driver closed the door  "}, headers=quality)
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["id"], body["status"], body["acknowledged_by"], body["ack_note"]) == (
        door, "acknowledged", "qa-lin", "driver closed the door")
    assert datetime.fromisoformat(body["acknowledged_at"]) <= datetime.now(UTC)
    again = assert_problem(api.post(f"/api/v1/alerts/{door}/ack", json={"note": "again"}, headers=quality), 409)
    assert "qa-lin" in again["detail"]
    # a closed alert stays closed but records the acknowledgement
    closed = api.post(f"/api/v1/alerts/{alerts['temperature']}/ack", json={"note": "batch checked"},
                      headers=quality).json()
    assert (closed["status"], closed["acknowledged_by"], closed["ack_note"]) == ("closed", "qa-lin", "batch checked")
    assert_problem(api.post(f"/api/v1/alerts/{alerts['temperature']}/ack", json={"note": "x"}, headers=quality), 409)
    listed = api.get("/api/v1/alerts", params={"status": "acknowledged"}, headers=token("dispatcher")).json()
    assert [i["id"] for i in listed["items"]] == [door] and listed["items"][0]["ack_note"] == "driver closed the door"
    shock = alerts["shock"]
    for bad in ({"note": ""}, {"note": "   "}, {}, {"note": "x" * 2001}, {"note": None}):
        assert_problem(api.post(f"/api/v1/alerts/{shock}/ack", json=bad, headers=quality), 422)
    assert_problem(api.post(f"/api/v1/alerts/{shock}/ack", content=b"not json",
                            headers={**quality, "Content-Type": "application/json"}), 422)
    for missing in (999999, 0, -1, 2**31, 2**70):
        assert_problem(api.post(f"/api/v1/alerts/{missing}/ack", json={"note": "seen"}, headers=quality), 404)
    assert_problem(api.post("/api/v1/alerts/abc/ack", json={"note": "seen"}, headers=quality), 422)
    assert api.post(f"/api/v1/alerts/{shock}/ack", json={"note": "x" * 2000}, headers=quality).status_code == 200


def test_the_readings_query_walks_the_vehicle_index(session, fleet_data) -> None:  # noqa: ANN001
    """(vehicle_id, kind, compartment, ts) serves every readings query, with or without kind and compartment,
    in a table that holds a fleet's readings (the planner weighs it against the ts-first primary key)."""
    from core.bulk import copy_rows
    from telemetry.models import TelemetryReading
    from telemetry.service import ReadingKey

    vid = session.scalar(select(Vehicle.id).where(Vehicle.code == "VAN-01"))
    others = [{"ts": T0 + timedelta(seconds=20 * i), "device": f"TL-X{v}", "seq": i, "kind": kind,
               "compartment": compartment, "vehicle_id": 10_000 + v, "value": 4.0, "value2": None}
              for v in range(60) for i in range(100)
              for kind, compartment in (("temperature", "chilled"), ("temperature", "frozen"), ("battery", ""))]
    copy_rows(session, TelemetryReading.__table__, others)
    conn = session.connection()
    postgres = conn.dialect.name == "postgresql"
    conn.exec_driver_sql("ANALYZE telemetry_readings" if postgres else "ANALYZE")
    cursor = ReadingKey(T0 + timedelta(minutes=4), "TL-0001", 4, "door", "chilled")
    shapes = ((T0, NOW, None, None, None), (None, None, "temperature", "chilled", None),
              (T0, None, None, None, cursor), (T0 - timedelta(days=1), NOW, "position", "", None))
    for args in shapes:
        captured: list = []

        def grab(_conn, _cursor, statement, parameters, _context, _many, captured=captured):  # noqa: ANN001, ANN202
            captured.append((statement, parameters))

        event.listen(conn, "before_cursor_execute", grab)
        try:
            session.execute(readings_query(vid, *args).limit(101)).all()
        finally:
            event.remove(conn, "before_cursor_execute", grab)
        statement, parameters = captured[-1]
        prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
        plan = "\n".join(str(row[-1]) for row in conn.exec_driver_sql(prefix + statement, parameters))
        assert "vehicle_id_kind_compartment_ts_idx" in plan or "ix_telemetry_readings_vehicle_kind_ts" in plan, plan
        assert "pkey" not in plan and "autoindex" not in plan, plan
