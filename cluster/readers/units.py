"""Work units and reading: ``count_items``, ``plan_units``, ``read_unit``, ``read_file``.

Each format's room gives two functions: one that yields a file's items in order (a
``_Failure`` standing for an unreadable rest), one that turns an item into records. This
module cuts item ranges into units and reads them through those two.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from contextlib import closing
from typing import Any

from cluster.readers.ase_files import _ase_items, _records_from_ase_frame
from cluster.readers.cif import _cif_file_items, _records_from_cif_block
from cluster.readers.csv_tables import _csv_items, _record_from_csv_row
from cluster.readers.detect import discover
from cluster.readers.formats import ASE, CIF, CSV, ERROR, JSON, JSONL, POSCAR, TAR
from cluster.readers.json_formats import (
    _json_document_items,
    _jsonl_items,
    _records_from_json_entry,
    _records_from_jsonl_line,
)
from cluster.readers.poscar import _poscar_items, _records_from_poscar
from cluster.readers.records import (
    InputFile,
    Record,
    UnitPart,
    WorkUnit,
    _error_record,
    _Failure,
)
from cluster.readers.tar import _records_from_tar_member, _tar_items

# Formats whose items can be read from any start index at the cost of skipping the earlier
# ones; a JSON document must be parsed whole, so splitting it would parse it once per unit.
_SPLITTABLE = frozenset({JSONL, CSV, TAR, CIF})


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def count_items(file: InputFile) -> int:
    """Items in ``file`` as ``plan_units`` indexes them; reads the file once (a JSON document is
    parsed). A stream that breaks counts one extra item, the error record that reports it."""
    return sum(1 for _ in _iter_items(file))


def plan_units(
    files: Sequence[InputFile], unit_size: int = 1000, counts: Sequence[int] | None = None
) -> list[WorkUnit]:
    """Cut ``files`` into work units of about ``unit_size`` items each.

    Units depend only on the files (their order and item counts) and ``unit_size``: every item
    is in exactly one unit. JSONL, CSV, tar and CIF files are split into item ranges; a JSON
    document, POSCAR or ASE file is kept whole (it must be parsed whole), so its unit can exceed
    ``unit_size``. Small files share a unit. ``counts`` (from ``count_items``, e.g. computed in
    parallel) saves reading the files here.
    """
    if unit_size < 1:
        raise ValueError(f"unit_size must be at least 1, got {unit_size}")
    if counts is not None and len(counts) != len(files):
        raise ValueError(f"{len(counts)} counts for {len(files)} files")
    packer = _UnitPacker(unit_size)
    for position, file in enumerate(files):
        n_items = counts[position] if counts is not None else count_items(file)
        if n_items <= 0:
            continue
        if file.format in _SPLITTABLE:
            packer.add_splittable(file, n_items)
        else:
            packer.add_whole(file, n_items)
    return packer.finish()


class _UnitPacker:
    def __init__(self, unit_size: int) -> None:
        self.unit_size = unit_size
        self.units: list[WorkUnit] = []
        self.parts: list[UnitPart] = []
        self.filled = 0

    def add_splittable(self, file: InputFile, n_items: int) -> None:
        start = 0
        while start < n_items:
            take = min(self.unit_size - self.filled, n_items - start)
            self._add(UnitPart(file, start, start + take))
            start += take

    def add_whole(self, file: InputFile, n_items: int) -> None:
        if self.filled and self.filled + n_items > self.unit_size:
            self._flush()
        self._add(UnitPart(file, 0, n_items))

    def finish(self) -> list[WorkUnit]:
        self._flush()
        return self.units

    def _add(self, part: UnitPart) -> None:
        self.parts.append(part)
        self.filled += part.n_items
        if self.filled >= self.unit_size:
            self._flush()

    def _flush(self) -> None:
        if self.parts:
            self.units.append(WorkUnit(len(self.units), tuple(self.parts)))
        self.parts = []
        self.filled = 0


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def read_unit(unit: WorkUnit) -> Iterator[Record]:
    """The records of one work unit, in file and item order."""
    for part in unit.parts:
        yield from _read_range(part.file, part.start, part.stop)


def read_file(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Every record of one file (or of every file under a directory)."""
    for file in discover([path]):
        yield from _read_range(file, 0, None)


