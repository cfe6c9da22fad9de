"""fit.json, report.md and the terminal summary of a scaling fit (:func:`write_report`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from train.common.files import atomic_write_text
from train.scaling.budget import cpu_budgets, gpu_budget
from train.scaling.downstream import DOWNSTREAM_FILE, downstream_summary, read_downstream
from train.scaling.isoflop import interpolated_isoflop_analysis, isoflop_analysis
from train.scaling.law import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_N_STARTS,
    PARAMETER_NAMES,
    ScalingFitError,
    compute_optimal_model_and_data,
    count_distinct,
    fit_scaling_law,
    fitted_parameters,
    predict_loss,
)
from train.scaling.markdown import render_markdown
from train.scaling.one_dimensional import fit_one_dimensional_laws
from train.scaling.plots import write_plots
from train.scaling.prediction import (
    PREDICTION_FILE,
    grid_unchanged,
    read_prediction,
    score_prediction,
)
from train.scaling.results import FIT_ROLE, ScalingRuns, read_results

# Exponents of N_opt ∝ C^a and D_opt ∝ C^b, for context in the report.
REFERENCE_EXPONENTS: tuple[dict[str, Any], ...] = (
    {"source": "CLOUD paper (arXiv 2506.17345), approximate", "a": 0.45, "b": 0.55},
    {"source": "Chinchilla, Hoffmann et al. 2022, approach 3", "a": 0.46, "b": 0.54},
    {"source": "Besiroglu et al. 2024 replication of approach 3", "a": 0.51, "b": 0.49},
)
CHINCHILLA_PARAMETERS = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

# --------------------------------------------------------------------------------------------
# Report: fit.json, report.md, plots
# --------------------------------------------------------------------------------------------

REPORT_BUDGET_MULTIPLIERS = (1, 10, 100)


def _json_ready(value: Any) -> Any:
    """NaN and inf become null so that the file is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def residual_summary(
    fit: dict[str, Any], N: ArrayLike, D: ArrayLike, L: ArrayLike
) -> dict[str, Any]:
    """Residuals of the fitted law at each run (log and relative) and their summary."""
    losses = np.asarray(L, dtype=np.float64)
    predicted = predict_loss(fitted_parameters(fit), N, D)
    log_residuals = np.log(losses) - np.log(predicted)
    relative = losses / predicted - 1
    worst = np.argsort(-np.abs(log_residuals), kind="stable")[:5]
    return {
        "N": [float(v) for v in np.asarray(N, dtype=np.float64)],
        "D": [float(v) for v in np.asarray(D, dtype=np.float64)],
        "observed": [float(v) for v in losses],
        "predicted": [float(v) for v in predicted],
        "log_residuals": [float(v) for v in log_residuals],
        "relative_residuals": [float(v) for v in relative],
        "rms_log": float(np.sqrt(np.mean(log_residuals**2))),
        "median_abs_relative": float(np.median(np.abs(relative))),
        "max_abs_relative": float(np.max(np.abs(relative))),
        "worst_runs": [int(i) for i in worst],
    }


def _counts(labels: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label or "(blank)"] = counts.get(label or "(blank)", 0) + 1
    return counts


def runs_overview(runs: ScalingRuns) -> dict[str, Any]:
    """What the sweep covered: sizes, token counts, compute, flavours, devices."""
    compute = 6 * runs.n_params * runs.tokens
    wall = runs.wall_time_s[np.isfinite(runs.wall_time_s)]
    return {
        "n_runs": len(runs),
        "n_model_sizes": count_distinct(runs.n_params),
        "n_token_counts": count_distinct(runs.tokens),
        "N_range": [float(runs.n_params.min()), float(runs.n_params.max())],
        "D_range": [float(runs.tokens.min()), float(runs.tokens.max())],
        "compute_6ND_range": [float(compute.min()), float(compute.max())],
        "loss_range": [float(runs.val_loss.min()), float(runs.val_loss.max())],
        "flavours": _counts(runs.flavour),
        "devices": _counts(runs.device),
        "total_wall_time_s": float(wall.sum()) if len(wall) else None,
    }


