"""Structure readers for corpus building: find inputs, cut them into work units, read records.

The corpus builder runs on many workers, so reading is split in three steps:

1. ``discover(paths)`` expands directories and detects each file's format (by content and
   extension; gzip, bz2 and xz are decompressed transparently).
2. ``plan_units(files, unit_size)`` cuts the files into deterministic ``WorkUnit``s: ranges of
   items (JSONL lines, CSV rows, tar members, CIF data blocks, entries of a JSON document)
   that depend only on the files and ``unit_size``, never on the number of workers.
3. ``read_unit(unit)`` yields one ``Record`` per structure, in a worker, with nothing shared.

Nothing is dropped silently: what cannot be read becomes a ``Record`` whose ``error`` says why
and whose ``position`` says where. Readers raise only for programming errors.

Positions are ``<path>:<item index>`` (0-based), ``<path>:<item>:<k>`` when one item holds several
structures (an OPTIMADE page on one JSONL line, a multi-block CIF in a tar member), tar members
are ``<path>:<member name>``, and a whole-file failure is just ``<path>``. Error messages give
1-based line numbers, as editors do.

A ``Record`` that has no error holds an ordered, 3D-periodic structure of real elements with
finite coordinates, at least one site and a non-degenerate lattice.
"""

from __future__ import annotations

import ast
import bz2
import csv
import gc
import gzip
import io
import itertools
import json
import lzma
import math
import os
import re
import sys
import tarfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from pymatgen.core import Composition, DummySpecies, Element, Lattice, Species, Structure

try:  # orjson comes with pymatgen and parses JSON about 3x faster than the standard library
    import orjson
except ImportError:  # pragma: no cover - pymatgen depends on it
    orjson = None

__all__ = [
    "FORMATS",
    "InputFile",
    "Record",
    "UnitPart",
    "WorkUnit",
    "count_items",
    "discover",
    "plan_units",
    "read_file",
    "read_unit",
    "structure_from_cif",
    "structure_from_pymatgen_dict",
]

JSONL, JSON, CSV, CIF, TAR, POSCAR, ASE, ERROR = (
    "jsonl",
    "json",
    "csv",
    "cif",
    "tar",
    "poscar",
    "ase",
    "error",
)
FORMATS = (JSONL, JSON, CSV, CIF, TAR, POSCAR, ASE, ERROR)

# Formats whose items can be read from any start index at the cost of skipping the earlier
# ones; a JSON document must be parsed whole, so splitting it would parse it once per unit.
_SPLITTABLE = frozenset({JSONL, CSV, TAR, CIF})

_PEEK_BYTES = 1 << 16
_MIN_VOLUME = 1e-3  # Å³; below this the lattice vectors are (nearly) coplanar
_COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
_TAR_SUFFIXES = (".tar", ".tgz", ".tbz2", ".txz")
_FORMAT_SUFFIXES = (
    ".jsonl",
    ".ndjson",
    ".json",
    ".csv",
    ".mcif",
    ".cif",
    ".tar",
    ".tgz",
    ".tbz2",
    ".txz",
    ".vasp",
    ".poscar",
    ".extxyz",
    ".xyz",
    ".traj",
    ".res",
    ".gen",
)
# The extension tells ASE which reader to use; text formats are read from decompressed text.
_ASE_FORMATS = {
    ".extxyz": "extxyz",
    ".xyz": "extxyz",
    ".traj": "traj",
    ".res": "res",
    ".gen": "gen",
}
_ASE_BINARY_FORMATS = frozenset({"traj"})
_POSCAR_NAME = re.compile(r"^(POSCAR|CONTCAR)([._-].*)?$", re.IGNORECASE)
_CIF_BLOCK_START = re.compile(r"^[ \t]*data_", re.IGNORECASE | re.MULTILINE)
_CIF_SNIFF = re.compile(
    rb"^[ \t]*data_\S*\s.*?_cell_length_a", re.IGNORECASE | re.MULTILINE | re.DOTALL
)
_INTEGER = re.compile(r"^[+-]?\d+$")

# Preferred id fields, most specific first; the first one present becomes source_id.
_ID_KEYS = ("id", "material_id", "mp_id", "mat_id", "entry_id", "task_id", "mbid", "jid")
_PANDAS_INDEX_COLUMNS = ("", "Unnamed: 0")
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError)
# ValueError covers JSONDecodeError and UnicodeDecodeError; the standard library's parser
# recurses, so absurdly nested input raises RecursionError.
_JSON_ERRORS = (ValueError, RecursionError)


