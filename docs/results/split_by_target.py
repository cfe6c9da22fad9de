"""Test MAE of fine-tuning runs on one task, over all rows and split at a target value (for
band gaps, 0: metals against non-metals), the run's random forest beside it when it fitted
one (prints a markdown table).

    python docs/results/split_by_target.py TASK THRESHOLD RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a `cloud finetune` output whose test rows are TASK's (its own task may be
another with the same test part, e.g. pbe_band_gap and mp20_band_gap); its results.json.gz
holds the test predictions by id, and the targets come from TASK's own loader.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

from train.finetune.loading import load_task


def split_maes(truth: np.ndarray, predicted: np.ndarray, threshold: float) -> str:
    """'all | above | at or below' MAE cells ('—' for a side with no rows: a run on a task
    that keeps one side only, e.g. pbe_band_gap_nonmetals)."""
    error = np.abs(predicted - truth)
    above = truth > threshold
    sides = [f"{part.mean():.3f}" if part.size else "—" for part in (error[above], error[~above])]
    return f"{error.mean():.4f} | {sides[0]} | {sides[1]}"


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    task, threshold, runs = argv[0], float(argv[1]), [Path(a) for a in argv[2:]]
    targets = {i: e.target for i, e in load_task(task).examples.items() if e.target is not None}
    print(f"| run | fold | rows | MAE | target > {threshold:g} | target ≤ {threshold:g} |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        with gzip.open(run / "results.json.gz", "rt") as handle:
            document = json.load(handle)
        (run_task,) = document["tasks"].values()
        forest = document["user_metadata"].get("baselines", {}).get("classical")
        for fold, result in run_task["results"].items():
            predictions = result["data"]
            ids = sorted(set(predictions) & set(targets))
            truth = np.array([targets[i] for i in ids])
            model = np.array([float(predictions[i]) for i in ids])
            print(f"| {run.name} | {fold} | {len(ids)} | {split_maes(truth, model, threshold)} |")
            if forest is not None:
                data = forest["results"][fold]["data"]
                trees = np.array([float(data[i]) for i in ids])
                cells = split_maes(truth, trees, threshold)
                print(f"| {run.name}: random forest | {fold} | {len(ids)} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
