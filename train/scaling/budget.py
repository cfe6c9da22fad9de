"""What to train for a given budget: the fitted law applied to the rates this sweep measured
(CPU hours) and to a GPU cluster's peak at an assumed utilisation.

The CPU answer uses the throughput each model size actually reached in the sweep (tokens per
wall-clock second, evaluation and start-up included), because on a CPU small models are far
from compute-bound and ``C = 6ND`` would misstate their cost. The GPU answer has no measured
rate yet (no GPU has run this sweep), so it is the law's compute-optimal (N, D) at
``GPUs × peak × MFU × hours`` with the MFU an explicit assumption.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from train.scaling.law import compute_optimal_model_and_data, fitted_parameters, predict_loss
from train.scaling.results import ScalingRuns

CPU_BUDGET_HOURS = (1.0, 2.0)
GPU_BUDGET = {"gpus": 8, "device": "H100", "hours": 24.0, "assumed_mfu": 0.40}


def measured_rates(runs: ScalingRuns) -> list[dict[str, Any]]:
    """Per model size: tokens per wall-clock second of its longest run, with its label."""
    rates = []
    for size in np.unique(runs.n_params):
        rows = np.flatnonzero((runs.n_params == size) & np.isfinite(runs.wall_time_s))
        if len(rows) == 0:
            continue
        longest = rows[np.argmax(runs.tokens[rows])]
        rates.append(
            {
                "flavour": runs.flavour[longest],
                "N": float(size),
                "tokens_per_s": float(runs.tokens[longest] / runs.wall_time_s[longest]),
            }
        )
    return rates


def cpu_budgets(fit: dict[str, Any], runs: ScalingRuns) -> list[dict[str, Any]]:
    """For each budget of ``CPU_BUDGET_HOURS``: the measured size with the lowest predicted loss
    when trained for that long at its measured rate, and the runner-up sizes."""
    params = fitted_parameters(fit)
    rates = measured_rates(runs)
    out = []
    for hours in CPU_BUDGET_HOURS:
        options = [
            {
                **rate,
                "tokens": rate["tokens_per_s"] * hours * 3600,
                "predicted_loss": float(
                    predict_loss(params, rate["N"], rate["tokens_per_s"] * hours * 3600)
                ),
            }
            for rate in rates
        ]
        options.sort(key=lambda option: option["predicted_loss"])
        out.append({"hours": hours, "best": options[0], "options": options})
    return out


def gpu_budget(fit: dict[str, Any]) -> dict[str, Any]:
    """The law's compute-optimal run for ``GPU_BUDGET`` and the nearest registered flavour."""
    from cloud import count_parameters, family, flavours
    from train.metrics import gpu_peak_flops

    peak = gpu_peak_flops(GPU_BUDGET["device"]) or 0.0
    compute = GPU_BUDGET["gpus"] * peak * GPU_BUDGET["assumed_mfu"] * GPU_BUDGET["hours"] * 3600
    params = fitted_parameters(fit)
    n_opt, d_opt = (float(v) for v in compute_optimal_model_and_data(params, compute))
    sizes = {name: count_parameters(family(name), embedding=False) for name in flavours()}
    nearest = min(sizes, key=lambda name: abs(np.log(sizes[name] / n_opt)))
    return {
        **GPU_BUDGET,
        "peak_flops_per_gpu": peak,
        "compute": compute,
        "N_opt": n_opt,
        "D_opt": d_opt,
        "predicted_loss": float(predict_loss(params, n_opt, d_opt)),
        "nearest_flavour": nearest,
        "nearest_flavour_N": sizes[nearest],
    }
