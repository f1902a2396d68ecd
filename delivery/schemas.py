"""What drivers send and get back (CONTRACTS.md section 3, driver routes); the API declares these as its models."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from core.schemas import Latitude, Longitude
from delivery.lifecycle import FAIL_REASONS

Position = tuple[Latitude, Longitude]
Text200 = Annotated[str, Field(min_length=1, max_length=200)]
Note = Annotated[str, Field(max_length=2000)]
FailReason = Literal[FAIL_REASONS]  # type: ignore[valid-type]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RouteStartIn(_In):
    """The van is loaded and leaves the depot."""

    date: date
    at: AwareDatetime | None = Field(default=None, description="when it left (RFC 3339); default: now")


class DamagedItem(_In):
    sku: Annotated[str, Field(min_length=1, max_length=64)]
    qty: Annotated[int, Field(ge=1, le=100_000)]


class StopEventIn(_In):
    """One event at a stop. delivered needs `recipient`; failed needs a `reason` (and a `note` when the reason
    is `other`); damaged needs `items` (which SKUs of the order, how many)."""

    type: Literal["arrived", "delivered", "failed", "damaged"]
    at: AwareDatetime | None = Field(default=None, description="when it happened (RFC 3339); default: now")
    position: Position | None = Field(default=None, description="[lat, lon] where it happened")
    recipient: Text200 | None = None
    reason: FailReason | None = None
    note: Note | None = None
    items: Annotated[list[DamagedItem], Field(max_length=200)] | None = None

    @model_validator(mode="after")
    def _needs(self) -> StopEventIn:
        if self.type == "delivered" and not self.recipient:
            raise ValueError("a delivered event needs the recipient (who took the goods)")
        if self.type == "failed":
            if self.reason is None:
                raise ValueError(f"a failed event needs a reason, one of {', '.join(FAIL_REASONS)}")
            if self.reason == "other" and not (self.note and self.note.strip()):
                raise ValueError("reason other needs a note saying what happened")
        if self.type == "damaged" and not self.items:
            raise ValueError("a damaged event needs items: [{\"sku\", \"qty\"}, ...]")
        if self.type != "damaged" and self.items:
            raise ValueError("items are only for a damaged event")
        return self


class PositionIn(_In):
    at: AwareDatetime | None = Field(default=None, description="when the phone took the fix; default: now")
    position: Position


class ItemOut(BaseModel):
    sku: str
    name: str
    qty: int
    temp_class: str
    fragile: bool


class StopCheck(BaseModel):
    """Check on delivery: the order's spoilage or breakage risk is not ok (traceability's assessment)."""

    level: Literal["watch", "at_risk", "reject"] = Field(description="the worse of the two risks")
    spoilage: Literal["ok", "watch", "at_risk", "reject"]
    breakage: Literal["ok", "watch", "at_risk", "reject"]
    reasons: list[str]


class StopOut(BaseModel):
    stop_id: str
    seq: int
    order_ref: str
    eta: datetime
    lat: float
    lon: float
    window: tuple[str, str]
    address: str | None
    contact: str | None
    note: str | None = None
    items: list[ItemOut]
    status: str
    check: StopCheck | None = Field(default=None, description='"check on delivery": set when the order\'s '
                                                              "spoilage or breakage risk is not ok, else null")


class RouteOut(BaseModel):
    date: date
    vehicle: str
    depot: str
    status: str = Field(description="planned, started, finished (or broken: the van broke down)")
    start: datetime
    end: datetime
    started_at: datetime | None
    compartments: dict[str, float]
    stops: list[StopOut]


class RouteStartOut(BaseModel):
    date: date
    vehicle: str
    status: str
    started_at: datetime
    stops: int
    orders_out_for_delivery: int


class StopEventOut(BaseModel):
    event_id: int
    stop_id: str
    order_ref: str
    type: str
    at: datetime
    status: str = Field(description="the stop's state after the event")
    route_status: str
    order_status: str
    damaged: list[DamagedItem] = Field(default_factory=list)


class PositionOut(BaseModel):
    vehicle: str
    at: datetime
    position: tuple[float, float]


class ProofOut(BaseModel):
    id: int
    stop_id: str
    order_ref: str
    sha256: str
    content_type: str
    size: int
    at: datetime
    url: str


class ProofPage(BaseModel):
    items: list[ProofOut]
    next: str | None
