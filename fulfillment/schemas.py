"""Row and request schemas for orders (CONTRACTS.md section 4, orders.csv)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.schemas import HHMM, Code, Flag, Latitude, Longitude, Optional, Row


class OrderRow(Row):
    order_ref: Code
    delivery_date: date
    mode: Literal["delivery", "pickup"]
    lat: Latitude
    lon: Longitude
    window_start: HHMM
    window_end: HHMM
    sku: Code
    qty: Annotated[int, Field(gt=0, le=100_000)]
    pickup_node: Annotated[str | None, Optional] = None
    customer: Annotated[Annotated[str, Field(max_length=200)] | None, Optional] = None
    phone: Annotated[Annotated[str, Field(max_length=64)] | None, Optional] = None
    address: Annotated[str | None, Optional] = None
    allow_split: Flag = False
    note: Annotated[str | None, Optional] = None

    @model_validator(mode="after")
    def _consistent(self) -> OrderRow:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.mode == "pickup" and not self.pickup_node:
            raise ValueError("a pickup order needs pickup_node")
        return self

    def order_fields(self) -> dict:
        """The columns that belong to the order, not the line: equal on every row of one order."""
        return self.model_dump(include=set(ORDER_FIELDS))


ORDER_REQUIRED = ("order_ref", "delivery_date", "mode", "lat", "lon", "window_start", "window_end", "sku", "qty",
                  "pickup_node")
ORDER_OPTIONAL = ("customer", "phone", "address", "allow_split", "note")
# the order's own columns: an order's later rows may leave them empty (they take its first row's)
ORDER_FIELDS = ("delivery_date", "mode", "pickup_node", "lat", "lon", "window_start", "window_end", "customer",
                "phone", "address", "allow_split", "note")
# ... and those of them that the order's first row must give
ORDER_FIELDS_NEEDED = ("delivery_date", "mode", "lat", "lon", "window_start", "window_end")


class OrderLineIn(BaseModel):
    sku: Code
    qty: Annotated[int, Field(gt=0, le=100_000)]


class OrderIn(BaseModel):
    """An order placed through the API. Without delivery_date it goes to the earliest day the cut-off allows."""

    model_config = ConfigDict(extra="forbid")

    order_ref: Code
    delivery_date: date | None = None
    mode: Literal["delivery", "pickup"] = "delivery"
    lat: Latitude
    lon: Longitude
    window_start: HHMM
    window_end: HHMM
    lines: Annotated[list[OrderLineIn], Field(min_length=1, max_length=200)]
    pickup_node: Code | None = None
    customer: Annotated[str, Field(max_length=200)] | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None
    address: Annotated[str, Field(max_length=500)] | None = None
    allow_split: bool = False
    note: Annotated[str, Field(max_length=1000)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OrderIn:
        if self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.mode == "pickup" and not self.pickup_node:
            raise ValueError("a pickup order needs pickup_node")
        skus = [ln.sku for ln in self.lines]
        if len(set(skus)) != len(skus):
            raise ValueError("each sku may appear once per order")
        return self
