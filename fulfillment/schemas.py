"""Row and request schemas for orders (CONTRACTS.md section 4, orders.csv)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import Field, model_validator

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
        return self.model_dump(exclude={"order_ref", "sku", "qty"})


ORDER_REQUIRED = ("order_ref", "delivery_date", "mode", "lat", "lon", "window_start", "window_end", "sku", "qty",
                  "pickup_node")
ORDER_OPTIONAL = ("customer", "phone", "address", "allow_split", "note")
