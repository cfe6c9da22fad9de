"""CIF files, one record per ``data_`` block, and the CIF text parser the other rooms use."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import NamedTuple

from pymatgen.core import Structure

from cluster.readers.records import (
    InputFile,
    Record,
    _BadRecord,
    _checked_record,
    _Failure,
    _validated,
)
from cluster.readers.streams import _STREAM_ERRORS, _read_all, _stream_failure

_CIF_BLOCK_START = re.compile(r"^[ \t]*data_", re.IGNORECASE | re.MULTILINE)


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
