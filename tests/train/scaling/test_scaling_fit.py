"""Scaling-law fit (Hoffmann approach 3), its refusals, the 1-D and isoFLOP views, the report."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from train import scaling
from train.scaling import (
    CHINCHILLA_PARAMETERS,
    PARAMETER_NAMES,
    ScalingFitError,
    compute_optimal_allocation,
    compute_optimal_model_and_data,
    fit_one_dimensional_laws,
    fit_power_law_1d,
    fit_scaling_law,
    isoflop_analysis,
    law,
    predict_loss,
)

# 6 model sizes × 6 token counts, log-spaced with the same ratio so that the anti-diagonals
# share a compute budget (6ND) and the isoFLOP view has curves.
MODEL_SIZES = np.geomspace(1e7, 1e9, 6)
TOKEN_COUNTS = np.geomspace(1e9, 1e11, 6)
NOISE = 0.01
BOOTSTRAP = 60
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grid_runs() -> tuple[np.ndarray, np.ndarray]:
    n_params, tokens = np.meshgrid(MODEL_SIZES, TOKEN_COUNTS, indexing="ij")
    return n_params.ravel(), tokens.ravel()


def chinchilla_losses(
    n_params: np.ndarray, tokens: np.ndarray, noise: float, seed: int = 1
) -> np.ndarray:
    """Chinchilla's published law times (1 + noise·ε), ε standard normal."""
    rng = np.random.default_rng(seed)
    clean = predict_loss(CHINCHILLA_PARAMETERS, n_params, tokens)
    return clean * (1 + noise * rng.standard_normal(len(clean)))


@pytest.fixture(scope="module")
def noisy_fit() -> dict:
    n_params, tokens = grid_runs()
    losses = chinchilla_losses(n_params, tokens, NOISE)
    return fit_scaling_law(n_params, tokens, losses, bootstrap=BOOTSTRAP, seed=0)


# --- recovery of Chinchilla's parameters ----------------------------------------------------


def test_noise_free_fit_recovers_chinchilla_exactly() -> None:
    n_params, tokens = grid_runs()
    fit = fit_scaling_law(n_params, tokens, chinchilla_losses(n_params, tokens, 0.0), bootstrap=0)
    assert fit["converged"], fit["warnings"]
    for name, true in CHINCHILLA_PARAMETERS.items():
        assert fit[name] == pytest.approx(true, rel=1e-6), name
    assert fit["ci"] == {}


def test_each_true_parameter_lies_in_its_bootstrap_interval(noisy_fit: dict) -> None:
    for name, true in CHINCHILLA_PARAMETERS.items():
        low, high = noisy_fit["ci"][name]
        assert low <= noisy_fit[name] <= high, name
        assert low <= true <= high, f"{name}: {true} not in [{low:.4g}, {high:.4g}]"


def test_point_estimates_are_close_to_chinchilla(noisy_fit: dict) -> None:
    # 1 % noise on 36 runs: exponents within a few hundredths, E within 0.1, the scale
    # factors A and B (which trade off against the exponents) within a factor of 2.
    assert noisy_fit["alpha"] == pytest.approx(0.34, abs=0.04)
    assert noisy_fit["beta"] == pytest.approx(0.28, abs=0.04)
    assert noisy_fit["E"] == pytest.approx(1.69, abs=0.1)
    for name in ("A", "B"):
        assert abs(math.log(noisy_fit[name] / CHINCHILLA_PARAMETERS[name])) < math.log(2), name
    assert noisy_fit["a"] == pytest.approx(0.28 / 0.62, abs=0.04)


def test_fit_reports_diagnostics(noisy_fit: dict) -> None:
    assert noisy_fit["converged"] is True
    assert noisy_fit["grad_norm"] <= noisy_fit["grad_tol"]
    assert noisy_fit["n_initialisations"] >= 2
    assert noisy_fit["n_grid_points"] >= noisy_fit["n_initialisations"]
    assert noisy_fit["objective"] > 0
    assert noisy_fit["n_runs"] == len(MODEL_SIZES) * len(TOKEN_COUNTS)
    assert noisy_fit["bootstrap"]["resamples"] == BOOTSTRAP
    assert noisy_fit["warnings"] == []
    assert set(noisy_fit["ci"]) == {*PARAMETER_NAMES, "a", "b", "G"}


