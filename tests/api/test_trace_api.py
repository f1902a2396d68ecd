"""The trace, at-risk and hold routes over real HTTP (uvicorn), as quality staff and as the roles they are
not for; held stock on the dispatcher's plan and the van's watch; check on delivery on the driver's route."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from fulfillment.models import Order, OrderLine, Reservation
from tests.delivery.helpers import keep_keys_in
from tests.support import assert_problem
from tests.traceability.helpers import VAN, drive_day
from warehouses.models import StockLot


@pytest.fixture
def trace_api(api, session, live_app):  # noqa: ANN001, ANN201
    keep_keys_in(session, live_app)
    return api


def _lot_of(session, ref: str) -> str:  # noqa: ANN001
    return session.scalars(select(StockLot.lot).join(Reservation, Reservation.lot_id == StockLot.id)
                           .join(OrderLine, OrderLine.id == Reservation.line_id).join(Order)
                           .where(Order.ref == ref, StockLot.lot.like("L-E%"))).first()


def test_trace_routes_for_quality_staff(trace_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    api = trace_api
    d = drive_day(session, tmp_path)
    qa = token("quality")
    ref = d.refs[-1]
    got = api.get(f"/api/v1/trace/orders/{ref}", headers=qa)
    assert got.status_code == 200, got.text
    trace = got.json()
    assert trace["order_ref"] == ref and {"custody", "legs", "spoilage_risk", "breakage_risk"} <= set(trace)
    chilled = [leg for leg in trace["legs"] if leg["compartment"] == "chilled"]
    assert len(chilled) == 1 and chilled[0]["vehicle"] == VAN and "from" in chilled[0]
    assert {r["compartment"] for r in chilled[0]["readings"]} == {"chilled"}
    assert trace["spoilage_risk"]["level"] in ("at_risk", "reject")
    assert any("30 min above 8 °C" in r for r in trace["spoilage_risk"]["reasons"])
    assert {e["type"] for e in trace["custody"]} >= {"loaded", "delivered"}

    lot = _lot_of(session, ref)
    lot_got = api.get(f"/api/v1/trace/lots/{lot}", headers=qa)
    assert lot_got.status_code == 200, lot_got.text
    assert ref in {o["order_ref"] for o in lot_got.json()["orders"]}
    assert lot_got.json()["remainder"]["totals"]["delivered"] > 0

    risky = api.get("/api/v1/trace/at-risk", params={"date": d.day.isoformat()}, headers=qa)
    assert risky.status_code == 200, risky.text
    refs = {i["order_ref"] for i in risky.json()["items"]}
    assert ref in refs and d.damaged_ref in refs and d.refs[0] not in refs and risky.json()["next"] is None
    first = api.get("/api/v1/trace/at-risk", params={"date": d.day.isoformat(), "limit": 1}, headers=qa).json()
    assert len(first["items"]) == 1 and first["next"]
    rest = api.get(first["next"], headers=qa).json()
    assert rest["items"] and rest["items"][0]["order_ref"] != first["items"][0]["order_ref"]

    assert_problem(api.get("/api/v1/trace/orders/NO-SUCH", headers=qa), 404)
    assert_problem(api.get("/api/v1/trace/lots/NO-SUCH", headers=qa), 404)
    assert_problem(api.get("/api/v1/trace/at-risk", params={"date": "tomorrow"}, headers=qa), 422)
    assert api.get(f"/api/v1/trace/orders/{ref}", headers=token("admin")).status_code == 200
    for role in ("driver", "dispatcher"):
        who = token(role)
        for url in (f"/api/v1/trace/orders/{ref}", f"/api/v1/trace/lots/{lot}",
                    f"/api/v1/trace/at-risk?date={d.day.isoformat()}"):
            assert_problem(api.get(url, headers=who), 403)
        assert_problem(api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "x"}, headers=who), 403)
    assert_problem(api.get(f"/api/v1/trace/orders/{ref}"), 401)

    # the driver sees "check on delivery" on the risky stops of the route
    route = api.get("/api/v1/driver/route", params={"date": d.day.isoformat()}, headers=token("driver", "driver01"))
    assert route.status_code == 200, route.text
    checks = {s["order_ref"]: s["check"] for s in route.json()["stops"]}
    assert checks[ref]["level"] in ("at_risk", "reject") and checks[ref]["reasons"]
    assert checks[d.refs[0]] is None


def test_holds_over_http_flag_the_plan_and_the_watch(trace_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.delivery.helpers import build_day, routes_by_van

    api = trace_api
    day = build_day(session, tmp_path)
    van01 = [s.order.ref for s in routes_by_van(session, day)[VAN].stops]
    lot = _lot_of(session, van01[0])
    qa = token("quality")
    dispatcher = token("dispatcher")
    plan = api.get("/api/v1/plans", params={"date": day.isoformat()}, headers=dispatcher).json()
    assert plan["held"] == []
    assert api.get(f"/api/v1/telemetry/vehicles/{VAN}/watch", headers=dispatcher).json()["held_lots"] == []

    held = api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "蛋壳污染"}, headers=qa)
    assert held.status_code == 201, held.text
    assert (held.json()["lot"], held.json()["active"], held.json()["reason"]) == (lot, True, "蛋壳污染")
    assert_problem(api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "again"}, headers=qa), 409)
    assert_problem(api.post("/api/v1/trace/lots/NO-SUCH/hold", json={"reason": "x"}, headers=qa), 404)
    assert_problem(api.post(f"/api/v1/trace/lots/{lot}/hold", json={"reason": "  "}, headers=qa), 422)
    listed = api.get("/api/v1/holds", headers=dispatcher)
    assert listed.status_code == 200 and [h["lot"] for h in listed.json()["items"]] == [lot]

    plan = api.get("/api/v1/plans", params={"date": day.isoformat()}, headers=dispatcher).json()
    assert plan["held"] and {h["lot"] for h in plan["held"]} == {lot}
    stop_ids = {s["stop_id"] for r in plan["routes"] for s in r["stops"]}
    assert {h["stop_id"] for h in plan["held"]} <= stop_ids
    watch = api.get(f"/api/v1/telemetry/vehicles/{VAN}/watch", headers=dispatcher).json()
    assert watch["held_lots"] and {h["vehicle"] for h in watch["held_lots"]} == {VAN}
    assert {h["order_ref"] for h in watch["held_lots"]} <= set(van01)

    released = api.post(f"/api/v1/trace/lots/{lot}/release", json={"reason": "复检合格"}, headers=qa)
    assert released.status_code == 200, released.text
    assert released.json()["active"] is False and released.json()["release_reason"] == "复检合格"
    assert_problem(api.post(f"/api/v1/trace/lots/{lot}/release", json={"reason": "again"}, headers=qa), 409)
    assert api.get("/api/v1/holds", headers=qa).json()["items"] == []
    assert api.get("/api/v1/plans", params={"date": day.isoformat()}, headers=dispatcher).json()["held"] == []
    assert_problem(api.get("/api/v1/holds", headers=token("driver")), 403)


def test_issue_11_done_when_a_warm_compartment_shows_in_the_trace_and_the_three_exports_open(
        trace_api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    """Issue 11's "done when", over real HTTP on a day derived from the day the tests run: VAN-01's chilled
    compartment warmed to 9 °C for 30 minutes before its last stop. (An altered audit record named by
    ``coldchain audit verify`` is tests/core/test_audit.py's test_an_altered_field_is_named.)"""
    import csv
    import io
    import json
    import shutil
    import subprocess
    from datetime import datetime

    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extras")
    pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extras")
    from tests.support import embedded, epcis_schema_path, font_dicts, squeeze
    from tests.traceability.helpers import WARM_C
    from traceability.exports import FSMA_COLUMNS

    api = trace_api
    d = drive_day(session, tmp_path)
    qa = token("quality")
    ref = d.refs[-1]
    trace = api.get(f"/api/v1/trace/orders/{ref}", headers=qa).json()
    (leg,) = [g for g in trace["legs"] if g["compartment"] == "chilled"]
    warm = [r for r in leg["readings"] if r["value"] == WARM_C]
    assert len(warm) == 30  # one a minute over the warm half hour, each with its time inside the interval
    assert all(d.warm_from <= datetime.fromisoformat(r["ts"]) < d.warm_to for r in warm)
    assert leg["summary"]["max_c"] == WARM_C
    assert trace["spoilage_risk"]["level"] in ("at_risk", "reject")
    assert any("30 min above 8 °C" in r and "VAN-01" in r for r in trace["spoilage_risk"]["reasons"])

    schema = json.loads(epcis_schema_path().read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    lot = _lot_of(session, ref)
    day = d.day.isoformat()
    for base in (f"/api/v1/trace/orders/{ref}/export", f"/api/v1/trace/lots/{lot}/export"):
        sheet = api.get(base, params={"format": "fsma"}, headers=qa)
        assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/csv")
        reader = csv.DictReader(io.StringIO(sheet.content.decode("utf-8-sig"), newline=""))
        rows = list(reader)
        assert reader.fieldnames == list(FSMA_COLUMNS) and rows
        assert {"Loading into a van", "Delivery to the consumer"} <= {r["Critical tracking event"] for r in rows}
        doc = api.get(base, params={"format": "epcis"}, headers=qa)
        assert doc.status_code == 200 and doc.headers["content-type"].startswith("application/ld+json")
        assert [e.message for e in validator.iter_errors(doc.json())] == []
        alarms = [r for e in doc.json()["epcisBody"]["eventList"] if e.get("bizStep") == "transporting"
                  for r in e["sensorElementList"][0]["sensorReport"] if r.get("exception") == "ALARM_CONDITION"]
        assert alarms, f"{base}: no alarm for the warm half hour"
        pdf = api.get(base, params={"format": "pdf"}, headers=qa)
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
        path = tmp_path / ("order.pdf" if "orders" in base else "lot.pdf")
        path.write_bytes(pdf.content)
        reader_pdf = pypdf.PdfReader(str(path))
        text = squeeze("".join(p.extract_text() or "" for p in reader_pdf.pages))
        assert "交接记录" in text and "超温" in text and ("召回名单" in text) == ("lots" in base)
        assert all(embedded(f) for f in font_dicts(reader_pdf))
        if shutil.which("pdftoppm"):
            subprocess.run(["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(path), str(path.with_suffix(""))],
                           check=True, timeout=60)
            assert list(tmp_path.glob(f"{path.stem}*.png"))

    # the period: every custody row of the day, streamed
    sheet = api.get("/api/v1/trace/export", params={"from": day, "to": day, "format": "fsma"}, headers=qa)
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(sheet.content.decode("utf-8-sig"), newline="")))
    assert set(d.refs) <= {r["Order"] for r in rows}
    doc = api.get("/api/v1/trace/export", params={"from": day, "to": day, "format": "epcis"}, headers=qa)
    assert doc.status_code == 200 and [e.message for e in validator.iter_errors(doc.json())] == []
    with api.stream("GET", "/api/v1/trace/export", params={"from": day, "to": day, "format": "epcis"},
                    headers=qa) as streamed:
        assert streamed.headers.get("content-length") is None  # sent as it is read, not sized up front
        got = json.loads(b"".join(streamed.iter_bytes()))
    assert got["epcisBody"] == doc.json()["epcisBody"]

    assert_problem(api.get("/api/v1/trace/export", params={"from": day, "to": "2000-01-01", "format": "fsma"},
                           headers=qa), 422)
    assert_problem(api.get("/api/v1/trace/export", params={"from": day, "to": day, "format": "pdf"}, headers=qa), 422)
    assert_problem(api.get("/api/v1/trace/lots/NO-SUCH/export", params={"format": "pdf"}, headers=qa), 404)
    assert_problem(api.get("/api/v1/trace/at-risk", params={"date": day, "after": "x"}, headers=qa), 422)
    for role in ("driver", "dispatcher"):
        who = token(role)
        assert_problem(api.get(f"/api/v1/trace/lots/{lot}/export", params={"format": "fsma"}, headers=who), 403)
        assert_problem(api.get("/api/v1/trace/export", params={"from": day, "to": day, "format": "fsma"},
                               headers=who), 403)
    assert api.get(f"/api/v1/trace/lots/{lot}/export", params={"format": "fsma"}, headers=token("admin")).is_success
