"""Which matbench_phonons rows a stage that excluded by SCOPE string alone still saw, and the
test error on them: writes docs/results/matbench_phonons/leaked_crystals.json.

    python docs/results/leaked_crystals.py RUN_DIR [RUN_DIR ...]

A phonondb material is "leaked" when its canonical SCOPE string is no matbench_phonons string
but StructureMatcher (default tolerances) finds it the same crystal as a matbench_phonons
structure of the same reduced formula: what `exclude_tasks` now also blocks. Each RUN_DIR is
a `cloud finetune --task matbench_phonons` output; its results.json.gz is scored on the
leaked rows and on the others.
"""

from __future__ import annotations

import gzip
import json
import sys
import warnings
from pathlib import Path

from train.finetune.loading import load_task, same_crystals

OUT = Path(__file__).parent / "matbench_phonons" / "leaked_crystals.json"


def leaked_rows() -> dict[str, str]:
    """mb-id → phonondb mp-id of the crystals string equality let through."""
    benchmark = load_task("matbench_phonons", variant="canonical", keep_structures=True)
    stage = load_task("phonondb_max_frequency", variant="canonical", keep_structures=True)
    strings = {e.scope for e in benchmark.examples.values()}
    theirs, mine = benchmark.structures or {}, stage.structures or {}
    kept = {i: s for i, s in mine.items() if stage.examples[i].scope not in strings}
    pairs = {mb_id: mp_id for mp_id, mb_id in same_crystals(kept, theirs)}
    return dict(sorted(pairs.items()))


def errors(run_dir: Path, rows: set[str]) -> tuple[float, float]:
    """Test MAE of a run on ``rows`` and on every other row."""
    with gzip.open(run_dir / "results.json.gz", "rt") as handle:
        folds = json.load(handle)["tasks"]["matbench_phonons"]["results"]
    truth = {i: e.target for i, e in load_task("matbench_phonons").examples.items()}
    predicted = {k: v for fold in folds.values() for k, v in fold["data"].items()}
    inside = [abs(predicted[k] - truth[k]) for k in predicted if k in rows]
    outside = [abs(predicted[k] - truth[k]) for k in predicted if k not in rows]
    return sum(inside) / len(inside), sum(outside) / len(outside)


def main() -> None:
    warnings.filterwarnings("ignore")  # pymatgen's electronegativity warnings for noble gases
    pairs = leaked_rows()
    OUT.write_text(json.dumps(pairs, indent=0) + "\n")
    print(f"{len(pairs)} matbench_phonons rows are phonondb crystals under another string")
    for run in sys.argv[1:]:
        leaked, other = errors(Path(run), set(pairs))
        print(f"{run}: leaked rows MAE {leaked:.1f}, other rows {other:.1f}")


if __name__ == "__main__":
    main()
