"""Debye-model heat capacity and internal energy in pure PyTorch, differentiable in θ and T.

Units: temperatures θ_D and T in kelvin; heat capacities in J/(mol K) and energies in J/mol, per
mole of cells when ``n_atoms`` is the number of atoms per cell (the ``*_per_atom`` helpers give
per mole of atoms). All functions broadcast their arguments (use ``theta[:, None]`` and a 1-D ``T``
for a materials × temperatures table) and accept floats, NumPy arrays or tensors; Python floats
take ``torch.get_default_dtype()``, half precisions are computed in float32 and cast back.

With y = θ/T the model is
    C_v = 9 n R (T/θ)³ ∫₀^y x⁴eˣ/(eˣ−1)² dx = 3 n R c(y),
    U   = 9 n R T (T/θ)³ ∫₀^y x³/(eˣ−1) dx + (9/8) n R θ = 3 n R T d(y) + (9/8) n R θ,
where c(y) and d(y) (the Debye function D₃) are the reduced integrals, both 1 at y = 0.

The released CLOUD code used 20 Gauss–Legendre points on [0, y]; that is off by more than 1e-6
beyond y ≈ 50, by 2.5e-4 at y = 100, and overflows to NaN for larger y (eˣ in the integrand).
Here the reduced integrals are evaluated in three regimes, each to double precision:
  * y < 3: their Taylor series in y (Bernoulli numbers, radius of convergence 2π);
  * 3 ≤ y < 64: the closed-form full integrals (π⁴/15, 4π⁴/15) minus the tail Σ_k e^{−ky}·poly;
  * y ≥ 64 (and T = 0): the T³ law written in t = T/θ (the neglected tail is < 1e-17 relative),
    so T = 0 and huge θ/T give exact values and finite gradients.
Each regime is evaluated only on its own elements, so no discarded branch can leak NaN into
values or gradients.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch

__all__ = [
    "GAS_CONSTANT",
    "debye_integral_cv",
    "debye_integral_u",
    "debye_theta_fit",
    "heat_capacity",
    "heat_capacity_per_atom",
    "internal_energy",
    "internal_energy_per_atom",
]

GAS_CONSTANT = 8.314462618  # J/(mol K) = N_A k_B (the released code used 8.314)

_SERIES_MAX_Y = 3.0  # below: Taylor series; (3/2π)² ≈ 0.23 per term, 26 terms reach 1e-17
_SERIES_TERMS = 26
_DEEP_MIN_Y = 64.0  # from here: pure T³ law; the neglected tail is < 1e-17 relative
_TAIL_TERMS = 14  # e^{−3·15} ≈ 3e-20: enough for every y in the tail regime
_PI4 = math.pi**4

Tensorish = torch.Tensor | float | int


@lru_cache(maxsize=1)
def _bernoulli_numbers(count: int) -> tuple[Fraction, ...]:
    """B_0 … B_{count−1} (convention B_1 = −1/2), exact, by the standard recurrence."""
    numbers: list[Fraction] = [Fraction(1)]
    for m in range(1, count):
        total = sum(math.comb(m + 1, k) * numbers[k] for k in range(m))
        numbers.append(-total / (m + 1))
    return tuple(numbers)


@lru_cache(maxsize=1)
def _series_coefficients() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients in powers of y² of the even parts of d(y) and of c(y).

    x/(eˣ−1) = Σ B_k x^k/k! gives d(y) = 1 − 3y/8 + Σ_j 3 B_2j y^2j / ((2j)! (2j+3)) and, from
    x²eˣ/(eˣ−1)² = Σ (1−k) B_k x^k/k!, c(y) = Σ_j 3 (1−2j) B_2j y^2j / ((2j)! (2j+3)).
    """
    bernoulli = _bernoulli_numbers(2 * _SERIES_TERMS)
    energy, heat = [], []
    for j in range(_SERIES_TERMS):
        base = 3 * bernoulli[2 * j] / (math.factorial(2 * j) * (2 * j + 3))
        energy.append(float(base))
        heat.append(float((1 - 2 * j) * base))
    return tuple(energy), tuple(heat)


