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
    FloatArray,
    _as_float_array,
    count_distinct,
    group_by_value,
)

# --------------------------------------------------------------------------------------------
# IsoFLOP curves (Hoffmann's approach 2)
# --------------------------------------------------------------------------------------------


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
    usable = [c for c in curves if c["N_opt"] is not None and c["inside_range"]]
    result: dict[str, Any] = {
        "compute_source": "6ND" if flops is None else "flops column",
        "rel_tol": rel_tol,
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
