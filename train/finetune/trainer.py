"""One fold, trained: the rows it uses, the leak guard, training with early stopping, the
single test prediction, the baselines fitted on the same rows and the ensemble mean.

Per fold: the validation set is carved from the training fold (``split_fold``); regression
targets are standardised with the statistics of the training rows only (stored in the
model); the encoder and a fresh MLP head are trained with AdamW (optional frozen-encoder
warm-up, layer-wise LR decay, L1 or cross-entropy), early-stopping on the validation score
and restoring the best epoch's weights; the test fold is predicted once, at the end. A
``LeakGuard`` asserts that no test id is ever in a training or validation batch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cloud.heads import CloudForPropertyPrediction
from train.common.batching import make_batch
from train.common.devices import resolve_device
from train.common.optim import parameter_groups as shared_parameter_groups
from train.common.schedule import lr_factor
from train.common.serialization import jsonable
from train.finetune.config import FinetuneConfig
from train.finetune.protocol import split_fold
from train.finetune.scoring import score_classification, score_regression
from train.finetune.tasks import FoldSplit, Task, TaskData

# The name of the module this was before it became a package: log configuration and
# filters that name it keep working.
logger = logging.getLogger("train.finetune")


Observer = Callable[[str, Sequence[str]], None]
"""Called with (stage, ids) for every batch: stage is train, val or test."""


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
        """``train.finetune.baselines.ClassicalBaseline`` fitted on this fold's training and
        validation rows (it needs no early stopping), scored on the same test rows."""
        from train.finetune.baselines import ClassicalBaseline

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
