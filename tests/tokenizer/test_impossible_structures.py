"""Physically impossible cells (issue #17) are refused with the reason: by ``encode``, by
``cloud scope encode`` and by ``cloud corpus build``, which quarantines them."""

from __future__ import annotations

import gzip
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from cluster.readers import read_file
from tokenizer.scope import (
    MIN_DISTANCE,
    ImpossibleStructureError,
    ScopeError,
    cell_of,
    check_physical,
    encode,
)

SAMPLES = ("matbench/*.json.gz", "corpus/structures_sample.jsonl.gz")


def body_centred(a: float) -> Structure:
    """Two atoms at the corner and the centre of a cube of side ``a``: √3/2·a apart."""
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def refusal(lattice: np.ndarray | list, frac: np.ndarray | list) -> str:
    with pytest.raises(ImpossibleStructureError) as caught:
        check_physical(np.asarray(lattice, dtype=float), np.asarray(frac, dtype=float))
    return str(caught.value)


# ----------------------------------------------------------------------------- each reason


def test_a_tenth_of_an_angstrom_cell_with_atoms_0_087_apart() -> None:
    """The issue's first case: a 0.1 Å cell, atoms √3/2 · 0.1 = 0.0866 Å apart."""
    with pytest.raises(
        ImpossibleStructureError, match=r"^atoms 0\.0866 Å apart \(sites 0 and 1; minimum 0\.5 Å\)$"
    ):
        encode(body_centred(0.1))


