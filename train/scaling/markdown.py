"""report.md and the terminal summary of a scaling fit: every section reads the content dict
that ``fit.json`` holds, so the report can be re-rendered from it."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from train.common.formatting import human_count
from train.scaling.law import (
    ALLOCATION_NAMES,
    MIN_DISTINCT_SIZES,
    PARAMETER_NAMES,
)

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
    if isoflop.get("interpolated"):
        method = (
            "The grid's runs rarely share a compute budget, so each isoFLOP curve is read off "
            "the grid: at each budget C, every model size whose token count C/(6N) lies inside "
            "its sampled range contributes its loss interpolated (log-log) between its two "
            "nearest runs; a parabola in log N through each curve gives the model size with the "
            "lowest loss for that budget."
        )
    else:
        method = (
            f"Runs within {isoflop['rel_tol']:.0%} of the same compute "
            f"({isoflop['compute_source']}) form one isoFLOP curve; a parabola in log N "
            "through each curve gives the model size with the lowest loss for that budget."
        )
    lines += [
        method,
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
            "is estimated from the isoFLOP curves: the grid does not bracket the compute-optimal "
            "size at its budgets. Runs that do (several sizes at a few fixed budgets, around "
            "the 2-D law's N_opt) would give this independent check."
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
    unpinned = content.get("unpinned") or []
    if unpinned:
        sentences.append(
            "- The runs do not pin down "
            + ", ".join(f"{name} {_interval(content, name, 3)}" for name in unpinned)
            + ": their intervals span more than a factor of ten (scales) or more than their "
            "own size (exponents), so conclusions resting on them are not supported."
        )
    elif content["ci"]:
        sentences.append("- Every parameter's interval is narrower than a factor of ten.")
    if content["warnings"]:
        sentences.append("- Caveats from the fit: " + " ".join(content["warnings"]))
    sentences.append(
        "- Budgets beyond the sweep are extrapolations: the further from the sampled sizes, "
        "the less the confidence intervals (which only reflect run-to-run scatter) cover."
    )
    return ["## Interpretation", "", *sentences, ""]


def _markdown_prediction(content: dict[str, Any]) -> list[str]:
    prediction = content.get("prediction")
    if not prediction:
        return []
    low_high = prediction.get("interval") or []
    interval = (
        f" ({prediction['confidence']:.0%} interval {low_high[0]:.4f}–{low_high[1]:.4f})"
        if low_high
        else ""
    )
    lines = [
        "## A prediction made before the run",
        "",
        f"Before `{prediction['flavour']}` (N = {human_count(prediction['n_params_non_embedding'])}"
        f" non-embedding parameters, {prediction['steps']:,} steps ≈ "
        f"{human_count(prediction['tokens'])} tokens: more parameters and more tokens than any "
        f"run of the grid) was trained, the law fitted to the {prediction['fit_runs']} grid runs "
        f"predicted its validation loss: **{prediction['predicted_loss']:.4f}**{interval}. "
        f"The prediction was written to `prediction.json` at {prediction['made_at']}, with the "
        f"SHA-256 of the grid's CSV it came from (`{prediction['grid_csv_sha256'][:16]}…`); "
        + (
            "the CSV fitted here still begins with exactly those bytes."
            if prediction.get("grid_unchanged")
            else "**the CSV fitted here no longer begins with those bytes: the grid changed "
            "after the prediction.**"
        ),
        "",
    ]
    if prediction.get("measured_loss") is None:
        return [*lines, "The held-out run has not finished yet.", ""]
    se = prediction.get("measured_loss_se")
    verdict = "met" if prediction["within_target"] else "**missed**"
    inside = "inside" if prediction.get("inside_interval") else "outside"
    lines += [
        f"Measured after the run: **{prediction['measured_loss']:.4f}**"
        + (f" ± {se:.4f} (s.e.)" if se else "")
        + f". Error of the prediction: predicted / measured − 1 = "
        f"**{100 * prediction['relative_error']:+.2f} %** (target ±"
        f"{100 * prediction['target_relative_error']:.0f} %: {verdict}); the measured loss lies "
        f"{inside} the bootstrap interval. At the tokens the run actually saw "
        f"({human_count(prediction['measured_tokens'])}), the same law gives "
        f"{prediction['predicted_at_measured_tokens']:.4f}.",
        "",
    ]
    return lines


def _markdown_runs(content: dict[str, Any]) -> list[str]:
    lines = [
        "## The runs",
        "",
        "Validation loss on the fixed held-out set, ± its standard error (each structure one "
        "cluster of masked tokens); every run is scored on the same masked tokens, so "
        "differences between runs are far less noisy than each s.e. suggests.",
        "",
        "| run | role | N | steps | tokens | FLOPs | wall time | loss ± s.e. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in content["run_table"]:
        se = f" ± {run['val_loss_se']:.4f}" if math.isfinite(run["val_loss_se"]) else ""
        steps = f"{run['steps']:,.0f}" if math.isfinite(run["steps"]) else "n/a"
        wall = f"{run['wall_time_s']:,.0f} s" if math.isfinite(run["wall_time_s"]) else "n/a"
        lines.append(
            f"| {run['flavour']} | {run['role']} | {human_count(run['N'])} | {steps} "
            f"| {human_count(run['tokens'])} | {_number(run['flops'], 3)} | {wall} "
            f"| {run['val_loss']:.4f}{se} |"
        )
    return [*lines, ""]


def _markdown_downstream(content: dict[str, Any]) -> list[str]:
    downstream = content.get("downstream")
    if not downstream:
        return []
    rows = downstream["rows"]
    task, metric = rows[0]["task"], rows[0]["metric"]
    lines = [
        "## Downstream: does a lower pretraining loss give a better property model?",
        "",
        f"Checkpoints of the sweep fine-tuned on `{task}` with one recipe, every fold "
        f"(`{downstream['source']}`), in order of pretraining compute:",
        "",
        f"| checkpoint | N | tokens | compute 6ND | pretraining val loss | {metric} (mean ± std over folds) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        compute = 6 * row["n_params_non_embedding"] * row["tokens"]
        lines.append(
            f"| {row['run']} | {human_count(row['n_params_non_embedding'])} "
            f"| {human_count(row['tokens'])} | {compute:.3g} | {row['val_loss']:.4f} "
            f"| {row['score_mean']:.4g} ± {row['score_std']:.3g} ({row['folds']} folds) |"
        )
    rho_loss = downstream["spearman_score_vs_val_loss"]
    rho_compute = downstream["spearman_score_vs_compute"]
    if rho_loss is not None:
        lines += [
            "",
            f"Spearman rank correlation of the {metric} with the pretraining loss: "
            f"{rho_loss:+.2f}; with pretraining compute: {rho_compute:+.2f} (over "
            f"{downstream['n']} checkpoints; +1 with the loss and −1 with compute would mean "
            "every step down in pretraining loss bought a better property model).",
        ]
    return [*lines, ""]


def _markdown_budgets(content: dict[str, Any]) -> list[str]:
    budgets = content["budgets"]
    lines = [
        "## What to train on a budget",
        "",
        "On the machine of this sweep, at the throughput each size reached here (tokens per "
        "wall-clock second of its longest run, evaluation and start-up included), the law "
        "predicts for a run of a given length:",
        "",
        "| budget | best size | tokens/s | tokens in the budget | predicted loss | next best |",
        "|---|---|---|---|---|---|",
    ]
    footnote = (
        "The law knows nothing of repeated data: where a budget's tokens are many passes over "
        "the corpus, more tokens help less than it says."
    )
    for budget in budgets["cpu"]:
        best = budget["best"]
        runner = budget["options"][1] if len(budget["options"]) > 1 else None
        second = f"{runner['flavour']} ({runner['predicted_loss']:.4f})" if runner else "—"
        lines.append(
            f"| {budget['hours']:g} h, 1 process | **{best['flavour']}** "
            f"(N = {human_count(best['N'])}) | {best['tokens_per_s']:,.0f} "
            f"| {human_count(best['tokens'])} | {best['predicted_loss']:.4f} | {second} |"
        )
    gpu = budgets["gpu"]
    lines += [
        "",
        footnote,
        "",
        f"For {gpu['gpus']} × {gpu['device']} × {gpu['hours']:g} h no rate has been measured yet "
        f"(no GPU has run this sweep), so the budget assumes MFU {gpu['assumed_mfu']:.0%} of the "
        f"bf16 peak ({gpu['peak_flops_per_gpu']:.3g} FLOP/s per GPU): C = {gpu['compute']:.3g} "
        f"FLOPs, for which the law's compute-optimal run is N ≈ {human_count(gpu['N_opt'])} "
        f"non-embedding parameters on D ≈ {human_count(gpu['D_opt'])} tokens (nearest flavour: "
        f"`{gpu['nearest_flavour']}`, {human_count(gpu['nearest_flavour_N'])}). That is "
        f"{math.log10(gpu['N_opt'] / content['runs']['N_range'][1]):.1f} orders of magnitude "
        "beyond the largest model fitted, and a corpus of that many tokens does not exist here: "
        "read it as the direction the law points, not as a plan.",
        "",
    ]
    return lines


def _markdown_plots(content: dict[str, Any]) -> list[str]:
    captions = {
        "loss_vs_n": "Loss vs model size, one colour per token count",
        "loss_vs_d": "Loss vs training tokens, one colour per model size",
        "residuals": "Residuals of the 2-D law",
        "isoflop": "IsoFLOP curves and their minima",
        "loss_vs_compute": "Loss vs compute, the compute-optimal frontier and the held-out run",
        "downstream": "Fine-tuning error against pretraining compute and loss",
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
        _markdown_prediction(content),
        _markdown_runs(content),
        _markdown_method(content),
        _markdown_parameters(content),
        _markdown_allocation(content),
        _markdown_convergence(content),
        _markdown_residuals(content),
        _markdown_one_dimensional(content),
        _markdown_isoflop(content),
        _markdown_downstream(content),
        _markdown_budgets(content),
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
