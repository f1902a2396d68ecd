"""Pick lists, consolidated demand and the order lifecycle."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from core.errors import Conflict
from fulfillment.lifecycle import can_move, check_move
from fulfillment.models import Order
from fulfillment.picklists import demand, pick_lists, render_pdf
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day, record_event
from tests import scenario_files
from tests.support import DAY


def test_pick_lists_group_by_class_with_lots(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path))
    allocate_day(session, DAY)
    lists = {pl["node"]: pl for pl in pick_lists(session, DAY)}
    assert set(lists) == {"FS-01", "HUB-01"}
    fs = lists["FS-01"]
    assert [r["sku"] for r in fs["classes"]["frozen"]] == ["DUMP-1"]
    assert [(r["order_ref"], r["sku"], r["lot"], r["qty"], r["fragile"]) for r in fs["classes"]["chilled"]] == [
        ("A1", "EGG-30", "L-E1", 2, True)]
    assert fs["litres"]["chilled"] == pytest.approx(6.0) and fs["litres"]["frozen"] == pytest.approx(1.2)
    pdf = render_pdf(list(lists.values()), tmp_path / "pl.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1500


def test_demand_says_what_to_buy(session, tmp_path: Path) -> None:
    greedy = f"Z2,{DAY},delivery,30.650,104.070,09:00,11:00,EGG-30,70,,,,\n"
    load_scenario(session, scenario_files.write(tmp_path, append={"orders.csv": greedy}))
    allocate_day(session, DAY)
    rows = {r["sku"]: r for r in demand(session, DAY)}
    assert rows["EGG-30"] == {"sku": "EGG-30", "name": "土鸡蛋30枚", "ordered": 72, "reserved": 2,
                              "free_on_hand": 48, "to_buy": 22}


def test_lifecycle_moves() -> None:
    assert can_move("received", "allocated") and can_move("out_for_delivery", "delivered")
    assert can_move("failed", "reattempt") and can_move("failed", "returned")
    assert not can_move("delivered", "failed") and not can_move("received", "delivered")
    with pytest.raises(ValueError, match="cannot go from delivered to cancelled"):
        check_move("A1", "delivered", "cancelled")


def test_illegal_move_is_refused_and_nothing_changes(session, tmp_path: Path) -> None:
    load_scenario(session, scenario_files.write(tmp_path))
    order = session.scalar(select(Order).where(Order.ref == "A1"))
    with pytest.raises(Conflict, match="cannot go from received to delivered"):
        record_event(session, order, "delivered", "tester", to_status="delivered")
    assert order.status == "received"
