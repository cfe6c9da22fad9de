"""CLOUD-DEBYE training and evaluation: θ_D from the encoder, C_v(T) and U(T) from physics.

Data (targets computed from real phonon data, per mole of the cell whose atoms are counted):

* ``petretto``: Petretto et al. (2018) DFPT phonon DOS. C_v(T) and U(T) (harmonic, zero-point
  energy included) are integrated from each DOS (``cloud.phonons``), per mole of the cell of
  the CSV's structure; n_atoms = its number of sites. The DOS is tabulated every 20 cm⁻¹
  (29 K), so the "true" curves below ~30 K are set by the lowest bins, not by real physics.
  The released idx_*.txt splits do not fit data.csv (1,522 indices for 1,521 rows) and are not
  used: the split here is our own, seeded, by material (see ``split_materials``).
* ``phonondb``: Togo's phonopy C_v and U per mole of atoms, multiplied by ``natoms_unitcell``:
  the structure encoded is phonondb's unit cell (the one in structures.jsonl.gz, which can be
  larger than the primitive cell phonopy used), so the targets are per mole of unit cells and
  n_atoms = natoms_unitcell. Materials with an imaginary mode below ``stability_threshold_thz``
  (−0.3 THz) are left out, since their harmonic thermodynamics is not meaningful. Temperatures
  off phonondb's 10 K grid are linearly interpolated.

The SCOPE string of a material does not depend on which cell of it is written, so the model
predicts one θ_D per material; n_atoms only scales C_v and U. Every loss is therefore per atom
and dimensionless: c = C_v / (3 n R) ∈ [0, 1] and u = U / (3 n R T_ref) (≈ 1 at T_ref = 300 K
for a classical solid), so materials of any size and every temperature weigh alike.

Protocols: ``single`` is the paper's (C_v at 300 K only); ``curve`` fits C_v, U or both on a
temperature grid (the paper did not). Splits are seeded by material: train/val/test fractions,
or fold K of a seeded 5-fold cross-validation with validation carved from the other folds.
Training is AdamW with warm-up and cosine decay, early stopping on the validation loss, the
best epoch's weights kept. Optionally the model is first trained on AFLOW AGL Debye
temperatures (log-θ L1), leaving out AFLOW rows whose SCOPE string is a test material's.

Evaluation on the test materials, 10–1000 K: CLOUD-DEBYE, and with ``compare`` the same
encoder under the single-temperature protocol, a direct MLP regressor of C_v at 300 K (it
can say nothing at other temperatures, nor about U), the best constant θ of the training set,
the per-material oracle Debye fit to the true C_v curve over the evaluation grid (least
squares: what the Debye form can do over the whole curve), and the per-material θ that
reproduces C_v(300 K) exactly (the best case of the single-temperature protocol).

A run is long (a full Petretto epoch takes tens of seconds on a CPU, and ``compare`` trains
up to three models), so it reports and keeps its work as it goes: a tqdm bar or periodic log
lines within each epoch and one line per epoch (``fit``); the outputs written, partial, as
soon as the baselines are known and again after each trained unit (``run_debye``); finished
units and the state after each epoch of the unit in training under <out>/progress/, so that
a rerun with the same out directory resumes where the last one stopped (``RunProgress``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cloud import debye
from cloud.debye_head import CloudDebye, DebyeHeadConfig
from train.common.batching import make_batch
from train.common.devices import resolve_device
from train.common.optim import parameter_groups
from train.common.packages import checkpoint_variant
from train.common.schedule import lr_factor
from train.common.serialization import jsonable
from train.config import build_config, load_layered_config
from train.debye_options import (
    COMPARE_METHODS,
    PROTOCOLS,
    SINGLE_TEMPERATURE,
    SOURCES,
    TARGETS,
    parse_temperatures,
)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LOSSES = ("l1", "mse")
THREE_R = 3 * debye.GAS_CONSTANT
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PREDICTIONS_FILE = "predictions.csv"
KJ_PER_J = 1e-3
"""U is reported (results, report, predictions.csv) in kJ/mol; it is computed in J/mol."""


# --------------------------------------------------------------------------- config


@dataclass
class DebyeTrainConfig:
    """One CLOUD-DEBYE run: data, protocol, split, optimisation, comparisons; YAML-loadable."""

    checkpoint: str = ""
    """Export package of the pretrained encoder (``cloud.load_pretrained``)."""
    data: str = "petretto"
    """Thermal data: petretto (DFPT DOS → C_v, U) or phonondb (phonopy C_v, U)."""
    data_root: str | None = None
    """Root of the data sets; None: $CLOUD_SHARED_DATA or ../shared/data beside the clone."""
    allow_sample: bool = True
    """Fall back to the sample in data/ when the data root lacks the files (report says so)."""
    max_materials: int | None = None
    """Use at most this many materials (seeded subset, before encoding); None: all."""
    stability_threshold_thz: float = -0.3
    """phonondb: drop materials whose lowest phonon frequency is below this (THz)."""
    variant: str | None = None
    """SCOPE variant; None: the one the checkpoint records (else cloud)."""
    protocol: str = "curve"
    """single: the paper's C_v at 300 K only; curve: target on the temperature grid."""
    target: str | None = None
    """cv, u or both (losses on C_v and/or U); None: cv for single, both for curve."""
    temperatures: str | None = None
    """Training grid in K (start:stop:step, comma list or one value); None: 300 for single,
    50:800:50 for curve."""
    eval_temperatures: str = "10:1000:10"
    """Grid the test materials are evaluated on (300 K is always added), K."""
    u_reference_k: float = 300.0
    """T_ref of the loss on U: u = U / (3 n R T_ref), so u ≈ 1 at 300 K classically."""
    u_weight: float = 1.0
    """Weight of the U loss relative to the C_v loss when target = both."""
    loss: str = "l1"
    """l1 (mean absolute error, as the metric) or mse, on the per-atom normalised targets."""
    fold: int | None = None
    """Test fold of a seeded n_folds-fold CV by material; None: the fractions below."""
    n_folds: int = 5
    """Folds of the cross-validation when ``fold`` is set."""
    test_fraction: float = 0.1
    """Share of materials held out for test when ``fold`` is None."""
    val_fraction: float = 0.1
    """Share of all materials (of the non-test folds with ``fold``) used for early stopping."""
    epochs: int = 30
    """Maximum training epochs."""
    patience: int = 8
    """Stop after this many epochs without a better validation loss (0: never)."""
    batch_size: int = 32
    """Materials per optimizer step."""
    eval_batch_size: int = 256
    """Materials per forward pass when predicting."""
    lr: float = 5e-4
    """Peak learning rate of the encoder."""
    head_lr: float = 2e-3
    """Peak learning rate of the head."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices (not biases and LayerNorms)."""
    warmup_ratio: float = 0.05
    """Fraction of the optimizer steps with a linear warm-up."""
    min_lr_ratio: float = 0.05
    """Final learning rate of the cosine decay as a fraction of the peak."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    encoder_dropout: float | None = 0.1
    """Hidden and attention dropout of the encoder while training; None keeps the package's."""
    head: DebyeHeadConfig = field(default_factory=DebyeHeadConfig)
    """The θ_D head (MLP shape and θ range)."""
    aflow_epochs: int = 0
    """Epochs of θ pre-training on AFLOW AGL Debye temperatures first (0: none)."""
    aflow_max_rows: int | None = None
    """Use at most this many AFLOW rows (seeded); None: all train + val rows."""
    compare: list[str] = field(default_factory=list)
    """Other predictors evaluated on the same test materials: debye_single (CLOUD-DEBYE on
    C_v at 300 K), direct (MLP on C_v at 300 K), constant (best single θ of the training
    set), oracle (θ fitted per test material to its true C_v curve), oracle_300 (θ matching
    each test material's C_v at 300 K)."""
    seed: int = 0
    """Seeds the split, the model init, dropout and the batch order."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1 …"""
    threads: int = 0
    """torch intra-op threads; 0 chooses the free cores (``train.threads``), printed at
    start."""
    out: str | None = None
    """Output directory; None: runs/debye/<data>-<protocol>-<target>."""
    save_model: bool = True
    """Save the trained CLOUD-DEBYE as an export package in <out>/model."""
    plots: bool = True
    """Write the figures (MAE vs T, per-material curves, θ parity)."""
    progress: bool | None = None
    """tqdm bar over each epoch's batches: null = when stderr is a terminal; true/false =
    always/never. Without a bar, an INFO line every ``progress_every_s`` seconds of an epoch."""
    progress_every_s: float = 30.0
    """Seconds between the within-epoch log lines when there is no bar (0: every batch)."""

    def __post_init__(self) -> None:
        problems = []
        if self.data not in SOURCES:
            problems.append(f"data must be one of {SOURCES}, got {self.data!r}")
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.target is not None and self.target not in TARGETS:
            problems.append(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        unknown = sorted(set(self.compare) - set(COMPARE_METHODS))
        if unknown:
            problems.append(f"compare: unknown method(s) {unknown}; known: {COMPARE_METHODS}")
        if self.protocol == "single":
            if self.target not in (None, "cv"):
                problems.append("the single-temperature protocol is C_v at 300 K: target cv")
            if self.temperatures is not None and parse_temperatures(self.temperatures) != [
                SINGLE_TEMPERATURE
            ]:
                problems.append("the single-temperature protocol is C_v at 300 K only")
        if self.fold is not None and not 0 <= self.fold < self.n_folds:
            problems.append(f"fold must be in [0, {self.n_folds}), got {self.fold}")
        if self.n_folds < 2:
            problems.append("n_folds must be >= 2")
        if not 0.0 < self.val_fraction < 1.0 or not 0.0 < self.test_fraction < 1.0:
            problems.append("val_fraction and test_fraction must be in (0, 1)")
        if self.fold is None and self.val_fraction + self.test_fraction >= 1.0:
            problems.append("val_fraction + test_fraction must be < 1")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("epochs, batch_size and eval_batch_size must be >= 1")
        if self.patience < 0 or self.aflow_epochs < 0:
            problems.append("patience and aflow_epochs must be >= 0")
        if self.progress_every_s < 0:
            problems.append("progress_every_s must be >= 0")
        if self.u_reference_k <= 0 or self.u_weight < 0:
            problems.append("u_reference_k must be > 0 and u_weight >= 0")
        if self.max_materials is not None and self.max_materials < 10:
            problems.append("max_materials must be >= 10 (train, val and test need some)")
        if problems:
            raise ValueError("invalid debye config: " + "; ".join(problems))
        # Malformed grids fail here, before any data is read.
        self.train_temperatures()
        self.evaluation_temperatures()

    @property
    def resolved_target(self) -> str:
        if self.target is not None:
            return self.target
        return "cv" if self.protocol == "single" else "both"

    def train_temperatures(self) -> list[float]:
        """The training grid in K."""
        if self.temperatures is None:
            return [SINGLE_TEMPERATURE] if self.protocol == "single" else _default_curve_grid()
        return parse_temperatures(self.temperatures)

    def evaluation_temperatures(self) -> list[float]:
        """The evaluation grid in K, 300 K included."""
        return sorted({*parse_temperatures(self.eval_temperatures), SINGLE_TEMPERATURE})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _default_curve_grid() -> list[float]:
    return parse_temperatures("50:800:50")


# Temperature specs are text ("50:800:50", "300"); YAML reads a bare 300 as a number.
TEMPERATURE_SPEC_FIELDS = ("temperatures", "eval_temperatures")


def config_from_dict(values: Mapping[str, Any]) -> DebyeTrainConfig:
    """A DebyeTrainConfig from nested dicts; unknown keys and wrong types are errors."""
    values = dict(values)
    for name in TEMPERATURE_SPEC_FIELDS:
        value = values.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = str(value)
    return build_config(DebyeTrainConfig, values, label="debye")


def load_config(
    path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), **fields: Any
) -> DebyeTrainConfig:
    """YAML config (optional), then ``fields`` (command-line flags, None = not given), then
    dotted overrides."""
    return load_layered_config(path, overrides, fields, kind="debye", build=config_from_dict)


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


