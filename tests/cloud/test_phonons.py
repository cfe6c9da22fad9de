"""Harmonic thermodynamics from a phonon DOS, and the Petretto / phonondb readers on real data."""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from cloud.debye import debye_theta_fit, heat_capacity
from cloud.phonons import (
    AVOGADRO,
    BOLTZMANN,
    GAS_CONSTANT,
    PLANCK,
    DataFormatError,
    PhonondbRecord,
    PhononRecord,
    RejectedRow,
    cv_from_dos,
    load_petretto,
    load_petretto_splits,
    load_phonondb,
    stable,
    u_from_dos,
)

R = GAS_CONSTANT
THZ_PER_CM = 2.99792458e-2  # 1 cm⁻¹ in THz
ROOM = 300.0


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # Two intra-op threads on two shared cores thrash under load (30x slower here).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- thermodynamics


def _einstein(x: np.ndarray) -> np.ndarray:
    return x**2 * np.exp(x) / np.expm1(x) ** 2


def test_single_mode_dos_gives_the_einstein_model() -> None:
    freqs_thz = np.array([0.0, 5.0])  # the ν = 0 weight must be skipped
    dos = np.array([7.0, 1.0])
    temperatures = np.array([0.0, 10.0, 100.0, 300.0, 3000.0])
    x = PLANCK * 5e12 / (BOLTZMANN * temperatures[1:])
    cv = cv_from_dos(freqs_thz, dos, temperatures, 2, freq_unit="THz")
    assert cv[0] == 0.0
    np.testing.assert_allclose(cv[1:], 6 * R * _einstein(x), rtol=1e-12)
    energy = u_from_dos(freqs_thz, dos, temperatures, 2, freq_unit="THz")
    quantum = AVOGADRO * PLANCK * 5e12
    np.testing.assert_allclose(energy[0], 6 * quantum / 2, rtol=1e-14)
    np.testing.assert_allclose(energy[1:], 6 * quantum * (0.5 + 1 / np.expm1(x)), rtol=1e-12)


def test_debye_dos_reproduces_the_debye_model() -> None:
    theta = 400.0
    cutoff_thz = BOLTZMANN * theta / PLANCK / 1e12
    edges = np.linspace(0.0, cutoff_thz, 20001)
    centres = 0.5 * (edges[1:] + edges[:-1])
    temperatures = np.array([5.0, 20.0, 100.0, 400.0, 2000.0])
    cv = cv_from_dos(centres, centres**2, temperatures, 3, freq_unit="THz")
    debye = heat_capacity(torch.tensor(theta, dtype=torch.float64), torch.tensor(temperatures), 3)
    np.testing.assert_allclose(cv, debye.numpy(), rtol=1e-6)


def test_units_high_temperature_limit_and_energy_derivative() -> None:
    freqs_cm = np.linspace(0.0, 600.0, 61)
    dos = np.exp(-(((freqs_cm - 250.0) / 80.0) ** 2))
    in_thz = cv_from_dos(freqs_cm * THZ_PER_CM, dos, ROOM, 4, freq_unit="THz")
    np.testing.assert_allclose(cv_from_dos(freqs_cm, dos, ROOM, 4), in_thz, rtol=1e-12)
    np.testing.assert_allclose(cv_from_dos(freqs_cm, dos, 1e6, 4), 12 * R, rtol=1e-6)
    step = 1e-3
    energies = u_from_dos(freqs_cm, dos, [ROOM - step, ROOM + step], 4)
    derivative = (energies[1] - energies[0]) / (2 * step)
    np.testing.assert_allclose(derivative, cv_from_dos(freqs_cm, dos, ROOM, 4), rtol=1e-7)


def test_nonpositive_modes_skipped_or_counted_in_the_normalisation() -> None:
    freqs = np.array([-50.0, 0.0, 200.0, 400.0])
    dos = np.array([1.0, 1.0, 1.0, 1.0])
    skipped = cv_from_dos(freqs, dos, ROOM, 1)
    only_positive = cv_from_dos(freqs[2:], dos[2:], ROOM, 1)
    np.testing.assert_allclose(skipped, only_positive, rtol=1e-14)
    counted = cv_from_dos(freqs, dos, ROOM, 1, normalise_over_all=True)
    np.testing.assert_allclose(counted, skipped / 2, rtol=1e-14)


