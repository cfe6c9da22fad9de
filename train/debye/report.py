"""``report.md`` and the results table ``cloud debye`` prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from train.debye.progress import PROGRESS_DIR


def _fmt(value: float | None, digits: int = 2) -> str:
    return "N/A" if value is None else f"{value:.{digits}f}"


def results_table(metrics: Mapping[str, Any]) -> str:
    """Markdown table of the test MAEs: per mole of cells, per mole of atoms in brackets;
    ± one standard error over the test materials at 300 K."""
    grid = metrics["eval_temperatures"]
    span = f"{min(grid):g}–{max(grid):g} K"
    lines = [
        f"| method | C_v MAE @300 K, J/(mol K) | U MAE @300 K, kJ/mol | C_v MAE {span} "
        f"| U MAE {span} | C_v MAE on training T range | C_v MAE above 800 K |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in metrics["methods"].values():
        cv, u = entry.get("cv"), entry.get("u")
        cells = [
            _mae_text(cv, "mae_300K", 2, with_se=True),
            _mae_text(u, "mae_300K", 3, with_se=True),
            _mae_text(cv, "mae_mean_all", 2),
            _mae_text(u, "mae_mean_all", 3),
            _mae_text(cv, "mae_mean_train_range", 2),
            _mae_text(cv, "mae_mean_above_800K", 2),
        ]
        lines.append(f"| {entry['label']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _mae_text(
    section: Mapping[str, Any] | None, key: str, digits: int, with_se: bool = False
) -> str:
    """ "MAE per cell (per atom)", with "± SE" when asked; N/A when the method cannot answer."""
    if section is None or section.get(f"{key}_per_cell") is None:
        return "N/A"
    text = _fmt(section[f"{key}_per_cell"], digits)
    if with_se and section.get("se_300K_per_cell") is not None:
        text += f" ± {_fmt(section['se_300K_per_cell'], digits)}"
    return f"{text} ({_fmt(section[f'{key}_per_atom'], digits)})"


def render_report(metrics: Mapping[str, Any]) -> str:
    split = metrics["split"]
    lines = [f"# CLOUD-DEBYE on {metrics['data']}", ""]
    if metrics.get("pending"):
        lines += [
            f"**Partial results**: still to train: {', '.join(metrics['pending'])} (the run "
            "is going on, or was stopped). Rerun the same command with the same --out to "
            f"resume: finished units are kept in {PROGRESS_DIR}/.",
            "",
        ]
    if metrics.get("resumed_units"):
        lines += [
            f"Resumed: {', '.join(metrics['resumed_units'])} finished in an earlier run and "
            f"were read back from {PROGRESS_DIR}/.",
            "",
        ]
    lines += [
        f"Protocol {metrics['protocol']}, target {metrics['target']}, training temperatures "
        f"{_grid_text(metrics['train_temperatures'])} K; checkpoint `{metrics['checkpoint']}`.",
        "",
        f"Split: {split['description']}: {split['n_train']} train, {split['n_val']} val, "
        f"{split['n_test']} test materials ({split['test_scopes_also_in_train']} test SCOPE "
        "strings also occur in training: SCOPE has no coordinates).",
        "",
        "Test-set MAE per mole of cells (per mole of atoms in brackets); means over the "
        "evaluation grid's temperatures.",
        "",
        results_table(metrics),
        "",
        "## Training",
        "",
    ]
    for name, history in metrics["training"].items():
        lines.append(
            f"- {name}: best validation {history['best_val']:.4f} at epoch "
            f"{history['best_epoch'] + 1} of {history['epochs_run']} "
            f"({history['wall_time_s']:.0f} s)"
        )
    lines += ["", "## Data", "", *(f"    {line}" for line in metrics["data_report"]), ""]
    return "\n".join(lines)


def _grid_text(T: Sequence[float]) -> str:
    if len(T) == 1:
        return f"{T[0]:g}"
    return f"{min(T):g}–{max(T):g} ({len(T)} points)"
