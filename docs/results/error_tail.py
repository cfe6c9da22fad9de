"""Where a fine-tuning run's test error sits: per fold, the share of the absolute error
carried by the worst 1 % of rows and by rows with a target above a threshold, and the
median error of the model and of the run's random forest (prints a markdown table).

    python docs/results/error_tail.py TASK RUN_DIR [THRESHOLD]

RUN_DIR is a `cloud finetune --task TASK` output with the classical baseline; THRESHOLD
(default 4, for the refractive index of matbench_dielectric) splits off the tail.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

from train.finetune.loading import load_task


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    task, run_dir = argv[0], Path(argv[1])
    threshold = float(argv[2]) if len(argv) == 3 else 4.0
    targets = {i: e.target for i, e in load_task(task).examples.items() if e.target is not None}
    with gzip.open(run_dir / "results.json.gz", "rt") as handle:
        document = json.load(handle)
    folds = document["tasks"][task]["results"]
    forest = document["user_metadata"]["baselines"]["classical"]["results"]
    print(
        f"| fold | MAE | worst 1 % of rows: share of the error | MAE without them "
        f"| rows above {threshold:g}: count, share of the error | median error "
        "| forest's median error |"
    )
    print("|---|---|---|---|---|---|---|")
    for fold, result in folds.items():
        ids = [i for i in result["data"] if i in targets]
        truth = np.array([targets[i] for i in ids])
        error = np.abs(np.array([result["data"][i] for i in ids]) - truth)
        forest_error = np.abs(np.array([forest[fold]["data"][i] for i in ids]) - truth)
        worst = np.argsort(-error)[: max(1, len(ids) // 100)]
        rest = np.setdiff1d(np.arange(len(ids)), worst)
        tail = truth > threshold
        print(
            f"| {fold} | {error.mean():.4f} | {error[worst].sum() / error.sum():.0%} "
            f"| {error[rest].mean():.4f} | {tail.sum()}, {error[tail].sum() / error.sum():.0%} "
            f"| {np.median(error):.4f} | {np.median(forest_error):.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
