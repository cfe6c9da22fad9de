"""Fixtures of the readers tests: real structures from ../shared/data."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest
from pymatgen.core import Structure

from tests.cluster.readers_support import CORPUS


@pytest.fixture(scope="module")
def corpus_dicts(shared_data: Path) -> list[dict]:
    """The first 300 raw lines of the real corpus, parsed."""
    with gzip.open(shared_data / CORPUS, "rt") as handle:
        return [json.loads(line) for line in itertools.islice(handle, 300)]


@pytest.fixture(scope="module")
def real_structures(corpus_dicts: list[dict]) -> list[Structure]:
    """Six real structures of different sizes from the shared corpus."""
    picked = {}
    for record in corpus_dicts:
        picked.setdefault(len(record["structure"]["sites"]), record["structure"])
    return [Structure.from_dict(d) for d in list(picked.values())[:6]]
