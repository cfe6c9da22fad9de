"""Scoring a method on the test materials: its curves per mole of cells and the MAEs at
300 K, over the evaluation grid and over its bands, with standard errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cloud import debye
from train.debye.options import SINGLE_TEMPERATURE

KJ_PER_J = 1e-3
"""U is reported (results, report, predictions.csv) in kJ/mol; it is computed in J/mol."""


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