def test_non_convergence_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(law, "MAX_ITERATIONS", 2)
    n_params, tokens = grid_runs()
    losses = chinchilla_losses(n_params, tokens, NOISE)
    fit = fit_scaling_law(n_params, tokens, losses, bootstrap=0, n_starts=2)
    assert fit["converged"] is False
    assert any("did not converge" in warning for warning in fit["warnings"])


def test_a_bootstrap_refit_that_runs_off_to_infinity_is_counted_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What the README's 3 x 3 sweep did with seeds 0 and 1: a resample drove log B to
    # hundreds and math.exp raised OverflowError, so no report was written.
    real = law._bootstrap_thetas

    def with_a_runaway(*args, **kwargs):
        thetas, not_converged = real(*args, **kwargs)
        thetas[0, 3] = 900.0  # log B of one refit
        thetas[1, 1] = 1e4  # log A of another
        return thetas, not_converged

    monkeypatch.setattr(law, "_bootstrap_thetas", with_a_runaway)
    n_params, tokens = grid_runs()
    losses = chinchilla_losses(n_params, tokens, NOISE)
    fit = fit_scaling_law(n_params, tokens, losses, bootstrap=20, seed=0)
    assert fit["bootstrap"]["unidentified"] == 2
    assert any("2 of 20 bootstrap refits did not identify" in w for w in fit["warnings"])
    assert all(math.isfinite(v) for v in fit["ci"]["B"])
    json.dumps(fit, allow_nan=False)  # the report stays writable


# --- compute-optimal allocation -------------------------------------------------------------


def test_compute_optimal_exponents() -> None:
    alpha, beta = 0.34, 0.28
    allocation = compute_optimal_allocation(alpha, beta, 406.4, 410.7)
    assert allocation["a"] == pytest.approx(beta / (alpha + beta))
    assert allocation["b"] == pytest.approx(alpha / (alpha + beta))
    assert allocation["a"] + allocation["b"] == pytest.approx(1.0)
    assert allocation["a"] == pytest.approx(0.4516, abs=1e-4)  # Chinchilla's ≈ 0.46
    expected_g = (alpha * 406.4 / (beta * 410.7)) ** (1 / (alpha + beta))
    assert allocation["G"] == pytest.approx(expected_g)


def test_compute_optimal_point_minimises_loss_at_fixed_compute() -> None:
    budget = 1e21
    n_opt, d_opt = compute_optimal_model_and_data(CHINCHILLA_PARAMETERS, budget)
    assert 6 * n_opt * d_opt == pytest.approx(budget)
    candidates = n_opt * np.geomspace(0.5, 2, 201)
    losses = predict_loss(CHINCHILLA_PARAMETERS, candidates, budget / (6 * candidates))
    assert candidates[np.argmin(losses)] == pytest.approx(n_opt, rel=0.01)


# --- refusals -------------------------------------------------------------------------------


def _refusal_cases() -> list:
    n_params, tokens = grid_runs()
    losses = chinchilla_losses(n_params, tokens, NOISE)
    with_nan = losses.copy()
    with_nan[3] = np.nan
    with_inf = n_params.copy()
    with_inf[5] = np.inf
    zero_tokens = tokens.copy()
    zero_tokens[0] = 0
    negative_loss = losses.copy()
    negative_loss[7] = -1.0
    single_size = np.full_like(n_params, 1e8)
    two_sizes = np.where(n_params < 1e8, 1e7, 1e9)
    single_count = np.full_like(tokens, 1e10)
    diagonal = np.geomspace(1e7, 1e9, 12)
    return [
        pytest.param(single_size, tokens, losses, "single model size", id="single-N"),
        pytest.param(two_sizes, tokens, losses, "only 2 distinct values of model size", id="two-N"),
        pytest.param(n_params, single_count, losses, "single token count", id="single-D"),
        pytest.param(n_params, tokens, with_nan, r"L \(loss\) is NaN", id="nan-loss"),
        pytest.param(with_inf, tokens, losses, r"N \(model size\) is NaN or infinite", id="inf-N"),
        pytest.param(
            n_params, zero_tokens, losses, r"D \(training tokens\) must be positive", id="zero-D"
        ),
        pytest.param(
            n_params, tokens, negative_loss, r"L \(loss\) must be positive", id="negative-L"
        ),
        pytest.param(n_params, tokens[:-1], losses, "same length", id="mismatched"),
        pytest.param(n_params[:5], tokens[:5], losses[:5], "too few runs", id="too-few"),
        pytest.param(
            diagonal, 20 * diagonal, np.linspace(4, 3, 12), "vary together", id="collinear"
        ),
    ]


