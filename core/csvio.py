"""CSV reading that remembers physical line numbers and turns validation errors into
`FILE:LINE: FIELD: REASON` (CONTRACTS.md section 1), so one bad row never hides the rest."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class CsvRow:
    line: int
    values: dict[str, str]
    # set by inherit_blanks on a group's later rows: the cells filled in, and the line they came from
    inherited: frozenset[str] = field(default_factory=frozenset)
    first_line: int | None = None


class CsvFileError(Exception):
    """The file as a whole cannot be read (missing, not UTF-8, missing columns)."""

    def __init__(self, error: RowError) -> None:
        super().__init__(str(error))
        self.error = error


def read_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> Iterator[CsvRow]:
    """Yield rows with the physical line each starts on (header = line 1).

    Blank lines are skipped; cells are stripped; absent optional columns read as ''.
    """
    name = path.name
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError as exc:
        raise CsvFileError(RowError(name, 0, "-", "file not found")) from exc
    with handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise CsvFileError(RowError(name, 1, "-", "empty file, no header row"))
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise CsvFileError(RowError(name, 1, ",".join(missing), "required column missing from header"))
            last = reader.line_num
            for cells in reader:
                start = last + 1
                last = reader.line_num
                if not cells or all(not c.strip() for c in cells):
                    continue
                values = {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}
                for col in optional:
                    values.setdefault(col, "")
                if len(cells) > len(header):
                    values["__extra__"] = ",".join(cells[len(header):])
                yield CsvRow(start, values)
        except UnicodeDecodeError as exc:
            raise CsvFileError(RowError(name, 0, "-", f"not UTF-8 ({exc.reason} at byte {exc.start})")) from exc


def validate_row(model: type[M], row: CsvRow, file: str) -> tuple[M | None, list[RowError]]:
    """Validate one row; every failing field becomes its own RowError."""
    if "__extra__" in row.values:
        return None, [RowError(file, row.line, "-", "more cells than header columns")]
    try:
        return model.model_validate(row.values), []
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "-"
            msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            value = row.values.get(str(err["loc"][0])) if err["loc"] else None
            if value not in (None, "") and "input" not in msg:
                msg = f"{msg} (got {value!r})"
            errors.append(RowError(file, row.line, loc, msg))
        return None, errors


def inherit_blanks(rows: Iterable[CsvRow], key: str, columns: Sequence[str]) -> Iterator[CsvRow]:
    """Rows that repeat an earlier row's ``key`` take that first row's cells for the ``columns``
    they leave empty.

    Shops and ERPs export one row per order line with the order's own columns filled only on
    the order's first row; with the blanks filled in, such a file reads like one that repeats
    them on every row. A later row that gives a cell of its own keeps it, so a contradiction
    still shows. ``first_line`` (None on a first row) and ``inherited`` say what was filled in,
    so errors can be put on the row that holds the cell. Rows with an empty key stand alone.
    """
    first: dict[str, CsvRow] = {}
    for row in rows:
        ref = row.values.get(key, "")
        head = first.get(ref) if ref else None
        if head is None:
            if ref:
                first[ref] = row
            yield row
            continue
        filled = [c for c in columns if not row.values.get(c)]
        values = {**row.values, **{c: head.values.get(c, "") for c in filled}}
        yield CsvRow(row.line, values, frozenset(filled), head.line)
