"""Fixtures of the cluster tests: real structures from ../shared/data for the readers, and a
real one-node Slurm for the submission tests."""

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


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real one-node Slurm (munged, slurmctld, slurmd) on 127.0.0.1 for the session, torn
    down at its end (tests/cluster/slurm_cluster.py); skips saying why where the programs are missing
    or the daemons do not start."""
    from tests.cluster import slurm_cluster as slurm

    reason = slurm.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        cluster = slurm.start_cluster(tmp_path_factory.mktemp("slurm"))
    except slurm.SlurmStartError as exc:
        pytest.skip(f"the Slurm daemons did not start here: {exc}")
    yield cluster
    cluster.stop()
