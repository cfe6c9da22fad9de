"""CSV tables with a structure column (``cif``, ``structure`` or ``atoms``): CIF text, a
pymatgen or ASE-style dict as JSON or Python repr; the other cells become properties."""

from __future__ import annotations

import csv
import io
import math
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

from pymatgen.core import Structure

from cluster.readers.records import (
    _ID_KEYS,
    _INTEGER,
    InputFile,
    Record,
    _BadRecord,
    _checked_record,
    _error_record,
    _Failure,
    _scalar_properties,
)
from cluster.readers.streams import _STREAM_ERRORS, _open_binary, _stream_failure
from cluster.readers.structures import _valid_structure_from_value

_PANDAS_INDEX_COLUMNS = ("", "Unnamed: 0")


class _CsvRow(NamedTuple):
    header: list[str]
    values: list[str]


def _csv_items(file: InputFile) -> Iterator[_CsvRow | _Failure]:
    _allow_big_csv_fields()
    count = 0
    try:
        with _open_binary(file.path, file.compression) as raw:
            # utf-8-sig: spreadsheet exports start with a BOM that would rename the first column.
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                return
            for values in reader:
                if not values:  # a blank line, not a row
                    continue
                yield _CsvRow(header, values)
                count += 1
    except (*_STREAM_ERRORS, csv.Error) as exc:
        yield _stream_failure(file, exc, count, "rows")


def _allow_big_csv_fields() -> None:
    # A CIF in a CSV cell easily exceeds the csv module's 128 KiB field limit.
    if csv.field_size_limit() < sys.maxsize // 2:
        csv.field_size_limit(sys.maxsize // 2)


def _structure_column(header: list[str]) -> str | None:
    lowered = {name.strip().lower(): name for name in header}
    for candidate in ("cif", "structure", "atoms"):
        if candidate in lowered:
            return lowered[candidate]
    return None


def _record_from_csv_row(file: InputFile, index: int, row: _CsvRow) -> Iterator[Record]:
    position = f"{file.path}:{index}"
    if len(row.values) != len(row.header):
        message = f"CSV row {index} has {len(row.values)} fields, header has {len(row.header)}"
        yield _error_record(file.stem, f"{file.stem}:{index}", position, message)
        return
    cells = dict(zip(row.header, row.values, strict=True))
    structure_column = _structure_column(row.header)
    id_column = _csv_id_column(row.header)
    source_id = cells[id_column] if id_column and cells[id_column] else f"{file.stem}:{index}"
    properties = _csv_properties(cells, skip={structure_column, id_column})
    value = cells[structure_column] if structure_column else None
    yield _checked_record(
        file.stem, source_id, position, properties, _structure_from_csv_cell, value
    )


def _structure_from_csv_cell(value: str | None) -> Structure:
    if not value or not value.strip():
        raise _BadRecord("empty structure cell")
    return _valid_structure_from_value(value)


def _csv_id_column(header: list[str]) -> str | None:
    lowered = {name.strip().lower(): name for name in header}
    return next((lowered[k] for k in _ID_KEYS if k in lowered), None)


def _csv_properties(cells: dict[str, str], skip: set[str | None]) -> dict[str, Any]:
    properties = _scalar_properties(cells, skip, _csv_scalar)
    # pandas writes its index as an unnamed first column.
    return {
        "index" if column in _PANDAS_INDEX_COLUMNS else column: value
        for column, value in properties.items()
    }


def _csv_scalar(text: str) -> tuple[Any, bool]:
    """A cell as a JSON scalar; serialised containers (``"['Ga', 'Te']"``) are not scalars."""
    stripped = text.strip()
    if not stripped:
        return None, True
    if stripped in ("True", "true", "False", "false"):
        return stripped.lower() == "true", True
    if _INTEGER.match(stripped):
        return int(stripped), True
    try:
        number = float(stripped)
    except ValueError:
        return stripped, not stripped.startswith(("[", "{", "("))
    return (number if math.isfinite(number) else None), True