def _horner(coefficients: tuple[float, ...], z: torch.Tensor) -> torch.Tensor:
    """Σ_i coefficients[i] z^i (one 1-D pass per polynomial: much faster than a stacked one)."""
    result = torch.full_like(z, coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        result = result * z + coefficient
    return result


def _reduced_series(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(y), c(y)) for 0 ≤ y < 3 from their Taylor series."""
    energy_coefficients, heat_coefficients = _series_coefficients()
    y2 = y * y
    return _horner(energy_coefficients, y2) - 0.375 * y, _horner(heat_coefficients, y2)


@lru_cache(maxsize=1)
def _tail_coefficients() -> tuple[tuple[float, ...], ...]:
    """For p = 0…4, the coefficients 1/k^p (k = 1…K) of S_p(q) = Σ_k q^k / k^p."""
    return tuple(
        tuple(0.0 if k == 0 else 1.0 / k**p for k in range(_TAIL_TERMS + 1)) for p in range(5)
    )


def _reduced_tail(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(y), c(y)) for y ≥ 3: the full integral minus its tail, both scaled by 3/y³.

    The tails ∫_y^∞ x³/(eˣ−1) and ∫_y^∞ x⁴eˣ/(eˣ−1)² are Σ_k e^{−ky}·poly(y, 1/k); with
    q = e^{−y} they reduce to S_p = Σ_k q^k / k^p, p = 0…4, summed by Horner in q. Only inverse
    powers of y appear, so huge y cannot overflow.
    """
    q = torch.exp(-y)
    s0, s1, s2, s3, s4 = (_horner(coefficients, q) for coefficients in _tail_coefficients())
    inv_y = 1.0 / y
    inv_y3 = inv_y * inv_y * inv_y
    energy_tail = s1 + inv_y * (3 * s2 + inv_y * (6 * s3 + 6 * inv_y * s4))
    heat_tail = y * s0 + 4 * s1 + inv_y * (12 * s2 + inv_y * (24 * s3 + 24 * inv_y * s4))
    return (_PI4 / 5) * inv_y3 - 3 * energy_tail, (4 * _PI4 / 5) * inv_y3 - 3 * heat_tail


def _regime_indices(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat indices of the series (y < 3), tail (3 ≤ y < 64) and T³-law (y ≥ 64) regimes."""
    in_series = y < _SERIES_MAX_Y
    in_deep = y >= _DEEP_MIN_Y
    in_tail = ~(in_series | in_deep)
    return tuple(mask.nonzero().squeeze(-1) for mask in (in_series, in_tail, in_deep))


def _reduced_integrals(
    theta: torch.Tensor, temperature: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T·d(θ/T), c(θ/T)) for θ, T of one shape; the T³ law is written in t = T/θ."""
    shape = theta.shape
    theta_flat, temperature_flat = theta.reshape(-1), temperature.reshape(-1)
    with torch.no_grad():
        series, tail, deep = _regime_indices(theta_flat / temperature_flat)  # T = 0 → y = inf

    series_t = temperature_flat[series]
    series_energy, series_heat = _reduced_series(theta_flat[series] / series_t)
    tail_t = temperature_flat[tail]
    tail_energy, tail_heat = _reduced_tail(theta_flat[tail] / tail_t)
    deep_t = temperature_flat[deep]
    deep_t3 = (deep_t / theta_flat[deep]) ** 3

    order = torch.cat([series, tail, deep])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    t_times_energy = torch.cat(
        [series_t * series_energy, tail_t * tail_energy, (_PI4 / 5) * deep_t * deep_t3]
    )[inverse]
    heat = torch.cat([series_heat, tail_heat, (4 * _PI4 / 5) * deep_t3])[inverse]
    return t_times_energy.reshape(shape), heat.reshape(shape)


def _as_tensors(*values: Tensorish) -> tuple[list[torch.Tensor], torch.dtype]:
    """Broadcast to one device and compute dtype; returns the tensors and the dtype to return.

    Floats get the default dtype; float16/bfloat16 are computed in float32 (e^{−y} and y⁻³
    under- and overflow there).
    """
    # Arrays (NumPy and the like) keep their dtype; bare Python numbers do not have one.
    values = tuple(
        torch.as_tensor(v) if hasattr(v, "dtype") and not isinstance(v, torch.Tensor) else v
        for v in values
    )
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    result_dtype = torch.get_default_dtype()
    if floating:
        result_dtype = floating[0]
        for other in floating[1:]:
            result_dtype = torch.promote_types(result_dtype, other)
    compute_dtype = torch.promote_types(result_dtype, torch.float32)
    # Scalars such as n_atoms may live on the CPU while θ is on an accelerator.
    devices = [t.device for t in tensors]
    device = next((d for d in devices if d.type != "cpu"), devices[0] if devices else None)
    converted = [torch.as_tensor(v, dtype=compute_dtype, device=device) for v in values]
    return list(torch.broadcast_tensors(*converted)), result_dtype


def _check_domain(theta: torch.Tensor, temperature: torch.Tensor) -> None:
    with torch.no_grad():
        bad_theta = ~(torch.isfinite(theta) & (theta > 0))
        if bool(bad_theta.any()):
            example = theta[bad_theta].flatten()[0].item()
            raise ValueError(
                "theta (Debye temperature, K) must be finite and > 0; "
                f"{int(bad_theta.sum())} value(s) are not, e.g. {example}"
            )
        bad_t = ~(torch.isfinite(temperature) & (temperature >= 0))
        if bool(bad_t.any()):
            example = temperature[bad_t].flatten()[0].item()
            raise ValueError(
                "T (temperature, K) must be finite and >= 0; "
                f"{int(bad_t.sum())} value(s) are not, e.g. {example}"
            )


def _debye_per_atom(
    theta: Tensorish, temperature: Tensorish, n_atoms: Tensorish, validate: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype]:
    """(θ, n, T·d(y), c(y), result dtype), broadcast to one shape."""
    (theta_t, temperature_t, atoms), result_dtype = _as_tensors(theta, temperature, n_atoms)
    if validate:
        _check_domain(theta_t, temperature_t)
    t_times_energy, heat = _reduced_integrals(theta_t, temperature_t)
    return theta_t, atoms, t_times_energy, heat, result_dtype


def heat_capacity(
    theta: Tensorish, T: Tensorish, n_atoms: Tensorish, *, validate: bool = True
) -> torch.Tensor:
    """Debye C_v = 9 n R (T/θ)³ ∫₀^{θ/T} x⁴eˣ/(eˣ−1)² dx in J/(mol K) per mole of cells.

    θ and T in kelvin (θ > 0, T >= 0; C_v(T = 0) = 0), n_atoms atoms per cell; all broadcast.
    ``validate=False`` skips the domain check (and its host sync) for trusted inputs.
    """
    _, atoms, _, heat, dtype = _debye_per_atom(theta, T, n_atoms, validate)
    return (3 * GAS_CONSTANT * atoms * heat).to(dtype)


def internal_energy(
    theta: Tensorish, T: Tensorish, n_atoms: Tensorish, *, validate: bool = True
) -> torch.Tensor:
    """Debye U = 9 n R T (T/θ)³ ∫₀^{θ/T} x³/(eˣ−1) dx + (9/8) n R θ in J/mol per mole of cells.

    θ and T in kelvin (θ > 0, T >= 0; U(T = 0) is the zero-point energy), n_atoms atoms per cell.
    """
    theta_t, atoms, t_times_energy, _, dtype = _debye_per_atom(theta, T, n_atoms, validate)
    return (GAS_CONSTANT * atoms * (3 * t_times_energy + (9 / 8) * theta_t)).to(dtype)


def heat_capacity_per_atom(
    theta: Tensorish, T: Tensorish, *, validate: bool = True
) -> torch.Tensor:
    """Debye C_v in J/(mol K) per mole of atoms; θ (K) > 0 and T (K) >= 0, broadcast together."""
    return heat_capacity(theta, T, 1.0, validate=validate)


def internal_energy_per_atom(
    theta: Tensorish, T: Tensorish, *, validate: bool = True
) -> torch.Tensor:
    """Debye U in J/mol per mole of atoms, including the zero-point (9/8) R θ; θ, T in K."""
    return internal_energy(theta, T, 1.0, validate=validate)


def _debye_integral(y: Tensorish, column: int, full_integral: float) -> torch.Tensor:
    (y_t,), dtype = _as_tensors(y)
    if bool((y_t < 0).any()) or not bool(torch.isfinite(y_t).all()):
        raise ValueError("y = θ/T must be finite and >= 0")
    # θ = y at T = 1 reuses the reduced integrals; past y = 64 the integral is the full one.
    reduced = _reduced_integrals(y_t, torch.ones_like(y_t))[column]
    integral = torch.where(
        y_t < _DEEP_MIN_Y, reduced * y_t.clamp(max=_DEEP_MIN_Y) ** 3 / 3, full_integral
    )
    return integral.to(dtype)


def debye_integral_u(y: Tensorish) -> torch.Tensor:
    """∫₀^y x³/(eˣ−1) dx (dimensionless) for finite y >= 0; → π⁴/15 as y → ∞."""
    return _debye_integral(y, 0, _PI4 / 15)


def debye_integral_cv(y: Tensorish) -> torch.Tensor:
    """∫₀^y x⁴eˣ/(eˣ−1)² dx (dimensionless) for finite y >= 0; → 4π⁴/15 as y → ∞."""
    return _debye_integral(y, 1, 4 * _PI4 / 15)


def _sum_squared_error(
    log_theta: torch.Tensor,
    temperature: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    atoms: torch.Tensor,
) -> torch.Tensor:
    """Σ_T w (C_v(e^log_theta, T) − target)²; temperatures on the last axis of the others."""
    model = heat_capacity(
        torch.exp(log_theta).unsqueeze(-1), temperature, atoms.unsqueeze(-1), validate=False
    )
    return (weight * (model - target) ** 2).sum(-1)


def debye_theta_fit(
    T: Tensorish,
    cv: Tensorish,
    n_atoms: Tensorish,
    *,
    theta_min: float = 1.0,
    theta_max: float = 1.0e5,
    grid_points: int = 48,
    iterations: int = 40,
) -> torch.Tensor:
    """Oracle Debye fit: per material, the θ_D (K) minimising Σ_T (C_v^Debye(θ, T) − cv)².

    T (K, >= 0) has the temperatures on its last axis; cv (J/(mol K) per mole of cells) is shaped
    batch + (n_T,) and broadcasts with T; n_atoms (atoms per cell) broadcasts with the batch
    shape. NaN entries of cv are ignored. A log-spaced grid over [theta_min, theta_max] brackets
    the best θ, then golden-section search on log θ refines it to ~1e-9 relative. Computed in
    float64 without gradients; returns θ with the batch shape (cv's dtype when cv is a floating
    tensor). A θ at a bound means the best fit lies outside [theta_min, theta_max].
    """
    target = torch.as_tensor(cv, dtype=torch.float64)
    temperature, target = torch.broadcast_tensors(
        torch.as_tensor(T, dtype=torch.float64, device=target.device), target
    )
    if not bool((torch.isfinite(temperature) & (temperature >= 0)).all()):
        raise ValueError("T (temperature, K) must be finite and >= 0 for the Debye fit")
    if not 0 < theta_min < theta_max < math.inf:
        raise ValueError(f"need 0 < theta_min < theta_max, got {theta_min}, {theta_max}")
    device = target.device
    batch_shape = target.shape[:-1]
    atoms = torch.as_tensor(n_atoms, dtype=torch.float64, device=device).expand(batch_shape)
    weight = torch.isfinite(target).to(torch.float64)
    target = torch.nan_to_num(target, nan=0.0, posinf=0.0, neginf=0.0)

    def error_at(log_theta: torch.Tensor) -> torch.Tensor:
        return _sum_squared_error(log_theta, temperature, target, weight, atoms)

    with torch.no_grad():
        grid = torch.linspace(
            math.log(theta_min),
            math.log(theta_max),
            grid_points,
            dtype=torch.float64,
            device=device,
        )
        grid_error = _sum_squared_error(
            grid.expand(*batch_shape, grid_points),
            temperature.unsqueeze(-2),
            target.unsqueeze(-2),
            weight.unsqueeze(-2),
            atoms.unsqueeze(-1),
        )
        best = grid_error.argmin(-1)
        low = grid[(best - 1).clamp(min=0)]
        high = grid[(best + 1).clamp(max=grid_points - 1)]

        inv_phi = (math.sqrt(5) - 1) / 2
        inner_low = high - inv_phi * (high - low)
        inner_high = low + inv_phi * (high - low)
        error_low, error_high = error_at(inner_low), error_at(inner_high)
        for _ in range(iterations):
            keep_left = error_low <= error_high  # the minimum lies in [low, inner_high]
            high = torch.where(keep_left, inner_high, high)
            low = torch.where(keep_left, low, inner_low)
            probe = torch.where(
                keep_left, high - inv_phi * (high - low), low + inv_phi * (high - low)
            )
            probe_error = error_at(probe)
            inner_high, error_high, inner_low, error_low = (
                torch.where(keep_left, inner_low, probe),
                torch.where(keep_left, error_low, probe_error),
                torch.where(keep_left, probe, inner_high),
                torch.where(keep_left, probe_error, error_high),
            )
        theta = torch.exp((low + high) / 2)
    if isinstance(cv, torch.Tensor) and cv.is_floating_point():
        return theta.to(cv.dtype)
    return theta
