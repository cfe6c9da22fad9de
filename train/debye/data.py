"""The thermal data: materials with SCOPE strings, atoms per cell and their true C_v(T), U(T)
(``petretto``, ``phonondb``), and the seeded split by material.

* ``petretto``: Petretto et al. (2018) DFPT phonon DOS. C_v(T) and U(T) (harmonic, zero-point
  energy included) are integrated from each DOS (``cloud.phonons``), per mole of the cell of
  the CSV's structure; n_atoms = its number of sites. The released idx_*.txt splits do not fit
  data.csv (1,522 indices for 1,521 rows) and are not used: the split here is our own,
  seeded, by material (``split_materials``).
* ``phonondb``: Togo's phonopy C_v and U per mole of atoms, multiplied by ``natoms_unitcell``
  (the encoded unit cell), i.e. per mole of unit cells. Materials with an imaginary mode below
  ``stability_threshold_thz`` are left out; temperatures off the 10 K grid are interpolated.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.common.paths import REPO
from train.debye.options import SOURCES

# --------------------------------------------------------------------------- data


CurveFunction = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class ThermalData:
    """Materials with their SCOPE strings, atoms per cell and true C_v(T), U(T)."""

    source: str
    ids: list[str]
    """mp_id per material."""
    scopes: list[str]
    n_atoms: np.ndarray
    """Atoms of the cell the targets are per (float64, [M])."""
    curve_function: CurveFunction
    """T (K, 1-D) → (C_v [M, n_T] J/(mol K), U [M, n_T] J/mol), per mole of cells."""
    report: list[str] = field(default_factory=list)
    """What was read, from where, and what was left out and why."""

    def __len__(self) -> int:
        return len(self.ids)

    def curves(self, T: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """True (C_v, U) per mole of cells on the grid T (K), [M, n_T] each."""
        return self.curve_function(np.asarray(T, dtype=float))


def resolve_data_root(data_root: str | os.PathLike[str] | None) -> Path:
    from train.tasks import default_data_root

    return Path(data_root) if data_root is not None else default_data_root()


def load_thermal_data(
    source: str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    variant: str = "cloud",
    allow_sample: bool = True,
    max_materials: int | None = None,
    seed: int = 0,
    stability_threshold_thz: float = -0.3,
) -> ThermalData:
    """Read ``source`` (petretto or phonondb), SCOPE-encode it and attach its true curves.

    Unreadable rows and structures that cannot be encoded are left out and counted in the
    report. ``max_materials`` keeps a seeded subset (drawn before the slow encoding).
    """
    if source not in SOURCES:
        raise ValueError(f"data must be one of {SOURCES}, got {source!r}")
    root = resolve_data_root(data_root)
    if source == "petretto":
        return _load_petretto(root, variant, allow_sample, max_materials, seed)
    return _load_phonondb(root, variant, allow_sample, max_materials, seed, stability_threshold_thz)


def _petretto_path(root: Path, allow_sample: bool) -> tuple[Path, bool]:
    full = root / "petretto_phdos" / "data.csv"
    if full.is_file():
        return full, False
    sample = REPO / "data" / "petretto_phdos" / "data_sample.csv"
    if allow_sample and sample.is_file():
        return sample, True
    raise FileNotFoundError(f"{full} not found (and the shipped sample is not allowed)")


def _seeded_subset(n: int, max_materials: int | None, seed: int) -> np.ndarray:
    if max_materials is None or max_materials >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_materials])


def _encode_all(structures: Sequence[Any], variant: str) -> tuple[list[str | None], list[str]]:
    """SCOPE string per structure (None where it fails) and the failure reasons."""
    from tokenizer import ScopeError
    from train.tasks import encode_structure

    scopes: list[str | None] = []
    reasons: list[str] = []
    for structure in structures:
        try:
            scopes.append(encode_structure(structure, variant))
        except ScopeError as error:
            scopes.append(None)
            reasons.append(str(error))
    return scopes, reasons


def _load_petretto(
    root: Path, variant: str, allow_sample: bool, max_materials: int | None, seed: int
) -> ThermalData:
    from cloud.phonons import cv_from_dos, load_petretto, u_from_dos

    path, is_sample = _petretto_path(root, allow_sample)
    rejected: list[Any] = []
    records = load_petretto(path, rejected=rejected)
    n_read = len(records)
    records = [records[i] for i in _seeded_subset(len(records), max_materials, seed)]
    scopes, failures = _encode_all([r.structure for r in records], variant)
    kept = [i for i, scope in enumerate(scopes) if scope is not None]
    records = [records[i] for i in kept]
    freqs = np.stack([r.frequencies_cm for r in records])
    dos = np.stack([r.dos for r in records])
    n_atoms = np.array([r.n_atoms for r in records], dtype=float)

    def curves(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return cv_from_dos(freqs, dos, T, n_atoms), u_from_dos(freqs, dos, T, n_atoms)

    report = [
        f"petretto: {path}{' (SHIPPED SAMPLE)' if is_sample else ''}",
        f"  materials read: {n_read}; rows rejected: {len(rejected)}; "
        f"subset kept: {len(scopes)}; SCOPE failures: {len(failures)}; materials: {len(kept)}",
        "  targets: C_v, U integrated from the DFPT DOS (harmonic, zero-point included), "
        "per mole of the CSV's cell; n_atoms = its sites",
    ]
    report += [f"  unreadable: {row}" for row in rejected[:5]]
    report += [f"  SCOPE failure: {reason}" for reason in failures[:5]]
    return ThermalData(
        "petretto",
        [r.mp_id for r in records],
        [scopes[i] for i in kept],
        n_atoms,
        curves,
        report,
    )


def _phonondb_files(root: Path, allow_sample: bool) -> tuple[Path, dict[str, str], bool]:
    """(directory, the names of its structures and thermal files, is_sample): the data
    root's phonondb, else the shipped sample (whose files are named *_sample.jsonl.gz)."""
    full = root / "phonondb"
    if (full / "thermal.jsonl.gz").is_file() and (full / "structures.jsonl.gz").is_file():
        return full, {}, False
    sample = REPO / "data" / "phonondb"
    if not allow_sample or not (sample / "thermal_sample.jsonl.gz").is_file():
        raise FileNotFoundError(f"{full} lacks structures/thermal.jsonl.gz (no sample allowed)")
    names = {
        "structures_file": "structures_sample.jsonl.gz",
        "thermal_file": "thermal_sample.jsonl.gz",
    }
    return sample, names, True


