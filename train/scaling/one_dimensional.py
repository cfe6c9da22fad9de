"""One-dimensional laws L(x) = E' + A / x^exponent: loss against N at each fixed D, and
against D at each fixed N."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from train.scaling.law import (
    MIN_DISTINCT_SIZES,
    SAME_VALUE_REL_TOL,
    FloatArray,
    ScalingFitError,
    _as_float_array,
    _check_finite_positive,
    _exp,
    _fit_theta,
    _single_threaded_blas,
    count_distinct,
    group_by_value,
)

# --------------------------------------------------------------------------------------------
# One-dimensional laws L(x) = E' + A / x^exponent
# --------------------------------------------------------------------------------------------

MIN_RUNS_1D = 4
N_STARTS_1D = 8


def fit_power_law_1d(x: ArrayLike, L: ArrayLike) -> dict[str, Any]:
    """Fit L(x) = E' + A / x^exponent (same Huber/LSE/L-BFGS method as the 2-D law).

    At fixed D, E' = E + B/D^beta and the exponent estimates alpha (likewise for fixed N).
    """
    values = _as_float_array(x, "x")
    losses = _as_float_array(L, "L (loss)")
    if len(values) != len(losses):
        raise ScalingFitError(f"x and L lengths differ: {len(values)} vs {len(losses)}")
    _check_finite_positive(values, "x")
    _check_finite_positive(losses, "L (loss)")
    if len(values) < MIN_RUNS_1D or count_distinct(values) < MIN_DISTINCT_SIZES:
        raise ScalingFitError(
            f"a one-dimensional law needs ≥ {MIN_RUNS_1D} runs over ≥ {MIN_DISTINCT_SIZES} "
            f"distinct values, got {len(values)} runs over {count_distinct(values)}"
        )
    log_x = np.log(values)[None, :]
    log_l = np.log(losses)
    with _single_threaded_blas():
        optimum, starts, _ = _fit_theta(log_x, log_l, N_STARTS_1D)
    return {
        "E": _exp(optimum.theta[0]),
        "A": _exp(optimum.theta[1]),
        "exponent": float(optimum.theta[2]),
        "converged": optimum.converged,
        "objective": optimum.objective,
        "grad_norm": optimum.grad_norm,
        "n_initialisations": len(starts),
        "n_runs": len(values),
    }


def predict_loss_1d(fit: dict[str, Any], x: ArrayLike) -> FloatArray:
    """L(x) = E' + A / x^exponent for a :func:`fit_power_law_1d` result."""
    return fit["E"] + fit["A"] / np.asarray(x, dtype=np.float64) ** fit["exponent"]


def _fits_per_group(
    fixed: FloatArray, varied: FloatArray, losses: FloatArray, fixed_name: str
) -> list[dict[str, Any]]:
    groups = []
    for indices in group_by_value(fixed, SAME_VALUE_REL_TOL):
        entry: dict[str, Any] = {
            fixed_name: float(np.exp(np.log(fixed[indices]).mean())),
            "n_runs": len(indices),
            "run_indices": [int(i) for i in indices],
        }
        try:
            entry["fit"] = fit_power_law_1d(varied[indices], losses[indices])
        except ScalingFitError as err:
            entry["fit"] = None
            entry["skipped"] = str(err)
        groups.append(entry)
    return groups


def fit_one_dimensional_laws(N: ArrayLike, D: ArrayLike, L: ArrayLike) -> dict[str, Any]:
    """L(N) = E' + A/N^alpha per token count and L(D) = E' + B/D^beta per model size.

    Groups with too few runs are kept with ``fit: None`` and the reason in ``skipped``.
    """
    n_params = _as_float_array(N, "N (model size)")
    tokens = _as_float_array(D, "D (training tokens)")
    losses = _as_float_array(L, "L (loss)")
    return {
        "loss_vs_n": _fits_per_group(tokens, n_params, losses, "D"),
        "loss_vs_d": _fits_per_group(n_params, tokens, losses, "N"),
    }
