"""JSON documents and JSON Lines: one parser for every layout they come in.

pymatgen ``Structure`` dicts (single, lists, lines), records with a ``structure`` field (the
corpus layout), ``ComputedStructureEntry`` dicts and Alexandria's ``{"entries": [...]}``
dumps, OPTIMADE responses (``cluster.readers.optimade``), pandas tables in the columns and
``split`` layouts with Matbench's ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from cluster.readers.optimade import _is_optimade_response, _record_from_optimade
from cluster.readers.records import (
    _ID_KEYS,
    _INTEGER,
    InputFile,
    Record,
    _checked_record,
    _error_record,
    _Failure,
    _first_id_key,
    _is_scalar_id,
    _scalar_properties,
)
from cluster.readers.streams import (
    _JSON_ERRORS,
    _STREAM_ERRORS,
    _gc_paused,
    _loads,
    _open_binary,
    _read_all,
    _stream_failure,
)
from cluster.readers.structures import (
    _valid_structure_from_pymatgen_dict,
    _valid_structure_from_value,
)


def _jsonl_items(file: InputFile) -> Iterator[bytes | _Failure]:
    count = 0
    try:
        with _open_binary(file.path, file.compression) as handle:
            for line in handle:
                yield line
                count += 1
    except _STREAM_ERRORS as exc:
        yield _stream_failure(file, exc, count, "lines")


class _Entry(NamedTuple):
    """One structure-bearing entry of a JSON value, not yet converted."""

    kind: str  # "structure" | "computed_entry" | "optimade" | "record" | "invalid"
    data: Any
    source_id: str | None = None


def _records_from_jsonl_line(file: InputFile, index: int, line: bytes) -> Iterator[Record]:
    if not line.strip():
        return
    default_id = f"{file.stem}:{index}"
    position = f"{file.path}:{index}"
    try:
        value = _loads(line)
    except _JSON_ERRORS as exc:
        message = f"JSON decode error at line {index + 1}: {exc}"
        yield _error_record(file.stem, default_id, position, message)
        return
    entries = _json_entries(value, matbench_task=None)
    if not entries:
        yield _error_record(file.stem, default_id, position, "no structure in this line")
    for k, entry in enumerate(entries):
        if len(entries) == 1:
            yield _record_from_entry(file.stem, default_id, position, entry)
        else:
            sub_id, sub_position = f"{default_id}:{k}", f"{position}:{k}"
            yield _record_from_entry(file.stem, sub_id, sub_position, entry)


def _json_document_items(file: InputFile) -> Iterator[_Entry | _Failure]:
    try:
        data = _read_all(file.path, file.compression)
    except _STREAM_ERRORS as exc:
        yield _stream_failure(file, exc, 0, "bytes read")
        return
    try:
        with _gc_paused():
            value = _loads(data)
    except _JSON_ERRORS as exc:
        yield _Failure(f"JSON decode error: {exc}")
        return
    entries = _json_entries(value, matbench_task=_matbench_task(file.stem))
    if not entries:
        yield _Failure("no structures in this JSON document")
    yield from entries


def _records_from_json_entry(file: InputFile, index: int, entry: _Entry) -> Iterator[Record]:
    yield _record_from_entry(file.stem, f"{file.stem}:{index}", f"{file.path}:{index}", entry)


def _json_entries(value: Any, matbench_task: str | None) -> list[_Entry]:
    """The structure-bearing entries of any supported JSON layout."""
    if isinstance(value, list):
        entries = [_classify(item) for item in value]
        return _with_matbench_ids(entries, matbench_task, [None] * len(entries))
    if not isinstance(value, dict):
        return [_Entry("invalid", f"expected a JSON object, got {type(value).__name__}")]
    if isinstance(value.get("entries"), list):  # Alexandria dumps
        return [_classify(item) for item in value["entries"]]
    if _is_optimade_response(value):
        data = value["data"]
        return [_classify(item) for item in (data if isinstance(data, list) else [data])]
    if _is_columns_table(value):
        return _columns_table_entries(value, matbench_task)
    if _is_split_table(value):
        return _split_table_entries(value, matbench_task)
    return [_classify(value)]


def _classify(item: Any) -> _Entry:
    if not isinstance(item, dict):
        return _Entry("invalid", f"expected a JSON object, got {type(item).__name__}")
    if "lattice" in item and "sites" in item:
        return _Entry("structure", item)
    if isinstance(item.get("attributes"), dict):
        return _Entry("optimade", item)
    if isinstance(item.get("structure"), dict) and (
        "energy" in item or "Entry" in str(item.get("@class", ""))
    ):
        return _Entry("computed_entry", item)
    if "structure" in item:
        return _Entry("record", item)
    keys = ", ".join(sorted(map(str, item))[:12])
    return _Entry("invalid", f"no structure in this entry (keys: {keys})")


def _is_columns_table(value: dict[str, Any]) -> bool:
    """pandas ``to_json()`` default layout: ``{"structure": {"0": {...}}, "n": {"0": 1.7}}``."""
    column = value.get("structure")
    return (
        isinstance(column, dict)
        and "sites" not in column
        and "lattice" not in column
        and all(isinstance(v, dict) for v in value.values())
    )


def _is_split_table(value: dict[str, Any]) -> bool:
    """pandas ``orient="split"`` (matminer's dataset files): columns, index, data rows."""
    columns = value.get("columns")
    return (
        isinstance(columns, list) and "structure" in columns and isinstance(value.get("data"), list)
    )


def _columns_table_entries(table: dict[str, Any], task: str | None) -> list[_Entry]:
    labels = list(table["structure"])
    entries = []
    for label in labels:
        row = {column: values.get(label) for column, values in table.items()}
        entries.append(_Entry("record", row))
    return _with_matbench_ids(entries, task, labels)


def _split_table_entries(table: dict[str, Any], task: str | None) -> list[_Entry]:
    columns = table["columns"]
    rows = table["data"]
    labels = table.get("index")
    if not isinstance(labels, list) or len(labels) != len(rows):
        labels = [None] * len(rows)
    entries = []
    for row in rows:
        if isinstance(row, list) and len(row) == len(columns):
            entries.append(_Entry("record", dict(zip(columns, row, strict=True))))
        else:
            entries.append(_Entry("invalid", f"table row does not match {len(columns)} columns"))
    return _with_matbench_ids(entries, task, labels)


def _with_matbench_ids(entries: list[_Entry], task: str | None, labels: list[Any]) -> list[_Entry]:
    """Give table rows their ids: a non-numeric index label, else the Matbench id of the row."""
    # Matbench pads to the digits of the row count (matbench.data_ops.load): 4,764 rows -> 0001.
    width = len(str(len(entries)))
    named = []
    for row, (entry, label) in enumerate(zip(entries, labels, strict=True)):
        if label is not None and not _INTEGER.match(str(label)):
            named.append(entry._replace(source_id=str(label)))
        elif task is not None:
            named.append(entry._replace(source_id=f"mb-{task}-{row + 1:0{width}d}"))
        else:
            named.append(entry)
    return named


def _matbench_task(stem: str) -> str | None:
    """``matbench_mp_e_form`` -> ``mp-e-form``, the middle of Matbench ids."""
    if not stem.lower().startswith("matbench_"):
        return None
    return stem[len("matbench_") :].replace("_", "-")


def _record_from_entry(source: str, default_id: str, position: str, entry: _Entry) -> Record:
    source_id = entry.source_id or default_id
    if entry.kind == "invalid":
        return _error_record(source, source_id, position, entry.data)
    if entry.kind == "structure":
        return _checked_record(
            source, source_id, position, {}, _valid_structure_from_pymatgen_dict, entry.data
        )
    if entry.kind == "computed_entry":
        return _record_from_computed_entry(source, source_id, position, entry.data)
    if entry.kind == "optimade":
        return _record_from_optimade(source, source_id, position, entry.data)
    return _record_from_plain_record(source, source_id, position, entry.data)


def _record_from_plain_record(
    source: str, source_id: str, position: str, item: dict[str, Any]
) -> Record:
    """``{"id", "source", "structure", ...scalars}``: the corpus layout, Matbench rows..."""
    id_key = _first_id_key(item)
    if id_key is not None:
        source_id = str(item[id_key])
    if isinstance(item.get("source"), str) and item["source"]:
        source = item["source"]
    skip = {"structure", "source", "@module", "@class", id_key}
    properties = _scalar_properties(item, skip)
    return _checked_record(
        source, source_id, position, properties, _valid_structure_from_value, item.get("structure")
    )


def _record_from_computed_entry(
    source: str, source_id: str, position: str, item: dict[str, Any]
) -> Record:
    data = item.get("data") if isinstance(item.get("data"), dict) else {}
    entry_id = item.get("entry_id")
    if entry_id is None:
        entry_id = next((data[k] for k in _ID_KEYS if _is_scalar_id(data.get(k))), None)
    if _is_scalar_id(entry_id):
        source_id = str(entry_id)
    properties = _scalar_properties(
        {
            "energy": item.get("energy"),
            "correction": _entry_correction(item),
            "entry_id": item.get("entry_id"),
        },
        skip=set(),
    )
    for key, value in _scalar_properties(data, skip=set()).items():
        properties.setdefault(key, value)
    return _checked_record(
        source,
        source_id,
        position,
        properties,
        _valid_structure_from_pymatgen_dict,
        item["structure"],
    )


def _entry_correction(item: dict[str, Any]) -> Any:
    """The entry's total correction: stored by ``as_dict``, else summed from its adjustments
    (None when they are not plain numbers)."""
    if item.get("correction") is not None:
        return item["correction"]
    adjustments = item.get("energy_adjustments") or []
    if not isinstance(adjustments, list):
        return None
    total = 0.0
    for adjustment in adjustments:
        if not isinstance(adjustment, dict):
            return None
        value = adjustment.get("value")
        per_atom, n_atoms = adjustment.get("adj_per_atom"), adjustment.get("n_atoms")
        if _is_number(value):
            total += value
        elif _is_number(per_atom) and _is_number(n_atoms):
            total += per_atom * n_atoms
        else:
            return None
    return total


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
