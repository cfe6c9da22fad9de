"""Formats read through ASE (extended XYZ, ``.traj``, ``.res``, ``.gen``), one record per frame.

ASE is optional: without it these files give one error record saying how to install it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from pymatgen.core import Lattice, Structure

from cluster.readers.records import (
    InputFile,
    Record,
    _BadRecord,
    _checked_record,
    _describe,
    _Failure,
    _first_id_key,
    _scalar_properties,
    _validated,
)
from cluster.readers.streams import _read_all
from cluster.readers.structures import _element, _float_array

_ASE_BINARY_FORMATS = frozenset({"traj"})


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
