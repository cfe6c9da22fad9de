"""What a fine-tuning run is asked to do: ``FinetuneConfig`` (YAML-loadable, every field
documented), the baselines it can fit, and the fold list of ``--folds``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.heads import HeadConfig
from train.common.ranges import optimiser_checks, out_of_range, positive
from train.config import build_config, load_layered_config
from train.finetune.tasks import Task

BASELINES: tuple[str, ...] = ("random_init", "classical")
"""Baselines a run can fit on the same rows and folds, besides the mean predictor (always):
``random_init``, the same recipe from a randomly initialised encoder of the same shape (what
pre-training buys), and ``classical``, a random forest on features read off the SCOPE string
(``train.finetune.baselines``; whether the transformer earns its cost)."""
BASELINE_LABELS = {
    "random_init": "same recipe, random initialisation",
    "classical": "random forest on SCOPE features",
}


@dataclass
class HeadSection:
    """The MLP head on the [CLS] embedding."""

    hidden_sizes: list[int] = field(default_factory=lambda: [256])
    """Hidden layer widths; [] gives a linear head."""
    dropout: float = 0.1
    """Dropout before each linear layer of the head."""
    activation: str = "gelu"
    """gelu, relu, silu or tanh."""
    pooling: str = "cls"
    """What the head reads: cls ([CLS] embedding), mean (mean over real tokens) or cls+mean."""
    composition_descriptor: bool = False
    """Also read the fraction-weighted element-property statistics of the composition
    (needs a checkpoint with token features)."""


@dataclass
class FinetuneConfig:
    """One fine-tuning run: a task, a pretrained package, the optimisation; YAML-loadable."""

    task: str = ""
    """Task name in the registry, ``train.finetune.tasks`` (``cloud finetune --task``)."""
    checkpoint: str = ""
    """Export package of the pretrained model (``cloud.export.save_pretrained``)."""
    out: str | None = None
    """Output directory of the run; None: runs/finetune/<task>."""
    folds: list[int] | None = None
    """Folds to run (0-based); None: all of the task's folds."""
    data_root: str | None = None
    """Root of the task files; None: ``$CLOUD_SHARED_DATA`` or ../shared/data."""
    allow_sample: bool = True
    """Fall back to the sample shipped in data/ when the data root lacks the task's files."""
    variant: str | None = None
    """SCOPE variant; None: the one the checkpoint was pretrained on (else cloud)."""
    epochs: int = 40
    """Maximum training epochs per fold (frozen-encoder epochs included)."""
    batch_size: int = 64
    """Training sequences per optimizer step."""
    eval_batch_size: int = 256
    """Sequences per forward pass when predicting."""
    lr: float = 3e-4
    """Peak learning rate of the top encoder layer (lower layers: ``layer_decay`` powers)."""
    head_lr: float = 1e-3
    """Peak learning rate of the head."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices (not on biases and LayerNorms)."""
    layer_decay: float = 1.0
    """Layer-wise LR decay: block i of L gets lr * layer_decay^(L-1-i), embeddings
    lr * layer_decay^L. 1.0 switches it off."""
    warmup_ratio: float = 0.06
    """Fraction of all optimizer steps with a linear LR warm-up."""
    min_lr_ratio: float = 0.05
    """Final LR of the cosine decay, as a fraction of the peak."""
    freeze_encoder_epochs: int = 0
    """Epochs at the start that train the head only (encoder frozen, in eval mode)."""
    val_fraction: float = 0.1
    """Share of the training fold carved out (seeded) for early stopping."""
    patience: int = 10
    """Stop after this many epochs without a better validation score (0: never stop)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    encoder_dropout: float | None = 0.1
    """Hidden and attention dropout of the encoder while fine-tuning; None keeps the
    pretrained config's."""
    head: HeadSection = field(default_factory=HeadSection)
    """The prediction head."""
    max_train_rows: int | None = None
    """Use at most this many training rows per fold (seeded subset; quick runs). None: all."""
    seed: int = 0
    """Seeds the validation carve-out, the model init, dropout and the batch order."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1 …"""
    threads: int = 0
    """torch intra-op threads during the run; 0 chooses the free cores (``train.threads``),
    printed at start. On a few shared cores 1 is often several times faster than contending
    threads."""
    save_model: str = "best"
    """best (the fold with the best validation score), all (one package per fold), none."""
    exclude_tasks: list[str] = field(default_factory=list)
    """Tasks whose structures (every fold) must not be trained on: rows whose SCOPE string
    equals one of theirs, or that are the same crystal as one of theirs (StructureMatcher,
    among structures of the same reduced formula), are kept out of training and
    validation. For an intermediate
    supervised stage on a large property set before a benchmark (as the CLOUD-DEBYE AFLOW
    stage does), so that no benchmark test material is seen."""
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    """Baselines fitted on the same rows and folds and reported beside the model (the mean
    predictor always is): random_init (doubles the cost) and classical (seconds)."""
    ensemble: int = 1
    """Models fine-tuned per fold from different seeds (head init, dropout, batch order; the
    same training and validation rows); the test prediction is their mean. The exported
    model is the first member."""
    tensorboard: bool = True
    """Write TensorBoard curves per fold."""
    plots: bool = True
    """Write a parity plot per fold (regression)."""
    resume: bool = False
    """Keep the folds an earlier run with the same settings finished under ``out`` (each
    fold's ``result.json``, written as it ends) and run only the others
    (``cloud finetune --resume``). Folds of a run with other settings are run again."""

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("epochs, batch_size and eval_batch_size must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.layer_decay <= 1.0:
            problems.append(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0 <= self.freeze_encoder_epochs <= self.epochs:
            problems.append("freeze_encoder_epochs must be in [0, epochs]")
        if self.save_model not in ("best", "all", "none"):
            problems.append(f"save_model must be best, all or none, got {self.save_model!r}")
        if self.patience < 0:
            problems.append("patience must be >= 0")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            problems.append(f"unknown baselines {unknown}; valid: {list(BASELINES)}")
        if self.ensemble < 1:
            problems.append(f"ensemble must be >= 1, got {self.ensemble}")
        problems += out_of_range(
            [
                *optimiser_checks(self),
                ("max_train_rows", self.max_train_rows, positive, ">= 1 or null"),
            ]
        )
        if problems:
            raise ValueError("invalid finetune config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def head_config(self, task: Task, n_classes: int) -> HeadConfig:
        return HeadConfig(
            task_type=task.task_type,
            num_outputs=1 if task.is_regression else n_classes,
            hidden_sizes=list(self.head.hidden_sizes),
            dropout=self.head.dropout,
            activation=self.head.activation,
            pooling=self.head.pooling,
            composition_descriptor=self.head.composition_descriptor,
        )


def config_from_dict(values: Mapping[str, Any]) -> FinetuneConfig:
    """A FinetuneConfig from nested dicts; unknown keys and wrong types are errors."""
    return build_config(FinetuneConfig, values, label="finetune")


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Sequence[str] = (),
    **fields: Any,
) -> FinetuneConfig:
    """YAML config (optional), then ``fields`` (command-line flags), then dotted overrides."""
    return load_layered_config(path, overrides, fields, kind="finetune", build=config_from_dict)


def parse_folds(text: str | None) -> list[int] | None:
    """``0-4``, ``0,2,3`` or ``1`` → fold indices; None or ``all`` → None (every fold)."""
    if text is None or text.strip().lower() == "all":
        return None
    folds: list[int] = []
    for part in text.split(","):
        start, sep, stop = part.strip().partition("-")
        if not start.isdigit() or (sep and not stop.isdigit()):
            raise ValueError(f"invalid fold list {text!r}: use 0-4, 0,2,3, 1 or all")
        folds.extend(range(int(start), int(stop) + 1) if sep else [int(start)])
    if not folds:
        raise ValueError(f"invalid fold list {text!r}: use 0-4, 0,2,3, 1 or all")
    return sorted(set(folds))
