"""IsoFLOP curves (Hoffmann's approach 2): at each shared compute budget, the loss against N and
the N that minimises it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from train.scaling.law import (
    ISOFLOP_REL_TOL,
    MIN_DISTINCT_SIZES,
    SAME_VALUE_REL_TOL,
    FloatArray,
    _as_float_array,
    count_distinct,
    group_by_value,
)


def _isoflop_curve(
    n_params: FloatArray, losses: FloatArray, compute: float, indices: NDArray[np.intp]
) -> dict[str, Any]:
    order = indices[np.argsort(n_params[indices])]
    log_n = np.log(n_params[order])
    curve: dict[str, Any] = {
        "compute": compute,
        "N": [float(v) for v in n_params[order]],
        "L": [float(v) for v in losses[order]],
        "parabola_ln_n": None,
        "N_opt": None,
        "loss_min": None,
        "inside_range": None,
    }
    curvature, slope, intercept = np.polyfit(log_n, losses[order], 2)
    curve["parabola_ln_n"] = [float(curvature), float(slope), float(intercept)]
    if curvature <= 0:
        curve["skipped"] = "loss along this budget is not convex in log N (no minimum)"
        return curve
    log_n_opt = -slope / (2 * curvature)
    curve["N_opt"] = float(math.exp(log_n_opt))
    curve["D_opt"] = float(compute / (6 * curve["N_opt"]))
    curve["loss_min"] = float(intercept - slope**2 / (4 * curvature))
    curve["inside_range"] = bool(log_n.min() <= log_n_opt <= log_n.max())
    return curve


def isoflop_analysis(
    N: ArrayLike,
    D: ArrayLike,
    L: ArrayLike,
    *,
    flops: ArrayLike | None = None,
    rel_tol: float = ISOFLOP_REL_TOL,
) -> dict[str, Any]:
    """Minimum loss along each compute budget with ≥ 3 model sizes (parabola in log N).

    Runs whose compute (``flops``, else 6ND) lie within a factor ``1 + rel_tol`` share a
    budget. With ≥ 2 minima inside their sampled range, ``a`` is the slope of log N_opt
    against log C (Hoffmann's approach 2) and ``b = 1 − a``.
    """
    n_params = _as_float_array(N, "N (model size)")
    tokens = _as_float_array(D, "D (training tokens)")
    losses = _as_float_array(L, "L (loss)")
    compute = 6 * n_params * tokens if flops is None else _as_float_array(flops, "flops")
    curves = []
    for indices in group_by_value(compute, rel_tol):
        if count_distinct(n_params[indices]) < MIN_DISTINCT_SIZES:
            continue
        budget = float(np.exp(np.log(compute[indices]).mean()))
        curves.append(_isoflop_curve(n_params, losses, budget, indices))
    return _with_exponent(
        curves,
        {
            "compute_source": "6ND" if flops is None else "flops column",
            "interpolated": False,
            "rel_tol": rel_tol,
        },
    )


# Budgets of the interpolated view: log-spaced across the compute the grid covers.
INTERPOLATED_BUDGETS = 7


def _interpolated_loss(log_d: FloatArray, log_l: FloatArray, target: float) -> float | None:
    """log-log linear interpolation of one model's losses at log D = ``target``; None outside
    the sampled token range (never extrapolated)."""
    if not log_d[0] <= target <= log_d[-1]:
        return None
    return float(np.exp(np.interp(target, log_d, log_l)))


def interpolated_isoflop_analysis(
    N: ArrayLike, D: ArrayLike, L: ArrayLike, *, n_budgets: int = INTERPOLATED_BUDGETS
) -> dict[str, Any]:
    """Approach 2 on a rectangular grid (sizes × token counts), whose runs rarely share a
    budget: at each of ``n_budgets`` log-spaced budgets C, every size N whose tokens
    D = C/(6N) lie inside its sampled range contributes its loss interpolated (log-log, between
    its two nearest runs) at that D; a parabola in log N through ≥ 3 sizes gives N_opt(C).
    Same result layout as :func:`isoflop_analysis`."""
    n_params = _as_float_array(N, "N (model size)")
    tokens = _as_float_array(D, "D (training tokens)")
    losses = _as_float_array(L, "L (loss)")
    sizes = []
    for indices in group_by_value(n_params, SAME_VALUE_REL_TOL):
        order = indices[np.argsort(tokens[indices])]
        if count_distinct(tokens[order]) >= 2:
            size = float(np.exp(np.log(n_params[order]).mean()))
            sizes.append((size, np.log(tokens[order]), np.log(losses[order])))
    compute = 6 * n_params * tokens
    curves = []
    for budget in np.geomspace(compute.min(), compute.max(), n_budgets + 2)[1:-1]:
        points = []
        for size, log_d, log_l in sizes:
            loss = _interpolated_loss(log_d, log_l, math.log(budget / (6 * size)))
            if loss is not None:
                points.append((size, loss))
        if len(points) < MIN_DISTINCT_SIZES:
            continue
        n_at = np.asarray([p[0] for p in points])
        l_at = np.asarray([p[1] for p in points])
        curves.append(_isoflop_curve(n_at, l_at, float(budget), np.arange(len(points))))
    return _with_exponent(
        curves,
        {
            "compute_source": "6ND, losses interpolated along each model's token axis",
            "interpolated": True,
            "rel_tol": None,
        },
    )


def _with_exponent(curves: list[dict[str, Any]], header: dict[str, Any]) -> dict[str, Any]:
    usable = [c for c in curves if c["N_opt"] is not None and c["inside_range"]]
    result: dict[str, Any] = {
        **header,
        "curves": curves,
        "a": None,
        "b": None,
        "n_minima_used": len(usable),
    }
    if len(usable) >= 2 and count_distinct([c["compute"] for c in usable]) >= 2:
        log_c = np.log([c["compute"] for c in usable])
        log_n_opt = np.log([c["N_opt"] for c in usable])
        slope = float(np.polyfit(log_c, log_n_opt, 1)[0])
        result["a"] = slope
        result["b"] = 1.0 - slope
    return result
