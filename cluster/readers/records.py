"""What the readers hand on: input files, work units, records, and the record contract.

Every room of the package builds its ``Record``s through ``_error_record`` and
``_checked_record``, so an item that cannot become a structure always ends as a record whose
``error`` says why; ``_validated`` is the contract a record without an error satisfies.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
from pymatgen.core import DummySpecies, Structure

_MIN_VOLUME = 1e-3  # Å³; below this the lattice vectors are (nearly) coplanar
_COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
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
_INTEGER = re.compile(r"^[+-]?\d+$")

# Preferred id fields, most specific first; the first one present becomes source_id.
_ID_KEYS = ("id", "material_id", "mp_id", "mat_id", "entry_id", "task_id", "mbid", "jid")


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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


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


def _cell_volume(matrix: np.ndarray) -> float:
    # The triple product in plain floats: np.linalg.det costs more than the rest of the check.
    (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = matrix.tolist()
    return abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))


# --- properties and ids -----------------------------------------------------------------------


def _first_id_key(item: dict[str, Any]) -> str | None:
    return next((k for k in _ID_KEYS if _is_scalar_id(item.get(k))), None)


def _is_scalar_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool) and str(value) != ""


def _json_scalar(value: Any) -> tuple[Any, bool]:
    if value is None or isinstance(value, bool | str | int):
        return value, True
    if isinstance(value, float):
        return (value if math.isfinite(value) else None), True
    if isinstance(value, np.generic) and value.ndim == 0:
        return _json_scalar(value.item())
    return None, False


def _scalar_properties(
    item: dict[str, Any],
    skip: set[Any],
    scalar: Callable[[Any], tuple[Any, bool]] = _json_scalar,
) -> dict[str, Any]:
    """The JSON-safe scalars of ``item``: numbers, strings, booleans; NaN becomes None.

    ``scalar`` turns a value into ``(scalar, True)``, or ``(_, False)`` for a value that is
    not one (the CSV room passes its reading of cell text)."""
    properties = {}
    for key, value in item.items():
        if key in skip:
            continue
        converted, ok = scalar(value)
        if ok:
            properties[str(key)] = converted
    return properties
