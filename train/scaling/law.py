"""The two-dimensional law L(N, D) = E + A/N^α + B/D^β: input checks, the Huber / log-sum-exp
objective, the L-BFGS fit from a grid of starts, the bootstrap and the compute-optimal allocation."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Iterator, Sequence
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


def _percentile_interval(values: ArrayLike, confidence: float) -> list[float] | None:
    """The central ``confidence`` percentile interval of the finite ``values``; None if none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if len(finite) == 0:
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(v) for v in np.percentile(finite, [tail, 100 - tail])]


def _percentile_intervals(thetas: FloatArray, confidence: float) -> dict[str, list[float]]:
    samples = [_with_allocation(theta) for theta in thetas]
    intervals: dict[str, list[float]] = {}
    for name in (*PARAMETER_NAMES, *ALLOCATION_NAMES):
        interval = _percentile_interval([sample[name] for sample in samples], confidence)
        intervals[name] = interval or [math.nan, math.nan]
    return intervals


def _prediction_at(
    theta: FloatArray, thetas: FloatArray, n_params: float, tokens: float, confidence: float
) -> dict[str, Any]:
    """The law's loss at (N, D), with the percentile interval of the bootstrap refits."""
    loss = float(predict_loss(_named_parameters(theta), n_params, tokens))
    samples = [predict_loss(_named_parameters(t), n_params, tokens) for t in thetas]
    interval = _percentile_interval(samples, confidence) or []
    return {"N": float(n_params), "D": float(tokens), "loss": loss, "ci": interval}


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
    predict_at: Sequence[tuple[float, float]] = (),
) -> dict[str, Any]:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3).

    N: non-embedding parameters, D: training tokens, L: validation loss, one entry per run.
    ``bootstrap`` resamples of the runs give percentile confidence intervals (0: none).
    ``n_starts`` L-BFGS starts are taken from the best points of the initialisation grid
    (None: every grid point, as Besiroglu et al. 2024 did).

    Returns a JSON-ready dict: ``E, A, B, alpha, beta`` (point estimates), ``a, b, G``
    (compute-optimal allocation), ``ci`` ({name: [lo, hi]}), ``predictions`` (one
    ``{N, D, loss, ci}`` per point of ``predict_at``, the interval from the same bootstrap
    refits), and diagnostics ``converged``, ``objective``, ``grad_norm``,
    ``n_initialisations``, ``optimizer_message``, ``warnings``.
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
    identified = np.empty((0, 5))
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
    predictions = [
        _prediction_at(optimum.theta, identified, n, d, confidence) for n, d in predict_at
    ]

    return {
        "model": "L(N, D) = E + A / N^alpha + B / D^beta",
        **params,
        "ci": intervals,
        "predictions": predictions,
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