@pytest.mark.parametrize(("n_params", "tokens", "losses", "message"), _refusal_cases())
def test_unidentifiable_inputs_are_refused(
    n_params: np.ndarray, tokens: np.ndarray, losses: np.ndarray, message: str
) -> None:
    with pytest.raises(ScalingFitError, match=message):
        fit_scaling_law(n_params, tokens, losses, bootstrap=0)


def test_refusal_names_what_cannot_be_identified() -> None:
    n_params, tokens = grid_runs()
    with pytest.raises(ScalingFitError, match="alpha and A cannot be identified"):
        fit_scaling_law(np.full_like(n_params, 1e8), tokens, np.ones_like(tokens) * 3)
    with pytest.raises(ScalingFitError, match="beta and B cannot be identified"):
        fit_scaling_law(n_params, np.full_like(tokens, 1e10), np.ones_like(tokens) * 3)


def test_scaling_fit_error_is_a_value_error() -> None:
    assert issubclass(ScalingFitError, ValueError)


def test_too_few_bootstrap_resamples_are_refused() -> None:
    n_params, tokens = grid_runs()
    with pytest.raises(ScalingFitError, match="too few"):
        fit_scaling_law(n_params, tokens, chinchilla_losses(n_params, tokens, NOISE), bootstrap=5)


# --- one-dimensional laws and isoFLOP curves ------------------------------------------------


def test_one_dimensional_law_at_fixed_tokens_recovers_alpha() -> None:
    tokens = 1e10
    losses = predict_loss(CHINCHILLA_PARAMETERS, MODEL_SIZES, tokens)
    fit = fit_power_law_1d(MODEL_SIZES, losses)
    assert fit["converged"]
    assert fit["exponent"] == pytest.approx(0.34, rel=1e-5)
    expected_floor = 1.69 + 410.7 / tokens**0.28
    assert fit["E"] == pytest.approx(expected_floor, rel=1e-5)


def test_one_dimensional_laws_cover_every_group() -> None:
    n_params, tokens = grid_runs()
    laws = fit_one_dimensional_laws(n_params, tokens, chinchilla_losses(n_params, tokens, 0.0))
    assert len(laws["loss_vs_n"]) == len(TOKEN_COUNTS)
    assert len(laws["loss_vs_d"]) == len(MODEL_SIZES)
    for group in laws["loss_vs_d"]:
        assert group["fit"]["exponent"] == pytest.approx(0.28, rel=1e-4)


def test_one_dimensional_law_refuses_too_few_sizes() -> None:
    with pytest.raises(ScalingFitError, match="distinct"):
        fit_power_law_1d([1e7, 1e7, 1e8, 1e8], [3.0, 3.1, 2.5, 2.6])


def test_isoflop_minima_follow_the_compute_optimal_exponent() -> None:
    n_params, tokens = grid_runs()
    result = isoflop_analysis(n_params, tokens, chinchilla_losses(n_params, tokens, 0.0))
    assert len(result["curves"]) >= 5
    assert result["n_minima_used"] >= 3
    # Approach 2's parabola is an approximation; it lands near a = β/(α+β) ≈ 0.45.
    assert result["a"] == pytest.approx(0.28 / 0.62, abs=0.03)
    assert result["a"] + result["b"] == pytest.approx(1.0)


def test_isoflop_absent_without_shared_budgets() -> None:
    n_params, tokens = grid_runs()
    tokens = tokens * np.random.default_rng(0).uniform(1.5, 3.0, len(tokens)) ** np.arange(36)
    result = isoflop_analysis(n_params, tokens, np.full(len(tokens), 3.0))
    assert result["curves"] == []
    assert result["a"] is None