# ---------------------------------------------------------------------------------------------
# Public data types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input file with its detected format; ``format == "error"`` carries the reason."""

    path: str
    format: str
    compression: str | None = None
    error: str | None = None
    ase_format: str | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @cached_property
    def stem(self) -> str:
        """The file name without compression and format extensions: the default source name."""
        return _source_stem(self.name)


@dataclass
class Record:
    """One structure from an input, or the reason why it could not be read."""

    source: str
    source_id: str
    position: str
    structure: Structure | None
    properties: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class UnitPart:
    """Items ``start`` (inclusive) to ``stop`` (exclusive) of one file."""

    file: InputFile
    start: int
    stop: int

    @property
    def n_items(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class WorkUnit:
    """A deterministic slice of the input: parts of one big file, or several small whole files."""

    index: int
    parts: tuple[UnitPart, ...]

    @property
    def n_items(self) -> int:
        return sum(part.n_items for part in self.parts)


class _BadRecord(ValueError):
    """Content that cannot become a valid structure; the message is the record's error."""


class _Failure(NamedTuple):
    """An item that stands for the unreadable rest of a stream (truncated gzip, bad tar...)."""

    message: str


# ---------------------------------------------------------------------------------------------
# Discovery and format detection
# ---------------------------------------------------------------------------------------------


def discover(paths: Iterable[str | os.PathLike[str]]) -> list[InputFile]:
    """Expand directories (recursively, sorted, hidden names skipped) and detect formats.

    Paths keep their given order; a file reached twice is listed once. Missing, unreadable and
    unknown files come back with ``format == "error"`` so that reading them gives one error record.
    """
    files: list[InputFile] = []
    seen: set[str] = set()
    for given in paths:
        found, unreadable = _expand(Path(given))
        for path in found:
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            files.append(_detect(path))
        files.extend(unreadable)
    return files


def _expand(path: Path) -> tuple[list[Path], list[InputFile]]:
    """The files under ``path``, and the folders that could not be listed (as error inputs)."""
    if not path.is_dir():
        return [path], []
    found = []
    unreadable: list[InputFile] = []

    def report(error: OSError) -> None:
        where = error.filename or str(path)
        unreadable.append(InputFile(str(where), ERROR, error=f"unreadable directory: {error}"))

    # Symlinked folders are followed (datasets are often assembled from links), so a link back
    # up the tree (``sub/up -> ..``) would make the walk endless: each real folder is entered
    # once, by the first path that reaches it.
    visited: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(path, onerror=report, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        # Hidden entries are VCS folders, editor swap files and macOS resource forks.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in names if not n.startswith("."))
    found.sort(key=lambda p: p.relative_to(path).parts)
    return found, sorted(unreadable, key=lambda f: f.path)


def _detect(path: Path) -> InputFile:
    text_path = str(path)
    try:
        if not path.exists():
            return InputFile(text_path, ERROR, error="no such file or directory")
        if not path.is_file():
            return InputFile(text_path, ERROR, error="not a regular file")
        size = path.stat().st_size
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as exc:
        return InputFile(text_path, ERROR, error=f"unreadable: {exc}")
    if size == 0:
        return InputFile(text_path, ERROR, error="empty file")
    unsupported = _unsupported_container(magic)
    if unsupported:
        return InputFile(text_path, ERROR, error=unsupported)
    compression = _compression_from_magic(magic)
    inner_name = _strip_compression_suffix(path.name).lower()
    try:
        return _detect_inner(text_path, inner_name, compression)
    except _STREAM_ERRORS as exc:
        kind = compression or "file"
        return InputFile(text_path, ERROR, compression, error=f"corrupt {kind}: {_describe(exc)}")


def _detect_inner(path: str, inner_name: str, compression: str | None) -> InputFile:
    if inner_name.endswith(_TAR_SUFFIXES):
        return InputFile(path, TAR, compression)
    if inner_name.endswith((".cif", ".mcif")):
        return InputFile(path, CIF, compression)
    if _POSCAR_NAME.match(inner_name) or inner_name.endswith((".vasp", ".poscar")):
        return InputFile(path, POSCAR, compression)
    ase_suffix = next((s for s in _ASE_FORMATS if inner_name.endswith(s)), None)
    if ase_suffix:
        return InputFile(path, ASE, compression, ase_format=_ASE_FORMATS[ase_suffix])

    head = _peek(path, compression)
    if not head.strip():
        what = f"empty after {compression} decompression" if compression else "only whitespace"
        return InputFile(path, ERROR, compression, error=f"empty file ({what})")
    if inner_name.endswith(".csv"):
        return _detect_csv(path, compression, head)
    if inner_name.endswith((".jsonl", ".ndjson")):
        return InputFile(path, JSONL, compression)
    if inner_name.endswith(".json") or _looks_like_json(head):
        return InputFile(path, _json_or_jsonl(head), compression)
    if len(head) > 262 and head[257:262] == b"ustar":
        return InputFile(path, TAR, compression)
    if _CIF_SNIFF.search(head):
        return InputFile(path, CIF, compression)
    return InputFile(
        path,
        ERROR,
        compression,
        error="unknown format (not JSON, JSON Lines, CSV, CIF, POSCAR, tar or an ASE format)",
    )


def _detect_csv(path: str, compression: str | None, head: bytes) -> InputFile:
    header_line = head.decode("utf-8-sig", "replace").splitlines()[0]
    try:
        header = next(csv.reader([header_line]), [])
    except csv.Error as exc:
        return InputFile(path, ERROR, compression, error=f"unreadable CSV header: {exc}")
    if _structure_column(header) is None:
        return InputFile(
            path,
            ERROR,
            compression,
            error=f"CSV without a cif or structure column (columns: {', '.join(header)[:200]})",
        )
    return InputFile(path, CSV, compression)


def _looks_like_json(head: bytes) -> bool:
    """An object, or an array whose first element starts like a JSON value (not ``[PAD]``)."""
    text = head.lstrip()
    if text.startswith(b"{"):
        return True
    return re.match(rb'\[\s*([{\["\]\d-]|true|false|null)', text) is not None


def _json_or_jsonl(head: bytes) -> str:
    """JSON Lines when the first line is a whole JSON value and another value follows."""
    lines = head.lstrip().split(b"\n", 2)
    if len(lines) < 2 or not lines[1].strip().startswith((b"{", b"[")):
        return JSON
    try:
        _loads(lines[0])
    except _JSON_ERRORS:
        return JSON
    return JSONL


def _unsupported_container(magic: bytes) -> str | None:
    if magic.startswith(b"PK\x03\x04"):
        return "unsupported format: zip archive (unpack it or use tar)"
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        return "unsupported compression: zstd (recompress with gzip, bz2 or xz)"
    return None


def _compression_from_magic(magic: bytes) -> str | None:
    if magic.startswith(b"\x1f\x8b"):
        return "gzip"
    if magic.startswith(b"BZh"):
        return "bz2"
    if magic.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    return None


def _strip_compression_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _source_stem(name: str) -> str:
    stem = _strip_compression_suffix(name)
    lowered = stem.lower()
    for suffix in _FORMAT_SUFFIXES:
        if lowered.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _open_binary(path: str, compression: str | None) -> IO[bytes]:
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _peek(path: str, compression: str | None, size: int = _PEEK_BYTES) -> bytes:
    """The first ``size`` decompressed bytes, or fewer when the stream breaks after some data."""
    chunks: list[bytes] = []
    got = 0
    with _open_binary(path, compression) as handle:
        try:
            while got < size:
                chunk = handle.read1(size - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except _STREAM_ERRORS:
            if not chunks:
                raise
    return b"".join(chunks)


def _read_all(path: str, compression: str | None) -> bytes:
    with _open_binary(path, compression) as handle:
        return handle.read()


def _decompress_bytes(data: bytes) -> bytes:
    compression = _compression_from_magic(data[:8])
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "bz2":
        return bz2.decompress(data)
    if compression == "xz":
        return lzma.decompress(data)
    return data


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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


def _error_record(
    source: str,
    source_id: str,
    position: str,
    message: str,
    properties: dict[str, Any] | None = None,
) -> Record:
    return Record(source, source_id, position, None, properties or {}, message)


def _checked_record(
    source: str,
    source_id: str,
    position: str,
    properties: dict[str, Any],
    build: Any,
    *args: Any,
) -> Record:
    """Run ``build(*args)``, which returns a validated structure; any failure of the content
    becomes the record's error.

    Third-party parsers (CifParser, Poscar, ASE) raise arbitrary exception types on bad input,
    hence the broad catch: one bad structure must not stop a worker.
    """
    try:
        structure = build(*args)
    except _BadRecord as exc:
        return _error_record(source, source_id, position, str(exc), properties)
    except Exception as exc:
        return _error_record(source, source_id, position, _describe(exc), properties)
    return Record(source, source_id, position, structure, properties)


# --- line and byte streams --------------------------------------------------------------------


def _stream_failure(file: InputFile, exc: BaseException, after: int, unit: str) -> _Failure:
    kind = f"{file.compression} stream" if file.compression else "file"
    return _Failure(f"truncated or corrupt {kind} after {after} {unit}: {_describe(exc)}")


def _jsonl_items(file: InputFile) -> Iterator[bytes | _Failure]:
    count = 0
    try:
        with _open_binary(file.path, file.compression) as handle:
            for line in handle:
                yield line
                count += 1
    except _STREAM_ERRORS as exc:
        yield _stream_failure(file, exc, count, "lines")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing a big document creates millions of objects, each allocation burst triggering a
    cyclic-GC pass over the growing heap: pausing the collector makes it about 3x faster."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _loads(data: bytes | str) -> Any:
    """Parse JSON; the standard library is the fallback for NaN/Infinity that orjson refuses."""
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


# --- JSON values: one parser for JSON documents and JSON Lines ---------------------------------


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


def _is_optimade_response(value: dict[str, Any]) -> bool:
    data = value.get("data")
    if isinstance(data, dict):
        return "attributes" in data
    if not isinstance(data, list):
        return False
    if not data:
        return "meta" in value or "links" in value
    return isinstance(data[0], dict) and "attributes" in data[0]


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


def _first_id_key(item: dict[str, Any]) -> str | None:
    return next((k for k in _ID_KEYS if _is_scalar_id(item.get(k))), None)


def _is_scalar_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and str(value) != ""


def _scalar_properties(item: dict[str, Any], skip: set[Any]) -> dict[str, Any]:
    """The JSON-safe scalars of ``item``: numbers, strings, booleans; NaN becomes None."""
    properties = {}
    for key, value in item.items():
        if key in skip:
            continue
        scalar, ok = _json_scalar(value)
        if ok:
            properties[str(key)] = scalar
    return properties


def _json_scalar(value: Any) -> tuple[Any, bool]:
    if value is None or isinstance(value, bool | str | int):
        return value, True
    if isinstance(value, float):
        return (value if math.isfinite(value) else None), True
    if isinstance(value, np.generic) and value.ndim == 0:
        return _json_scalar(value.item())
    return None, False


# --- building structures ------------------------------------------------------------------------


def _valid_structure_from_value(value: Any) -> Structure:
    """A structure stored in a record field: pymatgen dict, ASE-style dict, CIF text or JSON text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return _valid_structure_from_value(_parse_dict_text(text))
        if _CIF_BLOCK_START.search(text):
            return _validated(_single_cif_structure(text))
        raise _BadRecord("structure text is neither CIF nor a JSON/Python dict")
    if isinstance(value, dict):
        if "lattice" in value and "sites" in value:
            return _valid_structure_from_pymatgen_dict(value)
        if "numbers" in value and "positions" in value and "cell" in value:
            return _validated(_structure_from_ase_dict(value))
        if "lattice" not in value:
            raise _BadRecord("missing lattice")
        raise _BadRecord("structure dict without sites")
    if value is None:
        raise _BadRecord("missing structure")
    raise _BadRecord(f"unsupported structure value of type {type(value).__name__}")


def _parse_dict_text(text: str) -> Any:
    try:
        return _loads(text)
    except _JSON_ERRORS:
        pass
    try:  # pandas writes dicts with Python's repr (single quotes, True)
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _BadRecord(f"structure text is not a JSON or Python dict: {exc}") from None


_COMPOSITION_CACHE: dict[tuple[str, float | None, float], Composition] = {}
_SPECIES_KEYS = frozenset({"element", "occu", "oxidation_state", "@module", "@class", "@version"})
_SITE_KEYS = frozenset({"species", "abc", "xyz", "label", "properties"})
_PLAIN_SPECIES_CLASSES = frozenset({None, "Element", "Species"})


def structure_from_pymatgen_dict(data: dict[str, Any]) -> Structure:
    """``Structure.from_dict`` about 2-3x faster, with the same sites, order, labels and properties.

    The fast path builds ``Structure(lattice, compositions, frac_coords)`` from the dict's arrays
    and reuses one ``Composition`` per species; dicts it does not cover exactly (Cartesian-only
    sites, dummy species, spins, nested site properties) go through ``Structure.from_dict``.
    The structure is not validated (it may be disordered); records are.
    """
    return _structure_from_pymatgen_dict(data)[0]


def _valid_structure_from_pymatgen_dict(data: dict[str, Any]) -> Structure:
    structure, prechecked = _structure_from_pymatgen_dict(data)
    return structure if prechecked else _validated(structure)


def _structure_from_pymatgen_dict(data: dict[str, Any]) -> tuple[Structure, bool]:
    """The structure, and whether the fast path already checked everything ``_validated`` does."""
    if not isinstance(data, dict):
        raise _BadRecord(f"structure is a {type(data).__name__}, not a dict")
    lattice_data = data.get("lattice")
    if not isinstance(lattice_data, dict):
        raise _BadRecord("missing lattice")
    sites = data.get("sites")
    if not isinstance(sites, list):
        raise _BadRecord("missing sites")
    if not sites:
        raise _BadRecord("zero sites")
    fast = _fast_structure(lattice_data, sites, data)
    if fast is not None:
        return fast
    return Structure.from_dict(data), False


def _fast_structure(
    lattice_data: dict[str, Any], sites: list[Any], data: dict[str, Any]
) -> tuple[Structure, bool] | None:
    matrix = lattice_data.get("matrix")
    if matrix is None:
        return None
    pbc = _pbc(lattice_data)
    matrix_array = _float_array(matrix, (3, 3), "lattice")
    species = []
    ordered = True
    for site in sites:
        if not isinstance(site, dict) or not _SITE_KEYS.issuperset(site) or "abc" not in site:
            return None
        composition = _site_composition(site.get("species"))
        if composition is None:
            return None
        species.append(composition)
        ordered = ordered and len(site["species"]) == 1 and site["species"][0].get("occu", 1) == 1
    site_properties = _uniform_site_properties(sites)
    if site_properties is None:
        return None
    labels = [site.get("label") for site in sites]
    coords = _float_array([site["abc"] for site in sites], (len(sites), 3), "coordinates")
    structure = Structure(
        Lattice(matrix_array, pbc=pbc),
        species,
        coords,
        charge=data.get("charge"),
        site_properties=site_properties or None,
        labels=labels if any(label is not None for label in labels) else None,
        properties=data.get("properties"),
    )
    # The same checks as _validated, on the arrays at hand: a per-site pass costs a third of
    # the reading time. Anything odd goes to _validated, which words the error.
    prechecked = (
        ordered
        and all(pbc)
        and bool(np.isfinite(matrix_array).all())
        and _cell_volume(matrix_array) >= _MIN_VOLUME
        and bool(np.isfinite(coords).all())
    )
    return structure, prechecked


def _cell_volume(matrix: np.ndarray) -> float:
    # The triple product in plain floats: np.linalg.det costs more than the rest of the check.
    (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = matrix.tolist()
    return abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))


def _site_composition(species: Any) -> Composition | None:
    if not isinstance(species, list) or not species:
        return None
    if len(species) > 1:
        return _mixed_composition(species)
    entry = species[0]
    if not _is_plain_species(entry):
        return None
    key = (entry["element"], entry.get("oxidation_state"), entry.get("occu", 1))
    composition = _COMPOSITION_CACHE.get(key)
    if composition is None:
        composition = Composition({_species(key[0], key[1]): key[2]})
        if len(_COMPOSITION_CACHE) < 50_000:  # bounded: occupancies are free floats
            _COMPOSITION_CACHE[key] = composition
    return composition


def _mixed_composition(species: list[Any]) -> Composition | None:
    if not all(_is_plain_species(entry) for entry in species):
        return None
    amounts: dict[Element | Species, float] = {}
    for entry in species:
        specie = _species(entry["element"], entry.get("oxidation_state"))
        amounts[specie] = amounts.get(specie, 0) + entry.get("occu", 1)
    return Composition(amounts)


def _is_plain_species(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("element"), str)
        and _SPECIES_KEYS.issuperset(entry)
        and entry.get("@class") in _PLAIN_SPECIES_CLASSES
    )


def _species(symbol: str, oxidation_state: float | None) -> Element | Species:
    if oxidation_state is None:
        return _element(symbol)
    return Species(symbol, oxidation_state)


def _element(symbol: str) -> Element:
    try:
        return Element(symbol)
    except ValueError:
        raise _BadRecord(f"unknown element {symbol!r}") from None


def _uniform_site_properties(sites: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """Per-key value lists when every site has the same plain properties; None when not."""
    first = sites[0].get("properties") or {}
    keys = set(first)
    if not keys:
        return {} if all(not site.get("properties") for site in sites) else None
    columns: dict[str, list[Any]] = {key: [] for key in keys}
    for site in sites:
        properties = site.get("properties") or {}
        if set(properties) != keys:
            return None
        for key, value in properties.items():
            if isinstance(value, dict):  # may hold MSON objects that from_dict decodes
                return None
            columns[key].append(value)
    return columns


def _pbc(lattice_data: dict[str, Any]) -> tuple[bool, bool, bool]:
    pbc = lattice_data.get("pbc", (True, True, True))
    if not isinstance(pbc, list | tuple) or len(pbc) != 3:
        raise _BadRecord(f"invalid pbc {pbc!r}")
    return (bool(pbc[0]), bool(pbc[1]), bool(pbc[2]))


def _float_array(values: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError):
        raise _BadRecord(f"invalid {what} (null or non-numeric values)") from None
    if array.shape != shape:
        raise _BadRecord(f"invalid {what} shape {array.shape}, expected {shape}")
    return array


def _structure_from_ase_dict(value: dict[str, Any]) -> Structure:
    """``{"numbers", "positions" (Cartesian, Å), "cell", "pbc"}`` as in the Petretto CSV."""
    numbers = value["numbers"]
    if not isinstance(numbers, list) or not numbers:
        raise _BadRecord("zero sites")
    pbc = value.get("pbc", (True, True, True))
    if not all(pbc):
        raise _BadRecord(f"not periodic in 3D (pbc={list(pbc)})")
    cell = _float_array(value["cell"], (3, 3), "lattice")
    positions = _float_array(value["positions"], (len(numbers), 3), "coordinates")
    species = [_element_from_number(z) for z in numbers]
    return Structure(Lattice(cell), species, positions, coords_are_cartesian=True)


def _element_from_number(number: Any) -> Element:
    try:
        return Element.from_Z(int(number))
    except (TypeError, ValueError):
        raise _BadRecord(f"invalid atomic number {number!r}") from None


def _validated(structure: Structure) -> Structure:
    """Reject what the corpus cannot use; the messages are the records' errors."""
    n_sites = len(structure)
    if n_sites == 0:
        raise _BadRecord("zero sites")
    lattice = structure.lattice
    if not all(lattice.pbc):
        raise _BadRecord(f"not periodic in 3D (pbc={list(lattice.pbc)})")
    if not np.all(np.isfinite(lattice.matrix)):
        raise _BadRecord("NaN or infinite lattice vectors")
    volume = _cell_volume(lattice.matrix)
    if not volume >= _MIN_VOLUME:
        raise _BadRecord(f"degenerate lattice (volume {volume:.3g} Å³)")
    frac_coords = structure.frac_coords
    bad_rows = np.flatnonzero(~np.all(np.isfinite(frac_coords), axis=1))
    if bad_rows.size:
        raise _BadRecord(f"NaN or infinite coordinates (site {int(bad_rows[0])})")
    if not structure.is_ordered:
        site = next(i for i, s in enumerate(structure) if not s.is_ordered)
        raise _BadRecord(
            f"partial occupancy (disordered site {site}: {structure[site].species_string})"
        )
    dummy = [sp for sp in structure.types_of_species if isinstance(sp, DummySpecies)]
    if dummy:
        raise _BadRecord(f"non-element species {dummy[0]}")
    return structure


# --- OPTIMADE ---------------------------------------------------------------------------------


def _record_from_optimade(
    source: str, source_id: str, position: str, item: dict[str, Any]
) -> Record:
    if _is_scalar_id(item.get("id")):
        source_id = str(item["id"])
    attributes = item["attributes"]
    properties = _scalar_properties(attributes, skip={"immutable_id"})
    return _checked_record(source, source_id, position, properties, _optimade_structure, attributes)


def _optimade_structure(attributes: dict[str, Any]) -> Structure:
    _check_optimade_dimensions(attributes)
    if attributes.get("lattice_vectors") is None:
        raise _BadRecord("missing lattice")
    sites = attributes.get("species_at_sites")
    positions = attributes.get("cartesian_site_positions")
    if not sites or not positions:
        raise _BadRecord("zero sites")
    if len(sites) != len(positions):
        raise _BadRecord(f"{len(sites)} species_at_sites for {len(positions)} positions")
    lattice = _float_array(attributes["lattice_vectors"], (3, 3), "lattice")
    coords = _float_array(positions, (len(positions), 3), "coordinates")
    elements = _optimade_species_elements(attributes.get("species"), sites)
    return _validated(Structure(Lattice(lattice), elements, coords, coords_are_cartesian=True))


def _check_optimade_dimensions(attributes: dict[str, Any]) -> None:
    dimension_types = attributes.get("dimension_types")
    if dimension_types is not None and list(dimension_types) != [1, 1, 1]:
        raise _BadRecord(f"not periodic in 3D (dimension_types={list(dimension_types)})")
    periodic = attributes.get("nperiodic_dimensions")
    if periodic is not None and periodic != 3:
        raise _BadRecord(f"not periodic in 3D (nperiodic_dimensions={periodic})")


def _optimade_species_elements(species: Any, sites: list[str]) -> list[Element]:
    """The element of each site, refusing mixed or partially occupied OPTIMADE species."""
    by_name: dict[str, Element] = {}
    for entry in species or []:
        name = entry.get("name")
        symbols = entry.get("chemical_symbols") or []
        concentration = entry.get("concentration") or [1.0] * len(symbols)
        if len(symbols) != 1 or "vacancy" in symbols or min(concentration) < 1 - 1e-6:
            mix = ", ".join(f"{s}:{c:.3f}" for s, c in zip(symbols, concentration, strict=False))
            site = next((i for i, s in enumerate(sites) if s == name), None)
            raise _BadRecord(f"partial occupancy (disordered site {site}: {mix})")
        by_name[name] = _element(symbols[0])
    # Without a species list the names are the element symbols.
    return [by_name[name] if name in by_name else _element(name) for name in sites]


# --- CSV ----------------------------------------------------------------------------------------


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
    properties = {}
    for column, text in cells.items():
        if column in skip:
            continue
        value, ok = _csv_scalar(text)
        if ok:
            name = "index" if column in _PANDAS_INDEX_COLUMNS else column
            properties[name] = value
    return properties


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


# --- CIF ----------------------------------------------------------------------------------------


class _CifBlock(NamedTuple):
    text: str
    n_blocks: int


def _cif_file_items(file: InputFile) -> Iterator[_CifBlock | _Failure]:
    try:
        text = _read_all(file.path, file.compression).decode("utf-8-sig", "replace")
    except _STREAM_ERRORS as exc:
        yield _stream_failure(file, exc, 0, "bytes read")
        return
    blocks = _split_cif_blocks(text)
    for block in blocks:
        yield _CifBlock(block, len(blocks))


def _split_cif_blocks(text: str) -> list[str]:
    """One text per ``data_`` block, so that one bad block fails alone."""
    starts = [match.start() for match in _CIF_BLOCK_START.finditer(text)]
    if not starts:
        return [text]  # the parser reports what is wrong with it
    # What precedes the first block (comments, a BOM) stays with it: nothing is cut away.
    starts[0] = 0
    return [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def _records_from_cif_block(file: InputFile, index: int, block: _CifBlock) -> Iterator[Record]:
    # A one-structure file is named by its stem, as in COD or MP downloads (1000000.cif).
    source_id = file.stem if block.n_blocks == 1 else f"{file.stem}:{index}"
    yield _checked_record(
        file.stem, source_id, f"{file.path}:{index}", {}, _valid_cif_structure, block.text
    )


def structure_from_cif(text: str) -> Structure:
    """The structure of a one-block CIF, cell as given (``primitive=False``), warnings quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pymatgen.io.cif import CifParser

        parser = CifParser.from_str(text)
        structures = parser.parse_structures(primitive=False, on_error="raise")
    if not structures:
        raise _BadRecord("no structure in CIF block")
    if len(structures) > 1:
        raise _BadRecord(f"expected one CIF data block, found {len(structures)}")
    return structures[0]


def _valid_cif_structure(text: str) -> Structure:
    return _validated(structure_from_cif(text))


def _single_cif_structure(text: str) -> Structure:
    blocks = _split_cif_blocks(text)
    if len(blocks) != 1:
        raise _BadRecord(f"expected one CIF data block, found {len(blocks)}")
    return structure_from_cif(blocks[0])


# --- tar archives -------------------------------------------------------------------------------


class _TarMember(NamedTuple):
    archive: tarfile.TarFile
    info: tarfile.TarInfo


def _tar_items(file: InputFile) -> Iterator[_TarMember | _Failure]:
    # Stream mode reads the archive once, front to back; a member's data must be read before
    # the next item is asked for, which _read_range does.
    count = 0
    try:
        with tarfile.open(file.path, mode="r|*") as archive:
            for info in archive:
                if info.isfile() and not os.path.basename(info.name).startswith("."):
                    yield _TarMember(archive, info)
                    count += 1
    except _STREAM_ERRORS as exc:
        yield _stream_failure(file, exc, count, "members")


def _records_from_tar_member(file: InputFile, index: int, member: _TarMember) -> Iterator[Record]:
    name = member.info.name
    position = f"{file.path}:{name}"
    member_stem = _source_stem(os.path.basename(name))
    try:
        handle = member.archive.extractfile(member.info)
        data = _decompress_bytes(handle.read() if handle else b"")
    except (*_STREAM_ERRORS, ValueError) as exc:
        yield _error_record(
            file.stem, member_stem, position, f"unreadable member: {_describe(exc)}"
        )
        return
    inner = _strip_compression_suffix(os.path.basename(name)).lower()
    if not data.strip():
        yield _error_record(file.stem, member_stem, position, "empty member")
    elif inner.endswith((".cif", ".mcif")):
        blocks = _split_cif_blocks(data.decode("utf-8", "replace"))
        for k, block in enumerate(blocks):
            sub_id, sub_position = (
                (member_stem, position)
                if len(blocks) == 1
                else (f"{member_stem}:{k}", f"{position}:{k}")
            )
            yield _checked_record(file.stem, sub_id, sub_position, {}, _valid_cif_structure, block)
    elif _POSCAR_NAME.match(inner) or inner.endswith((".vasp", ".poscar")):
        text = data.decode("utf-8", "replace")
        yield _checked_record(file.stem, member_stem, position, {}, _structure_from_poscar, text)
    elif inner.endswith((".json", ".jsonl")):
        yield from _records_from_json_member(file.stem, member_stem, position, data)
    else:
        message = "unsupported member format (expected .cif, POSCAR/.vasp or .json)"
        yield _error_record(file.stem, member_stem, position, message)


def _records_from_json_member(
    source: str, member_stem: str, position: str, data: bytes
) -> Iterator[Record]:
    try:
        value = _loads(data)
    except _JSON_ERRORS as exc:
        yield _error_record(source, member_stem, position, f"JSON decode error: {exc}")
        return
    entries = _json_entries(value, matbench_task=None)
    for k, entry in enumerate(entries):
        sub_id, sub_position = (
            (member_stem, position)
            if len(entries) == 1
            else (f"{member_stem}:{k}", f"{position}:{k}")
        )
        yield _record_from_entry(source, sub_id, sub_position, entry)


# --- POSCAR ---------------------------------------------------------------------------------------


def _poscar_items(file: InputFile) -> Iterator[str | _Failure]:
    try:
        yield _read_all(file.path, file.compression).decode("utf-8", "replace")
    except _STREAM_ERRORS as exc:
        yield _stream_failure(file, exc, 0, "bytes read")


def _records_from_poscar(file: InputFile, index: int, text: str) -> Iterator[Record]:
    path = Path(file.path)
    # POSCARs are usually named POSCAR inside a folder named after the material.
    generic = _POSCAR_NAME.match(_strip_compression_suffix(path.name)) is not None
    source_id = f"{path.parent.name}/{path.name}" if generic and path.parent.name else file.stem
    yield _checked_record(
        file.stem, source_id, f"{file.path}:{index}", {}, _structure_from_poscar, text
    )


def _structure_from_poscar(text: str) -> Structure:
    if not text.strip():
        raise _BadRecord("empty POSCAR")
    from pymatgen.io.vasp import Poscar

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Poscar.from_str(text, read_velocities=False).structure
    return _validated(structure)


# --- ASE --------------------------------------------------------------------------------------


def _ase_items(file: InputFile) -> Iterator[Any]:
    try:
        import ase.io
    except ImportError:
        yield _Failure(
            f"reading {file.ase_format} files needs ase, which is not installed (pip install ase)"
        )
        return
    try:
        frames = _read_ase_frames(ase.io, file)
    except Exception as exc:  # ASE readers raise many types on bad input
        yield _Failure(f"ase could not read this file: {_describe(exc)}")
        return
    if not frames:
        yield _Failure("no structures in this file")
    yield from frames


def _read_ase_frames(ase_io: Any, file: InputFile) -> list[Any]:
    if file.ase_format in _ASE_BINARY_FORMATS and file.compression is None:
        frames = ase_io.read(file.path, index=":", format=file.ase_format)
    elif file.ase_format in _ASE_BINARY_FORMATS:
        data = _read_all(file.path, file.compression)
        frames = ase_io.read(io.BytesIO(data), index=":", format=file.ase_format)
    else:
        text = _read_all(file.path, file.compression).decode("utf-8", "replace")
        frames = ase_io.read(io.StringIO(text), index=":", format=file.ase_format)
    return list(frames) if isinstance(frames, list) else [frames]


def _records_from_ase_frame(file: InputFile, index: int, atoms: Any) -> Iterator[Record]:
    properties = _scalar_properties(dict(atoms.info), skip=set())
    results = getattr(atoms.calc, "results", None) or {}
    for key, value in _scalar_properties(dict(results), skip=set()).items():
        properties.setdefault(key, value)
    id_key = _first_id_key(atoms.info)
    source_id = str(atoms.info[id_key]) if id_key else f"{file.stem}:{index}"
    properties.pop(id_key, None)
    yield _checked_record(
        file.stem, source_id, f"{file.path}:{index}", properties, _structure_from_atoms, atoms
    )


def _structure_from_atoms(atoms: Any) -> Structure:
    if len(atoms) == 0:
        raise _BadRecord("zero sites")
    if not all(atoms.pbc):
        raise _BadRecord(f"not periodic in 3D (pbc={[bool(p) for p in atoms.pbc]})")
    cell = _float_array(atoms.cell[:], (3, 3), "lattice")
    species = [_element(symbol) for symbol in atoms.get_chemical_symbols()]
    return _validated(Structure(Lattice(cell), species, atoms.positions, coords_are_cartesian=True))
