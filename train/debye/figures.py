"""The figures of a run: MAE against temperature, per-material curves, θ parity."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from train.debye.context import RunContext
from train.debye.evaluation import MethodCurves
from train.debye.methods import oracle_theta
from train.debye.options import SINGLE_TEMPERATURE

_STYLES: dict[str, dict[str, Any]] = {
    "cloud_debye": {"color": "C0", "linestyle": "-"},
    "cloud_debye_single": {"color": "C1", "linestyle": "-."},
    "constant": {"color": "C7", "linestyle": ":"},
    "oracle": {"color": "C2", "linestyle": "--"},
    "oracle_300": {"color": "C4", "linestyle": (0, (1, 1))},
    "direct": {"color": "C3", "marker": "*", "markersize": 12, "linestyle": "none"},
}
_SHORT_LABELS = {
    "cloud_debye": "CLOUD-DEBYE",
    "cloud_debye_single": "CLOUD-DEBYE (300 K)",
    "constant": "constant θ",
    "oracle": "oracle fit",
    "oracle_300": "oracle θ @300 K",
    "direct": "direct MLP (300 K)",
}


def write_figures(
    directory: Path,
    context: RunContext,
    methods: Sequence[MethodCurves],
    metrics: Mapping[str, Any],
) -> list[Path]:
    """mae_vs_temperature.png, curves.png (six test materials), theta_parity.png."""
    import matplotlib

    matplotlib.use("Agg")
    directory.mkdir(parents=True, exist_ok=True)
    paths = [
        directory / "mae_vs_temperature.png",
        directory / "curves.png",
        directory / "theta_parity.png",
    ]
    plot_mae_vs_temperature(paths[0], context, metrics)
    plot_material_curves(paths[1], context, methods)
    plot_theta_parity(paths[2], context, methods)
    return paths


def _save_figure(figure: Any, path: Path, dpi: int) -> None:
    """Save a PNG atomically and close the figure."""
    import matplotlib.pyplot as plt

    from train.common.files import atomic_write

    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=dpi, format="png"))
    plt.close(figure)


def plot_mae_vs_temperature(path: Path, context: RunContext, metrics: Mapping[str, Any]) -> None:
    """Test MAE per atom of C_v and U against T, one line per method (direct: one point)."""
    import matplotlib.pyplot as plt

    T = np.asarray(context.eval_grid)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, entry in metrics["methods"].items():
        for axis, quantity in zip(axes, ("cv", "u"), strict=True):
            if entry.get(quantity) is None:
                continue
            values = entry[quantity]["mae_vs_T_per_atom"]
            values = np.array([np.nan if v is None else v for v in values])
            axis.plot(T, values, label=entry["label"], **_STYLES.get(name, {}))
    ylabels = ("C_v MAE per atom, J/(mol K)", "U MAE per atom, kJ/mol")
    for axis, ylabel in zip(axes, ylabels, strict=True):
        axis.axvspan(*context.train_range, color="0.9", zorder=0, label="training temperatures")
        axis.set_xlabel("T (K)")
        axis.set_ylabel(ylabel)
        axis.set_xlim(0, T.max())
        axis.set_ylim(bottom=0)
    axes[0].legend(fontsize=7)
    figure.suptitle(
        f"Test-set MAE vs temperature ({metrics['data']}, {len(context.split.test)} materials)"
    )
    figure.tight_layout()
    _save_figure(figure, path, dpi=120)


def plot_material_curves(
    path: Path, context: RunContext, methods: Sequence[MethodCurves], count: int = 6
) -> None:
    """True and predicted C_v(T) per atom of ``count`` test materials spread over C_v(300 K)."""
    import matplotlib.pyplot as plt

    T = np.asarray(context.eval_grid)
    at300 = context.eval_grid.index(SINGLE_TEMPERATURE)
    n_atoms = context.n_atoms_test
    c300 = context.cv_test[:, at300] / n_atoms
    spread = np.linspace(0, len(c300) - 1, min(count, len(c300))).round().astype(int)
    picks = np.argsort(c300)[spread]
    columns = 3
    rows = math.ceil(len(picks) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for axis, k in zip(axes.flat, picks, strict=False):
        axis.plot(
            T, context.cv_test[k] / n_atoms[k], color="k", linewidth=2, label="true (phonons)"
        )
        for method in methods:
            if method.cv is None:
                continue
            label = _SHORT_LABELS.get(method.name, method.name)
            if method.theta is not None:
                label += f", θ={method.theta[k]:.0f} K"
            axis.plot(T, method.cv[k] / n_atoms[k], label=label, **_STYLES.get(method.name, {}))
        axis.axvspan(*context.train_range, color="0.93", zorder=0)
        material = context.data.ids[context.split.test[k]]
        axis.set_title(f"{material} ({int(n_atoms[k])} atoms/cell)", fontsize=9)
        axis.set_xlabel("T (K)")
        axis.set_ylabel("C_v per atom, J/(mol K)")
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(picks) :]:
        axis.axis("off")
    figure.tight_layout()
    _save_figure(figure, path, dpi=110)


def plot_theta_parity(path: Path, context: RunContext, methods: Sequence[MethodCurves]) -> None:
    """Predicted θ_D against the oracle θ_D (fit to the true C_v curve) of the test materials."""
    import matplotlib.pyplot as plt

    oracle = next((m.theta for m in methods if m.name == "oracle"), None)
    if oracle is None:
        oracle = oracle_theta(context.eval_grid, context.cv_test, context.n_atoms_test)
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    highest = float(oracle.max())
    for method in methods:
        if method.theta is None or method.name == "oracle":
            continue
        highest = max(highest, float(method.theta.max()))
        color = _STYLES.get(method.name, {}).get("color")
        label = _SHORT_LABELS.get(method.name, method.name)
        axis.scatter(oracle, method.theta, s=8, alpha=0.6, label=label, color=color)
    limits = [0.0, 1.05 * highest]
    axis.plot(limits, limits, color="k", linewidth=0.8)
    axis.set_xlim(limits)
    axis.set_ylim(limits)
    axis.set_xlabel("oracle θ_D (fit to the true C_v curve), K")
    axis.set_ylabel("predicted θ_D, K")
    axis.legend(fontsize=7)
    figure.tight_layout()
    _save_figure(figure, path, dpi=120)
