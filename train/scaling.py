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
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import functools
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

HUBER_DELTA = 1e-3
CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP = 200
# L-BFGS runs from the best grid points only: every one of the ~8000 grid points would cost
# minutes per fit and the bootstrap repeats the fit hundreds of times. None means all of them.
DEFAULT_N_STARTS = 48
BOOTSTRAP_GRID_STARTS = 2
MIN_BOOTSTRAP = 20
# Largest |gradient component| of the per-run, δ-scaled Huber objective accepted as converged.
GRAD_TOL = 1e-6
MAX_ITERATIONS = 20_000
MIN_DISTINCT_SIZES = 3
# Values within this relative distance count as the same model size, token count or budget.
SAME_VALUE_REL_TOL = 0.01
ISOFLOP_REL_TOL = 0.10
MAX_ABS_CORRELATION = 0.999

# Hoffmann et al. 2022, approach 3 grid; e also gets values just below the smallest observed
# loss so that losses far from Chinchilla's (CLOUD's SCOPE strings) start near a sensible E.
GRID_EXPONENTS = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_LOG_COEFFICIENTS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_LOG_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_LOG_E_BELOW_MIN_LOSS = (2.0, 1.0, 0.3, 0.1)

PARAMETER_NAMES = ("E", "A", "B", "alpha", "beta")
ALLOCATION_NAMES = ("a", "b", "G")

# Exponents of N_opt ∝ C^a and D_opt ∝ C^b, for context in the report.
REFERENCE_EXPONENTS: tuple[dict[str, Any], ...] = (
    {"source": "CLOUD paper (arXiv 2506.17345), approximate", "a": 0.45, "b": 0.55},
    {"source": "Chinchilla, Hoffmann et al. 2022, approach 3", "a": 0.46, "b": 0.54},
    {"source": "Besiroglu et al. 2024 replication of approach 3", "a": 0.51, "b": 0.49},
)
CHINCHILLA_PARAMETERS = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

RESULTS_COLUMNS = (
    "flavour",
    "n_params_non_embedding",
    "n_params_total",
    "tokens",
    "flops",
    "val_loss",
    "wall_time_s",
    "device",
    "val_loss_se",
    "role",
)
REQUIRED_COLUMNS = ("n_params_non_embedding", "tokens", "val_loss")

FloatArray = NDArray[np.float64]


class ScalingFitError(ValueError):
    """The runs cannot identify the scaling law; the message names the problem."""


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


def _as_float_array(values: ArrayLike, name: str) -> FloatArray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ScalingFitError(f"{name} is not numeric: {err}") from err
    if array.ndim != 1:
        raise ScalingFitError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _describe_indices(mask: NDArray[np.bool_]) -> str:
    indices = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in indices[:10])
    more = f", … ({len(indices)} in all)" if len(indices) > 10 else ""
    # 0-based positions in the input; in the results CSV, data row i is on line i + 2.
    return f"run index {shown}{more} (0-based, in input order)"


def _check_finite_positive(array: FloatArray, name: str) -> None:
    not_finite = ~np.isfinite(array)
    if not_finite.any():
        raise ScalingFitError(
            f"{name} is NaN or infinite at {_describe_indices(not_finite)}; "
            "drop or fix those runs (a diverged run has no meaningful loss)"
        )
    not_positive = array <= 0
    if not_positive.any():
        raise ScalingFitError(
            f"{name} must be positive (the law is fitted in log space) but is ≤ 0 at "
            f"{_describe_indices(not_positive)}"
        )


def count_distinct(values: ArrayLike, rel_tol: float = SAME_VALUE_REL_TOL) -> int:
    """Number of distinct values, treating values within ``rel_tol`` of each other as one."""
    return len(group_by_value(values, rel_tol))


def group_by_value(values: ArrayLike, rel_tol: float) -> list[NDArray[np.intp]]:
    """Indices of ``values`` grouped so that each group spans at most a factor ``1 + rel_tol``.

    Groups are ordered by value; a group starts at its smallest member (no chaining).
    """
    logs = np.log(np.asarray(values, dtype=np.float64))
    order = np.argsort(logs, kind="stable")
    width = math.log1p(rel_tol)
    groups: list[list[int]] = []
    group_start = -math.inf
    for index in order:
        if logs[index] - group_start > width:
            groups.append([])
            group_start = logs[index]
        groups[-1].append(int(index))
    return [np.asarray(group, dtype=np.intp) for group in groups]