def _load_phonondb(
    root: Path,
    variant: str,
    allow_sample: bool,
    max_materials: int | None,
    seed: int,
    threshold: float,
) -> ThermalData:
    from cloud.phonons import load_phonondb

    directory, names, is_sample = _phonondb_files(root, allow_sample)
    rejected: list[Any] = []
    # Thermal data first without structures: building pymatgen objects for the unstable
    # materials (a third of phonondb) would be wasted.
    light = load_phonondb(directory, with_structures=False, rejected=rejected, **names)
    stable_ids = [r.mp_id for r in light if r.min_freq_thz >= threshold]
    chosen = [stable_ids[i] for i in _seeded_subset(len(stable_ids), max_materials, seed)]
    records = load_phonondb(directory, mp_ids=chosen, rejected=[], **names)
    scopes, failures = _encode_all([r.structure for r in records], variant)
    kept = [i for i, scope in enumerate(scopes) if scope is not None]
    records = [records[i] for i in kept]
    grid = records[0].temperatures
    if any(not np.array_equal(r.temperatures, grid) for r in records):
        raise ValueError("phonondb materials have different temperature grids")
    cv_atom = np.stack([r.cv_per_atom for r in records])
    u_atom = np.stack([r.internal_energy_per_atom for r in records])
    n_atoms = np.array([r.natoms_unitcell for r in records], dtype=float)

    def curves(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if T.min() < grid[0] or T.max() > grid[-1]:
            raise ValueError(
                f"phonondb covers {grid[0]:g}–{grid[-1]:g} K; asked for {T.min():g}–{T.max():g}"
            )
        cv = np.stack([np.interp(T, grid, row) for row in cv_atom])
        u = np.stack([np.interp(T, grid, row) for row in u_atom])
        return cv * n_atoms[:, None], u * n_atoms[:, None]

    report = [
        f"phonondb: {directory if not is_sample else 'data/phonondb/*_sample.jsonl.gz'}"
        f"{' (SHIPPED SAMPLE)' if is_sample else ''}",
        f"  materials read: {len(light)}; unreadable rows: {len(rejected)}; "
        f"stable (min freq >= {threshold} THz): {len(stable_ids)}; subset: {len(chosen)}; "
        f"SCOPE failures: {len(failures)}; materials: {len(kept)}",
        "  targets: phonopy C_v, U per mole of atoms × natoms_unitcell (the encoded unit "
        "cell), i.e. per mole of unit cells; linear interpolation off the 10 K grid",
    ]
    report += [f"  SCOPE failure: {reason}" for reason in failures[:5]]
    return ThermalData(
        "phonondb",
        [r.mp_id for r in records],
        [scopes[i] for i in kept],
        n_atoms,
        curves,
        report,
    )


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class MaterialSplit:
    """Row indices into a ThermalData; disjoint by material."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    description: str


def split_materials(
    ids: Sequence[str],
    *,
    seed: int = 0,
    fold: int | None = None,
    n_folds: int = 5,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> MaterialSplit:
    """Seeded split by material id: the order is a permutation of the sorted ids, so it does
    not depend on the file's row order.

    ``fold=None``: the first test_fraction of the permutation is test, the next val_fraction
    validation, the rest training. ``fold=K``: the permutation is cut into n_folds near-equal
    folds, fold K is test, and val_fraction of the rest (seeded) is validation.
    """
    if len(set(ids)) != len(ids):
        raise ValueError("material ids must be unique to split by material")
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    permuted = order[np.random.default_rng(seed).permutation(len(ids))]
    if fold is None:
        n_test = max(1, round(test_fraction * len(ids)))
        n_val = max(1, round(val_fraction * len(ids)))
        test, val, train = np.split(permuted, [n_test, n_test + n_val])
        description = (
            f"seed {seed}: {1 - test_fraction - val_fraction:.0%} train / "
            f"{val_fraction:.0%} val / {test_fraction:.0%} test by mp_id"
        )
    else:
        if not 0 <= fold < n_folds:
            raise ValueError(f"fold must be in [0, {n_folds}), got {fold}")
        folds = np.array_split(permuted, n_folds)
        test = folds[fold]
        rest = np.concatenate([f for k, f in enumerate(folds) if k != fold])
        rest = rest[np.random.default_rng(seed + 1 + fold).permutation(len(rest))]
        n_val = max(1, round(val_fraction * len(rest)))
        val, train = rest[:n_val], rest[n_val:]
        description = (
            f"seed {seed}: fold {fold} of {n_folds} by mp_id is test; {val_fraction:.0%} of "
            "the other folds is validation"
        )
    if len(train) == 0:
        raise ValueError(f"only {len(ids)} materials: nothing left to train on")
    return MaterialSplit(np.sort(train), np.sort(val), np.sort(test), description)


def _drop_rows(data: ThermalData, keep: np.ndarray, reason: str, count: int) -> ThermalData:
    if count == 0:
        return data
    full = data.curve_function

    def curves(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cv, u = full(T)
        return cv[keep], u[keep]

    return ThermalData(
        data.source,
        [data.ids[i] for i in keep],
        [data.scopes[i] for i in keep],
        data.n_atoms[keep],
        curves,
        [*data.report, f"  left out {count} material(s): {reason}"],
    )