def test_batched_shapes() -> None:
    freqs = np.linspace(0.0, 800.0, 41)  # shared grid (F,)
    dos = np.random.default_rng(0).random((5, 41))  # (M, F)
    n_atoms = np.array([1, 2, 3, 4, 5])
    temperatures = np.array([10.0, 100.0, 300.0])
    assert cv_from_dos(freqs, dos, temperatures, n_atoms).shape == (5, 3)
    assert u_from_dos(freqs, dos, ROOM, n_atoms).shape == (5,)
    per_material = [cv_from_dos(freqs, dos[i], temperatures, n_atoms[i]) for i in range(5)]
    np.testing.assert_allclose(cv_from_dos(freqs, dos, temperatures, n_atoms), per_material)


def test_invalid_inputs_raise() -> None:
    freqs = np.array([0.0, 100.0])
    with pytest.raises(ValueError, match="freq_unit"):
        cv_from_dos(freqs, [0.0, 1.0], ROOM, 1, freq_unit="meV")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        cv_from_dos(freqs, [0.0, -1.0], ROOM, 1)
    with pytest.raises(ValueError, match="no weight"):
        cv_from_dos(freqs, [1.0, 0.0], ROOM, 1)
    with pytest.raises(ValueError, match="T"):
        u_from_dos(freqs, [0.0, 1.0], -1.0, 1)


# --------------------------------------------------------------------------- readers, synthetic

SILICON = {
    "numbers": [14, 14],
    "positions": [[0.0, 0.0, 0.0], [1.3575, 1.3575, 1.3575]],
    "cell": [[0.0, 2.715, 2.715], [2.715, 0.0, 2.715], [2.715, 2.715, 0.0]],
    "pbc": [True, True, True],
}
GRID = [0.0, 100.0, 200.0, 300.0]


