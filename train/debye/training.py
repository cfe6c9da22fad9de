"""Training CLOUD-DEBYE's models: the per-atom normalised targets and loss, token ids, and
``fit``, the AdamW loop with warm-up and cosine decay, early stopping on the validation
loss, progress within and after each epoch, and per-epoch state for resuming."""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud import debye
from train.common.optim import parameter_groups
from train.common.schedule import lr_factor
from train.debye.config import DebyeTrainConfig
from train.debye.state import FitProgress, load_fit_state, save_fit_state

# The name of the module this was before it became a package: log configuration, filters
# and tests that name it keep working.
logger = logging.getLogger("train.debye")


THREE_R = 3 * debye.GAS_CONSTANT


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

    return combine_targets(error, c_pred, u_pred, c_true, u_true, target, u_weight)


def combine_targets(
    error: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    c_pred: torch.Tensor,
    u_pred: torch.Tensor,
    c_true: torch.Tensor,
    u_true: torch.Tensor,
    target: str,
    u_weight: float,
) -> torch.Tensor:
    """``error(pred, true)`` of C_v (target cv), of U (u), or C_v's plus ``u_weight`` times
    U's (both): the one rule of every loss on the targets."""
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
