"""Scaling laws of CLOUD pretraining: fit L(N, D) = E + A/N^α + B/D^β and report it.

Method: Hoffmann et al. 2022 ("Chinchilla"), approach 3. The loss is modelled in log space as
``log L ≈ LSE(a − α log N, b − β log D, e)`` with ``A = e^a, B = e^b, E = e^e`` and fitted by
minimising a Huber loss (δ = 1e-3) of the log residuals with L-BFGS from a grid of
initialisations. Besiroglu et al. 2024 ("Chinchilla scaling: a replication attempt") showed
that the original fit stopped before convergence, so the tolerances here are tight, the final
gradient is checked and a fit that did not converge says so in its result. Confidence
intervals come from a bootstrap that resamples runs.

Also here: one-dimensional laws (L(N) at fixed D, L(D) at fixed N), the compute-optimal
allocation N_opt = G (C/6)^a, D_opt = G⁻¹ (C/6)^b, an isoFLOP view (Hoffmann's approach 2)
when several runs share a compute budget, and :func:`write_report`, which turns the sweep's
results CSV into ``fit.json``, ``report.md`` and PNG plots.

The package's rooms: ``law`` (the 2-D fit, bootstrap, allocation), ``one_dimensional``,
``isoflop``, ``results`` (the CSV), ``plots``, ``report`` (fit.json, report.md, summary),
``sweep`` (running the grid) and ``prediction`` (a run predicted before it is made). The
names below are the public API; import them from ``train.scaling``.
"""

from __future__ import annotations

from train.scaling.isoflop import (
    isoflop_analysis,
)
from train.scaling.law import (
    ALLOCATION_NAMES,
    BOOTSTRAP_GRID_STARTS,
    CONFIDENCE,
    DEFAULT_BOOTSTRAP,
    DEFAULT_N_STARTS,
    GRAD_TOL,
    GRID_EXPONENTS,
    GRID_LOG_COEFFICIENTS,
    GRID_LOG_E,
    GRID_LOG_E_BELOW_MIN_LOSS,
    HUBER_DELTA,
    ISOFLOP_REL_TOL,
    MAX_ABS_CORRELATION,
    MAX_ITERATIONS,
    MIN_BOOTSTRAP,
    MIN_DISTINCT_SIZES,
    PARAMETER_NAMES,
    SAME_VALUE_REL_TOL,
    FloatArray,
    ScalingFitError,
    compute_optimal_allocation,
    compute_optimal_model_and_data,
    count_distinct,
    fit_scaling_law,
    fitted_parameters,
    group_by_value,
    predict_loss,
    validate_runs,
)
from train.scaling.markdown import (
    PARAMETER_MEANINGS,
    format_summary,
    render_markdown,
)
from train.scaling.one_dimensional import (
    MIN_RUNS_1D,
    N_STARTS_1D,
    fit_one_dimensional_laws,
    fit_power_law_1d,
    predict_loss_1d,
)
from train.scaling.plots import (
    MAX_LEGEND_GROUPS,
    PLOT_DPI,
    write_plots,
)
from train.scaling.report import (
    CHINCHILLA_PARAMETERS,
    REFERENCE_EXPONENTS,
    REPORT_BUDGET_MULTIPLIERS,
    residual_summary,
    runs_overview,
    write_report,
)
from train.scaling.results import (
    REQUIRED_COLUMNS,
    RESULTS_COLUMNS,
    ScalingRuns,
    read_results,
)

__all__ = [
    "ALLOCATION_NAMES",
    "BOOTSTRAP_GRID_STARTS",
    "CHINCHILLA_PARAMETERS",
    "CONFIDENCE",
    "DEFAULT_BOOTSTRAP",
    "DEFAULT_N_STARTS",
    "GRAD_TOL",
    "GRID_EXPONENTS",
    "GRID_LOG_COEFFICIENTS",
    "GRID_LOG_E",
    "GRID_LOG_E_BELOW_MIN_LOSS",
    "HUBER_DELTA",
    "ISOFLOP_REL_TOL",
    "MAX_ABS_CORRELATION",
    "MAX_ITERATIONS",
    "MAX_LEGEND_GROUPS",
    "MIN_BOOTSTRAP",
    "MIN_DISTINCT_SIZES",
    "MIN_RUNS_1D",
    "N_STARTS_1D",
    "PARAMETER_MEANINGS",
    "PARAMETER_NAMES",
    "PLOT_DPI",
    "REFERENCE_EXPONENTS",
    "REPORT_BUDGET_MULTIPLIERS",
    "REQUIRED_COLUMNS",
    "RESULTS_COLUMNS",
    "SAME_VALUE_REL_TOL",
    "FloatArray",
    "ScalingFitError",
    "ScalingRuns",
    "compute_optimal_allocation",
    "compute_optimal_model_and_data",
    "count_distinct",
    "fit_one_dimensional_laws",
    "fit_power_law_1d",
    "fit_scaling_law",
    "fitted_parameters",
    "format_summary",
    "group_by_value",
    "isoflop_analysis",
    "predict_loss",
    "predict_loss_1d",
    "read_results",
    "render_markdown",
    "residual_summary",
    "runs_overview",
    "validate_runs",
    "write_plots",
    "write_report",
]
