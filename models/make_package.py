"""Write a shipped checkpoint: an export package plus its provenance, under models/<name>/.

    python models/make_package.py PACKAGE --name NAME --commands FILE \
        [--finetune RUN_DIR ...] [--twin RUN_DIR ...] [--forest RUN_DIR ...]

PACKAGE is what ``cloud export`` wrote from the pre-training run, or the ``model/`` of a
``cloud finetune`` run (an encoder taken through an intermediate supervised stage; its
provenance then says which). The shipped package is the
same model and tokenizer re-saved with ``cloud.export.save_pretrained`` (so SHA256SUMS covers
every file) with ``metadata["provenance"]``: the commands that made it (FILE, verbatim), and
for each fine-tuning run its task, folds, scores of the model and of every baseline. A
``--twin`` is the random-init twin of a ``--finetune`` run made as a run of its own (same
task, folds and recipe, the encoder re-initialised: ``docs/results/random_init_package.py``);
its scores become that run's ``random_init`` baseline; a ``--forest`` run of the same task and
folds lends its random forest likewise. The same facts are written as ``PROVENANCE.md``
beside the model card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cloud.export import load_pretrained, save_pretrained

MAX_BYTES = 25 * 1024 * 1024


def finetune_figures(run_dir: Path) -> dict[str, Any]:
    """Task, metric and fold statistics of one ``cloud finetune`` run (its summary.json)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metric = summary["metric"]
    return {
        "task": summary["task"],
        "metric": metric,
        "unit": summary["unit"],
        "folds": summary["folds"],
        "is_sample": summary["is_sample"],
        "ensemble": summary.get("ensemble", 1),
        "model": summary["scores"][metric],
        "baselines": {name: s[metric] for name, s in summary["baselines"].items()},
        "mean_predictor": summary["baseline_scores"][metric],
        "cpu_time_s": summary["cpu_time_s"],
    }


def with_baselines(
    runs: list[dict[str, Any]], twins: list[dict[str, Any]], forests: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``runs`` with the baselines they did not fit themselves taken from other runs of the
    same task and folds: each twin's model scores as ``random_init``, each forest run's
    ``classical`` baseline as its own (the forest depends on the fold's rows and the seed
    only). A run that matches no run, or a baseline the run has already, is an error: the
    figures would not be of the same rows, or two would compete."""
    lenders = (
        ("random_init", twins, lambda twin: twin["model"]),
        ("classical", forests, lambda run: run["baselines"].get("classical")),
    )
    for name, sources, lent in lenders:
        for source in sources:
            key = (source["task"], source["folds"])
            matches = [r for r in runs if (r["task"], r["folds"]) == key]
            if len(matches) != 1:
                raise SystemExit(f"{name} from {key[0]} {key[1]}: matches {len(matches)} runs")
            (run,) = matches
            if name in run["baselines"]:
                raise SystemExit(f"{run['task']}: the run has its own {name} baseline already")
            scores = lent(source)
            if scores is None:
                raise SystemExit(f"{name} from {key[0]}: that run has no {name} baseline")
            run["baselines"][name] = scores
            run.setdefault("baselines_from_other_runs", []).append(name)
    return runs


def stage_lines(stage: dict[str, Any] | None) -> list[str]:
    """The intermediate supervised stage a fine-tuned package went through, if any."""
    if not stage:
        return []
    config = stage.get("config", {})
    scores = stage.get("test_scores", {})
    return [
        f"- then fine-tuned on `{stage['task']}` ({stage['target']}, {stage['unit']}): "
        f"{stage['n_train']:,} training rows, best epoch {stage['best_epoch']} of "
        f"{config.get('epochs')}, test MAE {scores.get('mae', float('nan')):.4g} on its held-out "
        f"part; every structure of {', '.join(config.get('exclude_tasks', [])) or 'no task'} "
        "kept out of that stage (same SCOPE string or the same crystal by StructureMatcher)",
        "- the head predicts that property (`cloud predict`); `cloud finetune` replaces it",
    ]


def provenance_markdown(name: str, metadata: dict[str, Any], commands: str) -> str:
    training = metadata.get("training") or {}
    data = metadata.get("training_data") or {}
    lines = [
        f"# Provenance of `{name}`",
        "",
        f"- flavour `{training.get('flavour')}`, {training.get('steps')} optimizer steps, "
        f"{training.get('tokens'):,} training tokens, held-out masked-token loss "
        f"{training.get('val_loss', float('nan')):.4f} nats "
        f"(accuracy {training.get('val_accuracy', float('nan')):.3f})",
        f"- corpus: {data.get('num_samples'):,} unique `{data.get('variant')}` SCOPE strings "
        f"from {', '.join(data.get('sources', []))}",
        f"- kept out of the corpus: {json.dumps(data.get('excluded'))}",
        *stage_lines(metadata.get("finetune")),
        "",
        "## Fine-tuning figures (mean ± std over folds)",
        "",
        "| task | metric | this model | random init | random forest | mean predictor |",
        "|---|---|---|---|---|---|",
    ]
    for run in metadata["provenance"]["finetune"]:
        base = run["baselines"]

        def cell(stats: dict[str, float] | None) -> str:
            return "—" if stats is None else f"{stats['mean']:.4g} ± {stats['std']:.2g}"

        lines.append(
            f"| {run['task']} | {run['metric']} | {cell(run['model'])} | "
            f"{cell(base.get('random_init'))} | {cell(base.get('classical'))} | "
            f"{cell(run['mean_predictor'])} |"
        )
    lines += ["", "## Commands", "", "```bash", commands.rstrip(), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package")
    parser.add_argument("--name", required=True)
    parser.add_argument("--commands", required=True, help="file with the commands, verbatim")
    parser.add_argument("--finetune", nargs="*", default=[], help="cloud finetune run dirs")
    parser.add_argument(
        "--twin", nargs="*", default=[], help="random-init twins of --finetune runs, run apart"
    )
    parser.add_argument(
        "--forest", nargs="*", default=[], help="runs whose random forest a --finetune run lacks"
    )
    args = parser.parse_args()
    loaded = load_pretrained(args.package)
    commands = Path(args.commands).read_text()
    metadata = dict(loaded.metadata or {})
    metadata.pop("source", None)  # paths of this machine's run directories
    metadata["provenance"] = {
        "commands": commands,
        "finetune": with_baselines(
            [finetune_figures(Path(run)) for run in args.finetune],
            [finetune_figures(Path(run)) for run in args.twin],
            [finetune_figures(Path(run)) for run in args.forest],
        ),
    }
    out = Path(__file__).parent / args.name
    save_pretrained(
        loaded.model,
        loaded.tokenizer,
        out,
        metadata=metadata,
        extra_files={"PROVENANCE.md": provenance_markdown(args.name, metadata, commands)},
        overwrite=True,
    )
    size = sum(p.stat().st_size for p in out.iterdir())
    if size > MAX_BYTES:
        raise SystemExit(
            f"{out}: {size:,} bytes, more than the {MAX_BYTES:,} a shipped model may use"
        )
    print(f"wrote {out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
