"""Orders files in the shape shops and ERPs export them: one row per order line, the order's own
columns filled only on its first row (issue 9, item 6). The one parsing path serves
`coldchain scenario load`, `coldchain orders import` and the API's CSV upload; each is tried."""

from __future__ import annotations

from datetime import date, time, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import make_engine
from core.timeutil import local_today
from fulfillment.models import Order
from fulfillment.scenario import load_scenario
from tests.support import coldchain_in_process

from .test_rerun import NODES, PRODUCTS_CSV, VEHICLES

HEADER = ("order_ref,delivery_date,mode,lat,lon,window_start,window_end,sku,qty,pickup_node,customer,phone,"
          "address,allow_split,note\n")
FIRST_ROW_RULE = "the order's own columns go on its first row (later rows may leave them empty)"


def _day() -> date:
    """A delivery day no cut-off moves (imports are orders placed now)."""
    return local_today() + timedelta(days=2)


def _network(folder: Path, orders: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    expires = _day() + timedelta(days=10)
    files = {
        "nodes.csv": NODES, "products.csv": PRODUCTS_CSV, "vehicles.csv": VEHICLES,
        "drivers.csv": "username,name,vehicle\ndriver01,王师傅,VAN-01\n",
        "stock.csv": f"node,sku,lot,qty,expires\nFS-01,MILK-1L,L-M1,20,{expires}\n",
    }
    if orders is not None:
        files["orders.csv"] = orders
    for name, body in files.items():
        (folder / name).write_text(body, encoding="utf-8")
    return folder


def exported(day: date) -> str:
    """Three orders as an ERP exports them: the order's columns on its first row only."""
    return HEADER + (
        f"E1,{day},delivery,30.651,104.071,09:00,11:00,MILK-1L,2,,张三,13800000001,锦江区春熙路1号,1,放门口\n"
        "E1,,,,,,,EGG-1,6,,,,,,\n"
        "E1,,,,,,,YOG-1,1,,,,,,\n"
        f"E2,{day},pickup,30.630,104.050,16:00,18:00,YOG-1,3,HUB-01,李四,13800000002,,,\n"
        "E2,,,,,,,MILK-1L,1,,,,,,\n"
        f"E3,{day},delivery,30.660,104.060,10:00,12:00,EGG-1,1,,王五,,,0,\n"
        # a later row may also repeat a column, in its own spelling
        "E3,,,30.6600,,,,MILK-1L,4,,王五,,,,\n"
    )


def expected(day: date) -> dict:
    return {
        "E1": (day, "delivery", 30.651, 104.071, time(9), time(11), None, "张三", "13800000001", "锦江区春熙路1号",
               True, "放门口", [("MILK-1L", 2), ("EGG-1", 6), ("YOG-1", 1)]),
        "E2": (day, "pickup", 30.630, 104.050, time(16), time(18), "HUB-01", "李四", "13800000002", None, False, None,
               [("YOG-1", 3), ("MILK-1L", 1)]),
        "E3": (day, "delivery", 30.660, 104.060, time(10), time(12), None, "王五", None, None, False, None,
               [("EGG-1", 1), ("MILK-1L", 4)]),
    }


def stored(session: Session) -> dict:
    out = {}
    for o in session.scalars(select(Order).order_by(Order.ref)):
        out[o.ref] = (o.delivery_date, o.mode, o.lat, o.lon, o.window_start, o.window_end,
                      o.pickup_node.code if o.pickup_node else None, o.customer, o.phone, o.address, o.allow_split,
                      o.note, [(ln.product.sku, ln.qty) for ln in sorted(o.lines, key=lambda ln: ln.line_no)])
    return out


# ------------------------------------------------------------------------------ files that load


def test_scenario_orders_with_the_order_columns_on_the_first_row_only_load(session, tmp_path: Path) -> None:  # noqa: ANN001
    day = _day()
    report = load_scenario(session, _network(tmp_path / "scen", exported(day)))
    assert [str(e) for e in report.errors] == []
    assert report.file("orders.csv").inserted == 7
    assert stored(session) == expected(day)
    # the same file again changes nothing
    again = load_scenario(session, tmp_path / "scen")
    assert again.ok and again.file("orders.csv").unchanged == 7


def test_an_upload_in_the_export_shape_loads(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    day = _day()
    assert load_scenario(session, _network(tmp_path / "net")).ok
    resp = api.post("/api/v1/orders", files={"file": ("erp.csv", exported(day).encode(), "text/csv")},
                    headers=token("dispatcher"))
    assert resp.status_code == 200, resp.text
    assert (resp.json()["orders"], resp.json()["rejected"]) == (3, [])
    session.expire_all()
    assert stored(session) == expected(day)


def test_orders_import_takes_the_export_shape(databases, tmp_path: Path) -> None:  # noqa: ANN001
    day = _day()
    env = {"COLDCHAIN_DATABASE_URL": databases.new("shapes"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    (tmp_path / "erp.csv").write_text(exported(day), encoding="utf-8")
    net = _network(tmp_path / "net")
    for args in (["scenario", "load", str(net)], ["orders", "import", str(tmp_path / "erp.csv")]):
        run = coldchain_in_process(env, *args)  # the command's exit code and output, in this process
        assert (run.returncode, run.stdout) == (0, ""), run.stderr
    engine = make_engine(env["COLDCHAIN_DATABASE_URL"])
    try:
        with Session(engine) as s:
            assert stored(s) == expected(day)
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ files that do not


def contradicting(day: date) -> str:
    return HEADER + (
        f"C1,{day},delivery,30.651,104.071,09:00,11:00,MILK-1L,1,,张三,13800000001,,,\n"  # 2
        "C1,,,,,10:00,,EGG-1,1,,,,,,\n"  # 3: another window
        "C1,,,,,,,YOG-1,1,,,13900000000,,,\n"  # 4: another phone
        f"C2,{day},delivery,30.651,104.071,09:00,11:00,MILK-1L,1,,,,,,\n"  # 5
        f"C2,{day + timedelta(days=1)},,,,,,EGG-1,1,,,,,,\n"  # 6: another date
        f"C3,{day},delivery,30.651,104.071,09:00,11:00,YOG-1,1,,,,,,\n"  # 7
        "C3,,,30.700,104.100,,,EGG-1,1,,,,,,\n"  # 8: other coordinates
        f"OK1,{day},delivery,30.651,104.071,09:00,11:00,MILK-1L,1,,,,,,\n"  # 9
        "OK1,,,,,,,EGG-1,2,,,,,,\n"  # 10
    )


def contradiction_errors(name: str, day: date) -> list[str]:
    return [
        f"{name}:3: window_start: '10:00' differs from line 2 of the same order C1 ('09:00' there)",
        f"{name}:4: phone: '13900000000' differs from line 2 of the same order C1 ('13800000001' there)",
        f"{name}:2: order_ref: order C1 refused whole with its bad line",
        f"{name}:6: delivery_date: '{day + timedelta(days=1)}' differs from line 5 of the same order C2 "
        f"('{day}' there)",
        f"{name}:5: order_ref: order C2 refused whole with its bad line",
        f"{name}:8: lat: '30.700' differs from line 7 of the same order C3 ('30.651' there)",
        f"{name}:8: lon: '104.100' differs from line 7 of the same order C3 ('104.071' there)",
        f"{name}:7: order_ref: order C3 refused whole with its bad line",
    ]


def test_a_row_that_contradicts_its_first_row_is_refused_with_its_order(databases, tmp_path: Path) -> None:  # noqa: ANN001
    day = _day()
    env = {"COLDCHAIN_DATABASE_URL": databases.new("contra"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    folder = _network(tmp_path / "scen", contradicting(day))
    run = coldchain_in_process(env, "scenario", "load", str(folder))
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == contradiction_errors("orders.csv", day)
    engine = make_engine(env["COLDCHAIN_DATABASE_URL"])
    try:
        with Session(engine) as s:
            assert list(stored(s)) == ["OK1"]
            assert stored(s)["OK1"][-1] == [("MILK-1L", 1), ("EGG-1", 2)]
    finally:
        engine.dispose()


def test_an_upload_names_the_contradicting_rows(api, token, session, tmp_path: Path) -> None:  # noqa: ANN001
    day = _day()
    assert load_scenario(session, _network(tmp_path / "net")).ok
    resp = api.post("/api/v1/orders/import", files={"file": ("day.csv", contradicting(day).encode(), "text/csv")},
                    headers=token("dispatcher"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["orders"] == 1 and body["lines"]["rejected"] == 7
    assert [f"{r['file']}:{r['line']}: {r['field']}: {r['reason']}" for r in body["rejected"]] == \
        contradiction_errors("day.csv", day)


def test_a_first_row_without_the_order_columns_is_refused_plainly(session, tmp_path: Path) -> None:  # noqa: ANN001
    day = _day()
    orders = HEADER + (
        "F1,,,,,,,MILK-1L,1,,,,,,\n"  # 2: nothing to inherit
        f"F1,{day},delivery,30.651,104.071,09:00,11:00,EGG-1,1,,,,,,\n"  # 3: too late for the order's columns
        "F1,,,,,,,YOG-1,1,,,,,,\n"  # 4
        f"G1,{day},delivery,30.651,,09:00,11:00,MILK-1L,1,,,,,,\n"  # 5: a lone row without lon
        f"OK2,{day},delivery,30.651,104.071,09:00,11:00,MILK-1L,1,,,,,,\n"  # 6
    )
    report = load_scenario(session, _network(tmp_path / "scen", orders))
    assert [str(e) for e in report.errors] == [
        *(f"orders.csv:2: {field}: empty on the first row of order F1: {FIRST_ROW_RULE}"
          for field in ("delivery_date", "mode", "lat", "lon", "window_start", "window_end")),
        "orders.csv:4: order_ref: order F1 refused whole: its line 2 is bad",
        f"orders.csv:5: lon: empty on the first row of order G1: {FIRST_ROW_RULE}",
        "orders.csv:3: order_ref: order F1 refused whole: its line 2 is bad",
    ]
    assert report.file("orders.csv").rejected == 4
    assert list(stored(session)) == ["OK2"]
