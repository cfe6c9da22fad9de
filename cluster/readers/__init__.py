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

The package's rooms (this module re-exports their public names; the underscored names are
shared between the rooms, not offered to callers):

- ``formats``: the format names; ``records``: ``InputFile``, ``Record``, ``WorkUnit``, the record contract.
- ``streams``: opening compressed files, stream errors, JSON parsing.
- ``detect``: ``discover`` and format detection.
- ``units``: ``count_items``, ``plan_units``, ``read_unit``, ``read_file``.
- ``structures``: pymatgen and ASE-style dicts, structure values of a record field.
- one room per format family: ``json_formats`` (JSON, JSON Lines, Alexandria, Matbench
  tables), ``optimade``, ``csv_tables``, ``cif``, ``tar``, ``poscar``, ``ase_files``.
"""

from __future__ import annotations

from cluster.readers.cif import structure_from_cif
from cluster.readers.detect import discover
from cluster.readers.formats import FORMATS
from cluster.readers.records import InputFile, Record, UnitPart, WorkUnit
from cluster.readers.structures import structure_from_pymatgen_dict
from cluster.readers.units import count_items, plan_units, read_file, read_unit

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