def _phonondb_directory(root: Path, allow_sample: bool) -> tuple[Path, bool, Any]:
    """Directory with structures.jsonl.gz and thermal.jsonl.gz; the sample's files are named
    *_sample.jsonl.gz, so they are linked under the reader's names in a temporary directory."""
    full = root / "phonondb"
    if (full / "thermal.jsonl.gz").is_file() and (full / "structures.jsonl.gz").is_file():
        return full, False, None
    sample = REPO / "data" / "phonondb"
    if not allow_sample or not (sample / "thermal_sample.jsonl.gz").is_file():
        raise FileNotFoundError(f"{full} lacks structures/thermal.jsonl.gz (no sample allowed)")
    holder = tempfile.TemporaryDirectory(prefix="phonondb-sample-")
    for name in ("structures", "thermal"):
        os.symlink(sample / f"{name}_sample.jsonl.gz", Path(holder.name) / f"{name}.jsonl.gz")
    return Path(holder.name), True, holder


def _load_phonondb(
    root: Path,
    variant: str,
    allow_sample: bool,
    max_materials: int | None,
    seed: int,
    threshold: float,
) -> ThermalData:
    from cloud.phonons import load_phonondb

    directory, is_sample, holder = _phonondb_directory(root, allow_sample)
    try:
        rejected: list[Any] = []
        # Thermal data first without structures: building pymatgen objects for the unstable
        # materials (a third of phonondb) would be wasted.
        light = load_phonondb(directory, with_structures=False, rejected=rejected)
        stable_ids = [r.mp_id for r in light if r.min_freq_thz >= threshold]
        chosen = [stable_ids[i] for i in _seeded_subset(len(stable_ids), max_materials, seed)]
        records = load_phonondb(directory, mp_ids=chosen, rejected=[])
    finally:
        if holder is not None:
            holder.cleanup()
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


# --------------------------------------------------------------------------- targets, loss


def normalised_targets(
    cv: np.ndarray, u: np.ndarray, n_atoms: np.ndarray, u_reference_k: float
) -> tuple[np.ndarray, np.ndarray]:
    """c = C_v / (3 n R) and u = U / (3 n R T_ref) of per-cell curves [M, n_T]."""
    per_atom = THREE_R * n_atoms[:, None]
    return cv / per_atom, u / (per_atom * u_reference_k)


def debye_normalised(
    theta: torch.Tensor, T: torch.Tensor, u_reference_k: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Debye (c, u) of θ [B] on a grid T [n_T] (per atom, dimensionless), [B, n_T] each."""
    theta_b = theta.unsqueeze(-1)
    c = debye.heat_capacity_per_atom(theta_b, T) / THREE_R
    u = debye.internal_energy_per_atom(theta_b, T) / (THREE_R * u_reference_k)
    return c, u


def target_loss(
    c_pred: torch.Tensor,
    u_pred: torch.Tensor,
    c_true: torch.Tensor,
    u_true: torch.Tensor,
    target: str,
    kind: str = "l1",
    u_weight: float = 1.0,
) -> torch.Tensor:
    """Mean over materials and temperatures of the per-atom loss on C_v, U or both."""

    def error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        difference = pred - true
        return difference.abs().mean() if kind == "l1" else difference.square().mean()

    if target == "cv":
        return error(c_pred, c_true)
    if target == "u":
        return error(u_pred, u_true)
    return error(c_pred, c_true) + u_weight * error(u_pred, u_true)


# --------------------------------------------------------------------------- batching


def encode_scopes(
    scopes: Sequence[str], tokenizer: Any, max_length: int
) -> tuple[list[list[int]], list[int]]:
    """Token ids per SCOPE string, and the indices too long for the model's positions."""
    ids = [tokenizer.encode(scope) for scope in scopes]
    too_long = [i for i, sequence in enumerate(ids) if len(sequence) > max_length]
    return ids, too_long


def _chunks(indices: np.ndarray, size: int) -> list[np.ndarray]:
    return [indices[start : start + size] for start in range(0, len(indices), size)]


# --------------------------------------------------------------------------- optimisation


@dataclass
class FitHistory:
    """What one training loop did."""

    label: str
    best_epoch: int
    best_val: float
    epochs_run: int
    history: list[dict[str, float]]
    wall_time_s: float


def fit(
    model: torch.nn.Module,
    n_train: int,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    validate: Callable[[], float],
    config: DebyeTrainConfig,
    *,
    label: str,
    epochs: int | None = None,
    patience: int | None = None,
    state_path: Path | None = None,
) -> FitHistory:
    """Train ``model`` on minibatches of training positions 0…n_train−1 with AdamW, keep the
    weights of the epoch with the lowest ``validate()`` (loaded back at the end).

    Progress: within an epoch a tqdm bar, or an INFO line every ``config.progress_every_s``
    seconds (``config.progress``); after each epoch one INFO line (epoch/N, train loss,
    validation, best so far, elapsed seconds) starting with ``label``.

    ``state_path``: after every epoch that training goes on from, the model, the best weights,
    the optimizer, the RNG states and the counters are written there (``write_state``); when
    the file exists at the start, training resumes after its epoch, and ends as the
    uninterrupted run would (same batches, dropout masks and updates on the same device).
    """
    epochs = config.epochs if epochs is None else epochs
    patience = config.patience if patience is None else patience
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.lr, config.head_lr, config.weight_decay)
    )
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, round(config.warmup_ratio * total))
    rng = np.random.default_rng(config.seed)
    progress = FitProgress(best_val=math.inf, best_epoch=-1)
    best_state: dict[str, torch.Tensor] | None = None
    if state_path is not None and state_path.is_file():
        progress, best_state = load_fit_state(state_path, model, optimizer, rng, label)
        logger.info(
            "%s: resumed after epoch %d/%d from %s", label, progress.epochs_done, epochs, state_path
        )
    show_bar = sys.stderr.isatty() if config.progress is None else config.progress
    started = time.perf_counter() - progress.elapsed_s
    for epoch in range(progress.epochs_done, epochs):
        model.train()
        losses = []
        batches = _chunks(rng.permutation(n_train), config.batch_size)
        meter = EpochProgress(
            label, epoch + 1, epochs, len(batches), show_bar, config.progress_every_s
        )
        for batch in batches:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(
                    progress.step,
                    warmup_steps=warmup,
                    max_steps=total,
                    min_ratio=config.min_lr_ratio,
                )
            loss = batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            progress.step += 1
            meter.update(float(np.mean(losses)))
        meter.close()
        model.eval()
        val = validate()
        progress.history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val": val})
        progress.epochs_done = epoch + 1
        if val < progress.best_val:
            progress.best_val, progress.best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        progress.elapsed_s = time.perf_counter() - started
        # Epochs can take minutes: say how training goes, once an epoch.
        logger.info(
            "%s epoch %d/%d: train loss %.4g, val %.4g (best %.4g at epoch %d), %.0f s",
            label,
            epoch + 1,
            epochs,
            progress.history[-1]["train_loss"],
            val,
            progress.best_val,
            progress.best_epoch + 1,
            progress.elapsed_s,
        )
        stop = bool(patience) and epoch - progress.best_epoch >= patience
        if state_path is not None and not stop and epoch + 1 < epochs:
            save_fit_state(state_path, model, optimizer, rng, progress, best_state, label)
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitHistory(
        label,
        progress.best_epoch,
        progress.best_val,
        len(progress.history),
        progress.history,
        time.perf_counter() - started,
    )