def _write_petretto(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mp_id", "structure", "phfreq", "phdos"])
        writer.writerows(rows)
    return path


def test_petretto_reader_rejects_bad_rows_and_never_evaluates_code(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    injection = f"__import__('os').system('touch {marker}')"
    bad_numbers = dict(SILICON, numbers=[0, 14])
    path = _write_petretto(
        tmp_path / "data.csv",
        [
            ("mp-149", repr(SILICON), repr(GRID), repr([0.0, 0.5, 1.0, 0.2])),
            ("mp-1", injection, repr(GRID), repr([0.0, 0.5, 1.0, 0.2])),
            ("mp-2", repr(SILICON), repr(GRID), repr([0.0, 0.5, 1.0])),
            ("mp-3", repr(SILICON), repr(GRID), repr([0.0, -0.5, 1.0, 0.2])),
            ("mp-149", repr(SILICON), repr(GRID), repr([0.0, 0.5, 1.0, 0.2])),
            ("mp-4", repr(bad_numbers), repr(GRID), repr([0.0, 0.5, 1.0, 0.2])),
        ],
    )
    with pytest.raises(DataFormatError) as raised:
        load_petretto(path)
    message = str(raised.value)
    assert "5 bad row(s)" in message and "data.csv data row 1 (mp-1)" in message
    assert "not a Python literal" in message
    assert not marker.exists()

    rejected: list[RejectedRow] = []
    records = load_petretto(path, rejected=rejected)
    assert [r.mp_id for r in records] == ["mp-149"]
    assert [r.row for r in rejected] == [1, 2, 3, 4, 5]
    reasons = [r.reason for r in rejected]
    assert "shape" in reasons[1] and "negative" in reasons[2]
    assert "duplicate mp_id, first at data row 0" in reasons[3] and "atomic numbers" in reasons[4]
    (silicon,) = records
    assert isinstance(silicon.structure, Structure) and silicon.n_atoms == 2
    assert silicon.structure.composition.reduced_formula == "Si"
    np.testing.assert_allclose(silicon.structure.volume, 2 * 2.715**3, rtol=1e-12)


def test_petretto_splits_must_be_in_range_and_disjoint(tmp_path: Path) -> None:
    (tmp_path / "idx_train.txt").write_text("0\n1\n")
    (tmp_path / "idx_valid.txt").write_text("2\nx\n")
    (tmp_path / "idx_test.txt").write_text("1\n7\n3\n")
    with pytest.raises(DataFormatError, match=r"idx_test.txt line 2: index 7 outside \[0, 5\)"):
        load_petretto_splits(tmp_path, 5)
    rejected: list[RejectedRow] = []
    splits = load_petretto_splits(tmp_path, 5, rejected=rejected)
    assert {name: list(v) for name, v in splits.items()} == {
        "train": [0, 1],
        "valid": [2],
        "test": [3],
    }
    assert [(r.path.name, r.row) for r in rejected] == [
        ("idx_valid.txt", 2),
        ("idx_test.txt", 1),
        ("idx_test.txt", 2),
    ]


def _thermal_entry(mp_id: str, natoms: int = 2, cv_scale: float = 1.0) -> dict:
    temperatures = [0.0, 100.0, 300.0]
    return {
        "mp_id": mp_id,
        "natoms_primitive": natoms,
        "natoms_unitcell": natoms,
        "min_freq_THz": -0.01,
        "max_freq_THz": 15.0,
        "T": temperatures,
        "Cv": [cv_scale * v for v in (0.0, 12.0, 22.0)],
        "S": [0.0, 5.0, 18.0],
        "F": [6.0, 5.8, 2.0],
        "U": [6.0, 7.0, 11.0],
        "dos_THz_edges": [0.0, 15.0],
        "dos_hist": [0.25, 0.25, 0.25, 0.25],
    }


def _structure_entry(mp_id: str) -> dict:
    silicon = Structure(
        Lattice(SILICON["cell"]), ["Si", "Si"], SILICON["positions"], coords_are_cartesian=True
    )
    return {
        "mp_id": mp_id,
        "spg": 227,
        "formula": "Si",
        "nsites": 2,
        "structure": silicon.as_dict(),
    }


def _write_jsonl_gz(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def test_phonondb_reader_joins_by_mp_id_and_reports_every_bad_row(tmp_path: Path) -> None:
    _write_jsonl_gz(
        tmp_path / "structures.jsonl.gz",
        [json.dumps(_structure_entry(i)) for i in ("mp-1", "mp-2", "mp-4", "mp-5")],
    )
    _write_jsonl_gz(
        tmp_path / "thermal.jsonl.gz",
        [
            json.dumps(_thermal_entry("mp-1")),
            json.dumps(_thermal_entry("mp-2", cv_scale=1000.0)),  # Cv in mJ: above 3R
            json.dumps(_thermal_entry("mp-3")),  # no structure
            '{"mp_id": "mp-6", "T": [0.0,',  # truncated line
            json.dumps(_thermal_entry("mp-5", natoms=4)),  # disagrees with the structure
        ],
    )
    with pytest.raises(DataFormatError) as raised:
        load_phonondb(tmp_path)
    assert "thermal.jsonl.gz line 3 (mp-3): no structure for this mp_id" in str(raised.value)

    rejected: list[RejectedRow] = []
    records = load_phonondb(tmp_path, rejected=rejected)
    assert [r.mp_id for r in records] == ["mp-1"]
    found = {(r.path.name, r.row): r.reason for r in rejected}
    assert set(found) == {
        ("thermal.jsonl.gz", 2),
        ("thermal.jsonl.gz", 3),
        ("thermal.jsonl.gz", 4),
        ("thermal.jsonl.gz", 5),
        ("structures.jsonl.gz", 3),
    }
    assert (
        "3R" in found[("thermal.jsonl.gz", 2)] and "invalid JSON" in found[("thermal.jsonl.gz", 4)]
    )
    assert "no thermal properties" in found[("structures.jsonl.gz", 3)]

    (silicon,) = records
    assert isinstance(silicon, PhonondbRecord) and len(silicon.structure) == 2
    np.testing.assert_allclose(silicon.internal_energy_per_atom, [6e3, 7e3, 11e3])  # kJ → J
    np.testing.assert_allclose(silicon.dos_edges_thz, np.linspace(0.0, 15.0, 5))
    assert silicon.is_stable() and not silicon.is_stable(threshold_thz=0.0)
    assert load_phonondb(tmp_path, mp_ids={"mp-1"}, with_structures=False)[0].structure is None


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def petretto(shared_data: Path) -> list[PhononRecord]:
    return load_petretto(shared_data / "petretto_phdos" / "data.csv")


@pytest.fixture(scope="module")
def phonondb_shared(shared_data: Path, petretto: list[PhononRecord]) -> list[PhonondbRecord]:
    """The phonondb materials that are also in Petretto's set (structures not built: faster)."""
    wanted = {record.mp_id for record in petretto}
    return load_phonondb(shared_data / "phonondb", mp_ids=wanted, with_structures=False)


def test_petretto_release_reads_cleanly(petretto: list[PhononRecord]) -> None:
    assert len(petretto) == 1521
    grid = np.arange(0.0, 1001.0, 20.0)
    assert all(np.array_equal(record.frequencies_cm, grid) for record in petretto)
    assert all(math.isclose(record.dos.max(), 1.0) for record in petretto)  # max-normalised
    freqs = np.stack([record.frequencies_cm for record in petretto])
    dos = np.stack([record.dos for record in petretto])
    n_atoms = np.array([record.n_atoms for record in petretto])
    cv_hot = cv_from_dos(freqs, dos, 1e6, n_atoms)
    np.testing.assert_allclose(cv_hot, 3 * R * n_atoms, rtol=1e-5)  # 3n modes per cell


def test_petretto_split_files_point_past_the_end_of_data_csv(
    shared_data: Path, petretto: list[PhononRecord]
) -> None:
    # The released idx files hold 1,522 distinct indices 0…1521 for 1,521 rows: they were made
    # for a table with one more row, so indices after the missing row may be off by one.
    directory = shared_data / "petretto_phdos"
    with pytest.raises(DataFormatError, match=r"idx_train.txt line \d+: index 1521 outside"):
        load_petretto_splits(directory, len(petretto))
    rejected: list[RejectedRow] = []
    splits = load_petretto_splits(directory, len(petretto), rejected=rejected)
    assert len(rejected) == 1
    assert {name: len(indices) for name, indices in splits.items()} == {
        "train": 1191,
        "valid": 141,
        "test": 189,
    }


def test_petretto_cv_agrees_with_phonondb_per_atom_at_300_k(
    petretto: list[PhononRecord], phonondb_shared: list[PhonondbRecord]
) -> None:
    by_id = {record.mp_id: record for record in petretto}
    assert len(phonondb_shared) > 1200
    room = int(np.searchsorted(phonondb_shared[0].temperatures, ROOM))
    difference_kb = np.array(
        [
            (by_id[p.mp_id].heat_capacity(ROOM) / by_id[p.mp_id].n_atoms - p.cv_per_atom[room]) / R
            for p in phonondb_shared
        ]
    )
    # README: "agree to about 0.06 k_B per atom" (that is the mean; the median is ~0.005).
    assert np.median(np.abs(difference_kb)) < 0.02
    assert np.mean(np.abs(difference_kb)) < 0.08
    # Stable materials whose modes all lie on Petretto's 0–1000 cm⁻¹ grid agree closely.
    clean = np.array(
        [p.is_stable() and p.max_freq_thz < 1000 * THZ_PER_CM for p in phonondb_shared]
    )
    assert np.percentile(np.abs(difference_kb[clean]), 90) < 0.06


def test_phonondb_dos_histogram_reproduces_its_own_thermal_properties(
    phonondb_shared: list[PhonondbRecord],
) -> None:
    stable_records = stable(phonondb_shared)
    assert 0 < len(stable_records) < len(phonondb_shared)
    assert all(r.min_freq_thz >= -0.3 for r in stable_records)
    temperatures = stable_records[0].temperatures
    from_dos = np.stack([r.dos_heat_capacity_per_atom(temperatures) for r in stable_records])
    phonopy = np.stack([r.cv_per_atom for r in stable_records])
    for kelvin in (50.0, 100.0, 300.0, 1000.0):
        column = int(np.searchsorted(temperatures, kelvin))
        relative = np.abs(from_dos[:, column] / phonopy[:, column] - 1)
        assert np.median(relative) < 2e-3 and np.percentile(relative, 95) < 1e-2, kelvin
    zero_point = np.array(
        [u_from_dos(r.dos_centres_thz, r.dos_hist, 0.0, 1, freq_unit="THz") for r in stable_records]
    )
    relative = np.abs(
        zero_point / np.array([r.internal_energy_per_atom[0] for r in stable_records]) - 1
    )
    assert np.median(relative) < 2e-3


def _scope_composition(scope: str) -> dict[str, float]:
    """Element → atomic fraction from the last '|' field of a CLOUD SCOPE string."""
    tokens = scope.rsplit("|", 1)[-1].split()
    return {tokens[i]: float(tokens[i + 1]) for i in range(0, len(tokens), 2)}


def _fractions(record: PhononRecord) -> dict[str, float]:
    composition = record.structure.composition
    return {str(element): amount / record.n_atoms for element, amount in composition.items()}


def test_released_cloud_cv_targets_pair_with_petretto_dos_at_300_k(
    shared_data: Path, petretto: list[PhononRecord]
) -> None:
    """Pair each released (SCOPE, C_v, n_atoms) with the Petretto material of the same n_atoms
    and 2-decimal composition; where exactly one matches, compare C_v(300 K) per mole of cells."""
    candidates = defaultdict(list)
    for record in petretto:
        fractions = _fractions(record)
        candidates[(record.n_atoms, frozenset(fractions))].append((fractions, record))
    targets = []
    for name in ("cloud_cv_train_and_val.csv", "cloud_cv_test.csv"):
        with (shared_data / "cloud_reference" / name).open(newline="") as handle:
            targets += list(csv.DictReader(handle))
    relative = []
    for target in targets:
        composition = _scope_composition(target["cloud"])
        n_atoms = round(float(target["n_atoms"]))
        matches = [
            record
            for fractions, record in candidates[(n_atoms, frozenset(composition))]
            if all(abs(fractions[e] - f) <= 0.0051 for e, f in composition.items())
        ]
        if len(matches) == 1:
            released = float(target["cv"])
            relative.append((released - matches[0].heat_capacity(ROOM)) / released)
    relative = np.array(relative)
    paired = len(relative) / len(targets)
    within_1pct = np.mean(np.abs(relative) < 0.01)
    large = relative[np.abs(relative) > 0.02]
    print(
        f"\nCLOUD C_v targets: {len(targets)}, uniquely paired {len(relative)} ({paired:.1%}); "
        f"median |rel| {np.median(np.abs(relative)):.2e}, within 1% {within_1pct:.1%}, "
        f"> 2% off {len(large)} (released lower in {np.mean(large < 0):.0%})"
    )
    assert paired > 0.85  # measured 1374 of 1512
    assert np.median(np.abs(relative)) < 5e-3  # measured 1.5e-3
    assert within_1pct > 0.7  # measured 79%
    # The large misses have a *lower* released C_v: modes above the 1000 cm⁻¹ end of the released
    # grid (O–H, C–O, B–O stretches) are missing here but were in the DOS behind the targets.
    assert np.mean(large < 0) > 0.9


def test_oracle_debye_fit_to_phonopy_curves_is_reasonable(
    phonondb_shared: list[PhonondbRecord],
) -> None:
    sample = stable(phonondb_shared)[:100]
    temperatures = torch.tensor(sample[0].temperatures)
    cv = torch.tensor(np.stack([r.cv_per_atom for r in sample]))
    theta = debye_theta_fit(temperatures, cv, 1.0)
    fitted = heat_capacity(theta.unsqueeze(-1), temperatures, 1.0)
    rms_over_3r = ((fitted - cv) ** 2).mean(-1).sqrt() / (3 * R)
    assert ((theta > 30) & (theta < 3000)).all()
    assert rms_over_3r.median() < 0.05 and not math.isnan(rms_over_3r.max().item())