def validate_runs(
    N: ArrayLike, D: ArrayLike, L: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Arrays of N, D, L, or :class:`ScalingFitError` when they cannot identify the law."""
    n_params = _as_float_array(N, "N (model size)")
    tokens = _as_float_array(D, "D (training tokens)")
    losses = _as_float_array(L, "L (loss)")
    lengths = {len(n_params), len(tokens), len(losses)}
    if len(lengths) != 1:
        raise ScalingFitError(
            f"N, D and L must have the same length, got {len(n_params)}, {len(tokens)} "
            f"and {len(losses)}"
        )
    n_parameters = len(PARAMETER_NAMES)
    if len(losses) <= n_parameters:
        raise ScalingFitError(
            f"too few runs: {len(losses)}; the law has {n_parameters} parameters, so at least "
            f"{n_parameters + 1} runs are needed (in practice a grid of ≥ 3 model sizes × ≥ 3 "
            "token counts)"
        )
    _check_finite_positive(n_params, "N (model size)")
    _check_finite_positive(tokens, "D (training tokens)")
    _check_finite_positive(losses, "L (loss)")
    _check_enough_distinct(n_params, "model size N", "alpha and A")
    _check_enough_distinct(tokens, "token count D", "beta and B")
    _check_not_collinear(n_params, tokens)
    return n_params, tokens, losses


def _check_enough_distinct(values: FloatArray, what: str, unidentified: str) -> None:
    distinct = count_distinct(values)
    if distinct >= MIN_DISTINCT_SIZES:
        return
    if distinct == 1:
        why = f"a single {what} ({values[0]:.4g})"
    else:
        why = f"only {distinct} distinct values of {what}"
    raise ScalingFitError(
        f"{why}: {unidentified} cannot be identified (they trade off against E and each "
        f"other); the grid needs at least {MIN_DISTINCT_SIZES} distinct values of {what}"
    )


def _check_not_collinear(n_params: FloatArray, tokens: FloatArray) -> None:
    correlation = np.corrcoef(np.log(n_params), np.log(tokens))[0, 1]
    if abs(correlation) > MAX_ABS_CORRELATION:
        raise ScalingFitError(
            f"model size and token count vary together (correlation of log N and log D is "
            f"{correlation:+.4f}, e.g. a fixed tokens-per-parameter sweep): the effects of N "
            "and D (alpha vs beta) cannot be told apart; vary them independently"
        )


# --------------------------------------------------------------------------------------------
# BLAS threads
# --------------------------------------------------------------------------------------------

_OPENBLAS_LIBRARY_GLOBS = (
    "scipy.libs/*openblas*.so*",
    "numpy.libs/*openblas*.so*",
    "scipy/.dylibs/*openblas*.dylib",
    "numpy/.dylibs/*openblas*.dylib",
)
_OPENBLAS_THREAD_SYMBOLS = (
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


@functools.cache
def _openblas_thread_controls() -> tuple[tuple[Any, Any], ...]:
    """(get, set) thread-count functions of the OpenBLAS copies bundled with numpy and scipy."""
    site_packages = Path(np.__file__).resolve().parents[1]
    controls = []
    for pattern in _OPENBLAS_LIBRARY_GLOBS:
        for library_path in sorted(site_packages.glob(pattern)):
            try:
                library = ctypes.CDLL(str(library_path))
            except OSError:
                continue
            for get_name, set_name in _OPENBLAS_THREAD_SYMBOLS:
                if hasattr(library, get_name) and hasattr(library, set_name):
                    get, set_ = getattr(library, get_name), getattr(library, set_name)
                    get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                    controls.append((get, set_))
                    break
    return tuple(controls)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run with OpenBLAS on one thread, as OPENBLAS_NUM_THREADS=1 would.

    L-BFGS-B calls BLAS on matrices of a few dozen entries; OpenBLAS's thread pool then only
    spins and, measured on a shared 2-core machine, made the fits 3-10× slower. Where the
    libraries cannot be found this does nothing.
    """
    previous = [(get(), set_) for get, set_ in _openblas_thread_controls()]
    for _, set_ in previous:
        set_(1)
    try:
        yield
    finally:
        for threads, set_ in previous:
            set_(threads)


# --------------------------------------------------------------------------------------------
# The Huber / log-sum-exp objective, shared by the 2-D law and the 1-D laws
# --------------------------------------------------------------------------------------------
#
# Internal parameter layout: theta = [e, a_1, alpha_1, ..., a_k, alpha_k] for
# log L ≈ LSE(e, a_1 - alpha_1 x_1, ..., a_k - alpha_k x_k) with x_i = log of variable i.


def _huber(residuals: FloatArray, delta: float) -> tuple[FloatArray, FloatArray]:
    """Huber loss of each residual and its derivative."""
    absolute = np.abs(residuals)
    quadratic = absolute <= delta
    loss = np.where(quadratic, 0.5 * residuals**2, delta * (absolute - 0.5 * delta))
    return loss, np.clip(residuals, -delta, delta)


def _log_terms(thetas: FloatArray, log_x: FloatArray) -> FloatArray:
    """Terms of the LSE, shape (..., k + 1, n_runs), for parameters of shape (..., 2k + 1)."""
    e = thetas[..., 0:1, None]
    coefficients = thetas[..., 1::2, None]
    exponents = thetas[..., 2::2, None]
    power_terms = coefficients - exponents * log_x
    e_term = np.broadcast_to(e, (*power_terms.shape[:-2], 1, power_terms.shape[-1]))
    return np.concatenate([e_term, power_terms], axis=-2)


def _log_prediction(thetas: FloatArray, log_x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """log L̂ (LSE of the terms) and the softmax weights of the terms."""
    terms = _log_terms(thetas, log_x)
    top = terms.max(axis=-2, keepdims=True)
    weights = np.exp(terms - top)
    total = weights.sum(axis=-2, keepdims=True)
    log_prediction = (top + np.log(total))[..., 0, :]
    return log_prediction, weights / total


def _objective(
    theta: FloatArray, log_x: FloatArray, log_l: FloatArray, delta: float
) -> tuple[float, FloatArray]:
    """Sum of Huber losses of log residuals (Hoffmann's objective) and its gradient."""
    log_prediction, weights = _log_prediction(theta, log_x)
    loss, slope = _huber(log_prediction - log_l, delta)
    # Elementwise sums, not matmul: BLAS threads on these tiny arrays only spin and contend.
    weighted_slope = weights * slope
    gradient = np.empty_like(theta)
    gradient[0] = weighted_slope[0].sum()
    gradient[1::2] = weighted_slope[1:].sum(axis=1)
    gradient[2::2] = -(weighted_slope[1:] * log_x).sum(axis=1)
    return float(loss.sum()), gradient


def _grid_objectives(
    thetas: FloatArray, log_x: FloatArray, log_l: FloatArray, delta: float
) -> FloatArray:
    """Hoffmann's objective at many parameter vectors at once (rows of ``thetas``)."""
    values = np.empty(len(thetas))
    chunk = max(1, 2_000_000 // max(1, log_x.size))
    for start in range(0, len(thetas), chunk):
        log_prediction, _ = _log_prediction(thetas[start : start + chunk], log_x)
        values[start : start + chunk] = _huber(log_prediction - log_l, delta)[0].sum(axis=-1)
    return values


@dataclass(frozen=True)
class _Optimum:
    theta: FloatArray
    objective: float
    grad_norm: float
    converged: bool
    message: str
    iterations: int


def _centre(theta: FloatArray, means: FloatArray) -> FloatArray:
    """a − α·x = (a − α·m) − α·(x − m): the optimiser works in centred log variables."""
    centred = theta.copy()
    centred[1::2] = theta[1::2] - theta[2::2] * means
    return centred


def _uncentre(centred: FloatArray, means: FloatArray) -> FloatArray:
    theta = centred.copy()
    theta[1::2] = centred[1::2] + centred[2::2] * means
    return theta


def _scaled_gradient_norm(
    theta: FloatArray, log_x: FloatArray, log_l: FloatArray, delta: float
) -> float:
    """Largest |component| of the gradient of the objective per run and per δ (unit free)."""
    _, gradient = _objective(theta, log_x, log_l, delta)
    return float(np.max(np.abs(gradient)) / (len(log_l) * delta))


def _minimise(theta0: FloatArray, log_x: FloatArray, log_l: FloatArray, delta: float) -> _Optimum:
    """L-BFGS from one start, with tolerances tight enough to run into the minimum."""
    from scipy.optimize import minimize

    means = log_x.mean(axis=1)
    centred_x = log_x - means[:, None]
    # Hoffmann's objective is ~1e-5 for a good fit; L-BFGS-B's ftol is relative to max(|f|, 1),
    # so without this scaling it would stop as soon as f changed by less than ftol in absolute.
    scale = 1.0 / (len(log_l) * delta)

    def scaled(theta: FloatArray) -> tuple[float, FloatArray]:
        value, gradient = _objective(theta, centred_x, log_l, delta)
        return value * scale, gradient * scale

    result = minimize(
        scaled,
        _centre(theta0, means),
        jac=True,
        method="L-BFGS-B",
        options={
            "maxiter": MAX_ITERATIONS,
            "maxfun": 4 * MAX_ITERATIONS,
            "ftol": 1e-15,
            "gtol": 1e-12,
            "maxcor": 30,
            "maxls": 50,
        },
    )
    theta = _uncentre(np.asarray(result.x, dtype=np.float64), means)
    objective, _ = _objective(theta, log_x, log_l, delta)
    grad_norm = _scaled_gradient_norm(theta, log_x, log_l, delta)
    converged = bool(np.all(np.isfinite(theta)) and grad_norm <= GRAD_TOL)
    return _Optimum(
        theta=theta,
        objective=objective,
        grad_norm=grad_norm,
        converged=converged,
        message=str(result.message),
        iterations=int(result.nit),
    )


def _best_of(starts: Sequence[FloatArray], log_x: FloatArray, log_l: FloatArray) -> _Optimum:
    """Minimise from each start and keep the lowest objective, preferring converged runs."""
    optima = [_minimise(start, log_x, log_l, HUBER_DELTA) for start in starts]
    finite = [o for o in optima if math.isfinite(o.objective)]
    if not finite:
        raise ScalingFitError("every L-BFGS start ended at a non-finite objective")
    converged = [o for o in finite if o.converged]
    # A converged optimum within round-off of the best wins over a lower non-converged one.
    best = min(finite, key=lambda o: o.objective)
    if converged:
        best_converged = min(converged, key=lambda o: o.objective)
        if best_converged.objective <= best.objective * (1 + 1e-9) + 1e-15:
            return best_converged
    return best


def _initial_grid(n_terms: int, log_l: FloatArray) -> FloatArray:
    """Hoffmann's grid of initialisations (plus e values just below the smallest loss)."""
    log_e = sorted(
        set(GRID_LOG_E) | {round(float(log_l.min()) - gap, 6) for gap in GRID_LOG_E_BELOW_MIN_LOSS}
    )
    axes = [np.asarray(log_e)]
    for _ in range(n_terms):
        axes += [np.asarray(GRID_LOG_COEFFICIENTS), np.asarray(GRID_EXPONENTS)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def _ranked_grid_starts(
    grid: FloatArray, log_x: FloatArray, log_l: FloatArray, count: int | None
) -> list[FloatArray]:
    values = _grid_objectives(grid, log_x, log_l, HUBER_DELTA)
    order = np.argsort(values, kind="stable")
    if count is not None:
        order = order[:count]
    return [grid[i] for i in order]


# --------------------------------------------------------------------------------------------
# The two-dimensional law L(N, D) = E + A/N^alpha + B/D^beta
# --------------------------------------------------------------------------------------------


def _exp(value: float) -> float:
    """exp, with inf instead of OverflowError: a resample that sends a log-coefficient to
    hundreds has not identified the law, and is counted as such, not a crash."""
    return math.exp(value) if value < 709.0 else math.inf


def _named_parameters(theta: FloatArray) -> dict[str, float]:
    """[e, a, alpha, b, beta] → E, A, B, alpha, beta."""
    return {
        "E": _exp(theta[0]),
        "A": _exp(theta[1]),
        "B": _exp(theta[3]),
        "alpha": float(theta[2]),
        "beta": float(theta[4]),
    }


def predict_loss(params: dict[str, float], N: ArrayLike, D: ArrayLike) -> FloatArray:
    """L(N, D) = E + A/N^alpha + B/D^beta for fitted (or published) parameters."""
    n_params = np.asarray(N, dtype=np.float64)
    tokens = np.asarray(D, dtype=np.float64)
    return (
        params["E"]
        + params["A"] / n_params ** params["alpha"]
        + params["B"] / tokens ** params["beta"]
    )


def compute_optimal_allocation(alpha: float, beta: float, A: float, B: float) -> dict[str, float]:
    """Exponents and coefficient of N_opt = G (C/6)^a, D_opt = G⁻¹ (C/6)^b under C ≈ 6ND.

    Minimising E + A/N^α + B/D^β subject to 6ND = C gives a = β/(α+β), b = α/(α+β) and
    G = (αA / (βB))^(1/(α+β)) (Hoffmann et al. 2022, eq. 4).
    """
    total = alpha + beta
    if not (alpha > 0 and beta > 0 and A > 0 and B > 0):
        return {"a": math.nan, "b": math.nan, "G": math.nan}
    return {
        "a": beta / total,
        "b": alpha / total,
        "G": (alpha * A / (beta * B)) ** (1.0 / total),
    }


def compute_optimal_model_and_data(
    params: dict[str, float], compute: ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """N_opt and D_opt for compute budgets C (FLOPs), under C ≈ 6ND."""
    allocation = compute_optimal_allocation(
        params["alpha"], params["beta"], params["A"], params["B"]
    )
    per_six = np.asarray(compute, dtype=np.float64) / 6.0
    n_opt = allocation["G"] * per_six ** allocation["a"]
    d_opt = per_six ** allocation["b"] / allocation["G"]
    return n_opt, d_opt


def _fit_theta(
    log_x: FloatArray, log_l: FloatArray, n_starts: int | None
) -> tuple[_Optimum, list[FloatArray], int]:
    """Best optimum, the starts it was chosen from (best grid points first), grid size."""
    grid = _initial_grid(log_x.shape[0], log_l)
    starts = _ranked_grid_starts(grid, log_x, log_l, n_starts)
    return _best_of(starts, log_x, log_l), starts, len(grid)


def _bootstrap_thetas(
    n_params: FloatArray,
    tokens: FloatArray,
    log_l: FloatArray,
    starts: list[FloatArray],
    resamples: int,
    seed: int,
) -> tuple[FloatArray, int]:
    """Refit on runs drawn with replacement; returns the parameter vectors and #not converged.

    Each refit starts from ``starts`` (the full-data optimum and the best grid points): a
    resample's optimum lies near the full data's, and ranking the whole grid again for every
    resample would cost more than the refits themselves.
    """
    rng = np.random.default_rng(seed)
    n_runs = len(log_l)
    thetas = np.empty((resamples, len(starts[0])))
    not_converged = 0
    for resample in range(resamples):
        indices = _identifiable_resample(rng, n_params, tokens, n_runs)
        log_x = np.log(np.stack([n_params[indices], tokens[indices]]))
        optimum = _best_of(starts, log_x, log_l[indices])
        thetas[resample] = optimum.theta
        not_converged += not optimum.converged
    return thetas, not_converged


def _identifiable_resample(
    rng: np.random.Generator, n_params: FloatArray, tokens: FloatArray, n_runs: int
) -> NDArray[np.intp]:
    """A resample of run indices that still has ≥ 3 model sizes and ≥ 3 token counts."""
    for _ in range(1000):
        indices = rng.integers(0, n_runs, size=n_runs)
        if (
            count_distinct(n_params[indices]) >= MIN_DISTINCT_SIZES
            and count_distinct(tokens[indices]) >= MIN_DISTINCT_SIZES
        ):
            return indices
    raise ScalingFitError(
        "bootstrap resamples keep losing model sizes or token counts: too few runs per size"
    )


def _with_allocation(theta: FloatArray) -> dict[str, float]:
    params = _named_parameters(theta)
    params.update(
        compute_optimal_allocation(params["alpha"], params["beta"], params["A"], params["B"])
    )
    return params


def _identified(thetas: FloatArray) -> FloatArray:
    """The bootstrap refits whose five parameters are all finite."""
    finite = [
        theta
        for theta in thetas
        if all(math.isfinite(v) for v in _named_parameters(theta).values())
    ]
    return np.asarray(finite).reshape(-1, thetas.shape[1])


def _percentile_intervals(thetas: FloatArray, confidence: float) -> dict[str, list[float]]:
    samples = [_with_allocation(theta) for theta in thetas]
    tail = 100 * (1 - confidence) / 2
    intervals: dict[str, list[float]] = {}
    for name in (*PARAMETER_NAMES, *ALLOCATION_NAMES):
        values = np.asarray([sample[name] for sample in samples])
        values = values[np.isfinite(values)]
        if len(values) == 0:
            intervals[name] = [math.nan, math.nan]
            continue
        low, high = np.percentile(values, [tail, 100 - tail])
        intervals[name] = [float(low), float(high)]
    return intervals


def _fit_warnings(
    optimum: _Optimum,
    params: dict[str, float],
    bootstrap_not_converged: int,
    resamples: int,
    unidentified: int = 0,
) -> list[str]:
    warnings = []
    if not optimum.converged:
        warnings.append(
            f"L-BFGS did not converge: final gradient norm {optimum.grad_norm:.3g} > "
            f"{GRAD_TOL:g} (optimizer: {optimum.message}); treat the parameters as approximate"
        )
    for name in ("alpha", "beta"):
        if not 0.01 < params[name] < 3.0:
            warnings.append(
                f"{name} = {params[name]:.3g} is outside (0.01, 3): the loss barely follows a "
                f"power law in {'N' if name == 'alpha' else 'D'} on this grid"
            )
    if resamples and bootstrap_not_converged:
        warnings.append(
            f"{bootstrap_not_converged} of {resamples} bootstrap refits did not converge"
        )
    if unidentified:
        warnings.append(
            f"{unidentified} of {resamples} bootstrap refits did not identify the law (a "
            "coefficient ran off to infinity) and are left out of the intervals"
        )
    return warnings


def fit_scaling_law(
    N: ArrayLike,
    D: ArrayLike,
    L: ArrayLike,
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    n_starts: int | None = DEFAULT_N_STARTS,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3).

    N: non-embedding parameters, D: training tokens, L: validation loss, one entry per run.
    ``bootstrap`` resamples of the runs give percentile confidence intervals (0: none).
    ``n_starts`` L-BFGS starts are taken from the best points of the initialisation grid
    (None: every grid point, as Besiroglu et al. 2024 did).

    Returns a JSON-ready dict: ``E, A, B, alpha, beta`` (point estimates), ``a, b, G``
    (compute-optimal allocation), ``ci`` ({name: [lo, hi]}), and diagnostics ``converged``,
    ``objective``, ``grad_norm``, ``n_initialisations``, ``optimizer_message``, ``warnings``.
    Raises :class:`ScalingFitError` when the runs cannot identify the law.
    """
    n_params, tokens, losses = validate_runs(N, D, L)
    if bootstrap != 0 and bootstrap < MIN_BOOTSTRAP:
        raise ScalingFitError(
            f"bootstrap={bootstrap} resamples are too few for a {confidence:.0%} interval; "
            f"use 0 (no intervals) or at least {MIN_BOOTSTRAP}"
        )
    log_x = np.log(np.stack([n_params, tokens]))
    log_l = np.log(losses)
    intervals: dict[str, list[float]] = {}
    not_converged = unidentified = 0
    with _single_threaded_blas():
        optimum, starts, n_grid = _fit_theta(log_x, log_l, n_starts)
        if bootstrap:
            bootstrap_starts = [optimum.theta, *starts[:BOOTSTRAP_GRID_STARTS]]
            thetas, not_converged = _bootstrap_thetas(
                n_params, tokens, log_l, bootstrap_starts, bootstrap, seed
            )
            identified = _identified(thetas)
            unidentified = len(thetas) - len(identified)
            intervals = _percentile_intervals(identified, confidence)
    params = _with_allocation(optimum.theta)

    return {
        "model": "L(N, D) = E + A / N^alpha + B / D^beta",
        **params,
        "ci": intervals,
        "confidence": confidence,
        "converged": optimum.converged,
        "objective": optimum.objective,
        "grad_norm": optimum.grad_norm,
        "grad_tol": GRAD_TOL,
        "optimizer_message": optimum.message,
        "iterations": optimum.iterations,
        "n_initialisations": len(starts),
        "n_grid_points": n_grid,
        "huber_delta": HUBER_DELTA,
        "n_runs": len(losses),
        "bootstrap": {
            "resamples": bootstrap,
            "not_converged": not_converged,
            "unidentified": unidentified,
            "seed": seed,
            "method": "percentile bootstrap, resampling runs with replacement",
        },
        "warnings": _fit_warnings(optimum, params, not_converged, bootstrap, unidentified),
    }


def fitted_parameters(fit: dict[str, Any]) -> dict[str, float]:
    """The five law parameters of a :func:`fit_scaling_law` result."""
    return {name: float(fit[name]) for name in PARAMETER_NAMES}


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


# --------------------------------------------------------------------------------------------
# Results CSV
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingRuns:
    """The sweep's runs as arrays (one entry per CSV row)."""

    n_params: FloatArray
    tokens: FloatArray
    val_loss: FloatArray
    flops: FloatArray
    n_params_total: FloatArray
    wall_time_s: FloatArray
    flavour: tuple[str, ...]
    device: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.val_loss)


def _parse_float(text: str | None, line: int, column: str, required: bool) -> float:
    if text is None or text.strip() == "":
        if required:
            raise ScalingFitError(f"line {line}: column {column!r} is empty")
        return math.nan
    try:
        return float(text)
    except ValueError as err:
        raise ScalingFitError(f"line {line}: column {column!r} is not a number: {text!r}") from err


def read_results(results_csv: str | os.PathLike[str]) -> ScalingRuns:
    """Read the sweep's CSV (columns: see ``RESULTS_COLUMNS``; N, D and loss are required)."""
    path = Path(results_csv)
    if not path.is_file():
        raise ScalingFitError(f"results CSV not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ScalingFitError(
                f"{path} lacks column(s) {', '.join(missing)} (has: {reader.fieldnames})"
            )
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise ScalingFitError(f"{path} has a header but no runs")

    def column(name: str, required: bool = False) -> FloatArray:
        return np.asarray([_parse_float(row.get(name), line, name, required) for line, row in rows])

    return ScalingRuns(
        n_params=column("n_params_non_embedding", required=True),
        tokens=column("tokens", required=True),
        val_loss=column("val_loss", required=True),
        flops=column("flops"),
        n_params_total=column("n_params_total"),
        wall_time_s=column("wall_time_s"),
        flavour=tuple((row.get("flavour") or "").strip() for _, row in rows),
        device=tuple((row.get("device") or "").strip() for _, row in rows),
    )


# --------------------------------------------------------------------------------------------
# Report: fit.json, report.md, plots
# --------------------------------------------------------------------------------------------

PLOT_DPI = 120
MAX_LEGEND_GROUPS = 12
REPORT_BUDGET_MULTIPLIERS = (1, 10, 100)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same folder and rename it: never a half-written file."""
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.close(descriptor)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_text_atomically(path: Path, text: str) -> None:
    _write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


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
) -> dict[str, Any]:
    """Fit the sweep's CSV and write ``fit.json``, ``report.md`` and PNG plots into ``out_dir``.

    Each file is written through a temporary file and a rename; ``fit.json`` comes last, so
    its presence means the report is complete. Returns what ``fit.json`` holds.
    """
    runs = read_results(results_csv)
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
        "isoflop": isoflop_analysis(
            runs.n_params,
            runs.tokens,
            runs.val_loss,
            flops=runs.flops if complete_flops else None,
        ),
        "references": {
            "exponents": [dict(r) for r in REFERENCE_EXPONENTS],
            "chinchilla_parameters": dict(CHINCHILLA_PARAMETERS),
        },
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    content["files"] = {
        **write_plots(content, runs, out),
        "report": "report.md",
        "fit": "fit.json",
    }
    _write_text_atomically(out / "report.md", render_markdown(content))
    text = json.dumps(_json_ready(content), indent=2, allow_nan=False) + "\n"
    _write_text_atomically(out / "fit.json", text)
    return content


# --------------------------------------------------------------------------------------------
# Plots (matplotlib Figure objects rendered by Agg; pyplot's global state is never touched)
# --------------------------------------------------------------------------------------------


def _new_figure(n_panels: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * n_panels, 4.8), layout="constrained")
    axes = [figure.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    return figure, axes


def _save_figure(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    _write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=PLOT_DPI))


def _group_colours(count: int) -> list[Any]:
    from matplotlib import colormaps

    colormap = colormaps["viridis"]
    return [colormap(0.9 * i / max(1, count - 1)) for i in range(count)]


@dataclass(frozen=True)
class _LossPlotAxes:
    varied_label: str  # x axis
    varied_name: str  # for the title
    fixed_key: str  # key of the group's fixed value in the one-dimensional fits
    fixed_label: str  # legend title


def _plot_loss_against(
    path: Path,
    varied: FloatArray,
    fixed: FloatArray,
    losses: FloatArray,
    groups: list[dict[str, Any]],
    predict: Callable[[FloatArray, float], FloatArray],
    axes_spec: _LossPlotAxes,
) -> None:
    """Loss against one variable, one colour per value of the other, with the fitted curves."""
    figure, (axis,) = _new_figure()
    colours = _group_colours(len(groups))
    line = np.geomspace(varied.min() / 1.5, varied.max() * 1.5, 200)
    show_legend = len(groups) <= MAX_LEGEND_GROUPS
    for group, colour in zip(groups, colours, strict=True):
        indices = np.asarray(group["run_indices"])
        label = _human(group[axes_spec.fixed_key]) if show_legend else None
        axis.scatter(varied[indices], losses[indices], color=colour, s=22, zorder=3, label=label)
        fixed_value = float(np.exp(np.log(fixed[indices]).mean()))
        axis.plot(line, predict(line, fixed_value), color=colour, lw=1.4)
        if group.get("fit"):
            axis.plot(line, predict_loss_1d(group["fit"], line), color=colour, lw=0.9, ls=":")
    axis.set_xscale("log")
    axis.set_xlabel(axes_spec.varied_label)
    axis.set_ylabel("validation loss")
    axis.set_title(
        f"Loss vs {axes_spec.varied_name}: solid = 2-D law, dotted = 1-D law of each group",
        fontsize=10,
    )
    if show_legend:
        axis.legend(fontsize=8, title=axes_spec.fixed_label, title_fontsize=8)
    axis.grid(True, which="both", alpha=0.3)
    _save_figure(figure, path)


def _plot_residuals(path: Path, runs: ScalingRuns, residuals: dict[str, Any]) -> None:
    figure, axes = _new_figure(2)
    relative = 100 * np.asarray(residuals["relative_residuals"])
    panels = (
        (runs.n_params, runs.tokens, "non-embedding parameters N", "tokens D"),
        (runs.tokens, runs.n_params, "training tokens D", "parameters N"),
    )
    for axis, (x, colour_by, xlabel, colour_label) in zip(axes, panels, strict=True):
        points = axis.scatter(x, relative, c=np.log10(colour_by), cmap="viridis", s=22)
        figure.colorbar(points, ax=axis, label=f"log10 {colour_label}")
        axis.axhline(0.0, color="black", lw=0.8)
        axis.set_xscale("log")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("observed / fitted − 1  (%)")
        axis.grid(True, alpha=0.3)
    axes[0].set_title("Residuals of the 2-D law", fontsize=10)
    _save_figure(figure, path)


def _plot_isoflop_curves(axis: Any, curves: list[dict[str, Any]]) -> None:
    colours = _group_colours(len(curves))
    for curve, colour in zip(curves, colours, strict=True):
        n_params = np.asarray(curve["N"])
        label = f"C = {curve['compute']:.2g}"
        axis.scatter(n_params, curve["L"], color=colour, s=22, label=label)
        line = np.geomspace(n_params.min() / 1.3, n_params.max() * 1.3, 100)
        axis.plot(line, np.polyval(curve["parabola_ln_n"], np.log(line)), color=colour, lw=1.2)
        if curve["N_opt"] is not None:
            # Hollow: the minimum lies outside the sampled sizes and is not used for a.
            face = colour if curve["inside_range"] else "none"
            axis.scatter(
                [curve["N_opt"]],
                [curve["loss_min"]],
                marker="*",
                s=140,
                facecolor=face,
                edgecolor="black",
                zorder=4,
            )
    axis.set_xscale("log")
    axis.set_xlabel("non-embedding parameters N")
    axis.set_ylabel("validation loss")
    axis.set_title(
        "IsoFLOP curves: parabola in log N, ★ minimum (hollow: extrapolated)", fontsize=10
    )
    if len(curves) <= MAX_LEGEND_GROUPS:
        axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)


def _plot_isoflop_optima(axis: Any, isoflop: dict[str, Any], fit: dict[str, Any]) -> None:
    curves = isoflop["curves"]
    budgets = np.asarray([c["compute"] for c in curves])
    line = np.geomspace(budgets.min() / 3, budgets.max() * 3, 100)
    law_n_opt, _ = compute_optimal_model_and_data(fitted_parameters(fit), line)
    axis.plot(line, law_n_opt, color="black", lw=1.2, label=f"2-D law: N_opt ∝ C^{fit['a']:.3f}")
    used = [c for c in curves if c["N_opt"] is not None and c["inside_range"]]
    extrapolated = [c for c in curves if c["N_opt"] is not None and not c["inside_range"]]
    if used:
        compute = np.asarray([c["compute"] for c in used])
        axis.scatter(
            compute,
            [c["N_opt"] for c in used],
            marker="*",
            s=140,
            color="tab:orange",
            edgecolor="black",
            label="isoFLOP minima",
            zorder=3,
        )
        if isoflop["a"] is not None:
            intercept = np.mean(np.log([c["N_opt"] for c in used]) - isoflop["a"] * np.log(compute))
            axis.plot(
                line,
                np.exp(intercept) * line ** isoflop["a"],
                color="tab:orange",
                ls="--",
                lw=1.0,
                label=f"isoFLOP fit: N_opt ∝ C^{isoflop['a']:.3f}",
            )
    if extrapolated:
        axis.scatter(
            [c["compute"] for c in extrapolated],
            [c["N_opt"] for c in extrapolated],
            marker="*",
            s=140,
            facecolor="none",
            edgecolor="grey",
            label="extrapolated minima (not used)",
            zorder=3,
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel(f"compute C ({isoflop['compute_source']})")
    axis.set_ylabel("compute-optimal N")
    axis.legend(fontsize=8)
    axis.grid(True, which="both", alpha=0.3)


def _plot_isoflop(path: Path, isoflop: dict[str, Any], fit: dict[str, Any]) -> None:
    figure, (curves_axis, optimum_axis) = _new_figure(2)
    _plot_isoflop_curves(curves_axis, isoflop["curves"])
    _plot_isoflop_optima(optimum_axis, isoflop, fit)
    _save_figure(figure, path)


def write_plots(content: dict[str, Any], runs: ScalingRuns, out: Path) -> dict[str, str]:
    """PNG plots of the fit into ``out``; returns {plot name: file name}."""
    params = fitted_parameters(content)
    one_d = content["one_dimensional"]
    files = {"loss_vs_n": "loss_vs_n.png", "loss_vs_d": "loss_vs_d.png"}
    _plot_loss_against(
        out / files["loss_vs_n"],
        runs.n_params,
        runs.tokens,
        runs.val_loss,
        one_d["loss_vs_n"],
        lambda n, d: predict_loss(params, n, d),
        _LossPlotAxes("non-embedding parameters N", "model size", "D", "tokens D"),
    )
    _plot_loss_against(
        out / files["loss_vs_d"],
        runs.tokens,
        runs.n_params,
        runs.val_loss,
        one_d["loss_vs_d"],
        lambda d, n: predict_loss(params, n, d),
        _LossPlotAxes("training tokens D", "tokens", "N", "parameters N"),
    )
    files["residuals"] = "residuals.png"
    _plot_residuals(out / files["residuals"], runs, content["residuals"])
    if content["isoflop"]["curves"]:
        files["isoflop"] = "isoflop.png"
        _plot_isoflop(out / files["isoflop"], content["isoflop"], content)
    return files


# --------------------------------------------------------------------------------------------
# report.md and the CLI summary
# --------------------------------------------------------------------------------------------

PARAMETER_MEANINGS = {
    "E": "irreducible loss: what an infinitely large model trained on infinite data would reach",
    "A": "scale of the model-size term A/N^α",
    "B": "scale of the data term B/D^β",
    "alpha": "how fast the loss falls as the model grows (larger = faster)",
    "beta": "how fast the loss falls with more training tokens (larger = faster)",
    "a": "compute-optimal model size grows as C^a",
    "b": "compute-optimal token count grows as C^b",
    "G": "N_opt = G·(C/6)^a, D_opt = (C/6)^b / G",
}


def _human(value: float) -> str:
    """1.2e9 → '1.2B' for counts of parameters and tokens."""
    rounded = float(f"{value:.3g}")  # 999_999_999 is shown as 1B, not 1e+03M
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(rounded) >= threshold:
            return f"{rounded / threshold:.3g}{suffix}"
    return f"{rounded:.3g}"


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _interval(fit: dict[str, Any], name: str, digits: int = 4) -> str:
    interval = fit["ci"].get(name)
    if not interval:
        return "not computed (bootstrap = 0)"
    return f"[{_number(interval[0], digits)}, {_number(interval[1], digits)}]"


def _inside(fit: dict[str, Any], name: str, value: float) -> bool | None:
    interval = fit["ci"].get(name)
    if not interval or not all(math.isfinite(v) for v in interval):
        return None
    return interval[0] <= value <= interval[1]


def _percent(value: float) -> str:
    return f"{100 * value:.2g} %"


def _law_formula(fit: dict[str, Any]) -> str:
    return (
        f"L(N, D) = {_number(fit['E'])} + {_number(fit['A'])} / N^{_number(fit['alpha'], 3)}"
        f" + {_number(fit['B'])} / D^{_number(fit['beta'], 3)}"
    )


def _markdown_header(content: dict[str, Any]) -> list[str]:
    runs = content["runs"]
    flavours = ", ".join(f"{k} ({v})" for k, v in runs["flavours"].items())
    devices = ", ".join(f"{k} ({v})" for k, v in runs["devices"].items())
    converged = "yes" if content["converged"] else "**NO — see Convergence**"
    residuals = content["residuals"]
    return [
        "# CLOUD pretraining scaling law",
        "",
        f"Fitted from `{content['source_csv']}`: **{runs['n_runs']} runs**, "
        f"{runs['n_model_sizes']} model sizes ({_human(runs['N_range'][0])}–"
        f"{_human(runs['N_range'][1])} non-embedding parameters) × "
        f"{runs['n_token_counts']} token counts ({_human(runs['D_range'][0])}–"
        f"{_human(runs['D_range'][1])} tokens). Flavours: {flavours}. Devices: {devices}.",
        "",
        "## Summary",
        "",
        f"- Fitted law: `{_law_formula(content)}`, where N = non-embedding parameters, "
        "D = training tokens, L = validation loss.",
        f"- Compute-optimal allocation (C ≈ 6ND): model size N_opt ∝ C^**{content['a']:.3f}** "
        f"{_interval(content, 'a', 3)}, tokens D_opt ∝ C^**{content['b']:.3f}** "
        f"{_interval(content, 'b', 3)} ({content['confidence']:.0%} intervals).",
        f"- Optimiser converged: {converged}.",
        f"- Typical misfit: median |observed/fitted − 1| = "
        f"{_percent(residuals['median_abs_relative'])}, worst {_percent(residuals['max_abs_relative'])}.",
        "",
    ]


def _markdown_method(content: dict[str, Any]) -> list[str]:
    bootstrap = content["bootstrap"]
    intervals = (
        f"Confidence intervals ({content['confidence']:.0%}) come from {bootstrap['resamples']} "
        "bootstrap refits, each on the runs drawn with replacement (percentile intervals, "
        f"seed {bootstrap['seed']})."
        if bootstrap["resamples"]
        else "No bootstrap was run (`--bootstrap 0`), so there are no confidence intervals."
    )
    return [
        "## What was fitted",
        "",
        "The validation loss of each run is modelled as an irreducible part plus one term that "
        "shrinks as the model grows and one that shrinks with more training data:",
        "",
        "    L(N, D) = E + A / N^alpha + B / D^beta",
        "",
        'This is the parametric fit of Hoffmann et al. 2022 ("Chinchilla", approach 3). The '
        "fit works on log L, with log L̂ = LSE(log A − α log N, log B − β log D, log E), and "
        f"minimises a Huber loss (δ = {content['huber_delta']:g}) of the log residuals, which "
        "keeps single outlying runs from pulling the fit. The optimiser is L-BFGS, started from "
        f"the {content['n_initialisations']} best points of a grid of "
        f"{content['n_grid_points']} initialisations (Hoffmann's grid); the best end point is "
        "kept. Besiroglu et al. 2024 found that the original Chinchilla fit stopped before "
        "convergence, so here the tolerances are tight and the final gradient is checked.",
        "",
        intervals,
        "",
    ]


def _markdown_parameters(content: dict[str, Any]) -> list[str]:
    lines = [
        "## Parameters",
        "",
        f"| parameter | estimate | {content['confidence']:.0%} CI | meaning |",
        "|---|---|---|---|",
    ]
    for name in (*PARAMETER_NAMES, *ALLOCATION_NAMES):
        lines.append(
            f"| {name} | {_number(content[name])} | {_interval(content, name)} "
            f"| {PARAMETER_MEANINGS[name]} |"
        )
    return [*lines, ""]


def _reference_sentence(content: dict[str, Any], reference: dict[str, Any]) -> str:
    inside = _inside(content, "a", reference["a"])
    if inside is None:
        return "no interval to compare with"
    return "inside our interval for a" if inside else "outside our interval for a"


def _markdown_allocation(content: dict[str, Any]) -> list[str]:
    lines = [
        "## Compute-optimal allocation",
        "",
        "For a budget of C FLOPs (C ≈ 6·N·D), the law's minimum over N and D is at",
        "",
        "    N_opt = G · (C/6)^a,  D_opt = (C/6)^b / G,  a = beta/(alpha+beta), b = alpha/(alpha+beta)",
        "",
        "| source | a (N_opt ∝ C^a) | b (D_opt ∝ C^b) | reference a vs this fit |",
        "|---|---|---|---|",
        f"| **this fit** | **{content['a']:.3f}** {_interval(content, 'a', 3)} "
        f"| **{content['b']:.3f}** {_interval(content, 'b', 3)} | |",
    ]
    for reference in content["references"]["exponents"]:
        lines.append(
            f"| {reference['source']} | {reference['a']:.2f} | {reference['b']:.2f} "
            f"| {_reference_sentence(content, reference)} |"
        )
    lines += [
        "",
        "The references are context, not targets: they come from other data (natural language "
        "for Chinchilla and its replication), other tokenisers and other model sizes.",
        "",
        "Compute-optimal runs predicted by the law (budgets beyond the sweep are extrapolations):",
        "",
        "| budget C (FLOPs) | N_opt | D_opt | tokens per parameter | predicted loss |",
        "|---|---|---|---|---|",
    ]
    for row in content["allocation_table"]:
        note = " (largest in sweep)" if row["multiplier"] == 1 else f" (×{row['multiplier']})"
        lines.append(
            f"| {row['compute']:.3g}{note} | {_human(row['N_opt'])} | {_human(row['D_opt'])} "
            f"| {row['tokens_per_parameter']:.3g} | {row['loss']:.4g} |"
        )
    return [*lines, ""]


def _markdown_convergence(content: dict[str, Any]) -> list[str]:
    bootstrap = content["bootstrap"]
    status = "converged" if content["converged"] else "**did not converge**"
    lines = [
        "## Convergence",
        "",
        f"- Point fit: {status}. Largest gradient component (objective per run and per δ) "
        f"{content['grad_norm']:.2g}, threshold {content['grad_tol']:g}; "
        f"{content['iterations']} L-BFGS iterations; optimiser message: "
        f'"{content["optimizer_message"]}".',
        f"- Objective (sum of Huber losses over runs): {content['objective']:.6g}.",
        f"- Starts: {content['n_initialisations']} L-BFGS runs from the best of "
        f"{content['n_grid_points']} grid points.",
    ]
    if bootstrap["resamples"]:
        lines.append(
            f"- Bootstrap: {bootstrap['resamples']} refits, "
            f"{bootstrap['not_converged']} did not converge, "
            f"{bootstrap.get('unidentified', 0)} did not identify the law (left out)."
        )
    return [*lines, ""]


def _markdown_residuals(content: dict[str, Any]) -> list[str]:
    residuals = content["residuals"]
    runs = content["runs"]
    lines = [
        "## Residuals",
        "",
        f"RMS of log(observed/fitted): {residuals['rms_log']:.3g}; median |observed/fitted − 1|: "
        f"{_percent(residuals['median_abs_relative'])}; largest: "
        f"{_percent(residuals['max_abs_relative'])}. Runs the law fits worst:",
        "",
        "| run (CSV data row) | N | D | observed loss | fitted loss | observed/fitted − 1 |",
        "|---|---|---|---|---|---|",
    ]
    for index in residuals["worst_runs"][: min(5, runs["n_runs"])]:
        lines.append(
            f"| {index + 1} | {_human(residuals['N'][index])} | {_human(residuals['D'][index])} "
            f"| {residuals['observed'][index]:.4g} "
            f"| {residuals['predicted'][index]:.4g} "
            f"| {100 * residuals['relative_residuals'][index]:+.2f} % |"
        )
    lines += [
        "",
        "Residuals that trend with N or D (see the residual plot) mean the functional form "
        "misses something, e.g. an under-trained small model or a learning-rate schedule "
        "that was not tuned per size; scattered residuals are run-to-run noise.",
        "",
    ]
    return lines


def _markdown_one_dimensional(content: dict[str, Any]) -> list[str]:
    lines = [
        "## One-dimensional laws",
        "",
        "Each group of runs that shares a token count (or a model size) is fitted on its own "
        "with L = E' + A'/x^k. At fixed D, E' = E + B/D^β absorbs the data term and k "
        f"estimates α (2-D fit: {content['alpha']:.3f}); at fixed N, k estimates β (2-D fit: "
        f"{content['beta']:.3f}). Exponents that drift across groups hint that the 2-D form "
        "is too simple for the sweep.",
        "",
    ]
    sections = (
        ("loss_vs_n", "D", "Loss vs model size at fixed tokens", "tokens D", "α"),
        ("loss_vs_d", "N", "Loss vs tokens at fixed model size", "parameters N", "β"),
    )
    for key, fixed_key, title, fixed_label, symbol in sections:
        lines += [
            f"{title}:",
            "",
            f"| {fixed_label} | runs | E' | A' | k (estimates {symbol}) | converged |",
            "|---|---|---|---|---|---|",
        ]
        for group in content["one_dimensional"][key]:
            fit = group["fit"]
            if fit is None:
                lines.append(
                    f"| {_human(group[fixed_key])} | {group['n_runs']} | – | – | – "
                    f"| skipped: {group['skipped']} |"
                )
                continue
            lines.append(
                f"| {_human(group[fixed_key])} | {group['n_runs']} | {_number(fit['E'])} "
                f"| {_number(fit['A'])} | {fit['exponent']:.3f} "
                f"| {'yes' if fit['converged'] else 'no'} |"
            )
        lines.append("")
    return lines


def _markdown_isoflop(content: dict[str, Any]) -> list[str]:
    isoflop = content["isoflop"]
    lines = ["## IsoFLOP view", ""]
    if not isoflop["curves"]:
        return [
            *lines,
            "Not available: no compute budget has runs of at least "
            f"{MIN_DISTINCT_SIZES} model sizes (runs within {isoflop['rel_tol']:.0%} of the same "
            f"compute, from {isoflop['compute_source']}, count as one budget). A sweep that "
            "trains several sizes at each of a few fixed budgets enables this independent "
            "check (Hoffmann's approach 2).",
            "",
        ]
    lines += [
        f"Runs within {isoflop['rel_tol']:.0%} of the same compute ({isoflop['compute_source']}) "
        "form one isoFLOP curve; a parabola in log N through each curve gives the model size "
        "with the lowest loss for that budget.",
        "",
        "| compute C | model sizes | N_opt (parabola) | loss at N_opt | minimum inside sampled sizes |",
        "|---|---|---|---|---|",
    ]
    for curve in isoflop["curves"]:
        if curve["N_opt"] is None:
            lines.append(
                f"| {curve['compute']:.3g} | {len(curve['N'])} | – | – | {curve['skipped']} |"
            )
            continue
        inside = "yes" if curve["inside_range"] else "no (extrapolated; not used)"
        lines.append(
            f"| {curve['compute']:.3g} | {len(curve['N'])} | {_human(curve['N_opt'])} "
            f"| {curve['loss_min']:.4g} | {inside} |"
        )
    lines.append("")
    if isoflop["a"] is not None:
        lines.append(
            f"Slope of log N_opt against log C over {isoflop['n_minima_used']} budgets: "
            f"a = {isoflop['a']:.3f} (so b = {isoflop['b']:.3f}), to compare with "
            f"a = {content['a']:.3f} from the 2-D law."
        )
    else:
        lines.append(
            "Fewer than two budgets have a minimum inside their sampled sizes, so no exponent "
            "is estimated from the isoFLOP curves."
        )
    return [*lines, ""]


def _interpretation(content: dict[str, Any]) -> list[str]:
    alpha, beta, a, b = content["alpha"], content["beta"], content["a"], content["b"]
    largest = content["largest_run"]
    reducible = largest["model_term"] + largest["data_term"]
    bigger = "model size" if largest["model_term"] > largest["data_term"] else "training data"
    sentences = [
        f"- Loss floor: even with unlimited parameters and data the law levels off at "
        f"E ≈ {content['E']:.3g} {_interval(content, 'E', 3)}.",
        f"- Doubling the model removes {1 - 2**-alpha:.0%} of the model-size term; doubling "
        f"the tokens removes {1 - 2**-beta:.0%} of the data term.",
        f"- At the largest run of the sweep (N = {_human(largest['N'])}, D = "
        f"{_human(largest['D'])}) the loss splits into E = {largest['E']:.3g}, model-size term "
        f"{largest['model_term']:.3g} and data term {largest['data_term']:.3g}: of the "
        f"{reducible:.3g} still reducible, most is due to limited {bigger}.",
        f"- Growing the compute budget 10×, the law says to grow the model ×{10**a:.2g} and the "
        f"data ×{10**b:.2g}"
        + (
            " — data should grow faster than the model."
            if a < b
            else " — the model should grow at least as fast as the data."
        ),
    ]
    insides = [
        (reference["source"], _inside(content, "a", reference["a"]))
        for reference in content["references"]["exponents"]
    ]
    if all(inside is not None for _, inside in insides):
        agree = [source for source, inside in insides if inside]
        sentences.append(
            "- Within the uncertainty, the exponent a agrees with: "
            + ("; ".join(agree) if agree else "none of the references")
            + "."
        )
    if content["warnings"]:
        sentences.append("- Caveats from the fit: " + " ".join(content["warnings"]))
    sentences.append(
        "- Budgets beyond the sweep are extrapolations: the further from the sampled sizes, "
        "the less the confidence intervals (which only reflect run-to-run scatter) cover."
    )
    return ["## Interpretation", "", *sentences, ""]


def _markdown_plots(content: dict[str, Any]) -> list[str]:
    captions = {
        "loss_vs_n": "Loss vs model size, one colour per token count",
        "loss_vs_d": "Loss vs training tokens, one colour per model size",
        "residuals": "Residuals of the 2-D law",
        "isoflop": "IsoFLOP curves and their minima",
    }
    lines = ["## Plots", ""]
    for key, caption in captions.items():
        if key in content["files"]:
            lines += [f"### {caption}", "", f"![{caption}]({content['files'][key]})", ""]
    return lines


def render_markdown(content: dict[str, Any]) -> str:
    """report.md: readable on its own, without opening any code."""
    sections = [
        _markdown_header(content),
        _markdown_method(content),
        _markdown_parameters(content),
        _markdown_allocation(content),
        _markdown_convergence(content),
        _markdown_residuals(content),
        _markdown_one_dimensional(content),
        _markdown_isoflop(content),
        _interpretation(content),
        _markdown_plots(content),
    ]
    if content["warnings"]:
        sections.insert(1, ["> **Warnings:** " + " ".join(content["warnings"]), ""])
    return "\n".join(line for section in sections for line in section)


def format_summary(content: dict[str, Any], out_dir: str | os.PathLike[str] | None = None) -> str:
    """A few lines for the terminal: parameters with intervals, a and b, where the report is."""
    lines = [f"Scaling law from {content['n_runs']} runs: {_law_formula(content)}"]
    for name in (*PARAMETER_NAMES, *ALLOCATION_NAMES):
        interval = content["ci"].get(name)
        shown = f"  {content['confidence']:.0%} CI {_interval(content, name)}" if interval else ""
        lines.append(f"  {name:>5} = {_number(content[name]):<10}{shown}")
    lines.append(
        f"Compute-optimal: N_opt ∝ C^{content['a']:.3f}, D_opt ∝ C^{content['b']:.3f} "
        "(CLOUD paper ≈ 0.45/0.55, Chinchilla ≈ 0.46/0.54)"
    )
    lines.append("Converged: " + ("yes" if content["converged"] else "NO"))
    lines += [f"Warning: {warning}" for warning in content["warnings"]]
    if out_dir is not None:
        lines.append(f"Report: {Path(out_dir) / 'report.md'} (data in fit.json)")
    return "\n".join(lines)
