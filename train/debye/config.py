"""What a CLOUD-DEBYE run is asked to do: ``DebyeTrainConfig`` (YAML-loadable, every field
documented) and its loaders."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.debye_head import DebyeHeadConfig
from train.common.ranges import optimiser_checks, out_of_range, positive
from train.config import build_config, load_layered_config
from train.debye.options import (
    COMPARE_METHODS,
    PROTOCOLS,
    SINGLE_TEMPERATURE,
    SOURCES,
    TARGETS,
    parse_temperatures,
)

LOSSES = ("l1", "mse")


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
        problems += out_of_range(
            [
                *optimiser_checks(self),
                ("aflow_max_rows", self.aflow_max_rows, positive, ">= 1 or null"),
            ]
        )
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
