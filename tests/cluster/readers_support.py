"""What the readers tests share: the real corpus path and the Record contract."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from cluster.readers import Record, read_file

CORPUS = "corpus/structures.jsonl.gz"


def first(records, n: int) -> list[Record]:
    return list(itertools.islice(records, n))


def read_all(path: Path) -> list[Record]:
    records = list(read_file(path))
    for record in records:
        assert_well_formed(record)
    return records


def assert_well_formed(record: Record) -> None:
    """The Record contract: an error xor a structure, JSON-safe properties, a position."""
    assert record.source and record.source_id and record.position
    assert (record.error is None) == (record.structure is not None), record
    json.dumps(record.properties, allow_nan=False)


def same_structure(a: Structure, b: Structure) -> bool:
    matcher = StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False)
    return a.composition == b.composition and matcher.fit(a, b)
