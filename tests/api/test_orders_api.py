"""Dispatchers place, import, allocate and cancel orders over HTTP."""

from __future__ import annotations

from pathlib import Path

from fulfillment.scenario import load_scenario
from tests import scenario_files
from tests.support import after, assert_problem

# Placed now, for a day that no cut-off moves and after the scenario file's own lots expire
LATER = after(20)
ORDER = {"order_ref": "W1", "delivery_date": str(LATER), "lat": 30.65, "lon": 104.07, "window_start": "09:00",
         "window_end": "11:00", "lines": [{"sku": "EGG-30", "qty": 2}], "customer": "周六"}


def test_place_allocate_and_cancel(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    fresh = {"stock.csv": f"FS-01,EGG-30,L-E9,50,{after(60)}\n"}  # the file's own lots expire before LATER
    load_scenario(session, scenario_files.write(tmp_path, append=fresh))
    headers = token("dispatcher")
    created = api.post("/api/v1/orders", json=ORDER, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "received" and created.json()["moved"] is None
    assert_problem(api.post("/api/v1/orders", json=ORDER, headers=headers), 409)
    done = api.post("/api/v1/allocations", json={"date": str(LATER)}, headers=headers).json()
    assert done["allocated"] == 1
    assert done["allocations"] == [{"order_ref": "W1", "node": "FS-01",
                                    "lines": [{"sku": "EGG-30", "lot": "L-E9", "qty": 2}]}]
    order = api.get("/api/v1/orders/W1", headers=headers).json()
    assert order["status"] == "allocated" and order["lines"][0]["lots"] == [{"lot": "L-E9", "node": "FS-01", "qty": 2}]
    cancelled = api.post("/api/v1/orders/W1/cancel", json={"reason": "changed mind"}, headers=headers).json()
    assert cancelled["status"] == "cancelled"
    assert_problem(api.post("/api/v1/orders/W1/cancel", json={}, headers=headers), 409)
    assert_problem(api.get("/api/v1/orders/NOPE", headers=headers), 404)


def test_bad_orders_name_the_field(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path))
    headers = token("dispatcher")
    body = assert_problem(api.post("/api/v1/orders", json={**ORDER, "lines": [{"sku": "NOPE", "qty": 1}]},
                                   headers=headers), 422)
    assert body["pointer"] == "/lines/0/sku" and "unknown sku NOPE" in body["detail"]
    body = assert_problem(api.post("/api/v1/orders", json={**ORDER, "lat": 123}, headers=headers), 422)
    assert body["errors"][0]["pointer"] == "/lat"
    body = assert_problem(api.post("/api/v1/orders", json={**ORDER, "window_end": "08:00"}, headers=headers), 422)
    assert "window_end must be after window_start" in body["detail"]
    assert_problem(api.post("/api/v1/orders", json=ORDER, headers=token("driver")), 403)


def test_late_order_moves_to_next_day_and_says_so(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path))
    yesterday = str(after(-2))
    resp = api.post("/api/v1/orders", json={**ORDER, "order_ref": "W2", "delivery_date": yesterday},
                    headers=token("dispatcher"))
    assert resp.status_code == 201
    assert "cut-off" in resp.json()["moved"] and resp.json()["delivery_date"] > yesterday


def test_csv_upload_keeps_good_rows_and_names_bad_ones(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path))
    csv = ("order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node\n"
           f"U1,{LATER},delivery,30.65,104.07,09:00,11:00,EGG-30,1,\n"
           f"U2,{LATER},delivery,30.65,104.07,09:00,11:00,EGG-30,many,\n"
           f"U3,{LATER},delivery,30.65,104.07,09:00,11:00,DUMP-1,1,\n")
    resp = api.post("/api/v1/orders/import", files={"file": ("day.csv", csv.encode(), "text/csv")},
                    headers=token("dispatcher"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["orders"] == 2
    assert [(r["file"], r["line"], r["field"]) for r in body["rejected"]] == [("day.csv", 3, "qty")]
    listed = api.get("/api/v1/orders", params={"date": str(LATER)}, headers=token("dispatcher")).json()
    assert sorted(o["order_ref"] for o in listed["items"]) == ["U1", "U3"]


def test_post_orders_takes_a_csv_upload_too(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    load_scenario(session, scenario_files.write(tmp_path))
    csv = ("order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node\n"
           f"V1,{LATER},delivery,30.65,104.07,09:00,11:00,EGG-30,1,\n"
           f"V2,{LATER},delivery,95.00,104.07,09:00,11:00,EGG-30,1,\n")
    resp = api.post("/api/v1/orders", files={"file": ("v.csv", csv.encode(), "text/csv")}, headers=token("dispatcher"))
    assert resp.status_code == 200, resp.text
    assert resp.json()["orders"] == 1 and resp.json()["rejected"][0]["field"] == "lat"
    body = assert_problem(api.post("/api/v1/orders", content=b"{nope", headers={
        **token("dispatcher"), "content-type": "application/json"}), 422)
    assert body["errors"]


def test_a_transfer_proposal_is_accepted_once_over_http(api, token, session, tmp_path) -> None:  # noqa: ANN001
    """POST /transfers/accept carries out a standing proposal once; a forged or spent one is a 409, and
    the dispatcher's day lists the proposal no more."""
    from fulfillment.service import allocate_day
    from tests.support import DAY, assert_problem, sample_city
    from traceability.flows import load_scenario

    load_scenario(session, sample_city(tmp_path / "city", DAY))
    allocate_day(session, DAY, actor="test")
    headers = token("dispatcher")
    listed = api.get("/api/v1/transfers", params={"date": DAY.isoformat()}, headers=headers).json()["transfers"]
    assert listed, "the sample city's day proposes transfers"
    first = listed[0]
    body = {"date": DAY.isoformat(), **{k: first[k] for k in ("from", "to", "sku", "lot", "qty")}}
    assert_problem(api.post("/api/v1/transfers/accept", json={**body, "qty": body["qty"] + 1000}, headers=headers),
                   409)
    assert_problem(api.post("/api/v1/transfers/accept", json=body, headers=token("quality")), 403)
    done = api.post("/api/v1/transfers/accept", json=body, headers=headers)
    assert done.status_code == 200, done.text
    assert done.json()["qty"] == body["qty"] and done.json()["from"] == body["from"]
    assert_problem(api.post("/api/v1/transfers/accept", json=body, headers=headers), 409)
    after = api.get("/api/v1/transfers", params={"date": DAY.isoformat()}, headers=headers).json()["transfers"]
    assert {(t["from"], t["to"], t["lot"]) for t in after} == {(t["from"], t["to"], t["lot"]) for t in listed[1:]}
    assert_problem(api.post("/api/v1/transfers/accept", json={**body, "qty": 0}, headers=headers), 422)