def _read_range(file: InputFile, start: int, stop: int | None) -> Iterator[Record]:
    if file.format not in _SPLITTABLE or stop is None:
        # closing() shuts the file as soon as the range ends, not when the generator is collected.
        with closing(_iter_items(file)) as items:
            for index, item in enumerate(itertools.islice(items, start, stop), start=start):
                yield from _records_from_item(file, index, item)
        return
    cursor = _ItemCursor.take(file, start)
    try:
        for index, item in cursor.advance(start, stop):
            yield from _records_from_item(file, index, item)
    except BaseException:
        cursor.close()
        raise
    cursor.park()


class _ItemCursor:
    """A file's item stream, kept open after a range where the next range may go on from it.

    Ranges of one big file are handed out in order, so a worker's next unit of a gzipped JSON
    Lines file usually starts after its last one: carrying on from the open stream reads the
    file once per worker instead of decompressing its head again for every unit (the last
    unit of a 100,000-line file used to cost five times the first). One per process.
    """

    _parked: _ItemCursor | None = None

    def __init__(self, file: InputFile) -> None:
        self.file = file
        self.identity = _file_identity(file.path)
        self.items = _iter_items(file)
        self.position = 0

    @classmethod
    def take(cls, file: InputFile, start: int) -> _ItemCursor:
        """The parked cursor if it is on this unchanged file at or before ``start``, else a
        new one at the file's first item."""
        cursor, cls._parked = cls._parked, None
        if cursor is not None:
            if (
                cursor.file == file
                and cursor.position <= start
                and cursor.identity == _file_identity(file.path)
            ):
                return cursor
            cursor.close()
        return cls(file)

    def advance(self, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """Items ``start`` … ``stop - 1`` with their indexes (fewer where the stream ends)."""
        self.position += sum(1 for _ in itertools.islice(self.items, start - self.position))
        if self.position < start:
            return
        for item in itertools.islice(self.items, stop - start):
            self.position += 1
            yield self.position - 1, item

    def park(self) -> None:
        if _ItemCursor._parked is not None:
            _ItemCursor._parked.close()
        _ItemCursor._parked = self

    def close(self) -> None:
        self.items.close()


def _file_identity(path: str) -> tuple[int, ...] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _iter_items(file: InputFile) -> Iterator[Any]:
    """One value per item, in file order; a ``_Failure`` stands for an unreadable rest."""
    readers = {
        JSONL: _jsonl_items,
        JSON: _json_document_items,
        CSV: _csv_items,
        CIF: _cif_file_items,
        TAR: _tar_items,
        POSCAR: _poscar_items,
        ASE: _ase_items,
    }
    reader = readers.get(file.format)
    if reader is None:
        yield _Failure(file.error or f"unknown format {file.format!r}")
        return
    yield from reader(file)


def _records_from_item(file: InputFile, index: int, item: Any) -> Iterator[Record]:
    if isinstance(item, _Failure):
        if file.format == ERROR:  # the whole file is the one item
            yield _error_record(file.stem, file.stem, file.path, item.message)
        else:
            yield _error_record(
                file.stem, f"{file.stem}:{index}", f"{file.path}:{index}", item.message
            )
        return
    converters = {
        JSONL: _records_from_jsonl_line,
        JSON: _records_from_json_entry,
        CSV: _record_from_csv_row,
        CIF: _records_from_cif_block,
        TAR: _records_from_tar_member,
        POSCAR: _records_from_poscar,
        ASE: _records_from_ase_frame,
    }
    yield from converters[file.format](file, index, item)
