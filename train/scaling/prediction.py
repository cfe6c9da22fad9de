"""A prediction tested before it is run: the law fitted to the grid predicts the loss of one
larger run, the prediction is written down (``prediction.json``), then the run is made and
scored against it.

``prediction.json`` holds what was known when it was written (the fitted parameters, the grid
it came from, with the CSV's hash, and the time), so the report can show that the number
came first; :func:`score_prediction` adds the measurement once the held-out row is in the CSV.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from train.scaling.law import DEFAULT_BOOTSTRAP, PARAMETER_NAMES, fit_scaling_law, predict_loss
from train.scaling.results import ScalingRuns, read_results

PREDICTION_FILE = "prediction.json"
# The accuracy the CLOUD scaling study asks of a prediction one step beyond the grid.
TARGET_RELATIVE_ERROR = 0.03
# Rounding slack when testing whether a measurement lies inside a (possibly degenerate) interval.
INTERVAL_SLACK = 1e-9


def planned_tokens(runs: ScalingRuns, steps: int) -> float:
    """Tokens a run of ``steps`` steps will see: the grid's tokens per step (all runs read the
    same stream, so runs of equal length see equal tokens) times ``steps``, from the longest
    grid runs; exact when the held-out run is as long as one of them."""
    known = np.isfinite(runs.steps) & (runs.steps > 0)
    if not known.any():
        raise ValueError("the results CSV has no steps column, so the run's tokens are unknown")
    longest = runs.steps[known].max()
    rows = known & (runs.steps == longest)
    return float(np.mean(runs.tokens[rows] / runs.steps[rows]) * steps)


def make_prediction(
    results_csv: str | os.PathLike[str],
    *,
    name: str,
    n_params: int,
    steps: int,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the grid's runs of ``results_csv`` and predict the loss of run ``name`` (``n_params``
    non-embedding parameters, ``steps`` steps). Refuses a point inside the grid: a prediction
    must extrapolate in both N and D."""
    path = Path(results_csv)
    grid = path.read_bytes()
    runs = read_results(path).fitted()
    tokens = planned_tokens(runs, steps)
    if n_params <= runs.n_params.max() or tokens <= runs.tokens.max():
        raise ValueError(
            f"the held-out run {name} (N={n_params:,}, D={tokens:,.0f}) is not beyond the grid "
            f"(N ≤ {runs.n_params.max():,.0f}, D ≤ {runs.tokens.max():,.0f})"
        )
    fit = fit_scaling_law(
        runs.n_params,
        runs.tokens,
        runs.val_loss,
        bootstrap=bootstrap,
        seed=seed,
        predict_at=[(n_params, tokens)],
    )
    point = fit["predictions"][0]
    return {
        "flavour": name,
        "n_params_non_embedding": int(n_params),
        "steps": int(steps),
        "tokens": tokens,
        "predicted_loss": point["loss"],
        "interval": point["ci"],
        "confidence": fit["confidence"],
        "parameters": {key: fit[key] for key in PARAMETER_NAMES},
        "fit_runs": fit["n_runs"],
        "bootstrap": {"resamples": bootstrap, "seed": seed},
        "grid_csv": str(path),
        "grid_csv_sha256": hashlib.sha256(grid).hexdigest(),
        "grid_csv_bytes": len(grid),
        "made_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target_relative_error": TARGET_RELATIVE_ERROR,
    }


def read_prediction(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def grid_unchanged(prediction: dict[str, Any], results_csv: str | os.PathLike[str]) -> bool:
    """Whether ``results_csv`` still begins with the very grid the prediction was fitted to
    (rows are only ever appended, so the held-out row comes after those bytes)."""
    data = Path(results_csv).read_bytes()[: prediction["grid_csv_bytes"]]
    return hashlib.sha256(data).hexdigest() == prediction["grid_csv_sha256"]


def score_prediction(prediction: dict[str, Any], runs: ScalingRuns) -> dict[str, Any]:
    """The prediction with its measurement: the held-out row named like it, if it has run.

    ``relative_error`` = predicted / measured − 1, from the loss predicted before the run (at
    the planned tokens); ``predicted_at_measured_tokens`` re-evaluates the same law at the
    tokens the run actually saw, for reference.
    """
    held = runs.held_out()
    rows = [i for i, flavour in enumerate(held.flavour) if flavour == prediction["flavour"]]
    scored = {**prediction, "measured_loss": None, "relative_error": None, "within_target": None}
    if not rows:
        return scored
    row = rows[-1]
    measured = float(held.val_loss[row])
    relative = prediction["predicted_loss"] / measured - 1
    se = float(held.val_loss_se[row])
    return {
        **scored,
        "measured_loss": measured,
        "measured_loss_se": se if np.isfinite(se) else None,
        "measured_tokens": float(held.tokens[row]),
        "measured_n_params_non_embedding": float(held.n_params[row]),
        "measured_wall_time_s": float(held.wall_time_s[row]),
        "predicted_at_measured_tokens": float(
            predict_loss(prediction["parameters"], held.n_params[row], held.tokens[row])
        ),
        "relative_error": relative,
        "within_target": abs(relative) <= prediction["target_relative_error"],
        "inside_interval": bool(
            prediction["interval"]
            and prediction["interval"][0] - INTERVAL_SLACK * measured
            <= measured
            <= prediction["interval"][1] + INTERVAL_SLACK * measured
        ),
    }