@dataclass
class FitProgress:
    """The counters of a ``fit`` between epochs (saved with its state; JSON)."""

    best_val: float
    best_epoch: int
    """0-based, like ``history``'s epochs; -1 before any epoch."""
    epochs_done: int = 0
    step: int = 0
    """Optimizer steps taken (sets the learning-rate schedule)."""
    elapsed_s: float = 0.0
    """Training seconds so far, over every run that trained this unit."""
    history: list[dict[str, float]] = field(default_factory=list)


class EpochProgress:
    """Progress through one epoch's batches: a tqdm bar (``bar``), or an INFO line every
    ``every_s`` seconds with the batch count and the epoch's mean training loss so far (none
    after the last batch: the epoch's own line follows)."""

    def __init__(
        self, label: str, epoch: int, epochs: int, batches: int, bar: bool, every_s: float
    ) -> None:
        self.label, self.epoch, self.epochs, self.batches = label, epoch, epochs, batches
        self.every_s = every_s
        self.done = 0
        self.started = self.last = time.perf_counter()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=batches,
                desc=f"{label} epoch {epoch}/{epochs}",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
            )

    def update(self, mean_loss: float) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{mean_loss:.4g}", refresh=False)
            self.bar.update()
            return
        now = time.perf_counter()
        if self.done < self.batches and now - self.last >= self.every_s:
            self.last = now
            logger.info(
                "%s epoch %d/%d: batch %d/%d, train loss %.4g, %.0f s into the epoch",
                self.label,
                self.epoch,
                self.epochs,
                self.done,
                self.batches,
                mean_loss,
                now - self.started,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


STATE_RECORD_KEY = "record"
"""The safetensors header metadata key under which ``write_state`` keeps its JSON record."""


def write_state(path: Path, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> None:
    """One safetensors file: ``tensors`` and, in its header, ``record`` as JSON. Written
    atomically (``train.common.files``): a run killed meanwhile leaves the old file or the new
    one, so tensors and counters always belong together."""
    from safetensors.torch import save_file

    from train.common.files import atomic_write

    metadata = {STATE_RECORD_KEY: json.dumps(record)}
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and record of a ``write_state`` file (safetensors and JSON: nothing is
    unpickled)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        record = json.loads((handle.metadata() or {})[STATE_RECORD_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    return tensors, record


def state_tensors(prefix: str, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict[str, str]]:
    """A state dict as ``write_state`` tensors under ``prefix`` (tied tensors once, dtypes
    kept) and its {alias: stored name} ties (``cloud.export.dedupe_tensors``)."""
    from cloud.export import dedupe_tensors

    tensors, tied = dedupe_tensors(state, dtype=None)
    return {f"{prefix}{name}": tensor for name, tensor in tensors.items()}, tied


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_state_tensors(
    model: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
    tied: Mapping[str, str],
    source: Any,
) -> None:
    """Load ``state_tensors`` output (without its prefix) into ``model`` (every tensor used)."""
    from cloud.export import load_weights

    device = next(model.parameters()).device
    load_weights(model, {k: v.to(device) for k, v in tensors.items()}, tied, source=source)


def save_fit_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    progress: FitProgress,
    best_state: Mapping[str, torch.Tensor] | None,
    label: str,
) -> None:
    """Everything ``fit`` needs to go on after ``progress.epochs_done`` epochs."""
    tensors, model_tied = state_tensors("model.", model.state_dict())
    best_tied: dict[str, str] = {}
    if best_state is not None:
        best, best_tied = state_tensors("best.", best_state)
        tensors.update(best)
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    record = {
        "label": label,
        "progress": dataclasses.asdict(progress),
        "numpy_rng": rng.bit_generator.state,
        "optimizer_groups": optimizer_state["param_groups"],
        "model_tied": model_tied,
        "best_tied": best_tied,
        "has_best": best_state is not None,
    }
    write_state(path, tensors, record)


def load_fit_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    label: str,
) -> tuple[FitProgress, dict[str, torch.Tensor] | None]:
    """Restore what ``save_fit_state`` wrote into ``model``, ``optimizer``, ``rng`` and the
    torch RNG; returns the counters and the best weights so far."""
    tensors, record = read_state(path)
    if record.get("label") != label:
        raise ValueError(f"{path}: training state of {record.get('label')!r}, not {label!r}")
    load_state_tensors(model, unprefixed("model.", tensors), record["model_tied"], path)
    best_state = None
    if record["has_best"]:
        device = next(model.parameters()).device
        best_state = {k: v.to(device) for k, v in unprefixed("best.", tensors).items()}
        for alias, target in record["best_tied"].items():
            best_state[alias] = best_state[target]
    optimizer_state: dict[str, Any] = {"state": {}, "param_groups": record["optimizer_groups"]}
    for name, tensor in unprefixed("optimizer.", tensors).items():
        index, key = name.split(".", 1)
        optimizer_state["state"].setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict(optimizer_state)
    rng.bit_generator.state = record["numpy_rng"]
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and next(model.parameters()).device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], next(model.parameters()).device)
    return FitProgress(**record["progress"]), best_state


# --------------------------------------------------------------------------- CLOUD-DEBYE


@dataclass
class Encoded:
    """Token ids of the materials of a ThermalData, for one tokenizer."""

    tokenizer: Any
    sequences: list[list[int]]
    device: torch.device

    def batch(self, rows: np.ndarray) -> dict[str, torch.Tensor | None]:
        return make_batch(self.tokenizer, [self.sequences[i] for i in rows], self.device)