def _allocation_table(fit: dict[str, Any], max_compute: float) -> list[dict[str, float]]:
    """Compute-optimal N, D and predicted loss at the sweep's largest budget and beyond."""
    params = fitted_parameters(fit)
    rows = []
    for multiplier in REPORT_BUDGET_MULTIPLIERS:
        budget = max_compute * multiplier
        n_opt, d_opt = compute_optimal_model_and_data(params, budget)
        rows.append(
            {
                "compute": budget,
                "multiplier": multiplier,
                "N_opt": float(n_opt),
                "D_opt": float(d_opt),
                "tokens_per_parameter": float(d_opt / n_opt),
                "loss": float(predict_loss(params, n_opt, d_opt)),
            }
        )
    return rows


def _loss_terms_at(fit: dict[str, Any], n_params: float, tokens: float) -> dict[str, float]:
    return {
        "E": float(fit["E"]),
        "model_term": float(fit["A"] / n_params ** fit["alpha"]),
        "data_term": float(fit["B"] / tokens ** fit["beta"]),
    }


def write_report(
    results_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    n_starts: int | None = DEFAULT_N_STARTS,
    prediction: str | os.PathLike[str] | None = None,
    downstream: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Fit the sweep's CSV and write ``fit.json``, ``summary.json``, ``report.md`` and PNG
    plots into ``out_dir``.

    The law is fitted to the grid runs only (role ``fit``); runs held out for a prediction are
    scored against ``prediction`` (default: ``prediction.json`` beside the CSV, if present);
    ``downstream`` (default: ``downstream.csv`` beside it) adds the fine-tuning results.
    Each file is written through a temporary file and a rename; ``fit.json`` comes last, so
    its presence means the report is complete. Returns what ``fit.json`` holds.
    """
    every_run = read_results(results_csv)
    runs = every_run.fitted()
    fit = fit_scaling_law(
        runs.n_params, runs.tokens, runs.val_loss, bootstrap=bootstrap, seed=seed, n_starts=n_starts
    )
    complete_flops = bool(np.all(np.isfinite(runs.flops) & (runs.flops > 0)))
    overview = runs_overview(runs)
    largest = int(np.argmax(runs.n_params * runs.tokens))
    content: dict[str, Any] = {
        **fit,
        "source_csv": str(results_csv),
        "runs": overview,
        "residuals": residual_summary(fit, runs.n_params, runs.tokens, runs.val_loss),
        "allocation_table": _allocation_table(fit, overview["compute_6ND_range"][1]),
        "largest_run": {
            "index": largest,
            "N": float(runs.n_params[largest]),
            "D": float(runs.tokens[largest]),
            **_loss_terms_at(fit, runs.n_params[largest], runs.tokens[largest]),
        },
        "one_dimensional": fit_one_dimensional_laws(runs.n_params, runs.tokens, runs.val_loss),
        "isoflop": _isoflop_view(runs, complete_flops),
        "references": {
            "exponents": [dict(r) for r in REFERENCE_EXPONENTS],
            "chinchilla_parameters": dict(CHINCHILLA_PARAMETERS),
        },
        "run_table": run_table(every_run),
        "budgets": {"cpu": cpu_budgets(fit, every_run), "gpu": gpu_budget(fit)},
        "unpinned": unpinned_parameters(fit),
        "prediction": _scored_prediction(results_csv, prediction, every_run),
        "downstream": _downstream(results_csv, downstream),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    content["files"] = {
        **write_plots(content, runs, out, every_run),
        "report": "report.md",
        "summary": "summary.json",
        "fit": "fit.json",
    }
    atomic_write_text(out / "report.md", render_markdown(content))
    summary = json.dumps(_json_ready(summary_of(content)), indent=2, allow_nan=False) + "\n"
    atomic_write_text(out / "summary.json", summary)
    text = json.dumps(_json_ready(content), indent=2, allow_nan=False) + "\n"
    atomic_write_text(out / "fit.json", text)
    return content


def _isoflop_view(runs: ScalingRuns, complete_flops: bool) -> dict[str, Any]:
    """Approach 2 on budgets the runs share; on a rectangular grid, whose runs rarely share
    one, on budgets interpolated along each model's token axis instead."""
    shared = isoflop_analysis(
        runs.n_params,
        runs.tokens,
        runs.val_loss,
        flops=runs.flops if complete_flops else None,
    )
    if shared["a"] is not None:
        return shared
    interpolated = interpolated_isoflop_analysis(runs.n_params, runs.tokens, runs.val_loss)
    return interpolated if interpolated["a"] is not None else shared


def _companion_file(
    results_csv: str | os.PathLike[str],
    given: str | os.PathLike[str] | None,
    default_name: str,
    what: str,
) -> Path | None:
    """A file the report reads beside the results: ``given`` (which must exist), else
    ``default_name`` next to the CSV if it is there, else None."""
    path = Path(given) if given else Path(results_csv).with_name(default_name)
    if path.is_file():
        return path
    if given:
        raise ScalingFitError(f"{what} not found: {path}")
    return None


def _scored_prediction(
    results_csv: str | os.PathLike[str],
    prediction: str | os.PathLike[str] | None,
    runs: ScalingRuns,
) -> dict[str, Any] | None:
    path = _companion_file(results_csv, prediction, PREDICTION_FILE, "prediction file")
    if path is None:
        return None
    prediction_made = read_prediction(path)
    scored = score_prediction(prediction_made, runs)
    scored["grid_unchanged"] = grid_unchanged(prediction_made, results_csv)
    return scored


def _downstream(
    results_csv: str | os.PathLike[str], downstream: str | os.PathLike[str] | None
) -> dict[str, Any] | None:
    path = _companion_file(results_csv, downstream, DOWNSTREAM_FILE, "downstream results")
    if path is None:
        return None
    rows = read_downstream(path)
    return {"source": str(path), "rows": rows, **downstream_summary(rows)} if rows else None


def run_table(runs: ScalingRuns) -> list[dict[str, Any]]:
    """One entry per run, grid runs by size then tokens, held-out runs last: what the
    report's table of runs shows."""
    rows = [
        {
            "flavour": runs.flavour[i],
            "role": runs.role[i],
            "N": float(runs.n_params[i]),
            "tokens": float(runs.tokens[i]),
            "steps": float(runs.steps[i]),
            "flops": float(runs.flops[i]),
            "wall_time_s": float(runs.wall_time_s[i]),
            "val_loss": float(runs.val_loss[i]),
            "val_loss_se": float(runs.val_loss_se[i]),
        }
        for i in range(len(runs))
    ]
    return sorted(rows, key=lambda row: (row["role"] != FIT_ROLE, row["N"], row["tokens"]))


# A parameter whose 95 % interval spans more than this factor (scales) or more than its own
# size (exponents) is not pinned down by the runs.
UNPINNED_SCALE_RATIO = 10.0


def unpinned_parameters(fit: dict[str, Any]) -> list[str]:
    """Names of the parameters the bootstrap interval leaves essentially open."""
    loose = []
    for name, interval in fit["ci"].items():
        low, high = interval
        if not (math.isfinite(low) and math.isfinite(high)):
            loose.append(name)
        elif name in ("E", "A", "B", "G"):
            if low <= 0 or high / low > UNPINNED_SCALE_RATIO:
                loose.append(name)
        elif high - low > abs(fit[name]):
            loose.append(name)
    return loose


def summary_of(content: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``: the few numbers a reader (or a test) needs, machine-readable."""
    names = (*PARAMETER_NAMES, "a", "b")
    prediction = content["prediction"]
    keys = (
        "flavour",
        "n_params_non_embedding",
        "tokens",
        "predicted_loss",
        "interval",
        "measured_loss",
        "measured_loss_se",
        "measured_tokens",
        "relative_error",
        "within_target",
        "made_at",
    )
    return {
        **{name: content[name] for name in names},
        "ci": {name: content["ci"].get(name) for name in names},
        "confidence": content["confidence"],
        "n_runs": content["n_runs"],
        "unpinned": content["unpinned"],
        "converged": content["converged"],
        "references": content["references"]["exponents"],
        "prediction": None if prediction is None else {k: prediction.get(k) for k in keys},
        "budgets": {
            "cpu": [
                {"hours": b["hours"], **{k: b["best"][k] for k in ("flavour", "N", "tokens")}}
                for b in content["budgets"]["cpu"]
            ],
            "gpu": content["budgets"]["gpu"],
        },
        "downstream": None
        if content["downstream"] is None
        else {
            key: content["downstream"][key]
            for key in ("spearman_score_vs_val_loss", "spearman_score_vs_compute", "rows")
        },
        "source_csv": content["source_csv"],
    }
