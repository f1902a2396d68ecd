"""The driver API over real HTTP (uvicorn): a driver's day, lifecycles, who sees what, idempotency, uploads.

Each test plans tomorrow (local) with the real allocation and OR-Tools code inside its own rolled-back
transaction; the Idempotency-Key bookkeeping is kept in that transaction too (driver_api fixture).
tests/delivery/test_idempotency_processes.py runs the same API as `coldchain serve --workers 2`.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select, update

from core.settings import get_settings
from delivery.models import DeliveryEvent, DeliveryProof, IdempotencyKey, StopDamage
from fulfillment.models import Order, OrderEvent
from routing.replan import replan
from telemetry.models import VehicleRuleState
from tests.delivery.helpers import JPEG, PNG, build_day, committing, keep_keys_in, key, routes_by_van
from tests.support import assert_problem
from traceability.custody import order_custody
from warehouses.models import Vehicle

ROUTE = "/api/v1/driver/route"
START = "/api/v1/driver/route/start"


@pytest.fixture
def driver_api(api, session, live_app):  # noqa: ANN001, ANN201
    keep_keys_in(session, live_app)
    return api


def events_url(stop_id: str) -> str:
    return f"/api/v1/driver/stops/{stop_id}/events"


def proof_url(stop_id: str) -> str:
    return f"/api/v1/driver/stops/{stop_id}/proof"


def order(session, ref: str) -> Order:  # noqa: ANN001
    session.expire_all()
    return session.scalar(select(Order).where(Order.ref == ref))


def count(session, model) -> int:  # noqa: ANN001
    return session.scalar(select(func.count()).select_from(model))


def post(api, url: str, headers: dict, **kw):  # noqa: ANN001, ANN201
    return api.post(url, headers={**headers, **key()}, **kw)


def watched(session, code: str) -> bool:  # noqa: ANN001
    session.expire_all()
    vid = session.scalar(select(Vehicle.id).where(Vehicle.code == code))
    row = session.get(VehicleRuleState, vid)
    return bool(row and row.active)


# ------------------------------------------------------------------------------ the day


def test_a_drivers_day_from_route_start_to_the_last_stop(driver_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    api = driver_api
    day = build_day(session, tmp_path)
    planned = routes_by_van(session, day)["VAN-03"]
    refs = [s.order.ref for s in planned.stops]
    assert len(refs) >= 3, "the day needs a few stops on VAN-03"
    me = token("driver", "driver03")

    got = api.get(ROUTE, params={"date": day.isoformat()}, headers=me)
    assert got.status_code == 200, got.text
    route = got.json()
    assert (route["date"], route["vehicle"], route["depot"], route["status"]) == \
        (day.isoformat(), "VAN-03", "FS-01", "planned")
    assert route["compartments"] == {"frozen": 120.0, "chilled": 100.0, "ambient": 600.0}
    assert [s["order_ref"] for s in route["stops"]] == refs
    assert [s["seq"] for s in route["stops"]] == list(range(1, len(refs) + 1))
    first = route["stops"][0]
    assert set(first) >= {"stop_id", "seq", "order_ref", "eta", "lat", "lon", "window", "address", "contact",
                          "items", "status"}
    eta = datetime.fromisoformat(first["eta"])
    assert eta.utcoffset() == timedelta(hours=8) and eta.date() == day
    assert [s["eta"] for s in route["stops"]] == sorted(s["eta"] for s in route["stops"])
    by_ref = {s["order_ref"]: s for s in route["stops"]}
    if "A1" in by_ref:
        assert by_ref["A1"]["items"] == [
            {"sku": "EGG-30", "name": "土鸡蛋30枚", "qty": 2, "temp_class": "chilled", "fragile": True},
            {"sku": "DUMP-1", "name": "龙抄手", "qty": 1, "temp_class": "frozen", "fragile": False}]
        assert by_ref["A1"]["window"] == ["09:00", "11:00"] and by_ref["A1"]["contact"] == "张三 13800000001"
        assert by_ref["A1"]["address"] == "锦江区春熙路1号"
    assert all(s["status"] == "planned" for s in route["stops"])

    leave = datetime.combine(day, datetime.min.time(), tzinfo=get_settings().tz).replace(hour=8)
    started = post(api, START, me, json={"date": day.isoformat(), "at": leave.isoformat()})
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "started" and started.json()["orders_out_for_delivery"] == len(refs)
    assert {order(session, r).status for r in refs} == {"out_for_delivery"}
    assert watched(session, "VAN-03")  # silence alerts apply now
    assert api.get(ROUTE, params={"date": day.isoformat()}, headers=me).json()["status"] == "started"

    stops = route["stops"]
    at = leave
    for i, stop in enumerate(stops):
        at += timedelta(minutes=20)
        sid = stop["stop_id"]
        arrived = post(api, events_url(sid), me, json={"type": "arrived", "at": at.isoformat(),
                                                      "position": [stop["lat"], stop["lon"]]})
        assert arrived.status_code == 200, arrived.text
        assert arrived.json()["status"] == "arrived"
        if i == 0:  # one egg broke in the van
            sku = stop["items"][0]["sku"]
            dmg = post(api, events_url(sid), me, json={"type": "damaged", "items": [{"sku": sku, "qty": 1}],
                                                       "note": "一盒破了"})
            assert dmg.status_code == 200, dmg.text
            assert dmg.json()["damaged"] == [{"sku": sku, "qty": 1}] and dmg.json()["status"] == "arrived"
        if i == 1:  # nobody home
            failed = post(api, events_url(sid), me, json={"type": "failed", "reason": "not_home",
                                                          "at": (at + timedelta(minutes=3)).isoformat()})
            assert failed.status_code == 200, failed.text
            assert (failed.json()["status"], failed.json()["order_status"]) == ("failed", "reattempt")
            continue
        done = post(api, events_url(sid), me, json={"type": "delivered", "recipient": "本人",
                                                    "position": [stop["lat"], stop["lon"]],
                                                    "at": (at + timedelta(minutes=4)).isoformat()})
        assert done.status_code == 200, done.text
        assert (done.json()["status"], done.json()["order_status"]) == ("delivered", "delivered")
        last = i == len(stops) - 1
        assert done.json()["route_status"] == ("finished" if last else "started")
        if i == 0:
            proof = api.post(proof_url(sid), headers={**me, **key()}, files={"file": ("sig.png", PNG, "image/png")})
            assert proof.status_code == 201, proof.text

    # what the events moved
    assert order(session, stops[0]["order_ref"]).status == "delivered"
    failed_ref = stops[1]["order_ref"]
    assert order(session, failed_ref).status == "reattempt"
    types = [e.type for e in session.scalars(select(OrderEvent).join(Order).where(Order.ref == failed_ref)
                                             .order_by(OrderEvent.id))]
    assert types[-4:] == ["loaded", "arrived", "failed", "reattempt"]
    # custody from the depot to the door (or back), recorded by the driver's own events
    for i, stop in enumerate(stops):
        trail = order_custody(session, stop["order_ref"])
        kinds = list(dict.fromkeys(e["type"] for e in trail))
        assert kinds == (["picked", "loaded", "failed", "returned"] if i == 1 else ["picked", "loaded", "delivered"]), \
            (stop["order_ref"], kinds)
        loaded = [e for e in trail if e["type"] == "loaded"]
        assert len(loaded) == len(stop["items"]) and {e["vehicle"] for e in loaded} == {"VAN-03"}
        assert sorted(e["compartment"] for e in loaded) == sorted(it["temp_class"] for it in stop["items"])
        assert all(e["lot"] and e["qty"] > 0 for e in trail)
    damage = session.execute(select(StopDamage.qty, StopDamage.line_id)).all()
    assert [q for q, _ in damage] == [1]
    final = api.get(ROUTE, params={"date": day.isoformat()}, headers=me).json()
    assert final["status"] == "finished"
    assert [s["status"] for s in final["stops"]] == ["delivered", "failed"] + ["delivered"] * (len(stops) - 2)
    assert not watched(session, "VAN-03")
    assert [e.type for e in session.scalars(select(DeliveryEvent).where(DeliveryEvent.stop_pk.is_(None))
                                            .order_by(DeliveryEvent.id))] == ["started", "finished"]
    late = post(api, events_url(stops[0]["stop_id"]), me, json={"type": "damaged", "items": [{"sku": "EGG-30",
                                                                                                "qty": 1}]})
    body = assert_problem(late, 409)
    assert (body["route_status"], body["stop_status"]) == ("finished", "delivered")

    # the failed order is back in the dispatcher's queue: re-planning gives it a new stop
    out = replan(day, "FS-01", None, time_limit=1, now=at + timedelta(minutes=30), sessions=committing(session))
    assert failed_ref in out["added"], out
    again = order(session, failed_ref)
    assert again.status == "planned"
    new_stop = next(s for r in routes_by_van(session, day).values() for s in r.stops
                    if s.order.ref == failed_ref and s.status == "planned")
    assert new_stop.stop_id != stops[1]["stop_id"]


# ------------------------------------------------------------------------ lifecycle rules


def test_illegal_moves_answer_409_with_the_current_state(driver_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    api = driver_api
    day = build_day(session, tmp_path, depots=("FS-01",))
    stops = [s.stop_id for s in routes_by_van(session, day)["VAN-01"].stops]
    me = token("driver", "driver01")
    early = assert_problem(post(api, events_url(stops[0]), me, json={"type": "arrived"}), 409)
    assert early["route_status"] == "planned" and early["stop_status"] == "planned"
    assert "start the route first" in early["detail"]
    assert post(api, START, me, json={"date": day.isoformat()}).status_code == 200
    twice = assert_problem(post(api, START, me, json={"date": day.isoformat()}), 409)
    assert twice["route_status"] == "started"
    skip = assert_problem(post(api, events_url(stops[0]), me, json={"type": "delivered", "recipient": "x"}), 409)
    assert skip["stop_status"] == "planned" and "arrived" in skip["detail"]
    assert post(api, events_url(stops[0]), me, json={"type": "arrived"}).status_code == 200
    assert post(api, events_url(stops[0]), me, json={"type": "delivered", "recipient": "门卫"}).status_code == 200
    again = assert_problem(post(api, events_url(stops[0]), me, json={"type": "delivered", "recipient": "x"}), 409)
    assert again["stop_status"] == "delivered" and again["route_status"] == "started"
    # bad bodies: 422 with what is wrong
    for body, words in [({"type": "failed"}, "reason"),
                        ({"type": "failed", "reason": "other"}, "note"),
                        ({"type": "failed", "reason": "lost"}, "/reason"),
                        ({"type": "delivered"}, "recipient"),
                        ({"type": "damaged"}, "items"),
                        ({"type": "arrived", "position": [95, 104]}, "/position/0"),
                        ({"type": "teleported"}, "/type"),
                        ({"type": "arrived", "at": "2026-01-01T08:00:00"}, "/at")]:
        problem = assert_problem(post(api, events_url(stops[1]), me, json=body), 422)
        assert words in problem["detail"], (body, problem)
    too_many = assert_problem(post(api, events_url(stops[1]), me, json={"type": "damaged", "items": [
        {"sku": "EGG-30", "qty": 9}]}), 422)
    assert too_many["pointer"] == "/items/0/qty" and "has 8 of EGG-30" in too_many["detail"]
    wrong = assert_problem(post(api, events_url(stops[1]), me, json={"type": "damaged", "items": [
        {"sku": "DUMP-1", "qty": 1}]}), 422)
    assert wrong["pointer"] == "/items/0/sku"
    assert count(session, StopDamage) == 0
    # a refused report left nothing behind (its savepoint was rolled back), only its stored answer
    assert session.scalar(select(func.count()).select_from(DeliveryEvent)
                          .where(DeliveryEvent.type.in_(("damaged", "failed")))) == 0
    ok = post(api, events_url(stops[1]), me, json={"type": "failed", "reason": "other", "note": "小区封闭"})
    assert ok.status_code == 200 and ok.json()["order_status"] == "reattempt"


# ------------------------------------------------------------------------------ who sees what


def test_drivers_reach_only_their_own_and_other_roles_get_403(driver_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    api = driver_api
    day = build_day(session, tmp_path)
    routes = routes_by_van(session, day)
    mine, theirs = routes["VAN-01"].stops, routes["VAN-02"].stops
    one, two = token("driver", "driver01"), token("driver", "driver02")
    d = {"date": day.isoformat()}
    assert api.get(ROUTE, params=d, headers=two).json()["vehicle"] == "VAN-02"
    assert post(api, START, one, json=d).status_code == 200
    assert post(api, events_url(mine[0].stop_id), one, json={"type": "arrived"}).status_code == 200
    proof = api.post(proof_url(mine[0].stop_id), headers={**one, **key()}, files={"file": ("a.jpg", JPEG)})
    assert proof.status_code == 201, proof.text
    proof_id = proof.json()["id"]
    assert post(api, START, two, json=d).status_code == 200

    def same_404(method: str, url: str, **kw) -> dict:  # noqa: ANN003
        resp = api.request(method, url, **kw)
        return {"status": resp.status_code, "body": resp.content}

    unknown = "s-000000000000"
    for method, template, kw in [
            ("POST", "/api/v1/driver/stops/{}/events", {"json": {"type": "arrived"}}),
            ("POST", "/api/v1/driver/stops/{}/events", {"json": {"type": "damaged",
                                                                  "items": [{"sku": "EGG-30", "qty": 1}]}}),
            ("POST", "/api/v1/driver/stops/{}/proof", {"files": {"file": ("p.png", PNG)}})]:
        foreign = same_404(method, template.format(mine[0].stop_id), headers={**two, **key()}, **kw)
        nothing = same_404(method, template.format(unknown), headers={**two, **key()}, **kw)
        assert foreign["status"] == 404 and foreign == nothing, (foreign, nothing)
    assert_problem(api.post(events_url(unknown), headers={**two, **key()}, json={"type": "arrived"}), 404)
    # driver01's stop did not move, and driver02 still works on its own
    assert routes_by_van(session, day)["VAN-01"].stops[0].status == "arrived"
    assert post(api, events_url(theirs[0].stop_id), two, json={"type": "arrived"}).status_code == 200
    assert post(api, events_url(theirs[0].stop_id), one, json={"type": "arrived"}).status_code == 404
    # proofs: a driver only their own; staff any
    foreign = api.get(f"/api/v1/proofs/{proof_id}", headers=two)
    missing = api.get("/api/v1/proofs/999999", headers=two)
    assert foreign.status_code == 404 and foreign.content == missing.content
    assert api.get("/api/v1/proofs", headers=two).json() == {"items": [], "next": None}
    own = api.get(f"/api/v1/proofs/{proof_id}", headers=one)
    assert own.status_code == 200 and own.content == JPEG and own.headers["content-type"] == "image/jpeg"
    for role in ("dispatcher", "quality"):
        staff = token(role)
        got = api.get(f"/api/v1/proofs/{proof_id}", headers=staff)
        assert got.status_code == 200 and got.content == JPEG
        listed = api.get("/api/v1/proofs", params={"order_ref": mine[0].order.ref}, headers=staff).json()
        assert [p["id"] for p in listed["items"]] == [proof_id]
        # the driver routes are not theirs
        assert_problem(api.get(ROUTE, params=d, headers=staff), 403)
        assert_problem(post(api, events_url(mine[0].stop_id), staff, json={"type": "arrived"}), 403)
    assert_problem(api.get(ROUTE, params=d), 401)
    # a driver login without a driver in drivers.csv, and a driver with no route that day
    assert_problem(api.get(ROUTE, params=d, headers=token("driver", "driver99")), 403)
    none = assert_problem(api.get(ROUTE, params={"date": (day + timedelta(days=1)).isoformat()}, headers=one), 404)
    assert none["detail"] == f"you have no route on {(day + timedelta(days=1)).isoformat()}"


def test_a_replan_moves_a_stop_to_another_van_and_its_driver(driver_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    from routing.replan import breakdown

    api = driver_api
    day = build_day(session, tmp_path, depots=("FS-01",))
    before = routes_by_van(session, day)
    old = {s.order.ref: s.stop_id for s in before["VAN-01"].stops}
    kept = {s.order.ref: s.stop_id for s in before["VAN-03"].stops}
    one, three = token("driver", "driver01"), token("driver", "driver03")
    earlier = api.get(ROUTE, params={"date": day.isoformat()}, headers=three).json()  # kept by the server
    assert set(old).isdisjoint(s["order_ref"] for s in earlier["stops"])
    at = datetime.combine(day, datetime.min.time(), tzinfo=get_settings().tz).replace(hour=7, minute=40)
    out = replan(day, "FS-01", breakdown("VAN-01", at), time_limit=2, now=at, sessions=committing(session))
    moved = {m["order_ref"]: m["stop_id"] for m in out["moved"]}
    assert moved and set(moved) <= set(old), out
    unknown = api.post(events_url("s-000000000000"), headers={**one, **key()}, json={"type": "arrived"})
    for ref in moved:
        gone = api.post(events_url(old[ref]), headers={**one, **key()}, json={"type": "arrived"})
        assert gone.status_code == 404 and gone.content == unknown.content
    theirs = api.get(ROUTE, params={"date": day.isoformat()}, headers=three).json()
    seen = {s["order_ref"]: s["stop_id"] for s in theirs["stops"]}
    assert {ref: seen[ref] for ref in moved} == moved  # the new van's driver sees them, under new ids
    assert {ref: seen[ref] for ref in kept} == kept  # what stayed on VAN-03 kept its ids
    assert post(api, START, three, json={"date": day.isoformat()}).status_code == 200
    ref = next(iter(moved))
    assert post(api, events_url(moved[ref]), three, json={"type": "arrived"}).status_code == 200
    assert api.get(ROUTE, params={"date": day.isoformat()}, headers=one).json()["status"] == "broken"


# ------------------------------------------------------------------------------ idempotency


def test_idempotency_key_cases_in_one_process(driver_api, token, session, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    api = driver_api
    day = build_day(session, tmp_path, depots=("FS-01",))
    stops = [s.stop_id for s in routes_by_van(session, day)["VAN-01"].stops]
    me = token("driver", "driver01")
    # no key: 400 before anything else (no token, a body that is not JSON, a stop that does not exist)
    for headers, url, content in [({}, events_url("nope"), b"{not json"), (me, START, b"[]"),
                                  (me, events_url(stops[0]), b'{"type": "arrived"}')]:
        resp = api.post(url, headers={**headers, "Content-Type": "application/json"}, content=content)
        assert "Idempotency-Key" in assert_problem(resp, 400)["detail"]
    assert_problem(api.post(START, headers={**me, "Idempotency-Key": ""}, json={"date": day.isoformat()}), 400)
    assert count(session, IdempotencyKey) == 0 and count(session, DeliveryEvent) == 0

    k = {"Idempotency-Key": '"start-1"'}
    first = api.post(START, headers={**me, **k}, json={"date": day.isoformat()})
    assert first.status_code == 200
    marks = (count(session, DeliveryEvent), count(session, OrderEvent))
    again = api.post(START, headers={**me, **k}, content=f'{{ "date" : "{day.isoformat()}" }}',
                     )  # the same JSON spaced otherwise
    assert (again.status_code, again.content) == (200, first.content)
    assert again.headers["idempotent-replayed"] == "true" and again.headers["content-type"] == "application/json"
    assert (count(session, DeliveryEvent), count(session, OrderEvent)) == marks  # nothing happened twice
    other = api.post(START, headers={**me, **k}, json={"date": (day + timedelta(days=1)).isoformat()})
    assert "another request" in assert_problem(other, 422)["detail"]
    elsewhere = api.post(events_url(stops[0]), headers={**me, **k}, json={"date": day.isoformat()})
    assert_problem(elsewhere, 422)

    # a refusal is stored too: the retry gets the same 409 even after the state changed
    k2 = key()
    refused = api.post(events_url(stops[0]), headers={**me, **k2}, json={"type": "delivered", "recipient": "x"})
    assert_problem(refused, 409)
    assert post(api, events_url(stops[0]), me, json={"type": "arrived"}).status_code == 200
    retry = api.post(events_url(stops[0]), headers={**me, **k2}, json={"type": "delivered", "recipient": "x"})
    assert (retry.status_code, retry.content, retry.headers["idempotent-replayed"]) == (409, refused.content, "true")
    k3 = key()
    invalid = api.post(events_url(stops[0]), headers={**me, **k3}, json={"type": "failed"})
    assert_problem(invalid, 422)
    assert api.post(events_url(stops[0]), headers={**me, **k3}, json={"type": "failed"}).content == invalid.content

    # keys are the driver's own: driver03 may use the same key string for its own report
    three = token("driver", "driver03")
    theirs = api.post(START, headers={**three, **k}, json={"date": day.isoformat()})
    assert theirs.status_code == 200 and theirs.json()["vehicle"] == "VAN-03"

    # keys expire after COLDCHAIN_IDEMPOTENCY_HOURS (24 by default)
    k4 = key()
    dmg = {"type": "damaged", "items": [{"sku": "EGG-30", "qty": 1}]}
    assert api.post(events_url(stops[0]), headers={**me, **k4}, json=dmg).status_code == 200
    session.execute(update(IdempotencyKey).where(IdempotencyKey.key == k4["Idempotency-Key"])
                    .values(created_at=datetime.now(UTC) - timedelta(hours=2)))
    session.flush()
    assert api.post(events_url(stops[0]), headers={**me, **k4}, json=dmg).headers.get("idempotent-replayed")
    assert count(session, StopDamage) == 1
    monkeypatch.setenv("COLDCHAIN_IDEMPOTENCY_HOURS", "1")
    get_settings.cache_clear()
    try:
        fresh = api.post(events_url(stops[0]), headers={**me, **k4}, json=dmg)
        assert fresh.status_code == 200 and "idempotent-replayed" not in fresh.headers
        assert count(session, StopDamage) == 2  # an expired key is a new request
    finally:
        monkeypatch.delenv("COLDCHAIN_IDEMPOTENCY_HOURS")
        get_settings.cache_clear()


def test_a_crash_releases_the_key_so_a_retry_runs_again(driver_api, token, session, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    api = driver_api
    day = build_day(session, tmp_path, depots=("FS-01",))
    stop = routes_by_van(session, day)["VAN-01"].stops[0].stop_id
    me = token("driver", "driver01")
    assert post(api, START, me, json={"date": day.isoformat()}).status_code == 200
    assert post(api, events_url(stop), me, json={"type": "arrived"}).status_code == 200
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the proof folder should be")
    k = key()
    monkeypatch.setenv("COLDCHAIN_PROOF_DIR", str(blocker / "proofs"))
    get_settings.cache_clear()
    try:
        crashed = api.post(proof_url(stop), headers={**me, **k}, files={"file": ("p.png", PNG)})
        assert_problem(crashed, 500)
        assert count(session, IdempotencyKey) == 2  # start and arrived: the crashed one was released
        assert count(session, DeliveryProof) == 0
    finally:
        monkeypatch.delenv("COLDCHAIN_PROOF_DIR")
        get_settings.cache_clear()
    retried = api.post(proof_url(stop), headers={**me, **k}, files={"file": ("p.png", PNG)})
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    assert count(session, DeliveryProof) == 1


# ----------------------------------------------------------------------------------- uploads


def test_uploads_are_judged_by_their_bytes_and_bounded_while_streaming(driver_api, token, session,
                                                                       tmp_path: Path, live_app) -> None:  # noqa: ANN001
    api = driver_api
    day = build_day(session, tmp_path, depots=("FS-01",))
    stop = routes_by_van(session, day)["VAN-01"].stops[0].stop_id
    me = token("driver", "driver01")
    assert post(api, START, me, json={"date": day.isoformat()}).status_code == 200
    early = api.post(proof_url(stop), headers={**me, **key()}, files={"file": ("p.png", PNG)})
    assert assert_problem(early, 409)["stop_status"] == "planned"  # a proof comes at or after the door
    assert post(api, events_url(stop), me, json={"type": "arrived"}).status_code == 200

    disguised = api.post(proof_url(stop), headers={**me, **key()}, files={"file": ("notes.txt", PNG, "text/plain")})
    assert disguised.status_code == 201, disguised.text
    body = disguised.json()
    assert (body["content_type"], body["size"], body["sha256"]) == ("image/png", len(PNG),
                                                                     hashlib.sha256(PNG).hexdigest())
    stored = get_settings().proofs_path / body["sha256"]
    assert stored.read_bytes() == PNG
    row = session.get(DeliveryProof, body["id"])
    assert (row.sha256, row.content_type, row.size) == (body["sha256"], "image/png", len(PNG))
    text = api.post(proof_url(stop), headers={**me, **key()},
                    files={"file": ("photo.jpg", b"just some text, honestly", "image/jpeg")})
    assert assert_problem(text, 415)["title"] == "Unsupported media type"
    assert_problem(api.post(proof_url(stop), headers={**me, **key()}, data={"a": "b"}), 415)  # not multipart
    nofile = api.post(proof_url(stop), headers={**me, **key()}, files={"photo": ("p.png", PNG)})
    assert assert_problem(nofile, 422)["pointer"] == "/file"
    exactly = PNG + b"\x00" * (5 * 1024 * 1024 - len(PNG))
    assert api.post(proof_url(stop), headers={**me, **key()}, files={"file": ("big.png", exactly)}).status_code == 201
    over = api.post(proof_url(stop), headers={**me, **key()}, files={"file": ("big.png", exactly + b"\x00")})
    assert_problem(over, 413)

    # truncated: the multipart body stops before its closing boundary; nothing is stored, the key stays free
    k = key()
    boundary = "xyzBOUNDARYxyz"
    whole = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n"
             "Content-Type: image/png\r\n\r\n").encode() + PNG + f"\r\n--{boundary}--\r\n".encode()
    cut = whole[: len(whole) - len(boundary) - 10]
    ctype = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    truncated = api.post(proof_url(stop), headers={**me, **k, **ctype}, content=cut)
    assert "truncated" in assert_problem(truncated, 400)["detail"]
    proofs_before = count(session, DeliveryProof)
    assert api.post(proof_url(stop), headers={**me, **k, **ctype}, content=whole).status_code == 201
    assert count(session, DeliveryProof) == proofs_before + 1

    # 6 MB: refused on the declared size, after a few kilobytes of it were sent, without waiting for the rest
    target = urlparse(live_app.url)
    auth = me["Authorization"]
    head = (f"POST {proof_url(stop)} HTTP/1.1\r\nHost: {target.netloc}\r\nAuthorization: {auth}\r\n"
            f"Idempotency-Key: big-1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {6 * 1024 * 1024}\r\n\r\n").encode()
    assert _raw_status(target, head + whole[:4096]) == 413
    # the same without a declared size (chunked): refused once 5 MB have passed, the body never finished
    head = head.replace(f"Content-Length: {6 * 1024 * 1024}\r\n".encode(), b"Transfer-Encoding: chunked\r\n")
    head = head.replace(b"big-1", b"big-2")
    chunk = b"\x00" * (256 * 1024)
    first = whole[: whole.index(PNG) + len(PNG)]
    payload = b"%x\r\n%s\r\n" % (len(first), first) + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 22  # 5.5 MB, no end
    assert _raw_status(target, head + payload) == 413
    assert count(session, DeliveryProof) == proofs_before + 1


def _raw_status(target, data: bytes) -> int:  # noqa: ANN001
    """Send a partial request on a raw socket (never its end) and read the status line of the answer."""
    with socket.create_connection((target.hostname, target.port), timeout=20) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the server may stop reading once it has answered
        answer = b""
        while b"\r\n" not in answer:
            part = sock.recv(4096)
            if not part:
                break
            answer += part
    return int(answer.split(b" ", 2)[1])


# ------------------------------------------------------------------------------ positions


def test_position_from_the_phone(driver_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    from traceability.service import van_positions

    api = driver_api
    build_day(session, tmp_path, depots=())
    me = token("driver", "driver03")  # VAN-03 has no tracker
    now = datetime.now(UTC).replace(microsecond=0)
    resp = post(api, "/api/v1/driver/position", me, json={"at": now.isoformat(), "position": [30.661, 104.071]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["vehicle"] == "VAN-03" and resp.json()["position"] == [30.661, 104.071]
    assert van_positions(session, "FS-01", now + timedelta(minutes=1)) == {"VAN-03": (30.661, 104.071)}
    future = post(api, "/api/v1/driver/position", me, json={"at": (now + timedelta(hours=1)).isoformat(),
                                                             "position": [30.6, 104.0]})
    assert assert_problem(future, 422)["pointer"] == "/at"
    assert_problem(post(api, "/api/v1/driver/position", me, json={"position": [30.6]}), 422)


def test_openapi_declares_every_driver_answer(api) -> None:  # noqa: ANN001
    doc = api.get("/openapi.json").json()
    for path, method, model in [("/api/v1/driver/route", "get", "RouteOut"),
                                ("/api/v1/driver/route/start", "post", "RouteStartOut"),
                                ("/api/v1/driver/stops/{stop_id}/events", "post", "StopEventOut"),
                                ("/api/v1/driver/stops/{stop_id}/proof", "post", "ProofOut"),
                                ("/api/v1/driver/position", "post", "PositionOut"),
                                ("/api/v1/proofs", "get", "ProofPage")]:
        op = doc["paths"][path][method]
        ok = op["responses"]["201" if path.endswith("/proof") else "200"]
        assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/" + model), (path, ok)
        if method == "post":
            assert any(p["name"] == "Idempotency-Key" and p["required"] for p in op["parameters"]), path
    assert "phone" not in doc["components"]["schemas"]["StopOut"]["properties"]
