"""Field types shared by every room's row and request schemas."""

from __future__ import annotations

from datetime import time
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from core.timeutil import parse_hhmm


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str) and value.strip() == "":
        return None
    return value


def _hhmm(value: Any) -> time:
    if isinstance(value, time):
        return value
    if not isinstance(value, str):
        raise ValueError("expected HH:MM")
    return parse_hhmm(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no", ""):
        return False
    raise ValueError("expected 0 or 1")


def _code(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value.split()) != 1:
        raise ValueError("must not contain spaces")
    return value


Optional = BeforeValidator(_blank_to_none)
HHMM = Annotated[time, BeforeValidator(_hhmm)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Code = Annotated[str, Field(max_length=64), AfterValidator(_code)]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
TempClass = Annotated[str, Field(pattern=r"^(frozen|chilled|ambient)$")]


class Row(BaseModel):
    """A CSV row: strings in, typed values out; unknown columns ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)
