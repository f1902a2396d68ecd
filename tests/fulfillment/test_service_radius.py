"""COLDCHAIN_DEFAULT_SERVICE_RADIUS_KM is the radius a node without a polygon serves (5 km unless set)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import get_settings
from fulfillment.scenario import load_scenario
from fulfillment.service import allocate_day, day_allocations
from tests.support import DAY, write

# 3.3 km south of HUB-01 (no polygon), outside FS-01's polygon: only HUB-01's radius can cover it
FAR = f"R1,{DAY},delivery,30.600,104.050,10:00,12:00,STRAW-1,1,,王五,13800000009,武侯区\n"


@pytest.fixture
def radius(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    def _set(km: str | None) -> None:
        if km is None:
            monkeypatch.delenv("COLDCHAIN_DEFAULT_SERVICE_RADIUS_KM", raising=False)
        else:
            monkeypatch.setenv("COLDCHAIN_DEFAULT_SERVICE_RADIUS_KM", km)
        get_settings.cache_clear()

    yield _set
    monkeypatch.delenv("COLDCHAIN_DEFAULT_SERVICE_RADIUS_KM", raising=False)
    get_settings.cache_clear()


@pytest.mark.parametrize(("km", "node"), [(None, "HUB-01"), ("2", None), ("4", "HUB-01")])
def test_the_setting_decides_who_covers_an_address(session, tmp_path: Path, radius, km, node) -> None:  # noqa: ANN001
    radius(km)
    load_scenario(session, write(tmp_path, append={"orders.csv": FAR}))
    allocate_day(session, DAY)
    out = day_allocations(session, DAY)
    placed = {a["order_ref"]: a["node"] for a in out["allocations"]}
    if node:
        assert placed.get("R1") == node, out
    else:
        reason = next(u["reason"] for u in out["unallocated"] if u["order_ref"] == "R1")
        assert "R1" not in placed and "area" in reason, reason
