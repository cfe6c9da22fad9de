"""VASP POSCAR/CONTCAR files (named so, or ``*.vasp``/``*.poscar``)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from pymatgen.core import Structure

from cluster.readers.records import (
    InputFile,
    Record,
    _BadRecord,
    _checked_record,
    _Failure,
    _strip_compression_suffix,
    _validated,
)
from cluster.readers.streams import _STREAM_ERRORS, _read_all, _stream_failure

_POSCAR_NAME = re.compile(r"^(POSCAR|CONTCAR)([._-].*)?$", re.IGNORECASE)


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