@torch.no_grad()
def predict_theta(
    model: CloudDebye, encoded: Encoded, rows: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """θ_D (K) of the materials ``rows`` (model in eval mode)."""
    was_training = model.training
    model.eval()
    thetas = [
        model.theta(encoded.batch(chunk)).double().cpu().numpy()
        for chunk in _chunks(rows, batch_size)
    ]
    model.train(was_training)
    return np.concatenate(thetas) if thetas else np.zeros(0)


def train_cloud_debye(
    model: CloudDebye,
    encoded: Encoded,
    c_true: np.ndarray,
    u_true: np.ndarray,
    split: MaterialSplit,
    T: Sequence[float],
    target: str,
    config: DebyeTrainConfig,
    *,
    label: str = "cloud-debye",
    state_path: Path | None = None,
) -> FitHistory:
    """Fit CLOUD-DEBYE on the per-atom normalised targets (c, u: [M, n_T] over all materials)
    of the training rows, early-stopping on the same loss over the validation rows
    (``state_path``: see ``fit``)."""
    device = encoded.device
    grid = torch.tensor(T, dtype=torch.float32, device=device)
    c_all = torch.tensor(c_true, dtype=torch.float32, device=device)
    u_all = torch.tensor(u_true, dtype=torch.float32, device=device)

    def loss_on(rows: np.ndarray, thetas: torch.Tensor) -> torch.Tensor:
        c_pred, u_pred = debye_normalised(thetas, grid, config.u_reference_k)
        index = torch.as_tensor(rows, device=device)
        return target_loss(
            c_pred, u_pred, c_all[index], u_all[index], target, config.loss, config.u_weight
        )

    def batch_loss(positions: np.ndarray) -> torch.Tensor:
        rows = split.train[positions]
        return loss_on(rows, model.theta(encoded.batch(rows)))

    def validate() -> float:
        thetas = torch.tensor(
            predict_theta(model, encoded, split.val, config.eval_batch_size),
            dtype=torch.float32,
            device=device,
        )
        with torch.no_grad():
            return float(loss_on(split.val, thetas))

    return fit(
        model, len(split.train), batch_loss, validate, config, label=label, state_path=state_path
    )


def pretrain_on_aflow(
    model: CloudDebye,
    tokenizer: Any,
    config: DebyeTrainConfig,
    variant: str,
    excluded_scopes: set[str],
    state_path: Path | None = None,
) -> tuple[FitHistory, list[str]]:
    """Train θ on AFLOW AGL Debye temperatures (L1 on log θ) before the thermal targets.

    Rows whose SCOPE string is in ``excluded_scopes`` (the test materials) are left out, so
    the test materials' θ never enters training. AGL's θ_D comes from a quasi-harmonic model
    of the bulk modulus, not from a C_v fit, so it is a starting point, not the target.
    """
    from train.tasks import load_task

    data = load_task(
        "aflow_debye_temperature",
        config.data_root,
        variant=variant,
        allow_sample=config.allow_sample,
    )
    max_length = model.config.max_position_embeddings
    candidates = [
        e
        for e in data.examples.values()
        if e.ok and e.role in ("train", "val") and e.target and e.target > 0
    ]
    usable = [e for e in candidates if e.scope not in excluded_scopes]
    n_excluded = len(candidates) - len(usable)
    if config.aflow_max_rows is not None and len(usable) > config.aflow_max_rows:
        keep = np.random.default_rng(config.seed).permutation(len(usable))[: config.aflow_max_rows]
        usable = [usable[i] for i in sorted(keep)]
    sequences, too_long = encode_scopes([e.scope for e in usable], tokenizer, max_length)
    rows = [i for i in range(len(usable)) if i not in set(too_long)]
    train_rows = [i for i in rows if usable[i].role == "train"]
    val_rows = [i for i in rows if usable[i].role == "val"] or train_rows[
        : max(1, len(train_rows) // 10)
    ]
    device = next(model.parameters()).device
    log_theta = torch.log(torch.tensor([float(e.target) for e in usable], device=device))
    encoded = Encoded(tokenizer, sequences, device)
    train_index, val_index = np.array(train_rows), np.array(val_rows)

    def batch_loss(positions: np.ndarray) -> torch.Tensor:
        chosen = train_index[positions]
        predicted = torch.log(model.theta(encoded.batch(chosen)))
        return (predicted - log_theta[torch.as_tensor(chosen, device=device)]).abs().mean()

    def validate() -> float:
        theta = torch.tensor(
            predict_theta(model, encoded, val_index, config.eval_batch_size), device=device
        )
        return float(
            (torch.log(theta) - log_theta[torch.as_tensor(val_index, device=device)].double())
            .abs()
            .mean()
        )

    history = fit(
        model,
        len(train_index),
        batch_loss,
        validate,
        config,
        label="aflow-theta",
        epochs=config.aflow_epochs,
        state_path=state_path,
    )
    report = [
        *data.report.lines(),
        f"  AFLOW θ pre-training: {len(train_index)} train / {len(val_index)} val rows "
        f"({len(too_long)} too long; {n_excluded} left out as their SCOPE "
        f"string is a test material's); best val |Δ log θ| "
        f"{history.best_val:.3f} at epoch {history.best_epoch}",
    ]
    return history, report


# --------------------------------------------------------------------------- baselines


def train_direct_cv300(
    pretrained_encoder: Any,
    encoded: Encoded,
    c300: np.ndarray,
    split: MaterialSplit,
    config: DebyeTrainConfig,
    state_path: Path | None = None,
) -> tuple[np.ndarray, FitHistory]:
    """The direct regressor: the same encoder + an MLP head (``cloud.heads``) fitted to the
    per-atom C_v(300 K)/(3R) of the training rows (L1, standardised). Returns its per-atom
    prediction c(300 K) for every material and the training history (``state_path``: see
    ``fit``)."""
    from cloud.heads import CloudForPropertyPrediction, HeadConfig

    head = HeadConfig(
        task_type="regression",
        num_outputs=1,
        hidden_sizes=list(config.head.hidden_sizes),
        dropout=config.head.dropout,
        activation=config.head.activation,
    )
    torch.manual_seed(config.seed)
    model = CloudForPropertyPrediction.from_pretrained_encoder(
        pretrained_encoder, head, dropout=config.encoder_dropout
    )
    model.to(encoded.device)
    train_values = c300[split.train]
    model.set_target_scaling(float(train_values.mean()), float(train_values.std()))
    targets = torch.tensor(c300, dtype=torch.float32, device=encoded.device)

    def batch_loss(positions: np.ndarray) -> torch.Tensor:
        rows = split.train[positions]
        batch = encoded.batch(rows)
        output = model(batch["input_ids"], batch["attention_mask"], batch["segment_ids"]).squeeze(
            -1
        )
        wanted = model.standardise(targets[torch.as_tensor(rows, device=encoded.device)])
        return (output - wanted).abs().mean()

    def predict(rows: np.ndarray) -> np.ndarray:
        values = []
        for chunk in _chunks(rows, config.eval_batch_size):
            batch = encoded.batch(chunk)
            values.append(
                model.predict(batch["input_ids"], batch["attention_mask"], batch["segment_ids"])
                .squeeze(-1)
                .double()
                .cpu()
                .numpy()
            )
        return np.concatenate(values)

    def validate() -> float:
        return float(np.abs(predict(split.val) - c300[split.val]).mean())

    history = fit(
        model,
        len(split.train),
        batch_loss,
        validate,
        config,
        label="direct-cv300",
        state_path=state_path,
    )
    return predict(np.arange(len(c300))), history


def fit_constant_theta(
    T: Sequence[float],
    c_true: np.ndarray,
    u_true: np.ndarray,
    target: str,
    *,
    kind: str = "l1",
    u_weight: float = 1.0,
    u_reference_k: float = 300.0,
    theta_min: float = 1.0,
    theta_max: float = 1.0e4,
) -> float:
    """The one θ_D (K) minimising the training loss over all the given materials (per-atom
    normalised c, u [M, n_T] on the grid T): a 400-point log grid over [theta_min,
    theta_max], then a 400-point grid between the best point's neighbours (~1e-4 relative)."""
    grid = torch.tensor(T, dtype=torch.float64)
    c_t = torch.tensor(c_true, dtype=torch.float64)
    u_t = torch.tensor(u_true, dtype=torch.float64)

    def losses(log_thetas: torch.Tensor) -> torch.Tensor:
        values = []
        # Chunks bound the [candidates, materials, temperatures] error table.
        chunk = max(1, 2_000_000 // max(1, c_t.numel()))
        for part in log_thetas.split(chunk):
            c_pred, u_pred = debye_normalised(part.exp(), grid, u_reference_k)
            values.append(_constant_theta_losses(c_pred, u_pred, c_t, u_t, target, kind, u_weight))
        return torch.cat(values)

    candidates = torch.linspace(math.log(theta_min), math.log(theta_max), 400, dtype=torch.float64)
    for _ in range(2):
        best = int(losses(candidates).argmin())
        low = candidates[max(best - 1, 0)]
        high = candidates[min(best + 1, len(candidates) - 1)]
        candidates = torch.linspace(float(low), float(high), 400, dtype=torch.float64)
    return math.exp(float(candidates[len(candidates) // 2]))


def _constant_theta_losses(
    c_pred: torch.Tensor,
    u_pred: torch.Tensor,
    c_true: torch.Tensor,
    u_true: torch.Tensor,
    target: str,
    kind: str,
    u_weight: float,
) -> torch.Tensor:
    """``target_loss`` of each candidate θ (rows of c_pred, u_pred [G, n_T]) over all
    materials (c_true, u_true [M, n_T]), [G]."""

    def error(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        difference = pred[:, None, :] - true[None]
        return (difference.abs() if kind == "l1" else difference.square()).mean(dim=(1, 2))

    if target == "cv":
        return error(c_pred, c_true)
    if target == "u":
        return error(u_pred, u_true)
    return error(c_pred, c_true) + u_weight * error(u_pred, u_true)


def oracle_theta(
    T: Sequence[float],
    cv: np.ndarray,
    n_atoms: np.ndarray,
    *,
    criterion: str = "mae",
    theta_min: float = 1.0,
    theta_max: float = 1.0e4,
) -> np.ndarray:
    """Per material, the θ_D (K) whose Debye C_v best fits its true C_v curve [M, n_T] on the
    grid T: ``mae`` minimises the mean |ΔC_v| over the grid (the metric reported, so no Debye
    predictor can have a lower curve-mean MAE on a material) by a 400-point log grid and a
    400-point refinement per material; ``lsq`` is ``cloud.debye.debye_theta_fit``."""
    if criterion == "lsq":
        theta = debye.debye_theta_fit(
            torch.tensor(T, dtype=torch.float64),
            torch.tensor(cv, dtype=torch.float64),
            torch.tensor(n_atoms, dtype=torch.float64),
        )
        return theta.numpy()
    if criterion != "mae":
        raise ValueError(f"criterion must be mae or lsq, got {criterion!r}")
    grid = torch.tensor(T, dtype=torch.float64)
    c_true = torch.tensor(cv / (THREE_R * np.asarray(n_atoms)[:, None]), dtype=torch.float64)
    coarse = torch.linspace(math.log(theta_min), math.log(theta_max), 400, dtype=torch.float64)
    candidates = coarse.expand(len(c_true), -1)
    for _ in range(2):
        errors = _per_material_mae(candidates, grid, c_true)
        best = errors.argmin(dim=1, keepdim=True)
        width = candidates.shape[1] - 1
        low = candidates.gather(1, (best - 1).clamp(0, width))
        high = candidates.gather(1, (best + 1).clamp(0, width))
        steps = torch.linspace(0.0, 1.0, 400, dtype=torch.float64)
        candidates = low + (high - low) * steps
    return candidates[:, 200].exp().numpy()


def _per_material_mae(
    log_thetas: torch.Tensor, grid: torch.Tensor, c_true: torch.Tensor
) -> torch.Tensor:
    """Mean |c_Debye(θ) − c| over the grid for candidate log θ [M, G] of materials c [M, n_T]."""
    rows = max(1, 4_000_000 // max(1, log_thetas.shape[1] * len(grid)))
    parts = []
    for start in range(0, len(c_true), rows):
        chunk = log_thetas[start : start + rows]
        c_pred = heat_capacity_per_atom_grid(chunk.exp(), grid)
        parts.append((c_pred - c_true[start : start + rows, None, :]).abs().mean(dim=-1))
    return torch.cat(parts)


def heat_capacity_per_atom_grid(theta: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Normalised Debye c = C_v / (3R) for θ of any shape on a grid [n_T]: θ.shape + (n_T,)."""
    return debye.heat_capacity_per_atom(theta.unsqueeze(-1), grid) / THREE_R


# --------------------------------------------------------------------------- evaluation


@dataclass
class MethodCurves:
    """One predictor's test-set predictions per mole of cells; None where it cannot answer."""

    name: str
    label: str
    theta: np.ndarray | None
    """θ_D per test material, K (Debye-based methods only)."""
    cv: np.ndarray | None
    """C_v [M_test, n_T], J/(mol K); for a single-temperature method only its column is set."""
    u: np.ndarray | None
    """U [M_test, n_T], J/mol."""
    temperatures_answered: str
    """Which temperatures it can predict: all, or 300 K only."""
    note: str = ""


def debye_curves(
    theta: np.ndarray, T: Sequence[float], n_atoms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Debye (C_v, U) per mole of cells, [M, n_T] each, for θ [M]."""
    theta_t = torch.tensor(theta, dtype=torch.float64)[:, None]
    grid = torch.tensor(T, dtype=torch.float64)
    atoms = torch.tensor(n_atoms, dtype=torch.float64)[:, None]
    return debye.heat_capacity(theta_t, grid, atoms).numpy(), debye.internal_energy(
        theta_t, grid, atoms
    ).numpy()


def absolute_errors(
    pred: np.ndarray | None, true: np.ndarray, n_atoms: np.ndarray
) -> dict[str, Any] | None:
    """MAE per temperature, per cell and per atom, and the standard error of each MAE over the
    materials (std of |error| / √M); NaN columns (not predicted) stay NaN."""
    if pred is None:
        return None
    error = np.abs(pred - true)
    answered = ~np.all(np.isnan(error), axis=0)
    result = {}
    for unit, values in (("per_cell", error), ("per_atom", error / n_atoms[:, None])):
        mae, standard_error = np.full(error.shape[1], np.nan), np.full(error.shape[1], np.nan)
        mae[answered] = values[:, answered].mean(axis=0)
        if len(values) > 1:
            spread = values[:, answered].std(axis=0, ddof=1)
            standard_error[answered] = spread / math.sqrt(len(values))
        result[unit], result[f"se_{unit}"] = mae, standard_error
    return result


def summarise_method(
    method: MethodCurves,
    truth_cv: np.ndarray,
    truth_u: np.ndarray,
    n_atoms: np.ndarray,
    T: Sequence[float],
    train_range: tuple[float, float],
) -> dict[str, Any]:
    """MAEs at 300 K, averaged over the grid and over its bands, and the per-T curves."""
    T = np.asarray(T)
    at300 = int(np.flatnonzero(np.isclose(T, SINGLE_TEMPERATURE))[0])
    result: dict[str, Any] = {
        "label": method.label,
        "temperatures_answered": method.temperatures_answered,
        "note": method.note,
    }
    bands = {
        "all": np.ones_like(T, dtype=bool),
        "below_50K": T < 50,
        "train_range": (train_range[0] <= T) & (train_range[1] >= T),
        "above_800K": T > 800,
    }
    for quantity, pred, true, scale in (
        ("cv", method.cv, truth_cv, 1.0),
        ("u", method.u, truth_u, KJ_PER_J),
    ):
        errors = absolute_errors(pred, true, n_atoms)
        if errors is None:
            result[quantity] = None
            continue
        per_cell, per_atom = errors["per_cell"] * scale, errors["per_atom"] * scale
        entry: dict[str, Any] = {
            "mae_300K_per_cell": _finite_or_none(per_cell[at300]),
            "mae_300K_per_atom": _finite_or_none(per_atom[at300]),
            "se_300K_per_cell": _finite_or_none(errors["se_per_cell"][at300] * scale),
            "se_300K_per_atom": _finite_or_none(errors["se_per_atom"][at300] * scale),
            "mae_vs_T_per_cell": [_finite_or_none(v) for v in per_cell],
            "mae_vs_T_per_atom": [_finite_or_none(v) for v in per_atom],
        }
        for band, mask in bands.items():
            values = per_cell[mask]
            ok = bool(mask.any()) and not np.any(np.isnan(values))
            entry[f"mae_mean_{band}_per_cell"] = float(values.mean()) if ok else None
            entry[f"mae_mean_{band}_per_atom"] = float(per_atom[mask].mean()) if ok else None
        result[quantity] = entry
    return result


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# --------------------------------------------------------------------------- run


@dataclass
class DebyeRunResult:
    """A whole run: where the outputs are, the metrics, the trained model."""

    out: Path
    metrics: dict[str, Any]
    model: CloudDebye
    split: MaterialSplit
    data: ThermalData


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


@dataclass
class RunContext:
    """What every stage of a run shares: the data, split, tokens and target tables."""

    config: DebyeTrainConfig
    data: ThermalData
    split: MaterialSplit
    encoded: Encoded
    encoder_owner: Any
    """The pretrained package's model (its ``.encoder`` is copied into each new model)."""
    target: str
    train_grid: list[float]
    eval_grid: list[float]
    c_train: np.ndarray
    """Normalised C_v, c = C_v / (3 n R), of every material on the training grid."""
    u_train: np.ndarray
    """Normalised U, u = U / (3 n R T_ref), of every material on the training grid."""
    cv_test: np.ndarray
    """True C_v per mole of cells of the test materials on the evaluation grid."""
    u_test: np.ndarray
    """True U per mole of cells of the test materials on the evaluation grid."""

    @property
    def n_atoms_test(self) -> np.ndarray:
        return self.data.n_atoms[self.split.test]

    @property
    def train_range(self) -> tuple[float, float]:
        return min(self.train_grid), max(self.train_grid)

    def new_model(self) -> CloudDebye:
        """A fresh CLOUD-DEBYE on a copy of the pretrained encoder, seeded."""
        torch.manual_seed(self.config.seed)
        model = CloudDebye.from_pretrained_encoder(
            self.encoder_owner, self.config.head, dropout=self.config.encoder_dropout
        )
        return model.to(self.encoded.device)

    def debye_method(
        self, name: str, label: str, theta: np.ndarray, note: str = ""
    ) -> MethodCurves:
        """Test-set curves of a Debye predictor from its θ per test material."""
        cv, u = debye_curves(theta, self.eval_grid, self.n_atoms_test)
        return MethodCurves(name, label, theta, cv, u, "all", note)


def run_debye(
    config: DebyeTrainConfig,
    *,
    pretrained: Any = None,
    data: ThermalData | None = None,
    progress: bool = False,
) -> DebyeRunResult:
    """Train CLOUD-DEBYE per ``config``, evaluate it (and the ``compare`` methods) on the test
    materials, write results.json, report.md, predictions.csv, figures and the model.
    ``pretrained`` (a loaded package) and ``data`` skip loading them again.

    The outputs are written at once with the baselines that need no training, then again as
    each trained unit finishes (``trained_units``: AFLOW pre-training, CLOUD-DEBYE, which
    also writes the model package, its single-temperature twin, the direct MLP); until the
    last they are partial (results.json ``complete``: false and ``pending``; report.md says
    so). Finished units and the last epoch of the one in training are kept in
    <out>/progress/ (``RunProgress``): a rerun with the same out directory skips the finished
    units, resumes the interrupted one after its last saved epoch, and ends with the results
    of an uninterrupted run.
    """
    from train.threads import apply_threads

    logger.info(apply_threads(config.threads).describe())
    started = time.perf_counter()
    if pretrained is None:
        from cloud.export import load_pretrained

        pretrained = load_pretrained(config.checkpoint)
    variant = config.variant or checkpoint_variant(pretrained)
    context = prepare_run(config, pretrained, variant, data)
    out = output_directory(config)
    units = RunProgress(out, run_fingerprint(context))
    pending = trained_units(config)
    report_lines = list(context.data.report)
    histories: dict[str, FitHistory] = {}
    methods = baseline_methods(context)

    def publish() -> dict[str, Any]:
        ordered = sorted(methods.values(), key=lambda m: METHOD_ORDER.index(m.name))
        metrics = run_metrics(context, ordered, histories, pretrained, variant, report_lines)
        metrics["complete"], metrics["pending"] = not pending, list(pending)
        metrics["resumed_units"] = units.finished_before
        metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_outputs(out, context, ordered, metrics)
        if pending:
            logger.info("partial results in %s; still to train: %s", out, ", ".join(pending))
        return metrics

    metrics = publish()  # an interrupted run leaves at least the baselines and a report
    model = context.new_model()
    if config.aflow_epochs:
        tensors, record = units.unit(
            "aflow", lambda path: aflow_unit(model, context, pretrained.tokenizer, variant, path)
        )
        load_state_tensors(model, unprefixed("model.", tensors), record["model_tied"], out)
        histories["aflow"] = FitHistory(**record["history"])
        report_lines += record["report"]
        pending.remove("aflow")
        metrics = publish()
        # Dropout masks from the same seed whether AFLOW was trained now or read back.
        torch.manual_seed(config.seed)
    tensors, record = units.unit("cloud_debye", lambda path: cloud_debye_unit(model, context, path))
    load_state_tensors(model, unprefixed("model.", tensors), record["model_tied"], out)
    histories["cloud_debye"] = FitHistory(**record["history"])
    label = f"CLOUD-DEBYE ({_protocol_label(config)})"
    methods["cloud_debye"] = context.debye_method("cloud_debye", label, tensors["theta"].numpy())
    pending.remove("cloud_debye")
    metrics = publish()
    if progress:
        best = histories["cloud_debye"]
        logger.info("CLOUD-DEBYE: best val %.4f at epoch %d", best.best_val, best.best_epoch + 1)
    if config.save_model:
        save_debye_model(model, pretrained.tokenizer, variant, out / "model", metrics)
    if "cloud_debye_single" in pending:
        tensors, record = units.unit(
            "cloud_debye_single", lambda path: single_protocol_unit(context, path)
        )
        histories["cloud_debye_single"] = FitHistory(**record["history"])
        label = "CLOUD-DEBYE (paper protocol: C_v at 300 K)"
        theta = tensors["theta"].numpy()
        methods["cloud_debye_single"] = context.debye_method("cloud_debye_single", label, theta)
        pending.remove("cloud_debye_single")
        metrics = publish()
    if "direct" in pending:
        tensors, record = units.unit("direct", lambda path: direct_unit(context, path))
        histories["direct"] = FitHistory(**record["history"])
        methods["direct"] = direct_method(context, tensors["c300_per_atom"].numpy())
        pending.remove("direct")
        metrics = publish()
    return DebyeRunResult(out, metrics, model, context.split, context.data)


def output_directory(config: DebyeTrainConfig) -> Path:
    """``config.out``, else runs/debye/<data>-<protocol>-<target>."""
    return Path(
        config.out or f"runs/debye/{config.data}-{config.protocol}-{config.resolved_target}"
    )


METHOD_ORDER = ("cloud_debye", "cloud_debye_single", "direct", "constant", "oracle", "oracle_300")
"""The order of the methods in results.json, report.md and predictions.csv."""
UnitResult = tuple[dict[str, torch.Tensor], dict[str, Any]]
"""A finished unit as ``RunProgress`` keeps it: tensors and a JSON record."""


def trained_units(config: DebyeTrainConfig) -> list[str]:
    """The units of a run that train a model, in the order they run: aflow (θ pre-training,
    when aflow_epochs), cloud_debye, cloud_debye_single and direct (when compared)."""
    units = ["aflow"] if config.aflow_epochs else []
    units.append("cloud_debye")
    if "debye_single" in config.compare and config.protocol != "single":
        units.append("cloud_debye_single")
    if "direct" in config.compare:
        units.append("direct")
    return units


PROGRESS_DIR = "progress"
RUN_FILE = "run.json"
RESUME_IGNORES = (
    "checkpoint",
    "out",
    "device",
    "threads",
    "save_model",
    "plots",
    "progress",
    "progress_every_s",
    "compare",
    "eval_temperatures",
)
"""Config fields no finished unit depends on (a unit keeps θ or predictions of the test
materials, not curves on the evaluation grid; the checkpoint is fingerprinted by its weights,
not its path), so changing them keeps a run resumable."""


def run_fingerprint(context: RunContext) -> dict[str, Any]:
    """What a run's finished units depend on: the config less ``RESUME_IGNORES``, a SHA-256
    of the encoder's weights and one of the materials (ids, SCOPE strings, token ids, n_atoms,
    training targets); JSON-normalised, so it compares equal to its run.json."""
    config = {k: v for k, v in context.config.to_dict().items() if k not in RESUME_IGNORES}
    data = hashlib.sha256(
        json.dumps([context.data.ids, context.data.scopes, context.encoded.sequences]).encode()
    )
    for array in (context.data.n_atoms, context.c_train, context.u_train):
        data.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    fingerprint = {
        "config": config,
        "encoder_sha256": tensor_digest(context.encoder_owner.state_dict()),
        "data_sha256": data.hexdigest(),
    }
    return json.loads(json.dumps(jsonable(fingerprint)))


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class RunProgress:
    """The finished units of a run under ``<out>/progress/``, so that a rerun resumes.

    ``run.json`` is the run's ``run_fingerprint``; ``<unit>.safetensors`` a finished unit (its
    θ or predictions of the test materials, the weights it leaves where later units need them,
    its training history, as ``write_state`` files); ``<unit>.training.safetensors`` the
    state after the last epoch of the unit in training (``fit``). When run.json holds another
    fingerprint (another config, encoder or data), that run's files are removed and the run
    starts afresh, as the outputs beside them are about to be replaced.
    """

    def __init__(self, out: Path, fingerprint: Mapping[str, Any]) -> None:
        from train.common.files import atomic_write_text

        self.directory = out / PROGRESS_DIR
        run_file = self.directory / RUN_FILE
        previous = _read_json_or_none(run_file)
        if previous != fingerprint:
            if previous is not None:
                logger.warning(
                    "%s holds the progress of another run (it differs in %s); starting afresh",
                    self.directory,
                    ", ".join(_fingerprint_differences(previous, fingerprint)),
                )
            for path in self.directory.glob("*.safetensors"):
                path.unlink()
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_file, json.dumps(fingerprint, indent=1) + "\n")
        self.finished_before = sorted(
            path.name.removesuffix(".safetensors")
            for path in self.directory.glob("*.safetensors")
            if not path.name.endswith(".training.safetensors")
        )
        if self.finished_before:
            logger.info(
                "%s: resuming; finished by an earlier run: %s",
                self.directory,
                ", ".join(self.finished_before),
            )

    def unit(self, name: str, train: Callable[[Path], UnitResult]) -> UnitResult:
        """The tensors and record of unit ``name``: read back when an earlier run finished
        it, else ``train(state_path)`` (``state_path``: its per-epoch state for ``fit``),
        saved, and its training state removed."""
        path = self.directory / f"{name}.safetensors"
        if path.is_file():
            logger.info("%s: finished by an earlier run, read back from %s", name, path)
            return read_state(path)
        training = self.directory / f"{name}.training.safetensors"
        tensors, record = train(training)
        write_state(path, tensors, record)
        training.unlink(missing_ok=True)
        return tensors, record


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fingerprint_differences(previous: Any, current: Mapping[str, Any]) -> list[str]:
    if not isinstance(previous, dict):
        return ["an unreadable run.json"]
    old_config, new_config = previous.get("config") or {}, current["config"]
    differing = [
        key
        for key in sorted(set(old_config) | set(new_config))
        if old_config.get(key) != new_config.get(key)
    ]
    if previous.get("encoder_sha256") != current["encoder_sha256"]:
        differing.append("the encoder's weights")
    if previous.get("data_sha256") != current["data_sha256"]:
        differing.append("the materials")
    return differing or ["its format"]


def prepare_run(
    config: DebyeTrainConfig, pretrained: Any, variant: str, data: ThermalData | None
) -> RunContext:
    """Load and tokenise the data, split it by material, tabulate the targets."""
    tokenizer = pretrained.tokenizer
    max_length = pretrained.model.encoder.config.max_position_embeddings
    if data is None:
        data = load_thermal_data(
            config.data,
            config.data_root,
            variant=variant,
            allow_sample=config.allow_sample,
            max_materials=config.max_materials,
            seed=config.seed,
            stability_threshold_thz=config.stability_threshold_thz,
        )
    sequences, too_long = encode_scopes(data.scopes, tokenizer, max_length)
    keep = np.array([i for i in range(len(data)) if i not in set(too_long)], dtype=int)
    data = _drop_rows(data, keep, f"more than the model's {max_length} positions", len(too_long))
    for line in data.report:
        logger.info(line)
    split = split_materials(
        data.ids,
        seed=config.seed,
        fold=config.fold,
        n_folds=config.n_folds,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    train_grid, eval_grid = config.train_temperatures(), config.evaluation_temperatures()
    c_train, u_train = normalised_targets(
        *data.curves(train_grid), data.n_atoms, config.u_reference_k
    )
    cv_eval, u_eval = data.curves(eval_grid)
    return RunContext(
        config=config,
        data=data,
        split=split,
        encoded=Encoded(tokenizer, [sequences[i] for i in keep], resolve_device(config.device)),
        encoder_owner=pretrained.model,
        target=config.resolved_target,
        train_grid=train_grid,
        eval_grid=eval_grid,
        c_train=c_train,
        u_train=u_train,
        cv_test=cv_eval[split.test],
        u_test=u_eval[split.test],
    )


def baseline_methods(context: RunContext) -> dict[str, MethodCurves]:
    """The ``compare`` predictors that need no training (constant, oracle, oracle_300)."""
    config = context.config
    methods = {}
    if "constant" in config.compare:
        methods["constant"] = constant_theta_method(context)
    if "oracle" in config.compare:
        theta = oracle_theta(context.eval_grid, context.cv_test, context.n_atoms_test)
        grid = f"{min(context.eval_grid):g}–{max(context.eval_grid):g} K"
        label = f"oracle Debye fit (θ per test material minimising its C_v MAE over {grid})"
        note = "uses the test truth: the floor of the curve-mean C_v MAE for any Debye model"
        methods["oracle"] = context.debye_method("oracle", label, theta, note)
    if "oracle_300" in config.compare:
        methods["oracle_300"] = oracle_300_method(context)
    return methods


def oracle_300_method(context: RunContext) -> MethodCurves:
    """θ per test material that reproduces its true C_v(300 K) exactly (any 0 < C_v < 3nR is
    a Debye C_v at 300 K for one θ): the best case of the single-temperature protocol, and
    how that θ extrapolates to other temperatures."""
    at300 = context.eval_grid.index(SINGLE_TEMPERATURE)
    cv300 = context.cv_test[:, at300 : at300 + 1]
    theta = oracle_theta([SINGLE_TEMPERATURE], cv300, context.n_atoms_test, criterion="lsq")
    label = "oracle θ matching each test material's true C_v(300 K)"
    note = "uses the test truth: C_v error 0 at 300 K by construction"
    return context.debye_method("oracle_300", label, theta, note)


def aflow_unit(
    model: CloudDebye, context: RunContext, tokenizer: Any, variant: str, state_path: Path
) -> UnitResult:
    """θ pre-training on AFLOW (``pretrain_on_aflow``); keeps the weights it leaves."""
    test_scopes = {context.data.scopes[i] for i in context.split.test}
    history, report = pretrain_on_aflow(
        model, tokenizer, context.config, variant, test_scopes, state_path
    )
    tensors, tied = state_tensors("model.", model.state_dict())
    return tensors, {"history": dataclasses.asdict(history), "report": report, "model_tied": tied}


def cloud_debye_unit(model: CloudDebye, context: RunContext, state_path: Path) -> UnitResult:
    """CLOUD-DEBYE on the run's protocol; keeps its weights and θ of the test materials."""
    history = train_cloud_debye(
        model,
        context.encoded,
        context.c_train,
        context.u_train,
        context.split,
        context.train_grid,
        context.target,
        context.config,
        state_path=state_path,
    )
    theta = predict_theta(
        model, context.encoded, context.split.test, context.config.eval_batch_size
    )
    tensors, tied = state_tensors("model.", model.state_dict())
    tensors["theta"] = torch.from_numpy(theta)
    return tensors, {"history": dataclasses.asdict(history), "model_tied": tied}


def single_protocol_unit(context: RunContext, state_path: Path) -> UnitResult:
    """CLOUD-DEBYE trained the paper's way (C_v at 300 K only) on the same split; keeps θ of
    the test materials."""
    config = context.config
    single_config = dataclasses.replace(config, protocol="single", target="cv", temperatures=None)
    cv300, u300 = context.data.curves([SINGLE_TEMPERATURE])
    c300, _ = normalised_targets(cv300, u300, context.data.n_atoms, config.u_reference_k)
    model = context.new_model()
    history = train_cloud_debye(
        model,
        context.encoded,
        c300,
        np.zeros_like(c300),
        context.split,
        [SINGLE_TEMPERATURE],
        "cv",
        single_config,
        label="cloud-debye-single",
        state_path=state_path,
    )
    theta = predict_theta(model, context.encoded, context.split.test, config.eval_batch_size)
    return {"theta": torch.from_numpy(theta)}, {"history": dataclasses.asdict(history)}


def direct_unit(context: RunContext, state_path: Path) -> UnitResult:
    """The direct MLP on C_v at 300 K; keeps its C_v(300 K) / (3 n R) of the test materials."""
    cv300, _ = context.data.curves([SINGLE_TEMPERATURE])
    c300_atom = cv300[:, 0] / (THREE_R * context.data.n_atoms)
    predicted, history = train_direct_cv300(
        context.encoder_owner,
        context.encoded,
        c300_atom,
        context.split,
        context.config,
        state_path=state_path,
    )
    tensors = {"c300_per_atom": torch.from_numpy(predicted[context.split.test])}
    return tensors, {"history": dataclasses.asdict(history)}


def direct_method(context: RunContext, c300_per_atom: np.ndarray) -> MethodCurves:
    """The direct MLP's test predictions (C_v / (3 n R) at 300 K) as curves: a C_v column at
    300 K, NaN elsewhere, no U."""
    cv = np.full((len(context.split.test), len(context.eval_grid)), np.nan)
    cv[:, context.eval_grid.index(SINGLE_TEMPERATURE)] = (
        c300_per_atom * THREE_R * context.n_atoms_test
    )
    note = "predicts C_v per atom at 300 K (× n_atoms); N/A at other temperatures and for U"
    return MethodCurves("direct", "direct MLP on C_v(300 K)", None, cv, None, "300 K only", note)


def constant_theta_method(context: RunContext) -> MethodCurves:
    """The best single θ of the training materials under the run's own loss."""
    config = context.config
    train = context.split.train
    constant = fit_constant_theta(
        context.train_grid,
        context.c_train[train],
        context.u_train[train],
        context.target,
        kind=config.loss,
        u_weight=config.u_weight,
        u_reference_k=config.u_reference_k,
    )
    theta = np.full(len(context.split.test), constant)
    label = f"constant θ = {constant:.0f} K (best on training set)"
    return context.debye_method("constant", label, theta)


def run_metrics(
    context: RunContext,
    methods: Sequence[MethodCurves],
    histories: Mapping[str, FitHistory],
    pretrained: Any,
    variant: str,
    report_lines: list[str],
) -> dict[str, Any]:
    """Everything results.json records."""
    config, data, split = context.config, context.data, context.split
    train_scopes = {data.scopes[j] for j in split.train}
    return {
        "data": data.source,
        "protocol": config.protocol,
        "target": context.target,
        "train_temperatures": context.train_grid,
        "eval_temperatures": context.eval_grid,
        "split": {
            "description": split.description,
            "n_train": len(split.train),
            "n_val": len(split.val),
            "n_test": len(split.test),
            "test_scopes_also_in_train": sum(data.scopes[i] in train_scopes for i in split.test),
        },
        "methods": {
            m.name: summarise_method(
                m,
                context.cv_test,
                context.u_test,
                context.n_atoms_test,
                context.eval_grid,
                context.train_range,
            )
            for m in methods
        },
        "training": {name: dataclasses.asdict(h) for name, h in histories.items()},
        "checkpoint": str(config.checkpoint),
        "checkpoint_metadata": getattr(pretrained, "metadata", {}) or {},
        "variant": variant,
        "data_report": report_lines,
        "config": config.to_dict(),
    }


def write_outputs(
    out: Path, context: RunContext, methods: Sequence[MethodCurves], metrics: Mapping[str, Any]
) -> None:
    """config.yaml, results.json, predictions.csv, report.md and the figures, each written
    atomically: a run stopped at any moment leaves whole files."""
    from train.common.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "config.yaml", yaml.safe_dump(context.config.to_dict(), sort_keys=False)
    )
    atomic_write_text(out / RESULTS_FILE, json.dumps(jsonable(metrics), indent=1))
    write_predictions(out / PREDICTIONS_FILE, context, methods)
    atomic_write_text(out / REPORT_FILE, render_report(metrics))
    if context.config.plots and methods:  # nothing to draw before the first method
        write_figures(out / "figures", context, methods, metrics)


def _protocol_label(config: DebyeTrainConfig) -> str:
    if config.protocol == "single":
        return "paper protocol: C_v at 300 K"
    T = config.train_temperatures()
    quantity = {"cv": "C_v", "u": "U", "both": "C_v + U"}[config.resolved_target]
    return f"{quantity} on {min(T):g}–{max(T):g} K, {len(T)} temperatures"


def save_debye_model(
    model: CloudDebye, tokenizer: Any, variant: str, path: Path, metrics: Mapping[str, Any]
) -> None:
    from cloud.export import save_pretrained

    cloud_debye = metrics["methods"]["cloud_debye"]
    metadata = {
        "finetune": {
            "task": f"CLOUD-DEBYE on {metrics['data']} ({metrics['protocol']}, target {metrics['target']})",
            "output": "theta_D in K; C_v(T), U(T) per mole of cells via cloud.debye with n_atoms",
            "train_temperatures_K": metrics["train_temperatures"],
            "split": metrics["split"],
            "test_cv_mae_300K_per_cell": (cloud_debye["cv"] or {}).get("mae_300K_per_cell"),
            "pretrained_checkpoint": metrics["checkpoint"],
        },
        "training_data": {"variant": variant},
    }
    save_pretrained(
        model.eval(), tokenizer, path, metadata=jsonable(metadata), variant=variant, overwrite=True
    )


def write_predictions(path: Path, context: RunContext, methods: Sequence[MethodCurves]) -> None:
    """One CSV row per test material: θ of every Debye method, C_v and U at 300 K.

    Values are per mole of cells, in the units the column names end with and the report
    uses: ``theta_<method>_K``, ``cv300_<method>_J_per_mol_K``, ``u300_<method>_kJ_per_mol``
    (``<method>`` is ``true`` for the targets). Written atomically.
    """
    import csv

    from train.common.files import atomic_write

    at300 = context.eval_grid.index(SINGLE_TEMPERATURE)
    columns = ["mp_id", "scope", "n_atoms", "cv300_true_J_per_mol_K", "u300_true_kJ_per_mol"]
    for method in methods:
        name = method.name
        columns += [f"theta_{name}_K", f"cv300_{name}_J_per_mol_K", f"u300_{name}_kJ_per_mol"]
    data = context.data
    rows: list[list[Any]] = []
    for k, row in enumerate(context.split.test):
        values: list[Any] = [
            data.ids[row],
            data.scopes[row],
            int(data.n_atoms[row]),
            f"{context.cv_test[k, at300]:.6g}",
            f"{context.u_test[k, at300] * KJ_PER_J:.6g}",
        ]
        for method in methods:
            u_kj = None if method.u is None else method.u * KJ_PER_J
            values += [
                _cell(method.theta, k, None, ".4f"),
                _cell(method.cv, k, at300, ".6g"),
                _cell(u_kj, k, at300, ".6g"),
            ]
        rows.append(values)

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)

    atomic_write(path, write)


def _cell(values: np.ndarray | None, row: int, column: int | None, spec: str) -> str:
    if values is None:
        return ""
    value = values[row] if column is None else values[row, column]
    return "" if np.isnan(value) else format(value, spec)


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "N/A" if value is None else f"{value:.{digits}f}"


def results_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table of the test MAEs: per mole of cells, per mole of atoms in brackets;
    ± one standard error over the test materials at 300 K."""
    grid = metrics["eval_temperatures"]
    span = f"{min(grid):g}–{max(grid):g} K"
    lines = [
        f"| method | C_v MAE @300 K, J/(mol K) | U MAE @300 K, kJ/mol | C_v MAE {span} "
        f"| U MAE {span} | C_v MAE on training T range | C_v MAE above 800 K |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in metrics["methods"].values():
        cv, u = entry.get("cv"), entry.get("u")
        cells = [
            _mae_text(cv, "mae_300K", 2, with_se=True),
            _mae_text(u, "mae_300K", 3, with_se=True),
            _mae_text(cv, "mae_mean_all", 2),
            _mae_text(u, "mae_mean_all", 3),
            _mae_text(cv, "mae_mean_train_range", 2),
            _mae_text(cv, "mae_mean_above_800K", 2),
        ]
        lines.append(f"| {entry['label']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _mae_text(
    section: Mapping[str, Any] | None, key: str, digits: int, with_se: bool = False
) -> str:
    """ "MAE per cell (per atom)", with "± SE" when asked; N/A when the method cannot answer."""
    if section is None or section.get(f"{key}_per_cell") is None:
        return "N/A"
    text = _fmt(section[f"{key}_per_cell"], digits)
    if with_se and section.get("se_300K_per_cell") is not None:
        text += f" ± {_fmt(section['se_300K_per_cell'], digits)}"
    return f"{text} ({_fmt(section[f'{key}_per_atom'], digits)})"


def render_report(metrics: Mapping[str, Any]) -> str:
    split = metrics["split"]
    lines = [f"# CLOUD-DEBYE on {metrics['data']}", ""]
    if metrics.get("pending"):
        lines += [
            f"**Partial results**: still to train: {', '.join(metrics['pending'])} (the run "
            "is going on, or was stopped). Rerun the same command with the same --out to "
            f"resume: finished units are kept in {PROGRESS_DIR}/.",
            "",
        ]
    if metrics.get("resumed_units"):
        lines += [
            f"Resumed: {', '.join(metrics['resumed_units'])} finished in an earlier run and "
            f"were read back from {PROGRESS_DIR}/.",
            "",
        ]
    lines += [
        f"Protocol {metrics['protocol']}, target {metrics['target']}, training temperatures "
        f"{_grid_text(metrics['train_temperatures'])} K; checkpoint `{metrics['checkpoint']}`.",
        "",
        f"Split: {split['description']}: {split['n_train']} train, {split['n_val']} val, "
        f"{split['n_test']} test materials ({split['test_scopes_also_in_train']} test SCOPE "
        "strings also occur in training: SCOPE has no coordinates).",
        "",
        "Test-set MAE per mole of cells (per mole of atoms in brackets); means over the "
        "evaluation grid's temperatures.",
        "",
        results_table(metrics),
        "",
        "## Training",
        "",
    ]
    for name, history in metrics["training"].items():
        lines.append(
            f"- {name}: best validation {history['best_val']:.4f} at epoch "
            f"{history['best_epoch'] + 1} of {history['epochs_run']} "
            f"({history['wall_time_s']:.0f} s)"
        )
    lines += ["", "## Data", "", *(f"    {line}" for line in metrics["data_report"]), ""]
    return "\n".join(lines)


def _grid_text(T: Sequence[float]) -> str:
    if len(T) == 1:
        return f"{T[0]:g}"
    return f"{min(T):g}–{max(T):g} ({len(T)} points)"


# --------------------------------------------------------------------------- figures


_STYLES: dict[str, dict[str, Any]] = {
    "cloud_debye": {"color": "C0", "linestyle": "-"},
    "cloud_debye_single": {"color": "C1", "linestyle": "-."},
    "constant": {"color": "C7", "linestyle": ":"},
    "oracle": {"color": "C2", "linestyle": "--"},
    "oracle_300": {"color": "C4", "linestyle": (0, (1, 1))},
    "direct": {"color": "C3", "marker": "*", "markersize": 12, "linestyle": "none"},
}
_SHORT_LABELS = {
    "cloud_debye": "CLOUD-DEBYE",
    "cloud_debye_single": "CLOUD-DEBYE (300 K)",
    "constant": "constant θ",
    "oracle": "oracle fit",
    "oracle_300": "oracle θ @300 K",
    "direct": "direct MLP (300 K)",
}


def write_figures(
    directory: Path,
    context: RunContext,
    methods: Sequence[MethodCurves],
    metrics: Mapping[str, Any],
) -> list[Path]:
    """mae_vs_temperature.png, curves.png (six test materials), theta_parity.png."""
    import matplotlib

    matplotlib.use("Agg")
    directory.mkdir(parents=True, exist_ok=True)
    paths = [
        directory / "mae_vs_temperature.png",
        directory / "curves.png",
        directory / "theta_parity.png",
    ]
    plot_mae_vs_temperature(paths[0], context, metrics)
    plot_material_curves(paths[1], context, methods)
    plot_theta_parity(paths[2], context, methods)
    return paths


def _save_figure(figure: Any, path: Path, dpi: int) -> None:
    """Save a PNG atomically and close the figure."""
    import matplotlib.pyplot as plt

    from train.common.files import atomic_write

    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=dpi, format="png"))
    plt.close(figure)


def plot_mae_vs_temperature(path: Path, context: RunContext, metrics: Mapping[str, Any]) -> None:
    """Test MAE per atom of C_v and U against T, one line per method (direct: one point)."""
    import matplotlib.pyplot as plt

    T = np.asarray(context.eval_grid)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, entry in metrics["methods"].items():
        for axis, quantity in zip(axes, ("cv", "u"), strict=True):
            if entry.get(quantity) is None:
                continue
            values = entry[quantity]["mae_vs_T_per_atom"]
            values = np.array([np.nan if v is None else v for v in values])
            axis.plot(T, values, label=entry["label"], **_STYLES.get(name, {}))
    ylabels = ("C_v MAE per atom, J/(mol K)", "U MAE per atom, kJ/mol")
    for axis, ylabel in zip(axes, ylabels, strict=True):
        axis.axvspan(*context.train_range, color="0.9", zorder=0, label="training temperatures")
        axis.set_xlabel("T (K)")
        axis.set_ylabel(ylabel)
        axis.set_xlim(0, T.max())
        axis.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    figure.suptitle(
        f"Test-set MAE vs temperature ({metrics['data']}, {len(context.split.test)} materials)"
    )
    figure.tight_layout()
    _save_figure(figure, path, dpi=120)


def plot_material_curves(
    path: Path, context: RunContext, methods: Sequence[MethodCurves], count: int = 6
) -> None:
    """True and predicted C_v(T) per atom of ``count`` test materials spread over C_v(300 K)."""
    import matplotlib.pyplot as plt

    T = np.asarray(context.eval_grid)
    at300 = context.eval_grid.index(SINGLE_TEMPERATURE)
    n_atoms = context.n_atoms_test
    c300 = context.cv_test[:, at300] / n_atoms
    spread = np.linspace(0, len(c300) - 1, min(count, len(c300))).round().astype(int)
    picks = np.argsort(c300)[spread]
    columns = 3
    rows = math.ceil(len(picks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis, k in zip(axes.flat, picks, strict=False):
        axis.plot(
            T, context.cv_test[k] / n_atoms[k], color="k", linewidth=2, label="true (phonons)"
        )
        for method in methods:
            if method.cv is None:
                continue
            label = _SHORT_LABELS.get(method.name, method.name)
            if method.theta is not None:
                label += f", θ={method.theta[k]:.0f} K"
            axis.plot(T, method.cv[k] / n_atoms[k], label=label, **_STYLES.get(method.name, {}))
        axis.axvspan(*context.train_range, color="0.93", zorder=0)
        material = context.data.ids[context.split.test[k]]
        axis.set_title(f"{material} ({int(n_atoms[k])} atoms/cell)", fontsize=9)
        axis.set_xlabel("T (K)")
        axis.set_ylabel("C_v per atom, J/(mol K)")
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(picks) :]:
        axis.axis("off")
    figure.tight_layout()
    _save_figure(figure, path, dpi=110)


def plot_theta_parity(path: Path, context: RunContext, methods: Sequence[MethodCurves]) -> None:
    """Predicted θ_D against the oracle θ_D (fit to the true C_v curve) of the test materials."""
    import matplotlib.pyplot as plt

    oracle = next((m.theta for m in methods if m.name == "oracle"), None)
    if oracle is None:
        oracle = oracle_theta(context.eval_grid, context.cv_test, context.n_atoms_test)
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    highest = float(oracle.max())
    for method in methods:
        if method.theta is None or method.name == "oracle":
            continue
        highest = max(highest, float(method.theta.max()))
        color = _STYLES.get(method.name, {}).get("color")
        label = _SHORT_LABELS.get(method.name, method.name)
        axis.scatter(oracle, method.theta, s=8, alpha=0.6, label=label, color=color)
    limits = [0.0, 1.05 * highest]
    axis.plot(limits, limits, color="k", linewidth=0.8)
    axis.set_xlim(limits)
    axis.set_ylim(limits)
    axis.set_xlabel("oracle θ_D (fit to the true C_v curve), K")
    axis.set_ylabel("predicted θ_D, K")
    axis.legend(fontsize=7)
    figure.tight_layout()
    _save_figure(figure, path, dpi=120)
