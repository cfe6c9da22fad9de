"""The names ``InputFile.format`` takes: one per format family, ``"error"`` for an input that
cannot be read at all (its ``InputFile.error`` says why)."""

from __future__ import annotations

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
