"""The results of a run for people: ``report.md`` (one function per section), the
plain-text fold table ``cloud finetune`` prints, the per-fold progress line and the parity
plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from train.finetune.config import BASELINE_LABELS, FinetuneConfig
from train.finetune.scoring import REGRESSION_METRICS
from train.finetune.tasks import Task, TaskData
from train.finetune.trainer import FoldResult

REPORT_FILE = "report.md"


def parity_plot(result: FoldResult, task: Task, path: Path) -> None:
    """True vs predicted on the test fold, with y = x and the MAE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = list(result.truth)
    truth = np.array([result.truth[i] for i in ids], dtype=float)
    pred = np.array([result.predictions[i] for i in ids], dtype=float)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(truth, pred, s=6, alpha=0.5, edgecolors="none")
    low, high = float(min(truth.min(), pred.min())), float(max(truth.max(), pred.max()))
    ax.plot([low, high], [low, high], color="k", lw=0.8)
    unit = f" ({task.unit})" if task.unit else ""
    ax.set_xlabel(f"true {task.target}{unit}")
    ax.set_ylabel(f"predicted {task.target}{unit}")
    ax.set_title(
        f"{task.name} {result.fold}: MAE {result.scores['mae']:.4g} "
        f"(mean predictor {result.baseline_scores['mae']:.4g})",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_table(task: Task, results: Sequence[FoldResult], summary: Mapping[str, Any]) -> str:
    """Plain-text table: one row per fold and the mean ± std, model against mean predictor."""
    metrics = list(REGRESSION_METRICS) if task.is_regression else ["rocauc", "accuracy", "f1"]
    header = ["fold", *metrics, f"baseline {task.metric}", "best epoch", "n_train", "n_test"]
    rows = [header]
    for r in results:
        rows.append(
            [
                r.fold,
                *(f"{r.scores[m]:.4g}" for m in metrics),
                f"{r.baseline_scores[task.metric]:.4g}",
                str(r.parameters["best_epoch"]),
                str(r.parameters["n_train"]),
                str(r.parameters["n_test"]),
            ]
        )
    stats, base = summary["scores"], summary["baseline_scores"]
    rows.append(
        [
            "mean ± std",
            *(f"{stats[m]['mean']:.4g} ± {stats[m]['std']:.2g}" for m in metrics),
            f"{base[task.metric]['mean']:.4g}",
            "",
            "",
            "",
        ]
    )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_report(
    task: Task,
    results: Sequence[FoldResult],
    data: TaskData,
    summary: Mapping[str, Any],
    config: FinetuneConfig,
) -> str:
    """``report.md``: scores per fold, the mean predictor, published numbers, data notes;
    one function per section, each returning its lines (blank line at its end)."""
    sections = (
        _title_section(task, results, summary, config),
        _sample_section(data),
        _fold_table(task, results, summary),
        _baseline_verdict(task, summary),
        _published_section(task, summary),
        _all_scores_section(summary),
        _data_section(data, results),
        _configuration_section(config),
    )
    return "\n".join(line for section in sections for line in section)


def _title_section(
    task: Task, results: Sequence[FoldResult], summary: Mapping[str, Any], config: FinetuneConfig
) -> list[str]:
    """The task, its target and headline metric; the checkpoint, folds and cost of the run."""
    return [
        f"# Fine-tuning report: {task.name}",
        "",
        f"{task.description}. Target `{task.target}`{f' ({task.unit})' if task.unit else ''}, "
        f"{task.task_type}, headline metric {task.metric}.",
        "",
        f"Checkpoint `{config.checkpoint}`; folds {', '.join(r.fold for r in results)}; "
        f"{summary['wall_time_s']} s wall, {summary['cpu_time_s']} s CPU on {summary['device']} "
        f"({summary['threads']} torch threads), data loading included.",
        "",
    ]


def _sample_section(data: TaskData) -> list[str]:
    """A warning, when the run used the shipped sample: its scores are not comparable."""
    if not data.report.is_sample:
        return []
    return [
        "**Data: the small sample shipped in `data/`, not the full data set. The folds are "
        "the official ones restricted to the rows present; the scores are not comparable "
        "to published ones.**",
        "",
    ]


def _published_section(task: Task, summary: Mapping[str, Any]) -> list[str]:
    """Published scores of the headline metric beside this run's (when the task has some)."""
    if not task.reference_scores:
        return []
    metric, unit = task.metric, f" {task.unit}" if task.unit else ""
    lines = [
        f"## Published {metric}{unit} for context",
        "",
        f"| model | {metric} |",
        "|---|---|",
    ]
    lines += [f"| {name} | {score:g} |" for name, score in task.reference_scores.items()]
    lines += [
        f"| {BASELINE_LABELS[name]} (this run) | {b[metric]['mean']:.4g} |"
        for name, b in summary["baselines"].items()
    ]
    return [
        *lines,
        f"| CLOUD (this run) | {summary['scores'][metric]['mean']:.4g} |",
        "",
        f"Source: {task.reference_source}.",
        "",
    ]


def _all_scores_section(summary: Mapping[str, Any]) -> list[str]:
    """Every score (mean ± std over folds) of CLOUD, each baseline and the mean predictor."""
    names = list(summary["baselines"])
    lines = [
        "## All scores (mean ± std over folds)",
        "",
        "| score | CLOUD | "
        + " | ".join(BASELINE_LABELS[n] for n in names)
        + " | mean predictor |",
        "|---" * (len(names) + 3) + "|",
    ]
    for score, value in summary["scores"].items():
        columns = [value, *(summary["baselines"][n][score] for n in names)]
        columns.append(summary["baseline_scores"][score])
        lines.append(
            f"| {score} | "
            + " | ".join(f"{c['mean']:.4g} ± {c['std']:.2g}" for c in columns)
            + " |"
        )
    return lines


def _data_section(data: TaskData, results: Sequence[FoldResult]) -> list[str]:
    """The load report, and per fold the rows the model could not use (when there are any)."""
    lines = ["", "## Data", "", "```", *data.report.lines(), "```", ""]
    problems = [
        (r.fold, r.parameters["excluded_train_val"], r.parameters["test_fallback_to_train_mean"])
        for r in results
    ]
    if any(excluded or fallback for _, excluded, fallback in problems):
        lines += ["Rows the model could not use, per fold:", ""]
        for fold, excluded, fallback in problems:
            lines.append(
                f"- {fold}: {len(excluded)} training/validation rows excluded; "
                f"{len(fallback)} test rows predicted with the training-fold mean"
                + (f" ({', '.join(list(fallback)[:5])})" if fallback else "")
            )
        lines.append("")
    return lines


def _configuration_section(config: FinetuneConfig) -> list[str]:
    """The run's whole configuration as YAML."""
    return [
        "## Configuration",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(),
        "```",
        "",
    ]


def _fold_table(task: Task, results: Sequence[FoldResult], summary: Mapping[str, Any]) -> list[str]:
    """The per-fold table of the headline metric: the model, each baseline, the mean
    predictor, and the row counts."""
    metric = task.metric
    names = list(summary["baselines"])
    header = [f"CLOUD {metric}", *(BASELINE_LABELS[n] for n in names), "mean predictor"]
    lines = [
        f"## {metric} by fold",
        "",
        "| fold | " + " | ".join(header) + " | n train | n val | n test | best epoch |",
        "|---" * (len(header) + 5) + "|",
    ]
    for r in results:
        p = r.parameters
        cells = [r.scores[metric], *(r.baselines[n].scores[metric] for n in names)]
        cells.append(r.baseline_scores[metric])
        lines.append(
            f"| {r.fold} | " + " | ".join(f"{c:.4g}" for c in cells) + " | "
            f"{p['n_train']} | {p['n_val']} | {p['n_test']} | {p['best_epoch']} |"
        )
    stats = [summary["scores"][metric], *(summary["baselines"][n][metric] for n in names)]
    stats.append(summary["baseline_scores"][metric])
    cells = [f"{s['mean']:.4g} ± {s['std']:.2g}" for s in stats]
    cells[0] = f"**{cells[0]}**"
    lines += [
        "| **mean ± std** | " + " | ".join(cells) + " | | | | |",
        "",
        "All columns are fitted on the same training rows of the same folds and scored on the "
        "same test rows. The mean predictor predicts the training-fold mean (classification: "
        "the training-fold class frequencies); the random forest "
        "(`train.baselines.ClassicalBaseline`) sees element fractions, element-property "
        "statistics and symmetry counts read off the same SCOPE strings"
        + (
            f"; CLOUD is a mean of {summary['ensemble']} seeds per fold"
            if summary.get("ensemble", 1) > 1
            else ""
        )
        + ".",
        "",
    ]
    return lines


def _baseline_verdict(task: Task, summary: Mapping[str, Any]) -> list[str]:
    """One sentence per baseline: does CLOUD beat it, and by how much (said plainly)."""
    metric = task.metric
    higher_is_better = metric in ("rocauc", "accuracy", "f1")
    ours = summary["scores"][metric]["mean"]
    lines = []
    for name, stats in summary["baselines"].items():
        theirs = stats[metric]["mean"]
        better = ours > theirs if higher_is_better else ours < theirs
        gap = abs(ours - theirs) / abs(theirs) * 100 if theirs else math.inf
        verdict = "beats" if better else "loses to"
        lines.append(
            f"- CLOUD {verdict} the {BASELINE_LABELS[name]} baseline by {gap:.1f} % "
            f"({ours:.4g} vs {theirs:.4g} {metric})."
        )
    return [*lines, ""] if lines else []


def _fold_line(task: Task, result: FoldResult) -> str:
    metric = task.metric
    baselines = "".join(f", {name} {b.scores[metric]:.4g}" for name, b in result.baselines.items())
    return (
        f"{task.name} {result.fold}: {metric} {result.scores[metric]:.4g} "
        f"(mean predictor {result.baseline_scores[metric]:.4g}{baselines}), best epoch "
        f"{result.parameters['best_epoch']}/{result.parameters['epochs_run']}, "
        f"{result.parameters['wall_time_s']} s wall, {result.parameters['cpu_time_s']} s CPU"
    )
