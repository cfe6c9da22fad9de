"""The demo's report: report.md beside a self-contained report.html (images inlined).

Both are rendered from one list of blocks, so they always say the same thing. Each section
reads the files its stage wrote (manifest.json, metrics.jsonl, fit.json, summary.json …);
a stage whose outputs are missing gets a line saying so instead of a section.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from train.common.files import atomic_write_text


@dataclass(frozen=True)
class Block:
    """One piece of the report: a heading, a paragraph, a table, an image or a code block."""

    kind: str
    text: str = ""
    rows: tuple[tuple[str, ...], ...] = ()
    path: Path | None = None


def heading(text: str) -> Block:
    return Block("h2", text)


def paragraph(text: str) -> Block:
    return Block("p", text)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Block:
    return Block("table", rows=(tuple(header), *(tuple(_cell(c) for c in r) for r in rows)))


def image(path: Path, caption: str) -> Block:
    return Block("img", caption, path=path)


def code(text: str) -> Block:
    return Block("pre", text)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------------------- sections


def corpus_section(out: Path, stage: dict[str, Any]) -> list[Block]:
    shards = Path(stage["outputs"]["corpus"])
    manifest = json.loads((shards / "manifest.json").read_text())
    totals = manifest["totals"]
    blocks = [
        heading("1. Corpus: structures → SCOPE → WebDataset shards (Ray)"),
        paragraph(
            f"{totals['read']:,} structures read from the shipped sample, {totals['written']:,} "
            f"written to {len(manifest['shards'])} shards, {totals['quarantined']} quarantined, "
            f"{totals['duplicates']} duplicates removed, {totals['excluded']} excluded because "
            "they belong to the fine-tuning test fold. Variants: "
            f"{', '.join(manifest['variants'])}; tokenizer {manifest['tokenizer']['vocab_hash'][:12]}."
        ),
        table(
            ("source", "read", "written", "quarantined", "duplicates", "excluded"),
            [
                (name, c["read"], c["written"], c["quarantined"], c["duplicates"], c["excluded"])
                for name, c in sorted(manifest["counts"].items())
            ],
        ),
    ]
    quarantined = _quarantine_lines(shards / "quarantine.jsonl")
    if quarantined:
        blocks.append(paragraph("Quarantined inputs and why:"))
        blocks.append(table(("position", "reason"), quarantined[:20]))
    else:
        blocks.append(
            paragraph("Quarantined inputs: none (every input could be read and encoded).")
        )
    figure = out / "figures" / "corpus_histograms.png"
    plot_corpus_histograms(manifest["histograms"], figure)
    blocks.append(image(figure, "Space groups and SCOPE token lengths of the corpus"))
    return blocks


def _quarantine_lines(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        lines.append((str(record.get("position", "")), str(record.get("reason", ""))))
    return lines


def plot_corpus_histograms(histograms: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    groups = {int(k): v for k, v in histograms["space_group"].items()}
    left.bar(list(groups), list(groups.values()), width=1.0, color="#3a6ea5")
    left.set(
        xlabel="space group", ylabel="structures", title="Space-group histogram", xlim=(0, 231)
    )
    for variant, counts in histograms["token_length"].items():
        lengths = {int(k): v for k, v in counts.items()}
        right.bar(list(lengths), list(lengths.values()), width=1.0, alpha=0.7, label=variant)
    right.set(xlabel="tokens per sequence", ylabel="structures", title="SCOPE length histogram")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pretrain_section(out: Path, stage: dict[str, Any]) -> list[Block]:
    summary = stage["outputs"]["summary"]
    records = [
        json.loads(x)
        for x in (Path(stage["outputs"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    figure = out / "figures" / "pretraining_curves.png"
    plot_pretraining(records, figure)
    return [
        heading("2. Pretraining: masked-LM with DeepSpeed ZeRO-2, two processes (gloo)"),
        paragraph(
            f"Flavour `{summary['flavour']}`: {summary['n_params_total']:,} parameters "
            f"({summary['n_params_non_embedding']:,} non-embedding), {summary['steps']} steps, "
            f"{summary['tokens']:,} real tokens seen on {summary['world_size']} processes. "
            f"Validation loss {summary['initial_val_loss']:.3f} → {summary['val_loss']:.3f} "
            f"(ln of the vocabulary ≈ 6.09), masked-token accuracy {summary['val_accuracy']:.1%}."
        ),
        image(figure, "Training and validation loss, learning rate"),
    ]


def plot_pretraining(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    lr = [(r["step"], r["train/lr"]) for r in records if "train/lr" in r]
    if train:
        loss_ax.plot(*zip(*train, strict=True), label="train", color="#3a6ea5")
    if val:
        loss_ax.plot(*zip(*val, strict=True), "o-", label="validation", color="#c0504d")
    loss_ax.set(xlabel="step", ylabel="masked-LM loss", title="Pretraining loss")
    loss_ax.legend()
    if lr:
        lr_ax.plot(*zip(*lr, strict=True), color="#4f8f3a")
    lr_ax.set(xlabel="step", ylabel="learning rate", title="Warmup and cosine decay")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export_section(stage: dict[str, Any]) -> list[Block]:
    files = stage["outputs"]["files"]
    return [
        heading("3. Export: a self-describing package that loads without DeepSpeed"),
        paragraph(
            "ZeRO shards consolidated into one state dict; `cloud.load_pretrained(DIR)` verifies "
            "the checksums and the format version and rebuilds the model (safetensors and JSON, "
            "no pickle)."
        ),
        table(("file", "bytes"), sorted(files.items())),
    ]


def scaling_section(stage: dict[str, Any]) -> list[Block]:
    fit = stage["outputs"]["fit"]
    report = Path(stage["outputs"]["report"])
    blocks = [
        heading("4. Scaling laws: 3 model sizes × 3 data sizes, Chinchilla approach 3"),
        paragraph(
            f"L(N, D) = E + A/N^α + B/D^β fitted to {fit['n_runs']} pretraining runs: "
            f"α = {fit['alpha']:.3f}, β = {fit['beta']:.3f}, E = {fit['E']:.3f}; compute-optimal "
            f"N_opt ∝ C^{fit['a']:.2f}, D_opt ∝ C^{fit['b']:.2f} (the CLOUD paper reports about "
            f"0.45 and 0.55). Optimiser converged: {'yes' if fit['converged'] else 'NO'}. Tiny "
            "CPU models over a decade of sizes: read the exponents as a demonstration of the "
            f"pipeline, with the intervals in `{report / 'report.md'}`."
        ),
    ]
    for name, caption in (
        ("loss_vs_n.png", "Loss against non-embedding parameters"),
        ("loss_vs_d.png", "Loss against training tokens"),
    ):
        if (report / name).is_file():
            blocks.append(image(report / name, caption))
    return blocks


def finetune_section(stage: dict[str, Any]) -> list[Block]:
    from train.finetune import BASELINE_LABELS

    run = Path(stage["outputs"]["run"])
    summary = json.loads((run / "summary.json").read_text())
    metric = summary["metric"]
    fold = next(iter(summary["per_fold"].values()))
    rows = [
        ("CLOUD, this run (tiny CPU model, shipped sample)", summary["scores"][metric]["mean"]),
        *(
            (f"{BASELINE_LABELS[name]}, same rows and fold", stats[metric]["mean"])
            for name, stats in summary.get("baselines", {}).items()
        ),
        ("mean predictor (training-fold mean)", summary["baseline_scores"][metric]["mean"]),
        *(
            (f"{name} (Matbench leaderboard)", value)
            for name, value in summary["reference_scores"].items()
        ),
    ]
    return [
        heading("5. Fine-tuning: Matbench dielectric (refractive index), fold 0"),
        paragraph(
            f"{fold['n_train']} training, {fold['n_val']} validation (carved from the training "
            f"fold) and {fold['n_test']} test structures of the shipped sample; best epoch "
            f"{fold['best_epoch']} of {fold['epochs_run']}. The leaderboard models were trained "
            "on the full 4,764 structures; the numbers are context, not a like-for-like race."
        ),
        table(("model", f"test {metric.upper()}"), rows),
        *(
            image(p, f"Parity plot, {p.parent.name} (test fold)")
            for p in sorted(run.glob("fold_*/parity.png"))
        ),
    ]


def debye_section(stage: dict[str, Any]) -> list[Block]:
    run = Path(stage["outputs"]["run"])
    results = json.loads((run / "results.json").read_text())
    split = results["split"]
    rows = []
    for method in results["methods"].values():
        cv = method.get("cv", {})
        rows.append(
            (
                method.get("label", ""),
                method.get("temperatures_answered", ""),
                _or_na(cv.get("mae_300K_per_atom")),
                _or_na(cv.get("mae_mean_all_per_atom")),
            )
        )
    blocks = [
        heading("6. CLOUD-DEBYE: heat capacity at every temperature from one θ_D"),
        paragraph(
            f"The encoder predicts a Debye temperature; the Debye model turns it into C_v(T), "
            f"differentiably. Petretto phonon DOS sample: {split['n_train']} training, "
            f"{split['n_val']} validation, {split['n_test']} held-out materials "
            f"({split['description']}). MAE in J/(mol K) per mole of atoms (3R ≈ 24.9)."
        ),
        table(("method", "temperatures", "C_v MAE at 300 K", "C_v MAE, 10–1000 K"), rows),
    ]
    for name, caption in (
        ("curves.png", "Predicted against true C_v(T) for held-out materials"),
        ("mae_vs_temperature.png", "MAE of C_v against temperature"),
    ):
        for path in sorted(run.rglob(name))[:1]:
            blocks.append(image(path, caption))
    return blocks


def _or_na(value: Any) -> Any:
    """A method that cannot answer (the direct regressor away from 300 K) shows n/a."""
    return "n/a" if value is None else value


def throughput_section(stages: dict[str, Any]) -> list[Block]:
    rows = []
    for name, stage in stages.items():
        if name == "report":
            continue
        rows.append((name, f"{stage['seconds']:.1f}", _rate(name, stage)))
    return [
        heading("7. Throughput of each stage (this machine)"),
        table(("stage", "wall time (s)", "rate"), rows),
    ]


def _rate(name: str, stage: dict[str, Any]) -> str:
    outputs = stage["outputs"]
    if name == "corpus":
        manifest = json.loads((Path(outputs["corpus"]) / "manifest.json").read_text())
        return f"{manifest['totals']['read'] / stage['seconds']:.0f} structures/s (incl. Ray start)"
    if name == "pretrain":
        return f"{outputs['summary']['tokens_per_s']:.0f} training tokens/s"
    return ""


SECTIONS = {
    "corpus": lambda out, stage: corpus_section(out, stage),
    "pretrain": lambda out, stage: pretrain_section(out, stage),
    "export": lambda out, stage: export_section(stage),
    "scaling": lambda out, stage: scaling_section(stage),
    "finetune": lambda out, stage: finetune_section(stage),
    "debye": lambda out, stage: debye_section(stage),
}


def build_blocks(out: Path, stages: dict[str, Any]) -> list[Block]:
    blocks = [
        Block("h1", "CLOUD demo report"),
        paragraph(
            "The whole system on the real crystals shipped in `data/`: a corpus sharded by Ray, "
            "a CLOUD model pretrained with DeepSpeed, exported, a scaling-law sweep and fit, "
            "fine-tuning on Matbench dielectric, and CLOUD-DEBYE heat capacities."
        ),
    ]
    for name, section in SECTIONS.items():
        if name not in stages:
            blocks.append(paragraph(f"Stage {name}: not run."))
            continue
        try:
            blocks += section(out, stages[name])
        except (OSError, KeyError, ValueError) as exc:
            blocks.append(paragraph(f"Stage {name}: its outputs could not be read ({exc})."))
    blocks += throughput_section(stages)
    return blocks


# ---------------------------------------------------------------------------- rendering


def render_markdown(blocks: list[Block], base: Path) -> str:
    parts = []
    for block in blocks:
        if block.kind == "h1":
            parts.append(f"# {block.text}")
        elif block.kind == "h2":
            parts.append(f"## {block.text}")
        elif block.kind == "p":
            parts.append(block.text)
        elif block.kind == "pre":
            parts.append(f"```\n{block.text}\n```")
        elif block.kind == "table":
            header, *rows = block.rows
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            parts.append("\n".join(lines))
        elif block.kind == "img" and block.path is not None:
            parts.append(f"![{block.text}]({os.path.relpath(block.path, base)})")
    return "\n\n".join(parts) + "\n"


def render_html(blocks: list[Block]) -> str:
    body = []
    for block in blocks:
        text = html.escape(block.text)
        if block.kind in ("h1", "h2"):
            body.append(f"<{block.kind}>{text}</{block.kind}>")
        elif block.kind == "p":
            body.append(f"<p>{_inline_code(text)}</p>")
        elif block.kind == "pre":
            body.append(f"<pre>{text}</pre>")
        elif block.kind == "table":
            header, *rows = block.rows
            head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
            cells = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif block.kind == "img" and block.path is not None:
            data = base64.b64encode(block.path.read_bytes()).decode()
            body.append(
                f'<figure><img alt="{text}" src="data:image/png;base64,{data}">'
                f"<figcaption>{text}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#eef}img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        "figcaption{color:#555;font-size:90%}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>CLOUD demo report</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _inline_code(text: str) -> str:
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def write_demo_report(out: Path, stages: dict[str, Any]) -> dict[str, Path]:
    """Write report.md and report.html into ``out``; returns their paths."""
    blocks = build_blocks(out, stages)
    paths = {"markdown": out / "report.md", "html": out / "report.html"}
    for key, text in (("markdown", render_markdown(blocks, out)), ("html", render_html(blocks))):
        atomic_write_text(paths[key], text)
    return paths
