"""The committed CPU scaling study (docs/scaling/): the grid the issue asks for, a prediction
that really came from that grid before its run, and a summary that says what the CSV says."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from train.scaling import fit_scaling_law, read_results
from train.scaling.prediction import grid_unchanged, read_prediction

STUDY = Path(__file__).resolve().parents[3] / "docs" / "scaling"


@pytest.fixture(scope="module")
def runs():
    return read_results(STUDY / "results.csv")


@pytest.fixture(scope="module")
def summary() -> dict:
    return json.loads((STUDY / "summary.json").read_text())


def orders_of_magnitude(values: np.ndarray) -> float:
    return math.log10(values.max() / values.min())


def test_the_grid_spans_four_sizes_and_four_budgets_over_one_and_a_half_orders(runs) -> None:
    grid = runs.fitted()
    assert len(np.unique(grid.n_params)) >= 4 and orders_of_magnitude(grid.n_params) >= 1.5
    assert len(np.unique(grid.tokens)) >= 4 and orders_of_magnitude(grid.tokens) >= 1.5
    # Every loss comes with a standard error small next to the spread being fitted.
    assert np.all(grid.val_loss_se > 0)
    assert np.all(grid.val_loss_se < 0.02 * grid.val_loss)
    assert np.ptp(grid.val_loss) > 50 * grid.val_loss_se.max()


def test_the_prediction_came_from_the_committed_grid_and_extrapolates_it(runs) -> None:
    prediction = read_prediction(STUDY / "prediction.json")
    assert grid_unchanged(prediction, STUDY / "results.csv")
    grid = runs.fitted()
    assert prediction["n_params_non_embedding"] > grid.n_params.max()
    assert prediction["tokens"] > grid.tokens.max()
    refit = fit_scaling_law(
        grid.n_params,
        grid.tokens,
        grid.val_loss,
        bootstrap=0,
        predict_at=[(prediction["n_params_non_embedding"], prediction["tokens"])],
    )
    assert refit["predictions"][0]["loss"] == pytest.approx(prediction["predicted_loss"], rel=1e-4)


def test_the_summary_reports_the_held_out_run_as_measured(runs, summary) -> None:
    held = runs.held_out()
    assert len(held) == 1
    scored = summary["prediction"]
    assert scored["flavour"] == held.flavour[0]
    assert scored["measured_loss"] == pytest.approx(float(held.val_loss[0]))
    assert scored["relative_error"] == pytest.approx(
        scored["predicted_loss"] / scored["measured_loss"] - 1
    )
    assert scored["within_target"] == (abs(scored["relative_error"]) <= 0.03)
    for key in ("E", "A", "B", "alpha", "beta", "a", "b"):
        assert math.isfinite(summary[key]) and len(summary["ci"][key]) == 2
    report = (STUDY / "report.md").read_text()
    assert f"{100 * scored['relative_error']:+.2f} %" in report


def test_the_downstream_study_fine_tuned_at_least_three_checkpoints_on_five_folds(summary) -> None:
    rows = summary["downstream"]["rows"]
    assert len(rows) >= 3
    assert all(row["task"] == "matbench_phonons" and row["folds"] == 5 for row in rows)
    assert len({row["n_params_non_embedding"] for row in rows}) >= 3
