"""Fine-tuning a pretrained CLOUD encoder on a property task, with the Matbench protocol.

Per fold of a ``train.tasks`` task:

1. the validation set for early stopping is carved (seeded) from the training fold and
   removed from it, unless the task gives one (``train.tasks.split_fold``);
2. regression targets are standardised with the mean and standard deviation of the
   training rows only (stored in the model, so it predicts in data units);
3. the encoder (from an export package) and a fresh MLP head are trained with AdamW: an
   optional warm-up of ``freeze_encoder_epochs`` with the encoder frozen, optional layer-wise
   learning-rate decay, L1 loss (regression) or cross-entropy (classification), early
   stopping on the validation score, the best epoch's weights restored;
4. the test fold is predicted once, at the end. A ``LeakGuard`` asserts that no test id is
   ever in a training or validation batch.

Outputs under ``out``: ``results.json.gz`` (Matbench's layout: per fold the predictions by
id, the scores and the parameters; fold statistics in ``user_metadata``), ``report.md``,
``summary.json``, ``config.yaml``, per fold ``fold_<k>/`` with TensorBoard curves,
``metrics.jsonl`` and ``parity.png``, and the fine-tuned model(s) as export packages.

Plain PyTorch in one process: the datasets are small (≤ 15k rows).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import gzip
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from cloud.heads import CloudForPropertyPrediction, HeadConfig
from train.common.batching import make_batch
from train.common.devices import resolve_device
from train.common.files import atomic_write
from train.common.optim import parameter_groups as shared_parameter_groups
from train.common.packages import checkpoint_variant
from train.common.schedule import lr_factor
from train.common.serialization import jsonable
from train.config import build_config, load_layered_config
from train.tasks import (
    REGRESSION_METRICS,
    FoldSplit,
    Task,
    TaskData,
    fold_statistics,
    get_task,
    load_task,
    score_classification,
    score_regression,
    split_fold,
)

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json.gz"
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
Observer = Callable[[str, Sequence[str]], None]
"""Called with (stage, ids) for every batch: stage is train, val or test."""
BASELINES: tuple[str, ...] = ("random_init", "classical")
"""Baselines a run can fit on the same rows and folds, besides the mean predictor (always):
``random_init``, the same recipe from a randomly initialised encoder of the same shape (what
pre-training buys), and ``classical``, a random forest on features read off the SCOPE string
(``train.baselines``; whether the transformer earns its cost)."""
BASELINE_LABELS = {
    "random_init": "same recipe, random initialisation",
    "classical": "random forest on SCOPE features",
}


# --------------------------------------------------------------------------------- config


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
    """Task name in ``train.tasks`` (``cloud finetune --task``)."""
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
    equals one of theirs are kept out of training and validation. For an intermediate
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
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.save_model not in ("best", "all", "none"):
            problems.append(f"save_model must be best, all or none, got {self.save_model!r}")
        if self.patience < 0:
            problems.append("patience must be >= 0")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            problems.append(f"unknown baselines {unknown}; valid: {list(BASELINES)}")
        if self.ensemble < 1:
            problems.append(f"ensemble must be >= 1, got {self.ensemble}")
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
        if sep:
            folds.extend(range(int(start), int(stop) + 1))
        else:
            folds.append(int(start))
    if not folds or min(folds) < 0:
        raise ValueError(f"invalid fold list {text!r}")
    return sorted(set(folds))


# --------------------------------------------------------------------------------- data


class LeakGuard:
    """Refuses any batch for training or early stopping that holds a test id, and lets the
    test fold be predicted only once."""

    def __init__(self, test_ids: Sequence[str]) -> None:
        self.test_ids = frozenset(test_ids)
        self.test_predictions = 0

    def check_fit_batch(self, stage: str, ids: Sequence[str]) -> None:
        leaked = self.test_ids.intersection(ids)
        if leaked:
            raise AssertionError(f"test ids reached {stage}: {sorted(leaked)[:5]}")

    def open_test(self) -> None:
        if self.test_predictions:
            raise AssertionError("the test fold was already predicted once")
        self.test_predictions += 1


@dataclass
class Encoded:
    """Token ids of the usable rows of a task for one model."""

    ids: dict[str, list[int]]
    """Token ids by row id, [CLS] … [SEP]."""
    too_long: dict[str, str]
    """Rows whose sequence exceeds the model's positions, with the reason."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Rows kept out of training and validation (``FinetuneConfig.exclude_tasks``), with
    the reason; they may still be test rows."""


def encode_examples(data: TaskData, tokenizer: Any, max_length: int) -> Encoded:
    """Token ids of every usable row; longer-than-the-model rows are reported, not cut."""
    ids, too_long = {}, {}
    for example in data.examples.values():
        if not example.ok or example.scope is None:
            continue
        tokens = tokenizer.encode(example.scope)
        if len(tokens) > max_length:
            too_long[example.id] = (
                f"encode: {len(tokens)} tokens, more than the model's {max_length} positions"
            )
        else:
            ids[example.id] = tokens
    return Encoded(ids, too_long)


# --------------------------------------------------------------------------------- optim


def parameter_groups(
    model: CloudForPropertyPrediction, config: FinetuneConfig
) -> list[dict[str, Any]]:
    """AdamW groups of ``config`` (``train.common.optim.parameter_groups``): layer-wise LR
    decay over the encoder, ``head_lr`` for the head, decay on matrices only. Every parameter
    is in a group, the encoder included while ``freeze_encoder_epochs`` keep it frozen."""
    return shared_parameter_groups(
        model,
        config.lr,
        config.head_lr,
        config.weight_decay,
        layer_decay=config.layer_decay,
        trainable_only=False,
    )


# --------------------------------------------------------------------------------- one fold


@dataclass
class FoldResult:
    """What one fold produced."""

    fold: str
    predictions: dict[str, Any]
    """Prediction per test id (regression: a float; classification: P(class 1) for two
    classes, else the predicted label)."""
    scores: dict[str, float]
    """Matbench scores of the predictions on the test fold."""
    baseline_scores: dict[str, float]
    """Scores of the mean predictor (regression: the training-fold mean; classification:
    the training-fold class frequencies)."""
    parameters: dict[str, Any]
    """Sizes, best epoch, excluded rows, fallbacks… (Matbench's free-form ``parameters``)."""
    best_val: float
    """Best validation score (MAE for regression, cross-entropy for classification)."""
    history: list[dict[str, float]]
    model: CloudForPropertyPrediction | None = None
    truth: dict[str, Any] = field(default_factory=dict)
    """Targets of the scored test rows (for plots; not written to results)."""
    baselines: dict[str, BaselineResult] = field(default_factory=dict)
    """The baselines of ``FinetuneConfig.baselines`` on the same test fold, by name."""


@dataclass
class BaselineResult:
    """A baseline's test-fold predictions (same layout as ``FoldResult.predictions``) and
    Matbench scores."""

    predictions: dict[str, Any]
    scores: dict[str, float]


@dataclass
class _FoldData:
    split: FoldSplit
    train: list[str]
    val: list[str]
    excluded: dict[str, str]
    test_usable: list[str]
    test_fallback: dict[str, str]


def finetune_fold(
    data: TaskData,
    fold_index: int,
    pretrained: Any,
    tokenizer: Any,
    config: FinetuneConfig,
    *,
    encoded: Encoded | None = None,
    observer: Observer | None = None,
    writer: Any = None,
    label: str | None = None,
) -> FoldResult:
    """Fine-tune on one fold of ``data`` and predict its test fold once.

    ``pretrained`` is a ``CloudForMaskedLM`` (or anything with a CLOUD ``encoder``).
    ``observer(stage, ids)`` sees the ids of every batch fed to the model. Every epoch logs
    one INFO line (epoch, train loss, validation score, best so far, elapsed seconds) that
    starts with ``label`` (default "<task> <fold>"). The caller's global RNG state and thread
    count are left as they were.
    """
    device = resolve_device(config.device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch_threads(config.threads), torch.random.fork_rng(devices=devices):
        encoder = getattr(pretrained, "encoder", pretrained)
        max_length = encoder.config.max_position_embeddings
        encoded = encoded or encode_examples(data, tokenizer, max_length)
        label = label or f"{data.task.name} {data.fold(fold_index).name}"
        trainers = []
        for member in range(config.ensemble):
            torch.manual_seed(config.seed * 1000 + fold_index + 7919 * member)
            trainer = _FoldTrainer(
                data, fold_index, pretrained, tokenizer, config, encoded, device, member
            )
            trainer.observer = observer
            trainer.label = label
            if config.ensemble > 1:
                trainer.label += f" member {member + 1}/{config.ensemble}"
            trainer.fit(writer if member == 0 else None)
            trainers.append(trainer)
        result = _ensemble_test(trainers)
        if "classical" in config.baselines:
            result.baselines["classical"] = trainers[0].classical_baseline()
        if "random_init" in config.baselines:
            torch.manual_seed(config.seed * 1000 + fold_index + 104729)
            random_config = dataclasses.replace(config, baselines=[])
            random_result = finetune_fold(
                data,
                fold_index,
                randomly_initialised(pretrained),
                tokenizer,
                random_config,
                encoded=encoded,
                label=f"{label} random-init baseline",
            )
            result.baselines["random_init"] = BaselineResult(
                random_result.predictions, random_result.scores
            )
            result.parameters["random_init_best_epoch"] = random_result.parameters["best_epoch"]
        return result


def randomly_initialised(pretrained: Any) -> Any:
    """A copy of ``pretrained``'s encoder with every weight re-initialised (same shape, same
    fixed token-feature table): the no-pre-training ablation."""
    encoder = copy.deepcopy(getattr(pretrained, "encoder", pretrained))
    encoder.init_weights()
    return encoder


def _ensemble_test(trainers: Sequence[_FoldTrainer]) -> FoldResult:
    """Each member predicts the test fold once; the result holds their mean prediction."""
    first = trainers[0]
    outputs = [trainer.test_outputs() for trainer in trainers]
    mean = {i: np.mean([o[i] for o in outputs], axis=0) for i in outputs[0]}
    result = first.result(mean)
    if len(trainers) > 1:
        result.parameters["ensemble_best_val_scores"] = [t.best_val for t in trainers]
        result.parameters["ensemble_best_epochs"] = [t.best_epoch for t in trainers]
    return result


def _fold_rows(
    data: TaskData, fold_index: int, encoded: Encoded, config: FinetuneConfig
) -> _FoldData:
    split = split_fold(
        data, data.fold(fold_index), val_fraction=config.val_fraction, seed=config.seed
    )
    fit_ids = (*split.train_ids, *split.val_ids)
    excluded = dict(split.excluded)
    excluded.update({i: encoded.too_long[i] for i in fit_ids if i in encoded.too_long})
    excluded.update({i: encoded.blocked[i] for i in fit_ids if i in encoded.blocked})
    train = [i for i in split.train_ids if i not in excluded]
    val = [i for i in split.val_ids if i not in excluded]
    if config.max_train_rows is not None and len(train) > config.max_train_rows:
        order = np.random.default_rng(config.seed).permutation(len(train))
        keep = {train[k] for k in order[: config.max_train_rows]}
        train = [i for i in train if i in keep]
    test_fallback = {
        i: encoded.too_long.get(i) or data.examples[i].error or "unusable"
        for i in split.test_ids
        if i not in encoded.ids
    }
    test_usable = [i for i in split.test_ids if i in encoded.ids]
    if not train or not val:
        raise ValueError(f"{split.fold}: no usable training or validation rows")
    return _FoldData(split, train, val, excluded, test_usable, test_fallback)


def _classes(task: Task, data: TaskData, fit_ids: Sequence[str]) -> list[Any]:
    if task.is_regression:
        return []
    if task.classes is not None:
        return list(task.classes)
    return sorted({data.examples[i].target for i in fit_ids}, key=repr)


def _target_table(data: TaskData, classes: list[Any]) -> dict[str, Any]:
    """Targets by id: floats (regression) or class indices (classification; -1 if unseen)."""
    if not classes:
        return {i: e.target for i, e in data.examples.items() if e.target is not None}
    index = {c: k for k, c in enumerate(classes)}
    return {i: index.get(e.target, -1) for i, e in data.examples.items() if e.target is not None}


def _batches(ids: Sequence[str], size: int) -> list[list[str]]:
    return [list(ids[start : start + size]) for start in range(0, len(ids), size)]


class _FoldTrainer:
    """Training, early stopping and the single test prediction of one fold."""

    def __init__(
        self,
        data: TaskData,
        fold_index: int,
        pretrained: Any,
        tokenizer: Any,
        config: FinetuneConfig,
        encoded: Encoded,
        device: torch.device,
        member: int = 0,
    ) -> None:
        self.data, self.task, self.config = data, data.task, config
        self.fold_index, self.member = fold_index, member
        self.tokenizer, self.encoded, self.device = tokenizer, encoded, device
        self.observer: Observer | None = None
        self.label = ""
        """Starts each per-epoch log line (``finetune_fold`` names the task and fold)."""
        self.rows = _fold_rows(data, fold_index, encoded, config)
        self.guard = LeakGuard(self.rows.split.test_ids)
        self.classes = _classes(self.task, data, [*self.rows.train, *self.rows.val])
        self.targets = _target_table(data, self.classes)
        head = config.head_config(self.task, len(self.classes))
        self.model = CloudForPropertyPrediction.from_pretrained_encoder(
            pretrained, head, dropout=config.encoder_dropout
        ).to(device)
        if self.task.is_regression:
            # Statistics of the rows trained on, nothing else: validation and test rows
            # must not shape the model in any way.
            train = torch.tensor([float(self.targets[i]) for i in self.rows.train])
            self.model.set_target_scaling(train.mean(), train.std(unbiased=False))
        self.history: list[dict[str, float]] = []
        self.best_val, self.best_epoch = math.inf, 0

    # ------------------------------------------------------------------ training

    def fit(self, writer: Any = None) -> None:
        """Train with early stopping on the validation rows; keep the best epoch's weights."""
        config = self.config
        optimizer = torch.optim.AdamW(parameter_groups(self.model, config), betas=(0.9, 0.999))
        steps_per_epoch = math.ceil(len(self.rows.train) / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        warmup_steps = int(config.warmup_ratio * total_steps)
        # Member 0 keeps the single-model batch order, so ensemble=1 runs are unchanged.
        rng_seed = [config.seed, self.fold_index] + ([self.member] if self.member else [])
        rng = np.random.default_rng(rng_seed)
        best_state, stale, step = None, 0, 0
        started = time.perf_counter()
        for epoch in range(1, config.epochs + 1):
            frozen = epoch <= config.freeze_encoder_epochs
            self._set_train_mode(frozen)
            losses = []
            for batch_ids in _batches(rng.permutation(self.rows.train).tolist(), config.batch_size):
                factor = lr_factor(
                    step,
                    warmup_steps=warmup_steps,
                    max_steps=total_steps,
                    min_ratio=config.min_lr_ratio,
                )
                losses.append(self._train_step(optimizer, batch_ids, factor))
                step += 1
            record = {"epoch": epoch, "train/loss": float(np.mean(losses)), **self.validate()}
            record["lr"] = optimizer.param_groups[0]["lr"]
            self.history.append(record)
            if writer is not None:
                writer.log(epoch, {k: v for k, v in record.items() if k != "epoch"})
            monitored = record["val/mae"] if self.task.is_regression else record["val/loss"]
            if monitored < self.best_val:
                self.best_val, self.best_epoch, stale = monitored, epoch, 0
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                stale += 1
            # A fold can take many minutes: say how it goes, once an epoch.
            logger.info(
                "%s epoch %d/%d%s: train loss %.4g, %s %.4g (best %.4g at epoch %d), %.0f s",
                self.label,
                epoch,
                config.epochs,
                " (encoder frozen)" if frozen else "",
                record["train/loss"],
                "val mae" if self.task.is_regression else "val loss",
                monitored,
                self.best_val,
                self.best_epoch,
                time.perf_counter() - started,
            )
            if config.patience and stale >= config.patience and not frozen:
                break
        self.model.encoder.requires_grad_(True)
        if best_state is not None:
            self.model.load_state_dict(best_state)

    def _set_train_mode(self, frozen: bool) -> None:
        self.model.train()
        self.model.encoder.requires_grad_(not frozen)
        if frozen:
            self.model.encoder.eval()  # frozen features: no dropout noise in what the head sees

    def _train_step(
        self, optimizer: torch.optim.Optimizer, batch_ids: list[str], factor: float
    ) -> float:
        self.guard.check_fit_batch("training", batch_ids)
        self._observe("train", batch_ids)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        loss = self._loss(batch_ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        optimizer.step()
        return float(loss.detach())

    def _loss(self, batch_ids: Sequence[str]) -> torch.Tensor:
        inputs = make_batch(self.tokenizer, [self.encoded.ids[i] for i in batch_ids], self.device)
        outputs = self.model(**inputs).float()
        if self.task.is_regression:
            y = torch.tensor([self.targets[i] for i in batch_ids], device=self.device)
            return F.l1_loss(outputs[:, 0], self.model.standardise(y.float()))
        labels = torch.tensor([self.targets[i] for i in batch_ids], device=self.device)
        return F.cross_entropy(outputs, labels.long())

    def _observe(self, stage: str, ids: Sequence[str]) -> None:
        if self.observer is not None:
            self.observer(stage, ids)

    # ------------------------------------------------------------------ evaluation

    def predict(self, ids: Sequence[str], stage: str) -> np.ndarray:
        """Predictions in data units [N, n] (regression) or probabilities [N, C]."""
        self.model.eval()
        chunks = []
        for batch_ids in _batches(list(ids), self.config.eval_batch_size):
            if stage != "test":
                self.guard.check_fit_batch("early stopping", batch_ids)
            self._observe(stage, batch_ids)
            tokens = [self.encoded.ids[i] for i in batch_ids]
            chunks.append(self.model.predict(**make_batch(self.tokenizer, tokens, self.device)))
        width = self.model.head_config.num_outputs
        return torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, width))

    def validate(self) -> dict[str, float]:
        predicted = self.predict(self.rows.val, "val")
        truth = np.array([self.targets[i] for i in self.rows.val])
        if self.task.is_regression:
            scores = score_regression(truth, predicted[:, 0])
            return {"val/mae": scores["mae"], "val/rmse": scores["rmse"]}
        known = truth >= 0
        picked = np.clip(predicted[known, truth[known]], 1e-12, 1.0)
        loss = float(-np.mean(np.log(picked))) if known.any() else math.inf
        scores = score_classification(truth, predicted, predicted.shape[1])
        return {
            "val/loss": loss,
            "val/accuracy": scores["accuracy"],
            "val/rocauc": scores["rocauc"],
        }

    def test(self) -> FoldResult:
        """Predict the test fold, once, and score it (see ``test_outputs``)."""
        return self.result(self.test_outputs())

    def test_outputs(self) -> dict[str, np.ndarray]:
        """The model's outputs on every test id, predicted once; rows the model cannot read
        get the training-fold mean (class frequencies), listed in the parameters."""
        self.guard.open_test()
        rows = self.rows
        by_id = dict(zip(rows.test_usable, self.predict(rows.test_usable, "test"), strict=True))
        return self._with_fallback(by_id)

    def _with_fallback(self, by_id: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for every test id: ``by_id``'s, the training-fold mean for the rest."""
        fallback = self.constant_prediction()
        return {i: by_id.get(i, fallback) for i in self.rows.split.test_ids}

    def _test_truth(self) -> dict[str, Any]:
        """Targets of the test rows that have one (the rows that are scored)."""
        return {i: self.targets[i] for i in self.rows.split.test_ids if i in self.targets}

    def classical_baseline(self) -> BaselineResult:
        """``train.baselines.ClassicalBaseline`` fitted on this fold's training and
        validation rows (it needs no early stopping), scored on the same test rows."""
        from train.baselines import ClassicalBaseline

        rows = self.rows
        fit_ids = [*rows.train, *rows.val]
        if self.task.is_regression:
            fit_targets = [float(self.targets[i]) for i in fit_ids]
        else:
            fit_ids = [i for i in fit_ids if self.targets[i] >= 0]
            fit_targets = [int(self.targets[i]) for i in fit_ids]
        forest = ClassicalBaseline(self.task.task_type, seed=self.config.seed)
        forest.fit([self.data.examples[i].scope for i in fit_ids], fit_targets)
        usable = rows.test_usable
        predicted = forest.predict([self.data.examples[i].scope for i in usable])
        if self.task.is_regression:
            by_id = {i: np.array([p]) for i, p in zip(usable, predicted, strict=True)}
        else:  # the forest's columns are the classes it saw; place them among all classes
            full = np.zeros((len(usable), len(self.classes)))
            full[:, forest.model.classes_] = predicted
            by_id = dict(zip(usable, full, strict=True))
        return BaselineResult(*self._score(self._with_fallback(by_id), self._test_truth()))

    def result(self, outputs: Mapping[str, np.ndarray]) -> FoldResult:
        """The fold's result from test outputs by id (``test_outputs``, or a mean of them)."""
        rows = self.rows
        fallback = self.constant_prediction()
        truth = self._test_truth()
        predictions, scores = self._score(outputs, truth)
        baseline = self._score({i: fallback for i in truth}, truth)[1]
        self.model.cpu().eval()
        return FoldResult(
            fold=rows.split.fold,
            predictions=predictions,
            scores=scores,
            baseline_scores=baseline,
            parameters=self._parameters(truth, baseline),
            best_val=self.best_val,
            history=self.history,
            model=self.model,
            truth=truth,
        )

    def constant_prediction(self) -> np.ndarray:
        """The mean predictor fitted on the training fold (training + validation rows)."""
        fit = [self.targets[i] for i in (*self.rows.train, *self.rows.val)]
        if self.task.is_regression:
            return np.array([float(np.mean(fit))])
        counts = np.bincount([t for t in fit if t >= 0], minlength=len(self.classes))
        return counts.astype(np.float64) / counts.sum()

    def _score(
        self, outputs: Mapping[str, np.ndarray], truth: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, float]]:
        """(JSON predictions by id, Matbench scores on the rows with a target)."""
        scored = list(truth)
        if self.task.is_regression:
            predictions = {i: float(v[0]) for i, v in outputs.items()}
            truths = [truth[i] for i in scored]
            return predictions, score_regression(truths, [predictions[i] for i in scored])
        n_classes = len(self.classes)
        probabilities = (
            np.stack([outputs[i] for i in scored]) if scored else np.zeros((0, n_classes))
        )
        scores = score_classification([truth[i] for i in scored], probabilities, n_classes)
        if n_classes == 2:  # Matbench records P(positive class) for binary tasks
            return {i: float(v[1]) for i, v in outputs.items()}, scores
        labels = {i: jsonable(self.classes[int(np.argmax(v))]) for i, v in outputs.items()}
        return labels, scores

    def _parameters(self, truth: Mapping[str, Any], baseline: dict[str, float]) -> dict[str, Any]:
        rows = self.rows
        return {
            "n_train": len(rows.train),
            "n_val": len(rows.val),
            "n_test": len(rows.split.test_ids),
            "n_test_scored": len(truth),
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "best_val_score": self.best_val,
            "val_monitor": "mae" if self.task.is_regression else "cross_entropy",
            "excluded_train_val": dict(sorted(rows.excluded.items())),
            "test_fallback_to_train_mean": dict(sorted(rows.test_fallback.items())),
            "official_fold_train": len(self.data.fold(self.fold_index).train_ids),
            "classes": [jsonable(c) for c in self.classes] if self.classes else None,
            "baseline_scores": baseline,
        }


# --------------------------------------------------------------------------------- a run


@dataclass
class RunResult:
    """A whole run: the task, per-fold results and where the outputs are."""

    task: Task
    folds: list[FoldResult]
    out: Path
    load_report: list[str]
    summary: dict[str, Any]


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The pretrained export package (``cloud.export.load_pretrained``)."""
    from cloud.export import load_pretrained

    return load_pretrained(path)


def run_finetune(
    config: FinetuneConfig,
    *,
    pretrained: Any = None,
    data: TaskData | None = None,
    observer: Observer | None = None,
    progress: bool = False,
) -> RunResult:
    """Fine-tune ``config.checkpoint`` on every requested fold of ``config.task`` and write
    the outputs to ``config.out``. ``pretrained``/``data`` skip loading them again."""
    from train.threads import choose_threads

    choice = choose_threads(config.threads)  # once: later folds see this run's own load
    logger.info(choice.describe())
    with torch_threads(choice.threads):
        return _run_finetune(config, pretrained, data, observer, progress)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (0: leave as is), restoring them after."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_finetune(
    config: FinetuneConfig,
    pretrained: Any,
    data: TaskData | None,
    observer: Observer | None,
    progress: bool,
) -> RunResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    pretrained = pretrained if pretrained is not None else load_checkpoint(config.checkpoint)
    variant = config.variant or checkpoint_variant(pretrained)
    task = get_task(config.task)
    data = data or load_task(
        task, config.data_root, variant=variant, allow_sample=config.allow_sample
    )
    for line in data.report.lines():
        logger.info(line)
    max_length = pretrained.model.encoder.config.max_position_embeddings
    encoded = encode_examples(data, pretrained.tokenizer, max_length)
    encoded.blocked = blocked_rows(data, config, variant)
    if encoded.blocked:
        logger.info(
            "%d rows kept out of training: their SCOPE string is a structure of %s",
            len(encoded.blocked),
            ", ".join(config.exclude_tasks),
        )
    fold_indices = config.folds if config.folds is not None else list(range(len(data.folds)))
    for fold_index in fold_indices:
        data.fold(fold_index)  # an unknown fold fails now, not after training the others
    out = Path(config.out or f"runs/finetune/{task.name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    results = [
        _run_fold(data, fold_index, pretrained, encoded, config, variant, out, observer, progress)
        for fold_index in fold_indices
    ]
    if config.save_model == "best" and results:
        # The fold with the best validation score: chosen without looking at any test fold.
        best = min(results, key=lambda r: r.best_val)
        _save_model(best, task, config, pretrained, variant, out / "model")
    timing = (time.perf_counter() - started, time.process_time() - cpu_started)
    summary = summarise(task, results, data, config, timing)
    write_results(out / RESULTS_FILE, task, results, summary, config)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    (out / REPORT_FILE).write_text(render_report(task, results, data, summary, config))
    return RunResult(task, results, out, data.report.lines(), summary)


def blocked_rows(data: TaskData, config: FinetuneConfig, variant: str) -> dict[str, str]:
    """Rows of ``data`` whose SCOPE string is a structure of ``config.exclude_tasks``."""
    blocked: dict[str, str] = {}
    for name in config.exclude_tasks:
        other = load_task(name, config.data_root, variant=variant, allow_sample=config.allow_sample)
        scopes = {e.scope for e in other.examples.values() if e.scope is not None}
        reason = f"excluded: its SCOPE string is a structure of {name}"
        for example in data.examples.values():
            if example.scope in scopes and example.id not in blocked:
                blocked[example.id] = reason
    return blocked


def _run_fold(
    data: TaskData,
    fold_index: int,
    pretrained: Any,
    encoded: Encoded,
    config: FinetuneConfig,
    variant: str,
    out: Path,
    observer: Observer | None,
    progress: bool,
) -> FoldResult:
    """One fold with its side outputs (curves, parity plot, per-fold package)."""
    task = data.task
    started, cpu_started = time.perf_counter(), time.process_time()
    writer = _fold_writer(out, data.fold(fold_index).name, config)
    try:
        result = finetune_fold(
            data,
            fold_index,
            pretrained.model,
            pretrained.tokenizer,
            config,
            encoded=encoded,
            observer=observer,
            writer=writer,
        )
    finally:
        writer.close()
    result.parameters["wall_time_s"] = round(time.perf_counter() - started, 2)
    result.parameters["cpu_time_s"] = round(time.process_time() - cpu_started, 2)
    if config.plots and task.is_regression:
        parity_plot(result, task, out / result.fold / "parity.png")
    if config.save_model == "all":
        _save_model(result, task, config, pretrained, variant, out / "models" / result.fold)
    if config.save_model != "best":
        result.model = None  # saved already, or not wanted: free it
    if progress:
        print(_fold_line(task, result), file=sys.stderr, flush=True)
    return result


def _fold_writer(out: Path, fold: str, config: FinetuneConfig) -> Any:
    from train.metrics import MetricsWriter

    return MetricsWriter(out / fold, tensorboard=config.tensorboard)


def _save_model(
    result: FoldResult,
    task: Task,
    config: FinetuneConfig,
    pretrained: Any,
    variant: str,
    path: Path,
) -> None:
    """The fine-tuned model as an export package; the pretraining facts are carried over."""
    from cloud.export import save_pretrained

    if result.model is None:
        return
    parent = getattr(pretrained, "metadata", None) or {}
    metadata = {
        "finetune": {
            "task": task.name,
            "target": task.target,
            "unit": task.unit,
            "task_type": task.task_type,
            "classes": result.parameters.get("classes"),
            "fold": result.fold,
            "n_train": result.parameters["n_train"],
            "best_epoch": result.parameters["best_epoch"],
            "best_val_score": result.best_val,
            "test_scores": result.scores,
            "config": config.to_dict(),
        },
        "training": parent.get("training"),
        "training_data": {**(parent.get("training_data") or {}), "variant": variant},
        "source": {"pretrained_checkpoint": str(config.checkpoint)},
    }
    save_pretrained(
        result.model, pretrained.tokenizer, path, metadata=metadata, variant=variant, overwrite=True
    )


# --------------------------------------------------------------------------------- outputs


def summarise(
    task: Task,
    results: Sequence[FoldResult],
    data: TaskData,
    config: FinetuneConfig,
    timing: tuple[float, float],
) -> dict[str, Any]:
    """Fold statistics of every score, of the baseline, and the context numbers.
    ``timing``: (wall, CPU) seconds of the whole run, data loading included."""
    metrics = list(results[0].scores) if results else []
    return {
        "task": task.name,
        "metric": task.metric,
        "unit": task.unit,
        "folds": [r.fold for r in results],
        "scores": {m: fold_statistics([r.scores[m] for r in results]) for m in metrics},
        "baseline_scores": {
            m: fold_statistics([r.baseline_scores[m] for r in results]) for m in metrics
        },
        "baselines": {
            name: {
                m: fold_statistics([r.baselines[name].scores[m] for r in results]) for m in metrics
            }
            for name in _common_baselines(results)
        },
        "ensemble": config.ensemble,
        "per_fold": {
            r.fold: {
                "scores": r.scores,
                "baseline_scores": r.baseline_scores,
                "baselines": {name: b.scores for name, b in r.baselines.items()},
                **{
                    k: r.parameters[k]
                    for k in ("n_train", "n_val", "n_test", "best_epoch", "epochs_run")
                },
            }
            for r in results
        },
        "reference_scores": dict(task.reference_scores),
        "reference_source": task.reference_source,
        "is_sample": data.report.is_sample,
        "data_root": data.report.root,
        "checkpoint": config.checkpoint,
        "wall_time_s": round(timing[0], 1),
        "cpu_time_s": round(timing[1], 1),
        "threads": torch.get_num_threads(),
        "device": str(resolve_device(config.device)),
    }


def _common_baselines(results: Sequence[FoldResult]) -> list[str]:
    """Baselines every fold has, in ``BASELINES`` order."""
    return [name for name in BASELINES if results and all(name in r.baselines for r in results)]


def matbench_document(
    task: Task, results: Sequence[FoldResult], summary: Mapping[str, Any], config: FinetuneConfig
) -> dict[str, Any]:
    """The run in the layout of Matbench's ``MatbenchBenchmark.to_file`` (one task)."""
    benchmark = "matbench_v0.1" if task.reader == "matbench" else "cloud_finetune"
    task_doc = {
        "@module": "matbench.task",
        "@class": "MatbenchTask",
        "benchmark_name": benchmark,
        "dataset_name": task.name,
        "results": {
            r.fold: {"data": r.predictions, "parameters": r.parameters, "scores": r.scores}
            for r in results
        },
    }
    document = {
        "@module": "matbench.bench",
        "@class": "MatbenchBenchmark",
        "version": "cloud-finetune-1",
        "tasks": {task.name: task_doc},
        "user_metadata": {
            "model": "CLOUD (SCOPE-string BERT encoder) fine-tuned with cloud finetune",
            "fold_statistics": {task.name: summary["scores"]},
            "baseline_fold_statistics": {task.name: summary["baseline_scores"]},
            "baselines": {
                name: {
                    "description": BASELINE_LABELS[name],
                    "fold_statistics": summary["baselines"][name],
                    "results": {
                        r.fold: {
                            "data": r.baselines[name].predictions,
                            "scores": r.baselines[name].scores,
                        }
                        for r in results
                    },
                }
                for name in summary["baselines"]
            },
            "reference_scores": {task.name: dict(task.reference_scores)},
            "is_sample": summary["is_sample"],
            "config": config.to_dict(),
        },
        "benchmark_name": benchmark,
        "datestamp": datetime.datetime.now(datetime.UTC).strftime("%Y.%m.%d %H:%M.%S"),
    }
    canonical = json.dumps(document, sort_keys=True, default=str).encode()
    document["hash"] = hashlib.sha256(canonical).hexdigest()
    return document


def write_results(
    path: Path,
    task: Task,
    results: Sequence[FoldResult],
    summary: Mapping[str, Any],
    config: FinetuneConfig,
) -> None:
    """Write the Matbench results document (gzipped JSON) to ``path`` atomically."""
    document = matbench_document(task, results, summary, config)

    def write(temporary: Path) -> None:
        with gzip.open(temporary, "wt") as handle:
            json.dump(document, handle)

    atomic_write(path, write)


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)


def parity_plot(result: FoldResult, task: Task, path: Path) -> None:
    """True vs predicted on the test fold, with y = x and the MAE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(result.truth)
    truth = np.array([result.truth[i] for i in ids], dtype=float)
    pred = np.array([result.predictions[i] for i in ids], dtype=float)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(truth, pred, s=6, alpha=0.5, edgecolors="none")
    low, high = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    ax.plot([low, high], [low, high], color="k", lw=0.8)
    unit = f" ({task.unit})" if task.unit else ""
    ax.set_xlabel(f"true {task.target}{unit}")
    ax.set_ylabel(f"predicted {task.target}{unit}")
    ax.set_title(
        f"{task.name} {result.fold}: MAE {result.scores['mae']:.4g} "
        f"(mean predictor {result.baseline_scores['mae']:.4g})",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_table(task: Task, results: Sequence[FoldResult], summary: Mapping[str, Any]) -> str:
    """Plain-text table: one row per fold and the mean ± std, model against mean predictor."""
    metrics = list(REGRESSION_METRICS) if task.is_regression else ["rocauc", "accuracy", "f1"]
    header = ["fold", *metrics, f"baseline {task.metric}", "best epoch", "n_train", "n_test"]
    rows = [header]
    for r in results:
        rows.append(
            [
                r.fold,
                *(f"{r.scores[m]:.4g}" for m in metrics),
                f"{r.baseline_scores[task.metric]:.4g}",
                str(r.parameters["best_epoch"]),
                str(r.parameters["n_train"]),
                str(r.parameters["n_test"]),
            ]
        )
    stats, base = summary["scores"], summary["baseline_scores"]
    rows.append(
        [
            "mean ± std",
            *(f"{stats[m]['mean']:.4g} ± {stats[m]['std']:.2g}" for m in metrics),
            f"{base[task.metric]['mean']:.4g}",
            "",
            "",
            "",
        ]
    )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_report(
    task: Task,
    results: Sequence[FoldResult],
    data: TaskData,
    summary: Mapping[str, Any],
    config: FinetuneConfig,
) -> str:
    """``report.md``: scores per fold, the mean predictor, published numbers, data notes."""
    metric, unit = task.metric, f" {task.unit}" if task.unit else ""
    stats = summary["scores"][metric]
    lines = [
        f"# Fine-tuning report: {task.name}",
        "",
        f"{task.description}. Target `{task.target}`{f' ({task.unit})' if task.unit else ''}, "
        f"{task.task_type}, headline metric {metric}.",
        "",
        f"Checkpoint `{config.checkpoint}`; folds {', '.join(r.fold for r in results)}; "
        f"{summary['wall_time_s']} s wall, {summary['cpu_time_s']} s CPU on {summary['device']} "
        f"({summary['threads']} torch threads), data loading included.",
        "",
    ]
    if data.report.is_sample:
        lines += [
            "**Data: the small sample shipped in `data/`, not the full data set. The folds are "
            "the official ones restricted to the rows present; the scores are not comparable "
            "to published ones.**",
            "",
        ]
    lines += _fold_table(task, results, summary)
    lines += _baseline_verdict(task, summary)
    if task.reference_scores:
        lines += [
            f"## Published {metric}{unit} for context",
            "",
            f"| model | {metric} |",
            "|---|---|",
        ]
        lines += [f"| {name} | {score:g} |" for name, score in task.reference_scores.items()]
        lines += [
            f"| {BASELINE_LABELS[name]} (this run) | {b[metric]['mean']:.4g} |"
            for name, b in summary["baselines"].items()
        ]
        lines += [
            f"| CLOUD (this run) | {stats['mean']:.4g} |",
            "",
            f"Source: {task.reference_source}.",
            "",
        ]
    names = list(summary["baselines"])
    lines += [
        "## All scores (mean ± std over folds)",
        "",
        "| score | CLOUD | "
        + " | ".join(BASELINE_LABELS[n] for n in names)
        + " | mean predictor |",
        "|---" * (len(names) + 3) + "|",
    ]
    for score, value in summary["scores"].items():
        columns = [value, *(summary["baselines"][n][score] for n in names)]
        columns.append(summary["baseline_scores"][score])
        lines.append(
            f"| {score} | "
            + " | ".join(f"{c['mean']:.4g} ± {c['std']:.2g}" for c in columns)
            + " |"
        )
    lines += ["", "## Data", "", "```", *data.report.lines(), "```", ""]
    problems = [
        (r.fold, r.parameters["excluded_train_val"], r.parameters["test_fallback_to_train_mean"])
        for r in results
    ]
    if any(excluded or fallback for _, excluded, fallback in problems):
        lines += ["Rows the model could not use, per fold:", ""]
        for fold, excluded, fallback in problems:
            lines.append(
                f"- {fold}: {len(excluded)} training/validation rows excluded; "
                f"{len(fallback)} test rows predicted with the training-fold mean"
                + (f" ({', '.join(list(fallback)[:5])})" if fallback else "")
            )
        lines.append("")
    lines += [
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _fold_table(task: Task, results: Sequence[FoldResult], summary: Mapping[str, Any]) -> list[str]:
    """The per-fold table of the headline metric: the model, each baseline, the mean
    predictor, and the row counts."""
    metric = task.metric
    names = list(summary["baselines"])
    header = [f"CLOUD {metric}", *(BASELINE_LABELS[n] for n in names), "mean predictor"]
    lines = [
        f"## {metric} by fold",
        "",
        "| fold | " + " | ".join(header) + " | n train | n val | n test | best epoch |",
        "|---" * (len(header) + 5) + "|",
    ]
    for r in results:
        p = r.parameters
        cells = [r.scores[metric], *(r.baselines[n].scores[metric] for n in names)]
        cells.append(r.baseline_scores[metric])
        lines.append(
            f"| {r.fold} | " + " | ".join(f"{c:.4g}" for c in cells) + " | "
            f"{p['n_train']} | {p['n_val']} | {p['n_test']} | {p['best_epoch']} |"
        )
    stats = [summary["scores"][metric], *(summary["baselines"][n][metric] for n in names)]
    stats.append(summary["baseline_scores"][metric])
    cells = [f"{s['mean']:.4g} ± {s['std']:.2g}" for s in stats]
    cells[0] = f"**{cells[0]}**"
    lines += [
        "| **mean ± std** | " + " | ".join(cells) + " | | | | |",
        "",
        "All columns are fitted on the same training rows of the same folds and scored on the "
        "same test rows. The mean predictor predicts the training-fold mean (classification: "
        "the training-fold class frequencies); the random forest "
        "(`train.baselines.ClassicalBaseline`) sees element fractions, element-property "
        "statistics and symmetry counts read off the same SCOPE strings"
        + (
            f"; CLOUD is a mean of {summary['ensemble']} seeds per fold"
            if summary.get("ensemble", 1) > 1
            else ""
        )
        + ".",
        "",
    ]
    return lines


def _baseline_verdict(task: Task, summary: Mapping[str, Any]) -> list[str]:
    """One sentence per baseline: does CLOUD beat it, and by how much (said plainly)."""
    metric = task.metric
    higher_is_better = metric in ("rocauc", "accuracy", "f1")
    ours = summary["scores"][metric]["mean"]
    lines = []
    for name, stats in summary["baselines"].items():
        theirs = stats[metric]["mean"]
        better = ours > theirs if higher_is_better else ours < theirs
        gap = abs(ours - theirs) / abs(theirs) * 100 if theirs else math.inf
        verdict = "beats" if better else "loses to"
        lines.append(
            f"- CLOUD {verdict} the {BASELINE_LABELS[name]} baseline by {gap:.1f} % "
            f"({ours:.4g} vs {theirs:.4g} {metric})."
        )
    return [*lines, ""] if lines else []


def _fold_line(task: Task, result: FoldResult) -> str:
    metric = task.metric
    baselines = "".join(f", {name} {b.scores[metric]:.4g}" for name, b in result.baselines.items())
    return (
        f"{task.name} {result.fold}: {metric} {result.scores[metric]:.4g} "
        f"(mean predictor {result.baseline_scores[metric]:.4g}{baselines}), best epoch "
        f"{result.parameters['best_epoch']}/{result.parameters['epochs_run']}, "
        f"{result.parameters['wall_time_s']} s wall, {result.parameters['cpu_time_s']} s CPU"
    )
