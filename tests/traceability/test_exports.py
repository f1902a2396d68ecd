"""The exports auditors use: the FSMA 204 spreadsheet, the EPCIS 2.0 document and the PDF report.

A real day (tests/delivery/helpers.py build_day: the real allocation and OR-Tools), its stock received and
its pick lists issued (traceability.flows), the route of order A1 driven through delivery.service (route
start, stop events) so that custody is written by the code that writes it in production, and the van's
telemetry stored through telemetry.service.store_batch: its chilled compartment warms to 11 °C for a
quarter of an hour, a door opens, a 3.2 g shock hits the fragile eggs. Every date derives from the day
the test runs.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from delivery.schemas import RouteStartIn, StopEventIn
from delivery.service import driver_ref, start_route, stop_event
from telemetry.service import Fleet, Message, default_engine, store_batch
from tests.delivery.helpers import build_day, routes_by_van
from tests.support import embedded, epcis_schema_path, font_dicts, squeeze
from traceability import custody, exports, flows
from traceability.models import CustodyEvent
from warehouses.models import Vehicle

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extras: pip install '.[test]'")
pypdf = pytest.importorskip("pypdf", reason="pypdf is in the test extras: pip install '.[test]'")

EGGS = "土鸡蛋30枚"
DRIVERS = {"VAN-01": "driver01", "VAN-02": "driver02", "VAN-03": "driver03"}


@dataclass
class Day:
    day: date
    van: str
    start: datetime
    warm_from: datetime
    warm_to: datetime
    failed_ref: str | None
    now: datetime


def _samples(device: str, start: datetime, minutes: int, warm: tuple[int, int]) -> list[dict]:
    out = []
    for i in range(minutes):
        s = {"device": device, "seq": i + 1, "ts": (start + timedelta(minutes=i)).isoformat(),
             "temp_c": {"chilled": 11.0 if warm[0] <= i < warm[1] else 3.0, "frozen": -20.0}}
        if i in (50, 52):
            s["door"] = {"chilled": "open" if i == 50 else "closed"}
        if i == 60:
            s["shock_g"] = 3.2
        out.append(s)
    return out


@pytest.fixture
def driven(session: Session, tmp_path: Path) -> Day:
    day = build_day(session, tmp_path)
    routes = routes_by_van(session, day)
    first = min(r.start_at for r in routes.values())
    flows.receive_stock(session, at=first - timedelta(hours=3), actor="receiver")
    flows.issue_pick_lists(session, day, actor="picker", at=first - timedelta(hours=1))
    van, route = next((v, r) for v, r in routes.items() if any(s.order.ref == "A1" for s in r.stops))
    vehicle = session.scalar(select(Vehicle).where(Vehicle.code == van))
    if vehicle.device is None:  # VAN-03 of the delivery scenario has no logger: fit one for this test
        vehicle.device = "TL-0003"
        session.flush()
    driver = driver_ref(session, DRIVERS[van])
    start = route.start_at
    start_route(session, driver, RouteStartIn(date=day, at=start), now=start)
    minutes = 120
    fleet = Fleet()
    fleet.load(session)
    now = start + timedelta(minutes=minutes)
    store_batch(session, [Message(f"coldchain/v1/vehicles/{van}/telemetry",
                                  json.dumps(_samples(vehicle.device, start, minutes, (20, 35))).encode(), now)],
                fleet, default_engine(), now=now)
    stops = sorted(route.stops, key=lambda s: s.seq)
    failed_ref = None
    for i, stop in enumerate(stops):
        at = start + timedelta(minutes=70 + i)
        if stop.order.ref != "A1" and failed_ref is None:
            failed_ref = stop.order.ref
            body = StopEventIn(type="failed", at=at, reason="not_home", position=(30.66, 104.05))
        else:
            stop_event(session, driver, stop.stop_id, StopEventIn(type="arrived", at=at), now=at)
            at += timedelta(seconds=30)
            body = StopEventIn(type="delivered", at=at, recipient="张三", position=(stop.order.lat, stop.order.lon))
        stop_event(session, driver, stop.stop_id, body, now=at)
    session.flush()
    return Day(day, van, start, start + timedelta(minutes=20), start + timedelta(minutes=35), failed_ref,
               start + timedelta(minutes=minutes))


def read_csv(data: bytes) -> tuple[list[str], list[dict]]:
    assert data.startswith(b"\xef\xbb\xbf"), "no UTF-8 byte-order mark: Excel would read the Chinese as mojibake"
    text = data.decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return list(reader.fieldnames or []), list(reader)


# ------------------------------------------------------------------------------------------ FSMA 204


def test_the_fsma_sheet_of_an_order_has_a_row_per_cte_with_every_kde(session: Session, driven: Day) -> None:
    data, media, name = exports.export_order(session, "A1", "fsma")
    assert media.startswith("text/csv") and name == "A1-fsma204.csv"
    header, rows = read_csv(data)
    assert header == list(exports.FSMA_COLUMNS)
    ctes = [r for r in rows if r["FSMA 204 scope"].startswith("CTE")]
    # the two lots A1 holds (eggs, dumplings) were received at FS-01: one receiving CTE each, no transfer
    assert sorted((r["Critical tracking event"], r["SKU"], r["Ship-to or receiving location ID"]) for r in ctes) == [
        ("Receiving", "DUMP-1", "FS-01"), ("Receiving", "EGG-30", "FS-01")]
    for r in ctes:
        empty = [k for k in exports.FSMA_KDES if not r[k].strip()]
        assert not empty, f"{r['Critical tracking event']} {r['SKU']}: empty KDEs {empty}"
        assert r["Traceability lot code source"].startswith("春熙路旗舰店 (FS-01)")
    eggs = next(r for r in ctes if r["SKU"] == "EGG-30")
    assert EGGS in eggs["Product description"]
    assert eggs["Quantity"] == {"L-E1": "50", "L-E2": "100"}[eggs["Traceability lot code"]]  # the lot as received
    # the last mile is the business's own extension, each row saying so, every KDE still filled in
    ext = [r for r in rows if r not in ctes]
    assert sorted((r["Critical tracking event"], r["SKU"]) for r in ext) == [
        ("Delivery to the consumer", "DUMP-1"), ("Delivery to the consumer", "EGG-30"),
        ("Loading into a van", "DUMP-1"), ("Loading into a van", "EGG-30")]
    assert all(r["FSMA 204 scope"] == exports.EXTENSION for r in ext)
    assert all(r[k].strip() for r in ext for k in exports.FSMA_KDES)
    delivered = next(r for r in ext if r["Critical tracking event"] == "Delivery to the consumer")
    assert "锦江区春熙路1号" in delivered["Ship-to or receiving location"]
    assert delivered["Reference document type"].startswith("proof of delivery")
    # sortable: the date and time columns sort as text in time order
    keys = [(r["Event date"], r["Event time"]) for r in rows]
    assert keys == sorted(keys)


def test_a_lot_sheet_lists_every_order_it_went_into_with_failures_and_returns(session: Session,
                                                                             driven: Day) -> None:
    if driven.failed_ref is None:
        pytest.skip("A1's van had no other stop to fail in this plan: nothing returned to list")
    egg_lot = next(e["lot"] for e in exports._trace_for_export(session, "A1")["custody"] if e["sku"] == "EGG-30")
    header, rows = read_csv(exports.fsma_for_lot(session, egg_lot))
    assert header == list(exports.FSMA_COLUMNS)
    assert {r["Traceability lot code"] for r in rows} == {egg_lot}
    kinds = {r["Critical tracking event"] for r in rows}
    assert {"Receiving", "Loading into a van", "Delivery to the consumer"} <= kinds
    assert all(r[k].strip() for r in rows for k in exports.FSMA_KDES)
    # the period sheet of the day holds every row of the lot's, and the failed stop's order: failed aboard,
    # then returned to the depot when the route finished, both marked as the business's own rows
    _h, period = read_csv(exports.fsma_for_period(session, driven.day - timedelta(days=1), driven.day))
    assert len(period) > len(rows) and {r["Custody record"] for r in rows} <= {r["Custody record"] for r in period}
    failed = [r for r in period if r["Order"] == driven.failed_ref and r["FSMA 204 scope"] == exports.EXTENSION]
    assert {r["Critical tracking event"] for r in failed} == {"Loading into a van", "Return to a node",
                                                              "Failed delivery attempt (goods stay aboard)"}
    back = next(r for r in failed if r["Critical tracking event"] == "Return to a node")
    assert back["Ship-from location"].startswith(f"van {driven.van}") and back["Ship-to or receiving location ID"]
    assert all(r[k].strip() for r in period for k in exports.FSMA_KDES)
    _h, before = read_csv(exports.fsma_for_period(session, driven.day - timedelta(days=9),
                                                  driven.day - timedelta(days=8)))
    assert before == []


def test_a_lot_loaded_at_another_node_than_its_own_is_a_shipping_and_a_receiving_cte(session: Session,
                                                                                    driven: Day) -> None:
    custody = exports._trace_for_export(session, "A1")["custody"]
    directory = exports.directory_for(session, custody)
    egg = next(e for e in custody if e["sku"] == "EGG-30")
    rows = exports.fsma_rows(custody, directory)
    assert not [r for r in rows if r["Critical tracking event"] == "Shipping"]
    directory.lot_sources[(egg["sku"], egg["lot"])] = "HUB-01"  # as if the eggs had come from the hub
    directory.nodes["HUB-01"] = {"name": "玉林社区店", "kind": "hub", "lat": 30.63, "lon": 104.05}
    moved = [r for r in exports.fsma_rows(custody, directory) if r["FSMA 204 scope"].startswith("CTE")]
    assert [(r["Critical tracking event"], r["Ship-from location ID"], r["Ship-to or receiving location ID"])
            for r in moved] == [("Shipping", "HUB-01", "FS-01"), ("Receiving", "HUB-01", "FS-01")]
    assert all(str(r[k]).strip() for r in moved for k in exports.FSMA_KDES)
    assert "玉林社区店" in moved[0]["Traceability lot code source"]


# ------------------------------------------------------------------------------------------ EPCIS 2.0


@pytest.fixture(scope="module")
def validator():  # noqa: ANN201
    schema = json.loads(epcis_schema_path().read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def problems(validator, doc: dict) -> list[str]:  # noqa: ANN001
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_epcis_document_validates_against_gs1s_schema(session: Session, driven: Day, validator) -> None:  # noqa: ANN001
    data, media, name = exports.export_order(session, "A1", "epcis", now=driven.now)
    assert media == "application/ld+json" and name == "A1-epcis.jsonld"
    doc = json.loads(data.decode("utf-8"))
    assert problems(validator, doc) == []
    assert doc["schemaVersion"] == "2.0" and doc["type"] == "EPCISDocument"
    assert doc["@context"][0] == "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
    # the schema and its format checker do bite: each of these breaks the document
    for breaks in (lambda d: d.pop("@context"),
                   lambda d: d["epcisBody"]["eventList"][0].update(eventTimeZoneOffset="+8"),
                   lambda d: d["epcisBody"]["eventList"][0].update(eventTime="tomorrow at nine"),
                   lambda d: d["epcisBody"]["eventList"][0].update(bizStep="driving around"),
                   lambda d: d["epcisBody"]["eventList"][0].update(colour="blue")):
        bad = copy.deepcopy(doc)
        breaks(bad)
        assert problems(validator, bad), "a broken document passed the schema"


def test_the_epcis_events_are_in_time_order_with_the_loading_aggregation(session: Session, driven: Day) -> None:
    doc = json.loads(exports.export_order(session, "A1", "epcis", now=driven.now)[0])
    events = doc["epcisBody"]["eventList"]
    times = [datetime.fromisoformat(e["eventTime"]) for e in events]
    assert times == sorted(times)
    assert all(e["eventTimeZoneOffset"] == "+08:00" for e in events)
    steps = [e["bizStep"] for e in events]
    for step in ("receiving", "picking", "loading", "departing", "transporting", "retail_selling", "unloading"):
        assert step in steps, f"no {step} event"
    assert steps.index("receiving") < steps.index("picking") < steps.index("loading") < steps.index("retail_selling")
    loads = [e for e in events if e["type"] == "AggregationEvent" and e["action"] == "ADD"]
    parents = {e["parentID"] for e in loads}
    assert parents == {f"{exports.ID_BASE}vehicle/{driven.van}/compartment/chilled",
                       f"{exports.ID_BASE}vehicle/{driven.van}/compartment/frozen"}
    children = {q["epcClass"].split("/lot/")[1].split("/")[0]: q["quantity"] for e in loads
                for q in e["childQuantityList"]}
    assert children == {"EGG-30": 2, "DUMP-1": 1}
    assert all(e["bizStep"] == "loading" and e["disposition"] == "in_transit" for e in loads)


def test_each_leg_reports_min_max_mean_and_an_alarm_for_the_excursion(session: Session, driven: Day) -> None:
    doc = json.loads(exports.export_order(session, "A1", "epcis", now=driven.now)[0])
    legs = {e["readPoint"]["id"].rsplit("/", 1)[1]: e for e in doc["epcisBody"]["eventList"]
            if e.get("bizStep") == "transporting"}
    assert set(legs) == {"chilled", "frozen"}
    chilled = legs["chilled"]["sensorElementList"][0]
    meta, summary = chilled["sensorMetadata"], chilled["sensorReport"][0]
    assert meta["deviceID"].endswith("/device/" + session.scalar(select(Vehicle.device)
                                                                 .where(Vehicle.code == driven.van)))
    assert f"/api/v1/telemetry/vehicles/{driven.van}/readings?from=" in meta["rawData"] and "&to=" in meta["rawData"]
    assert datetime.fromisoformat(meta["startTime"]) == driven.start
    assert summary["type"] == "gs1:Temperature" and summary["uom"] == "CEL"
    assert (summary["minValue"], summary["maxValue"]) == (3.0, 11.0)
    assert 3.0 < summary["meanValue"] < 11.0
    assert summary["exception"] == "ALARM_CONDITION"
    (alarm,) = chilled["sensorReport"][1:]
    assert alarm["exception"] == "ALARM_CONDITION" and alarm["value"] == 11.0
    assert datetime.fromisoformat(alarm["time"]) == driven.warm_from
    assert "15 min above 8 °C" in alarm["stringValue"]
    frozen = legs["frozen"]["sensorElementList"][0]["sensorReport"]
    assert len(frozen) == 1 and "exception" not in frozen[0] and frozen[0]["maxValue"] == -20.0
    assert not any("readings" in json.dumps(e) and '"value": 3.0' in json.dumps(e) for e in legs.values())


def test_the_excursion_runs_are_those_outside_the_band() -> None:
    t0 = datetime.fromisoformat("2030-01-01T08:00:00+08:00")
    readings = [(t0 + timedelta(minutes=i), v) for i, v in enumerate([3, 9, 10, 4, -1, 2, 9])]
    runs = exports.excursions(readings, (0.0, 8.0), end=t0 + timedelta(minutes=10))
    assert [(r["side"], r["minutes"], r["peak"]) for r in runs] == [
        ("above", 2.0, 10), ("below", 1.0, -1), ("above", 4.0, 9)]
    assert exports.excursions(readings, (None, None)) == []


# ------------------------------------------------------------------------------------------ PDF


def test_the_pdf_report_names_the_product_and_the_risk_reasons_in_embedded_fonts(session: Session, driven: Day,
                                                                                 tmp_path: Path) -> None:
    data, media, name = exports.export_order(session, "A1", "pdf", now=driven.now)
    assert media == "application/pdf" and name == "A1-trace.pdf" and data.startswith(b"%PDF-")
    path = tmp_path / name
    path.write_bytes(data)
    reader = pypdf.PdfReader(str(path))
    text = squeeze("\n".join(p.extract_text() or "" for p in reader.pages))
    assert EGGS in text and "龙抄手" in text and "交接记录" in text
    trace = exports._trace_for_export(session, "A1", now=driven.now)
    assert trace["spoilage_risk"]["level"] != "ok" and trace["breakage_risk"]["level"] != "ok"
    for reason in trace["spoilage_risk"]["reasons"] + trace["breakage_risk"]["reasons"]:
        assert squeeze(reason) in text, f"risk reason missing from the PDF: {reason}"
    assert any("above 8 °C" in r for r in trace["spoilage_risk"]["reasons"])
    fonts = font_dicts(reader)
    assert fonts and all(embedded(f) for f in fonts), [str(f.get("/BaseFont")) for f in fonts]
    assert sum(len(p.images) for p in reader.pages) == 2  # one chart per leg (chilled, frozen)
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "70", "-f", "1", "-l", "1", str(path), str(tmp_path / "page")],
                       check=True, timeout=60)
        assert list(tmp_path.glob("page*.png"))


def test_the_chart_draws_chinese_in_the_embedded_face(tmp_path: Path) -> None:
    from matplotlib import font_manager

    from core import pdf

    family = exports.chart_font()
    found = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    assert Path(found).resolve() == pdf.font_path().resolve()
    t0 = datetime.fromisoformat("2030-01-01T08:00:00+08:00")
    leg = {"vehicle": "VAN-01", "compartment": "chilled", "from": t0.isoformat(),
           "to": (t0 + timedelta(hours=1)).isoformat(), "lines": [{"sku": "EGG-30", "lot": "L-E1", "qty": 2}],
           "readings": [{"ts": (t0 + timedelta(minutes=i)).isoformat(), "kind": "temperature",
                         "value": 10.0 if 20 <= i < 30 else 4.0} for i in range(60)],
           "door_openings": [{"opened": (t0 + timedelta(minutes=40)).isoformat()}],
           "shocks": [{"ts": (t0 + timedelta(minutes=45)).isoformat(), "value": 3.0}]}
    d = exports.Directory(products={"EGG-30": {"name": EGGS, "min_c": 0.0, "max_c": 8.0}})
    png = exports.leg_chart_png(leg, d)
    assert png.startswith(b"\x89PNG")
    (tmp_path / "chart.png").write_bytes(png)


# ------------------------------------------------------------------------------------------ CLI and errors


def test_unknown_orders_and_formats_are_clear_errors(session: Session) -> None:
    from core.errors import Invalid, NotFound

    with pytest.raises(NotFound, match="NO-SUCH"):
        exports.export_order(session, "NO-SUCH", "fsma")
    with pytest.raises(Invalid, match="format must be one of fsma, epcis, pdf"):
        exports.export_order(session, "A1", "xlsx")
    with pytest.raises(Invalid, match="ends .* before it starts"):
        exports.fsma_for_period(session, date(2030, 1, 2), date(2030, 1, 1))


def test_the_cli_writes_a_lot_sheet_and_refuses_a_wrong_combination(databases, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.support import DAY, write
    from tests.support import coldchain_in_process as cli  # the command's exit codes and messages, in this process

    env = {"COLDCHAIN_DATABASE_URL": databases.new("trace_cli"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    folder = write(tmp_path / "scen")
    load = cli(env, "scenario", "load", str(folder))
    assert load.returncode == 0, load.stdout + load.stderr
    out = tmp_path / "lot.csv"
    run = cli(env, "trace", "export", "--lot", "L-E1", "--format", "fsma", "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    header, rows = read_csv(out.read_bytes())
    assert header == list(exports.FSMA_COLUMNS)
    assert [(r["Critical tracking event"], r["Traceability lot code"], r["Quantity"]) for r in rows] == [
        ("Receiving", "L-E1", "50")]
    assert EGGS in rows[0]["Product description"]
    order = cli(env, "trace", "export", "A1", "--format", "epcis", "--out", str(tmp_path / "a1.jsonld"))
    assert order.returncode == 0, order.stderr
    assert json.loads((tmp_path / "a1.jsonld").read_text(encoding="utf-8"))["schemaVersion"] == "2.0"
    lot_pdf = cli(env, "trace", "export", "--lot", "L-E1", "--format", "pdf", "--out", str(tmp_path / "lot.pdf"))
    assert lot_pdf.returncode == 0, lot_pdf.stderr
    assert "批次追溯报告" in squeeze(pypdf.PdfReader(str(tmp_path / "lot.pdf")).pages[0].extract_text())
    days = ["--from", (DAY - timedelta(days=1)).isoformat(), "--to", DAY.isoformat()]
    period = cli(env, "trace", "export", *days, "--format", "epcis", "--out", str(tmp_path / "period.jsonld"))
    assert period.returncode == 0, period.stderr
    events = json.loads((tmp_path / "period.jsonld").read_text(encoding="utf-8"))["epcisBody"]["eventList"]
    assert {e["bizStep"] for e in events} == {"receiving"}  # the scenario's stock, received today
    wrong = cli(env, "trace", "export", *days, "--format", "pdf", cwd=tmp_path)
    assert wrong.returncode == 2 and "for a period" in wrong.stderr
    backwards = cli(env, "trace", "export", "--from", DAY.isoformat(), "--to", (DAY - timedelta(days=3)).isoformat(),
                    cwd=tmp_path)
    assert backwards.returncode == 2 and "before it starts" in backwards.stderr
    missing = cli(env, "trace", "export", "NO-SUCH", "--format", "pdf", cwd=tmp_path)
    assert missing.returncode == 1 and "NO-SUCH" in missing.stderr


def test_a_failed_order_comes_off_the_van_in_its_epcis_document(session: Session, driven: Day, validator) -> None:  # noqa: ANN001
    if driven.failed_ref is None:
        pytest.skip("A1's van had no other stop to fail in this plan")
    doc = json.loads(exports.export_order(session, driven.failed_ref, "epcis", now=driven.now)[0])
    assert problems(validator, doc) == []
    events = doc["epcisBody"]["eventList"]
    assert [e["bizStep"] for e in events if e["type"] == "ObjectEvent" and e["bizStep"] == "arriving"]
    (off,) = [e for e in events if e["type"] == "AggregationEvent" and e["action"] == "DELETE"]
    assert off["parentID"] == f"{exports.ID_BASE}vehicle/{driven.van}/compartment/chilled"
    assert off["disposition"] == "returned" and off["bizStep"] == "unloading"
    assert not [e for e in events if e.get("bizStep") == "retail_selling"]


# ------------------------------------------------------------------------------------------ per lot, per period


def _egg_lot(session: Session) -> str:
    return next(e["lot"] for e in exports._trace_for_export(session, "A1")["custody"] if e["sku"] == "EGG-30")


def test_a_lots_epcis_names_each_order_and_reports_the_legs_it_rode(session: Session, driven: Day,
                                                                      validator) -> None:  # noqa: ANN001
    lot = _egg_lot(session)
    data, media, name = exports.export_lot(session, lot, "epcis", now=driven.now)
    assert media == "application/ld+json" and name == f"lot-{lot}-epcis.jsonld"
    doc = json.loads(data.decode("utf-8"))
    assert problems(validator, doc) == []
    events = doc["epcisBody"]["eventList"]
    classes = {q["epcClass"] for e in events for q in e.get("quantityList", []) + e.get("childQuantityList", [])}
    assert classes == {f"{exports.ID_BASE}lot/EGG-30/{lot}"}  # the lot only, not A1's dumplings
    orders = {t["bizTransaction"].rsplit("/", 1)[1] for e in events for t in e.get("bizTransactionList", [])}
    went = {o["order_ref"] for o in exports.lot_bundle(session, lot, now=driven.now)["orders"]}
    assert "A1" in orders and orders == went
    legs = [e for e in events if e.get("bizStep") == "transporting"]
    assert legs and all(e["readPoint"]["id"].endswith("/compartment/chilled") for e in legs)
    warm = [r for e in legs for r in e["sensorElementList"][0]["sensorReport"]
            if r.get("exception") == "ALARM_CONDITION"]
    assert warm and max(r.get("maxValue", r.get("value")) for r in warm) == 11.0
    assert [datetime.fromisoformat(e["eventTime"]) for e in events] == sorted(
        datetime.fromisoformat(e["eventTime"]) for e in events)
    with pytest.raises(exports.NotFound):
        exports.export_lot(session, "NO-SUCH-LOT", "epcis")


def test_a_lots_pdf_report_is_a_recall_list_with_the_rest_of_the_lot_risk_and_a_chart_per_leg(
        session: Session, driven: Day, tmp_path: Path) -> None:
    lot = _egg_lot(session)
    data, media, name = exports.export_lot(session, lot, "pdf", now=driven.now)
    assert media == "application/pdf" and name == f"lot-{lot}-trace.pdf" and data.startswith(b"%PDF-")
    path = tmp_path / name
    path.write_bytes(data)
    reader = pypdf.PdfReader(str(path))
    text = squeeze("\n".join(p.extract_text() or "" for p in reader.pages))
    bundle = exports.lot_bundle(session, lot, now=driven.now)
    assert "批次追溯报告" in text and "召回名单" in text and "其余去向" in text and EGGS in text
    for o in bundle["orders"]:  # every order and customer it went into, with the phone to call
        assert squeeze(o["order_ref"]) in text
        if o.get("customer"):
            assert squeeze(o["customer"]) in text and squeeze(o["phone"] or "") in text
    for r in bundle["remainder"]["on_hand"]:
        assert r["node"] in text
    a1 = next(r for r in bundle["risks"] if r["order_ref"] == "A1")
    assert a1["spoilage_risk"]["level"] != "ok"
    assert all(reason.startswith("EGG-30") for reason in a1["spoilage_risk"]["reasons"])  # the lot's product
    for reason in a1["spoilage_risk"]["reasons"]:
        assert squeeze(reason) in text, f"risk reason missing from the lot's PDF: {reason}"
    assert sum(len(p.images) for p in reader.pages) == len(bundle["legs"]) >= 1
    fonts = font_dicts(reader)
    assert fonts and all(embedded(f) for f in fonts), [str(f.get("/BaseFont")) for f in fonts]
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "60", str(path), str(tmp_path / "lotpage")], check=True, timeout=60)
        assert len(list(tmp_path.glob("lotpage*.png"))) == len(reader.pages)


def test_a_period_streams_in_batches_and_says_the_same_as_in_one_piece(session: Session, driven: Day,
                                                                        validator) -> None:  # noqa: ANN001
    first, last = driven.day - timedelta(days=1), driven.day
    whole = b"".join(exports.period_chunks(session, first, last, "fsma"))
    pieces = list(exports.period_chunks(session, first, last, "fsma", batch=3))
    header, rows = read_csv(whole)
    assert header == list(exports.FSMA_COLUMNS) and len(rows) > 6
    assert len(pieces) > len(rows) // 3  # read and written three custody rows at a time, not whole
    assert b"".join(pieces) == whole  # no transfer listed twice, nothing lost at a batch's edge
    assert {r["Order"] for r in rows if r["Order"]} >= {"A1"}

    doc = json.loads(b"".join(exports.period_chunks(session, first, last, "epcis", batch=3)).decode("utf-8"))
    assert problems(validator, doc) == []
    events = doc["epcisBody"]["eventList"]
    records = {e["cc:custodyRecord"] for e in events if "cc:custodyRecord" in e}
    start, end = exports.period_bounds(first, last)
    ids = session.scalars(select(CustodyEvent.id).where(CustodyEvent.at >= start, CustodyEvent.at < end)).all()
    assert records == {f"{exports.ID_BASE}custody/{i}" for i in ids}  # every custody row (picking too), once
    assert {f"{exports.ID_BASE}custody/{r['Custody record']}" for r in rows} <= records
    one_piece = json.loads(b"".join(exports.period_chunks(session, first, last, "epcis")).decode("utf-8"))
    legs = {(e["readPoint"]["id"], e["sensorElementList"][0]["sensorMetadata"]["startTime"])
            for e in events if e.get("bizStep") == "transporting"}
    legs_whole = {(e["readPoint"]["id"], e["sensorElementList"][0]["sensorMetadata"]["startTime"])
                  for e in one_piece["epcisBody"]["eventList"] if e.get("bizStep") == "transporting"}
    assert legs and legs == legs_whole  # a leg whose loading is in an earlier batch is still reported
    alarm = [r for e in events if e.get("bizStep") == "transporting" and e["readPoint"]["id"].endswith("chilled")
             for r in e["sensorElementList"][0]["sensorReport"] if r.get("exception") == "ALARM_CONDITION"]
    assert alarm

    # a period that holds only the deliveries still reports their legs, loaded before it began
    ends = session.scalars(select(CustodyEvent).where(CustodyEvent.type == "delivered",
                                                      CustodyEvent.at >= start).order_by(CustodyEvent.id)).all()
    found = exports._PeriodLegs(session).batch(ends, custody.event_views(session, ends))
    assert found and all(leg["readings"] and leg["from"] < leg["to"] for leg in found)
    assert {leg["vehicle"] for leg in found} >= {driven.van}
    empty = json.loads(b"".join(exports.period_chunks(session, driven.day + timedelta(days=5),
                                                      driven.day + timedelta(days=6), "epcis")))
    assert problems(validator, empty) == [] and empty["epcisBody"]["eventList"] == []
    with pytest.raises(exports.Invalid):
        b"".join(exports.period_chunks(session, last, first, "fsma"))
    with pytest.raises(exports.Invalid):
        b"".join(exports.period_chunks(session, first, first + timedelta(days=400), "fsma"))
    with pytest.raises(exports.Invalid):
        b"".join(exports.period_chunks(session, first, last, "pdf"))
