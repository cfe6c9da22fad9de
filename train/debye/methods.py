"""The methods compared on the test materials: CLOUD-DEBYE (θ_D from the encoder, C_v and U
from the Debye model; optionally pre-trained on AFLOW AGL θ), the direct MLP on C_v at 300 K,
the best constant θ of the training set and the per-material oracle θ."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud import debye
from cloud.debye_head import CloudDebye
from train.common.batching import make_batch
from train.debye.config import DebyeTrainConfig
from train.debye.data import MaterialSplit
from train.debye.training import (
    THREE_R,
    FitHistory,
    _chunks,
    combine_targets,
    debye_normalised,
    encode_scopes,
    fit,
    target_loss,
)

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

    return combine_targets(error, c_pred, u_pred, c_true, u_true, target, u_weight)


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