def test_a_1e300_angstrom_axis_is_refused_before_anything_wraps_it() -> None:
    """The issue's second case: the coordinates along a 1e300 Å axis wrap to zero."""
    lattice = Lattice([[1e300, 0, 0], [0, 5, 0], [0, 0, 5]])
    structure = Structure(lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(
        ImpossibleStructureError, match=r"^lattice vector a is 1e\+300 Å long \(maximum 10000 Å\)$"
    ):
        encode(structure)
    assert refusal([[5, 0, 0], [0, 2e4, 0], [0, 0, 5]], [[0, 0, 0]]).startswith("lattice vector b")


def test_non_finite_coordinates_name_the_site() -> None:
    frac = [[0, 0, 0], [0.5, np.nan, 0.5], [0.5, 0.5, np.inf]]
    assert refusal(np.eye(3) * 5, frac) == "coordinates contain NaN or infinity (site 1)"
    assert refusal([[5, 0, 0], [0, np.inf, 0], [0, 0, 5]], [[0, 0, 0]]) == (
        "lattice contains NaN or infinity"
    )


def test_a_zero_volume_cell() -> None:
    flat = [[5, 0, 0], [0, 5, 0], [5, 5, 0]]  # the third vector lies in the plane of the others
    assert refusal(flat, [[0, 0, 0]]) == "lattice is singular (zero cell volume)"


def test_an_atom_near_its_own_periodic_image() -> None:
    """A 0.3 Å axis puts every atom 0.3 Å from its image, whatever the other axes."""
    structure = Structure(Lattice.tetragonal(5, 0.3), ["Na"], [[0, 0, 0]])
    with pytest.raises(ScopeError, match=r"atoms 0\.3 Å apart \(a site and its periodic image"):
        cell_of(structure)


def test_the_nearest_pair_is_found_across_the_cell_boundary() -> None:
    """0.001 and 0.999 of a 5 Å axis are 0.01 Å apart through the boundary, not 4.99 Å."""
    reason = refusal(np.eye(3) * 5, [[0.5, 0.5, 0.5], [0.001, 0, 0], [0.999, 0, 0]])
    assert reason == "atoms 0.01 Å apart (sites 1 and 2; minimum 0.5 Å)"


def test_a_crowded_big_cell_is_refused_at_once_by_its_density() -> None:
    """100,000 sites in 1 Å³: the pair search is skipped, the density alone is impossible."""
    started = time.perf_counter()
    reason = refusal(np.eye(3), np.random.default_rng(0).uniform(size=(100_000, 3)))
    assert reason.startswith("1e-05 Å³ per atom, denser than atoms 0.5 Å apart can pack")
    assert time.perf_counter() - started < 1.0


def test_real_close_contacts_and_skewed_cells_are_accepted() -> None:
    """H₂'s 0.74 Å bond is real; a basis of long oblique vectors can still be a fine lattice."""
    hydrogen = Structure(Lattice.cubic(4), ["H", "H"], [[0, 0, 0], [0.74 / 4, 0, 0]])
    cell_of(hydrogen)
    skewed = Lattice([[5, 0, 0], [1500, 5, 0], [0, 2000, 5]])  # the cubic 5 Å lattice
    cell_of(Structure(skewed, ["Na"], [[0.2, 0.3, 0.4]]))  # (spglib itself gives up on it)


def test_the_search_agrees_with_pymatgen_neighbour_lists() -> None:
    """Random cells, skewed bases among them: refused exactly when pymatgen finds a pair (or
    an image) nearer than the minimum, with pymatgen's distance."""
    rng = np.random.default_rng(17)
    checked = refused = 0
    while checked < 300:
        lattice = rng.normal(size=(3, 3)) * rng.uniform(0.6, 3)
        if checked % 3 == 0:  # the same lattice in a long, oblique basis
            shear = np.eye(3)
            shear[rng.integers(3), rng.integers(3)] += rng.integers(-20, 20)
            if abs(np.linalg.det(shear)) == 1:
                lattice = shear @ lattice
        if abs(np.linalg.det(lattice)) < 0.5:
            continue
        frac = rng.uniform(-1, 2, size=(int(rng.integers(1, 8)), 3))
        structure = Structure(Lattice(lattice), ["Na"] * len(frac), frac)
        distances = structure.get_neighbor_list(MIN_DISTANCE)[3]
        distances = distances[distances > 1e-9]
        nearest = float(distances.min()) if len(distances) else math.inf
        checked += 1
        try:
            check_physical(lattice, frac)
        except ImpossibleStructureError as exc:
            refused += 1
            found = float(re.match(r"atoms (\S+) Å apart", str(exc)).group(1))
            assert found == pytest.approx(nearest, rel=5e-3), (lattice, frac)
        else:
            assert nearest >= MIN_DISTANCE, (lattice, frac)
    assert 30 < refused < 270  # both outcomes well represented


def test_no_structure_of_the_shipped_samples_is_refused(repo_data: Path) -> None:
    paths = [path for pattern in SAMPLES for path in sorted(repo_data.glob(pattern))]
    refused, read = [], 0
    for path in paths:
        for record in read_file(path):
            assert record.ok, record.error
            read += 1
            try:
                cell_of(record.structure)
            except ImpossibleStructureError as exc:
                refused.append((record.position, str(exc)))
    assert read == 821 + 300 + 2986
    assert refused == []


# ----------------------------------------------------------------------------- both paths


@pytest.fixture
def mixed_jsonl(tmp_path: Path, repo_data: Path) -> Path:
    """Twelve real structures and, as the fifth line, the issue's 0.1 Å cell, all of one
    source (the file's: the real lines lose their ``source`` field)."""
    with gzip.open(repo_data / "corpus" / "structures_sample.jsonl.gz", "rt") as handle:
        lines = [json.loads(next(handle)) for _ in range(12)]
    for line in lines:
        del line["source"]
    impossible = {"id": "impossible-1", "structure": body_centred(0.1).as_dict()}
    lines.insert(4, impossible)
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_cloud_scope_encode_names_the_reason(mixed_jsonl: Path, capsys) -> None:
    from train.cli import main

    assert main(["scope", "encode", str(mixed_jsonl)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"error: {mixed_jsonl}:4: atoms 0.0866 Å apart (sites 0 and 1; minimum 0.5 Å)"
    )
    assert len(captured.out.splitlines()) == 12


def test_corpus_build_quarantines_exactly_the_impossible_one(
    ray_session, mixed_jsonl: Path, tmp_path: Path
) -> None:
    from cluster.corpus import build_corpus

    out = tmp_path / "corpus"
    manifest = build_corpus([mixed_jsonl], out, shard_size=64, workers=2, progress=False)
    assert list(manifest["counts"]) == ["mixed"]
    counts = manifest["counts"]["mixed"]
    assert counts["read"] == 13 and counts["quarantined"] == 1
    assert counts["written"] + counts["duplicates"] == 12
    lines = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert lines == [
        {
            "source": "mixed",
            "position": f"{mixed_jsonl}:4",
            "source_id": "impossible-1",
            "reason": "atoms 0.0866 Å apart (sites 0 and 1; minimum 0.5 Å)",
        }
    ]
