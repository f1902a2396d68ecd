"""Row schemas of the scenario files (CONTRACTS.md section 4) and network summaries."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field, model_validator

from core.schemas import (
    HHMM,
    Code,
    Flag,
    Latitude,
    Longitude,
    NonNegative,
    Optional,
    Positive,
    Row,
    TempClass,
)


class NodeRow(Row):
    code: Code
    kind: Literal["flagship", "hub"]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    lat: Latitude
    lon: Longitude
    parent: Annotated[str | None, Optional] = None
    opens: HHMM
    closes: HHMM
    frozen_l: NonNegative
    chilled_l: NonNegative
    ambient_l: NonNegative
    service_area_wkt: Annotated[str | None, Optional] = None

    @model_validator(mode="after")
    def _hours(self) -> NodeRow:
        if self.closes <= self.opens:
            raise ValueError("closes must be after opens")
        return self


class ProductRow(Row):
    sku: Code
    name: Annotated[str, Field(min_length=1, max_length=200)]
    temp_class: TempClass
    fragile: Flag
    unit_l: Positive
    unit_kg: Positive
    shelf_life_days: Annotated[int, Field(ge=0)]
    min_c: Annotated[float, Field(ge=-80, le=80)]
    max_c: Annotated[float, Field(ge=-80, le=80)]
    max_on_board_min: Annotated[Annotated[int, Field(gt=0)] | None, Optional] = None

    @model_validator(mode="after")
    def _range(self) -> ProductRow:
        if self.max_c < self.min_c:
            raise ValueError("max_c is below min_c")
        return self


class StockRow(Row):
    node: Code
    sku: Code
    lot: Code
    qty: Annotated[int, Field(ge=0)]
    expires: date


class VehicleRow(Row):
    code: Code
    depot: Code
    frozen_l: NonNegative
    chilled_l: NonNegative
    ambient_l: NonNegative
    max_kg: Positive
    shift_start: HHMM
    shift_end: HHMM
    speed_kmh: Annotated[float, Field(gt=0, le=200)]
    cost_per_km: NonNegative
    fixed_cost: NonNegative
    device: Annotated[str | None, Optional] = None

    @model_validator(mode="after")
    def _shift(self) -> VehicleRow:
        if self.shift_end <= self.shift_start:
            raise ValueError("shift_end must be after shift_start")
        if self.frozen_l + self.chilled_l + self.ambient_l <= 0:
            raise ValueError("a van needs at least one compartment with capacity")
        return self


class DriverRow(Row):
    username: Code
    name: Annotated[str, Field(min_length=1, max_length=200)]
    vehicle: Annotated[str | None, Optional] = None


NODE_COLUMNS = tuple(NodeRow.model_fields)
PRODUCT_COLUMNS = tuple(c for c in ProductRow.model_fields if c != "max_on_board_min")
STOCK_COLUMNS = tuple(StockRow.model_fields)
VEHICLE_COLUMNS = tuple(VehicleRow.model_fields)
DRIVER_COLUMNS = tuple(DriverRow.model_fields)
