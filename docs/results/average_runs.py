"""Test MAE per fold of the average of several fine-tuning runs' predictions (a post-hoc
ensemble of differently initialised models), beside each run's own: prints a markdown table.

    python docs/results/average_runs.py TASK RUN_DIR RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a `cloud finetune --task TASK` output over the same folds; its
results.json.gz (Matbench layout) holds the test predictions by id. A fold is averaged over
the ids every run predicted (all of them, when the runs excluded the same rows); the targets
come from the task's own loader, so the scores are the ones `cloud finetune` reports.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

from train.finetune.loading import load_task


def fold_predictions(run_dir: Path, task: str) -> dict[str, dict[str, float]]:
    """fold name → {id: prediction} of one run."""
    with gzip.open(run_dir / "results.json.gz", "rt") as handle:
        folds = json.load(handle)["tasks"][task]["results"]
    return {
        fold: {i: float(p) for i, p in result["data"].items()} for fold, result in folds.items()
    }


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    task, runs = argv[0], [Path(a) for a in argv[1:]]
    targets = {i: e.target for i, e in load_task(task).examples.items() if e.target is not None}
    per_run = [fold_predictions(run, task) for run in runs]
    folds = sorted(set.intersection(*(set(p) for p in per_run)))
    names = [run.name for run in runs]
    print("| fold | " + " | ".join(names) + " | average |")
    print("|---|" + "---|" * (len(names) + 1))
    columns: list[list[float]] = [[] for _ in range(len(runs) + 1)]
    for fold in folds:
        ids = sorted(set.intersection(*(set(p[fold]) for p in per_run)) & set(targets))
        truth = np.array([targets[i] for i in ids])
        predictions = np.array([[p[fold][i] for i in ids] for p in per_run])
        maes = [float(np.mean(np.abs(row - truth))) for row in predictions]
        maes.append(float(np.mean(np.abs(predictions.mean(axis=0) - truth))))
        for column, value in zip(columns, maes, strict=True):
            column.append(value)
        print(f"| {fold} ({len(ids)} rows) | " + " | ".join(f"{v:.4f}" for v in maes) + " |")
    means = [f"**{np.mean(c):.4f} ± {np.std(c):.3f}**" for c in columns]
    print("| mean ± std | " + " | ".join(means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