# --- CSV, report and CLI --------------------------------------------------------------------


def write_results_csv(path: Path, n_params: np.ndarray, tokens: np.ndarray, losses) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(scaling.RESULTS_COLUMNS)
        for n, d, loss in zip(n_params, tokens, losses, strict=True):
            writer.writerow(["tiny", int(n), int(1.2 * n), int(d), 6 * n * d, loss, 12.5, "cpu"])
    return path


def run_cli(argv: list[str]) -> int:
    """`cloud ...` through this command's own registration (as train.cli builds it)."""
    from train.cli import scaling as scaling_command

    parser = argparse.ArgumentParser(prog="cloud")
    scaling_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_cli_is_registered() -> None:
    from train import cli

    assert "train.cli.scaling" in cli.COMMAND_MODULES


def test_cli_fit_writes_report_json_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_params, tokens = grid_runs()
    results = write_results_csv(
        tmp_path / "results.csv", n_params, tokens, chinchilla_losses(n_params, tokens, NOISE)
    )
    out = tmp_path / "report"
    argv = ["scaling", "fit", str(results), "--out", str(out), "--bootstrap", "20"]
    assert run_cli(argv) == 0

    printed = capsys.readouterr().out
    assert "alpha" in printed and "95% CI" in printed and str(out / "report.md") in printed

    fit = json.loads((out / "fit.json").read_text())
    for key in (*PARAMETER_NAMES, "a", "b", "G", "ci", "converged", "objective", "grad_norm"):
        assert key in fit, key
    assert set(PARAMETER_NAMES) <= set(fit["ci"])
    assert fit["n_runs"] == 36

    report = (out / "report.md").read_text()
    assert f"{fit['a']:.3f}" in report and f"{fit['b']:.3f}" in report
    assert "0.45" in report and "0.46" in report  # CLOUD paper and Chinchilla references
    for plot in ("loss_vs_n.png", "loss_vs_d.png", "residuals.png", "isoflop.png"):
        data = (out / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, plot
        assert f"]({plot})" in report, plot
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left"


def test_cli_refuses_unidentifiable_csv_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n_params, tokens = grid_runs()
    single_size = np.full_like(n_params, 1e8)
    results = write_results_csv(
        tmp_path / "results.csv", single_size, tokens, np.linspace(4, 3, len(tokens))
    )
    out = tmp_path / "report"
    assert run_cli(["scaling", "fit", str(results), "--out", str(out)]) == 2
    assert "single model size" in capsys.readouterr().err
    assert not (out / "fit.json").exists()


def test_results_csv_without_loss_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("flavour,n_params_non_embedding,tokens\ntiny,1000,2000\n")
    with pytest.raises(ScalingFitError, match="val_loss"):
        scaling.read_results(path)


def test_the_loss_plot_promises_dotted_laws_only_when_it_draws_them() -> None:
    from train.scaling.plots import loss_plot_title

    assert "dotted" in loss_plot_title("model size", True)
    assert "dotted" not in loss_plot_title("model size", False)
    assert "too few runs" in loss_plot_title("tokens", False)


def test_interpolated_isoflop_view_recovers_the_allocation_of_a_rectangular_grid() -> None:
    from train.scaling.isoflop import interpolated_isoflop_analysis

    # A rectangular grid whose budgets bracket the optimum: 8 sizes × 8 token counts, with
    # Chinchilla's law; the anti-diagonals do not share compute exactly.
    n_params, tokens = np.meshgrid(
        np.geomspace(1e7, 3e9, 8), np.geomspace(3e8, 3e11, 8), indexing="ij"
    )
    n_params, tokens = n_params.ravel(), tokens.ravel()
    losses = predict_loss(CHINCHILLA_PARAMETERS, n_params, tokens)
    result = interpolated_isoflop_analysis(n_params, tokens, losses)
    expected = compute_optimal_allocation(
        **{k: CHINCHILLA_PARAMETERS[k] for k in ("alpha", "beta", "A", "B")}
    )
    assert result["interpolated"] is True and result["n_minima_used"] >= 2
    assert result["a"] == pytest.approx(expected["a"], abs=0.06)
    assert result["a"] + result["b"] == pytest.approx(1.0)
