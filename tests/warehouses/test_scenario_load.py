"""Scenario loading: good rows load, every bad row is named FILE:LINE: FIELD: REASON, reloads change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from fulfillment.models import Order, OrderLine
from fulfillment.scenario import load_scenario
from tests import scenario_files
from tests.support import DAY, after
from warehouses.models import Compartment, Driver, Node, Product, StockLot, Vehicle


def counts(session) -> dict[str, int]:  # noqa: ANN001
    return {m.__tablename__: session.scalar(select(func.count()).select_from(m))
            for m in (Node, Product, StockLot, Vehicle, Compartment, Driver, Order, OrderLine)}


def test_good_scenario_loads_everything(session, tmp_path: Path) -> None:
    report = load_scenario(session, scenario_files.write(tmp_path))
    assert report.ok, [str(e) for e in report.errors]
    assert counts(session) == {"nodes": 2, "products": 3, "stock_lots": 3, "vehicles": 2, "compartments": 5,
                               "drivers": 2, "orders": 2, "order_lines": 3}
    hub = session.scalar(select(Node).where(Node.code == "HUB-01"))
    assert hub.parent.code == "FS-01" and hub.service_area_wkt is None
    van = session.scalar(select(Vehicle).where(Vehicle.code == "VAN-02"))
    assert {c.temp_class: c.capacity_l for c in van.compartments} == {"chilled": 300, "ambient": 300}
    strawberry = session.scalar(select(Product).where(Product.sku == "STRAW-1"))
    assert strawberry.max_on_board_min == 240 and strawberry.fragile


def test_reload_changes_nothing(session, tmp_path: Path) -> None:
    folder = scenario_files.write(tmp_path)
    load_scenario(session, folder)
    before = counts(session)
    again = load_scenario(session, folder)
    assert again.ok
    assert counts(session) == before
    assert all(c.inserted == 0 and c.updated == 0 for c in again.counts.values())
    assert again.file("orders.csv").unchanged == 3


def test_changed_row_updates_in_place(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path / "a"))
    stock = scenario_files.FILES["stock.csv"].replace("L-E1,50", "L-E1,70")
    report = load_scenario(session, scenario_files.write(tmp_path / "b", {"stock.csv": stock}))
    assert report.file("stock.csv").updated == 1 and report.file("stock.csv").unchanged == 2
    assert session.scalar(select(StockLot.qty).where(StockLot.lot == "L-E1")) == 70


BAD_ROWS = [
    # (file, appended row, field, words in the reason)
    ("nodes.csv", "HUB-02,hub,坏坐标店,95.0,104.06,FS-01,08:00,21:00,1,1,1,\n", "lat", "less than or equal to 90"),
    ("nodes.csv", "HUB-03,hub,坏多边形,30.66,104.06,FS-01,08:00,21:00,1,1,1,POLYGON((104 30\n", "service_area_wkt",
     "invalid WKT"),
    ("nodes.csv", 'HUB-04,hub,自交多边形,30.66,104.06,FS-01,08:00,21:00,1,1,1,'
     '"POLYGON((104.0 30.6, 104.1 30.7, 104.1 30.6, 104.0 30.7, 104.0 30.6))"\n',
     "service_area_wkt", "not valid: Self-intersection"),
    ("nodes.csv", 'HUB-05,hub,颠倒坐标,30.66,104.06,FS-01,08:00,21:00,1,1,1,'
     '"POLYGON((30.6 104.0, 30.7 104.0, 30.7 104.1, 30.6 104.1, 30.6 104.0))"\n',
     "service_area_wkt", "lon lat order"),
    ("nodes.csv", "FS-01,flagship,重复,30.66,104.06,,07:00,22:00,1,1,1,\n", "code",
     "duplicate code FS-01 (first on line 2)"),
    ("nodes.csv", "HUB-06,hub,无名父店,30.66,104.06,FS-99,08:00,21:00,1,1,1,\n", "parent", "unknown node FS-99"),
    ("nodes.csv", "HUB-07,depot,错类型,30.66,104.06,,08:00,21:00,1,1,1,\n", "kind", "'flagship' or 'hub'"),
    ("products.csv", "MILK-1,鲜奶,chilled,1,1.0,1.0,seven,0,4,\n", "shelf_life_days", "valid integer"),
    ("products.csv", "MILK-2,鲜奶,lukewarm,1,1.0,1.0,7,0,4,\n", "temp_class", "match pattern"),
    ("stock.csv", f"HUB-99,EGG-30,L-X,5,{after(7)}\n", "node", "unknown node HUB-99"),
    ("stock.csv", f"FS-01,NOPE,L-X,5,{after(7)}\n", "sku", "unknown sku NOPE"),
    ("stock.csv", f"FS-01,EGG-30,L-E1,5,{after(7)}\n", "lot", "duplicate lot L-E1 of EGG-30 at FS-01"),
    ("stock.csv", f"FS-01,EGG-30,L-E9,5,{DAY.year}-13-01\n", "expires", "valid date"),
    ("vehicles.csv", "VAN-09,HUB-77,0,100,100,500,08:00,18:00,25,2,100,TL-0009\n", "depot", "unknown node HUB-77"),
    ("vehicles.csv", "VAN-08,FS-01,0,100,100,500,08:00,18:00,25,2,100,TL-0001\n", "device",
     "already fitted to VAN-01"),
    ("vehicles.csv", "VAN-07,FS-01,0,100,100,500,18:00,08:00,25,2,100,TL-0007\n", "-", "shift_end must be after"),
    ("drivers.csv", "driver09,赵师傅,VAN-99\n", "vehicle", "unknown vehicle VAN-99"),
    ("orders.csv", f"A3,{DAY},delivery,30.65,104.07,09:00,11:00,GHOST,1,,王五,,\n", "sku", "unknown sku GHOST"),
    ("orders.csv", f"A4,{DAY},delivery,30.65,104.07,09:00,11:00,EGG-30,-2,,王五,,\n", "qty", "greater than 0"),
    ("orders.csv", f"A5,{DAY},pickup,30.65,104.07,09:00,11:00,EGG-30,1,,王五,,\n", "-", "needs pickup_node"),
]


@pytest.mark.parametrize(("file", "row", "field", "words"), BAD_ROWS, ids=[f"{r[0]}:{r[2]}" for r in BAD_ROWS])
def test_each_bad_row_is_named_and_the_rest_loads(session, tmp_path: Path, file, row, field, words) -> None:
    folder = scenario_files.write(tmp_path, append={file: row})
    line = scenario_files.FILES[file].count("\n") + 1  # the appended row's physical line
    report = load_scenario(session, folder)
    assert [str(e) for e in report.errors if e.file == file and e.line == line], report.errors
    error = next(e for e in report.errors if e.line == line and e.file == file)
    assert error.field == field and words in error.reason, str(error)
    assert str(error).startswith(f"{file}:{line}: {field}: ")
    good = counts(session)
    assert good["orders"] == 2 and good["nodes"] >= 2 and good["stock_lots"] == 3 and good["vehicles"] == 2


def test_physical_line_counts_quoted_newlines_and_blank_lines(session, tmp_path: Path) -> None:
    nodes = (scenario_files.FILES["nodes.csv"] + "\n"
             + 'HUB-08,hub,"两行\n名字",30.62,104.04,FS-01,08:00,21:00,1,1,1,\n'
             + "HUB-09,hub,坏纬度,abc,104.06,FS-01,08:00,21:00,1,1,1,\n")
    report = load_scenario(session, scenario_files.write(tmp_path, {"nodes.csv": nodes}))
    assert [str(e) for e in report.errors] == [
        "nodes.csv:7: lat: Input should be a valid number, unable to parse string as a number (got 'abc')"]
    assert session.scalar(select(Node.name).where(Node.code == "HUB-08")) == "两行\n名字"


def test_a_bad_line_refuses_its_whole_order_and_names_every_row(session, tmp_path: Path) -> None:
    orders = scenario_files.FILES["orders.csv"].replace("DUMP-1,1,", "DUMP-1,zero,")
    report = load_scenario(session, scenario_files.write(tmp_path, {"orders.csv": orders}))
    lines = sorted((e.line, e.field) for e in report.errors)
    assert lines == [(2, "order_ref"), (3, "qty")]
    assert session.scalar(select(Order.ref)) == "A2"


def test_missing_file_and_missing_column_are_reported(session, tmp_path: Path) -> None:
    folder = scenario_files.write(tmp_path, {"drivers.csv": "username,vehicle\ndriver01,VAN-01\n"})
    (folder / "stock.csv").unlink()
    report = load_scenario(session, folder)
    assert {str(e) for e in report.errors} == {"stock.csv:0: -: file not found",
                                              "drivers.csv:1: name: required column missing from header"}
    assert counts(session)["vehicles"] == 2


def test_cli_prints_rejections_and_exits_1_then_0_when_clean(databases, tmp_path: Path) -> None:
    from tests.support import coldchain_in_process  # the command's exit code and output, in this process

    env = {"COLDCHAIN_DATABASE_URL": databases.new("cli"), "COLDCHAIN_DATA_DIR": str(tmp_path)}
    bad = scenario_files.write(tmp_path / "bad", append={"stock.csv": f"FS-01,NOPE,L-X,5,{after(7)}\n"})
    run = coldchain_in_process(env, "scenario", "load", str(bad))
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == ["stock.csv:5: sku: unknown sku NOPE"]
    good = scenario_files.write(tmp_path / "good")
    run = coldchain_in_process(env, "scenario", "load", str(good))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == ""
