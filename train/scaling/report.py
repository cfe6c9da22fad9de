"""fit.json, report.md and the terminal summary of a scaling fit (:func:`write_report`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from train.common.files import atomic_write_text
from train.common.formatting import human_count
from train.scaling.isoflop import isoflop_analysis
from train.scaling.law import (
    ALLOCATION_NAMES,
    DEFAULT_BOOTSTRAP,
    DEFAULT_N_STARTS,
    MIN_DISTINCT_SIZES,
    PARAMETER_NAMES,
    compute_optimal_model_and_data,
    count_distinct,
    fit_scaling_law,
    fitted_parameters,
    predict_loss,
)
from train.scaling.one_dimensional import fit_one_dimensional_laws
from train.scaling.plots import write_plots
from train.scaling.results import ScalingRuns, read_results

# Exponents of N_opt ∝ C^a and D_opt ∝ C^b, for context in the report.
REFERENCE_EXPONENTS: tuple[dict[str, Any], ...] = (
    {"source": "CLOUD paper (arXiv 2506.17345), approximate", "a": 0.45, "b": 0.55},
    {"source": "Chinchilla, Hoffmann et al. 2022, approach 3", "a": 0.46, "b": 0.54},
    {"source": "Besiroglu et al. 2024 replication of approach 3", "a": 0.51, "b": 0.49},
)
CHINCHILLA_PARAMETERS = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}

# --------------------------------------------------------------------------------------------
# Report: fit.json, report.md, plots
# --------------------------------------------------------------------------------------------

REPORT_BUDGET_MULTIPLIERS = (1, 10, 100)


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
    atomic_write_text(out / "report.md", render_markdown(content))
    text = json.dumps(_json_ready(content), indent=2, allow_nan=False) + "\n"
    atomic_write_text(out / "fit.json", text)
    return content


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
        f"{runs['n_model_sizes']} model sizes ({human_count(runs['N_range'][0])}–"
        f"{human_count(runs['N_range'][1])} non-embedding parameters) × "
        f"{runs['n_token_counts']} token counts ({human_count(runs['D_range'][0])}–"
        f"{human_count(runs['D_range'][1])} tokens). Flavours: {flavours}. Devices: {devices}.",
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
            f"| {row['compute']:.3g}{note} | {human_count(row['N_opt'])} | {human_count(row['D_opt'])} "
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
            f"| {index + 1} | {human_count(residuals['N'][index])} | {human_count(residuals['D'][index])} "
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
                    f"| {human_count(group[fixed_key])} | {group['n_runs']} | – | – | – "
                    f"| skipped: {group['skipped']} |"
                )
                continue
            lines.append(
                f"| {human_count(group[fixed_key])} | {group['n_runs']} | {_number(fit['E'])} "
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
            f"| {curve['compute']:.3g} | {len(curve['N'])} | {human_count(curve['N_opt'])} "
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
        f"- At the largest run of the sweep (N = {human_count(largest['N'])}, D = "
        f"{human_count(largest['D'])}) the loss splits into E = {largest['E']:.3g}, model-size term "
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
