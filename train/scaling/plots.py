"""PNG plots of a scaling fit (matplotlib Figure objects rendered by Agg; pyplot's global
state is never touched)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.common.files import atomic_write
from train.common.formatting import human_count
from train.scaling.law import (
    FloatArray,
    compute_optimal_model_and_data,
    fitted_parameters,
    predict_loss,
)
from train.scaling.one_dimensional import predict_loss_1d
from train.scaling.results import ScalingRuns

PLOT_DPI = 120
MAX_LEGEND_GROUPS = 12


def _new_figure(n_panels: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * n_panels, 4.8), layout="constrained")
    axes = [figure.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    return figure, axes


def _save_figure(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=PLOT_DPI))


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


def loss_plot_title(varied_name: str, has_one_dimensional_laws: bool) -> str:
    """The title says what the lines are; dotted 1-D laws only where some group has one (a
    group needs enough runs for its own 3-parameter law)."""
    if has_one_dimensional_laws:
        return f"Loss vs {varied_name}: solid = 2-D law, dotted = 1-D law of each group"
    return f"Loss vs {varied_name}: lines = 2-D law (too few runs per group for 1-D laws)"


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
        label = human_count(group[axes_spec.fixed_key]) if show_legend else None
        axis.scatter(varied[indices], losses[indices], color=colour, s=22, zorder=3, label=label)
        fixed_value = float(np.exp(np.log(fixed[indices]).mean()))
        axis.plot(line, predict(line, fixed_value), color=colour, lw=1.4)
        if group.get("fit"):
            axis.plot(line, predict_loss_1d(group["fit"], line), color=colour, lw=0.9, ls=":")
    axis.set_xscale("log")
    axis.set_xlabel(axes_spec.varied_label)
    axis.set_ylabel("validation loss")
    axis.set_title(
        loss_plot_title(axes_spec.varied_name, any(g.get("fit") for g in groups)), fontsize=10
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


def _plot_compute_frontier(path: Path, content: dict[str, Any], every_run: ScalingRuns) -> None:
    """Loss against compute (6ND), one colour per model size, the law's compute-optimal
    frontier L(N_opt(C), D_opt(C)), and the held-out run against its prediction."""
    params = fitted_parameters(content)
    figure, (axis,) = _new_figure()
    fitted = every_run.fitted()
    sizes = np.unique(fitted.n_params)
    for size, colour in zip(sizes, _group_colours(len(sizes)), strict=True):
        rows = fitted.n_params == size
        order = np.argsort(fitted.tokens[rows])
        compute = 6 * size * fitted.tokens[rows][order]
        label = f"{fitted.flavour[int(np.flatnonzero(rows)[0])]} (N={human_count(size)})"
        axis.plot(compute, fitted.val_loss[rows][order], "o-", color=colour, ms=4, label=label)
    held = every_run.held_out()
    compute_max = float((6 * every_run.n_params * every_run.tokens).max())
    compute_min = float((6 * every_run.n_params * every_run.tokens).min())
    line = np.geomspace(compute_min, compute_max * 3, 100)
    n_opt, d_opt = compute_optimal_model_and_data(params, line)
    axis.plot(
        line, predict_loss(params, n_opt, d_opt), "k--", lw=1.2, label="compute-optimal (law)"
    )
    prediction = content.get("prediction")
    for i in range(len(held)):
        compute = 6 * held.n_params[i] * held.tokens[i]
        axis.plot(compute, held.val_loss[i], "r*", ms=13, label=f"{held.flavour[i]} (held out)")
    if prediction:
        compute = 6 * prediction["n_params_non_embedding"] * prediction["tokens"]
        low_high = prediction.get("interval") or []
        if low_high:
            axis.errorbar(
                [compute],
                [prediction["predicted_loss"]],
                yerr=[
                    [prediction["predicted_loss"] - low_high[0]],
                    [low_high[1] - prediction["predicted_loss"]],
                ],
                fmt="D",
                color="red",
                mfc="none",
                capsize=4,
                label="prediction before the run (95 %)",
            )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("compute C ≈ 6·N·D (FLOPs)")
    axis.set_ylabel("validation loss")
    axis.set_title("Loss against compute, with the law's frontier", fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    _save_figure(figure, path)


def _plot_downstream(path: Path, downstream: dict[str, Any]) -> None:
    rows = downstream["rows"]
    figure, axes = _new_figure(2)
    compute = np.asarray([6 * r["n_params_non_embedding"] * r["tokens"] for r in rows])
    loss = np.asarray([r["val_loss"] for r in rows])
    score = np.asarray([r["score_mean"] for r in rows])
    spread = np.asarray([r["score_std"] for r in rows])
    metric = f"{rows[0]['task']} {rows[0]['metric']}"
    for axis, x, label, log in (
        (axes[0], compute, "pretraining compute 6ND (FLOPs)", True),
        (axes[1], loss, "pretraining validation loss", False),
    ):
        axis.errorbar(x, score, yerr=spread, fmt="o-", capsize=3, color="tab:blue")
        for xi, yi, row in zip(x, score, rows, strict=True):
            axis.annotate(
                row["run"], (xi, yi), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        if log:
            axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel(f"{metric} (mean ± std over folds)")
        axis.grid(True, alpha=0.3)
    axes[0].set_title("Fine-tuning error against pretraining", fontsize=10)
    _save_figure(figure, path)


def write_plots(
    content: dict[str, Any], runs: ScalingRuns, out: Path, every_run: ScalingRuns | None = None
) -> dict[str, str]:
    """PNG plots of the fit into ``out``; returns {plot name: file name}. ``runs`` are the
    fitted runs; ``every_run`` adds the held-out ones to the compute plot."""
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
    if content.get("downstream"):
        files["downstream"] = "downstream.png"
        _plot_downstream(out / files["downstream"], content["downstream"])
    files["loss_vs_compute"] = "loss_vs_compute.png"
    _plot_compute_frontier(out / files["loss_vs_compute"], content, every_run or runs)
    if content["isoflop"]["curves"]:
        files["isoflop"] = "isoflop.png"
        _plot_isoflop(out / files["isoflop"], content["isoflop"], content)
    return files
