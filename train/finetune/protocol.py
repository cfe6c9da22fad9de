"""The Matbench protocol on a loaded task: its folds (official, given, by index or seeded) and
``split_fold``, which turns a fold into the ids a run uses.

The validation set for early stopping is carved (seeded) from the training fold and removed
from it, unless the task gives one; ``assert_disjoint`` checks that train, validation and
test share no id, since one leak would void the benchmark.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

from train.finetune.tasks import (
    Example,
    Fold,
    FoldSplit,
    GivenSplits,
    IndexSplit,
    LoadReport,
    MatbenchFolds,
    ResolvedFiles,
    SeededSplit,
    Task,
    TaskData,
)


def _build_folds(
    task: Task, resolved: ResolvedFiles, examples: dict[str, Example], report: LoadReport
) -> list[Fold]:
    splits = task.splits
    if isinstance(splits, MatbenchFolds):
        return _matbench_folds(splits, resolved, examples, report)
    if isinstance(splits, GivenSplits):
        by_role: dict[str, list[str]] = {}
        for example in examples.values():
            by_role.setdefault(example.role, []).append(example.id)
        val = tuple(by_role.get("val", [])) if splits.val is not None else None
        return [Fold("fold_0", tuple(by_role.get("train", [])), tuple(by_role["test"]), val)]
    if isinstance(splits, SeededSplit):
        return [seeded_fold(list(examples), splits.test_fraction, splits.seed)]
    return [_index_fold(splits, resolved, examples)]


def seeded_fold(ids: Sequence[str], test_fraction: float, seed: int) -> Fold:
    """``fold_0`` with a seeded ``test_fraction`` of ``ids`` as its test part, drawn as the
    validation carve-out is (``carve_validation``)."""
    train, test = carve_validation(ids, test_fraction, seed)
    return Fold("fold_0", tuple(train), tuple(test))


def read_matbench_folds(path: str | os.PathLike[str], matbench_name: str) -> list[Fold]:
    """The official folds of one dataset from a Matbench validation JSON."""
    with open(path) as handle:
        value = json.load(handle)
    splits = value.get("splits", value)
    if matbench_name not in splits:
        raise ValueError(f"{path}: no splits for {matbench_name!r} (has {sorted(splits)})")
    folds = splits[matbench_name]
    return [
        Fold(name, tuple(folds[name]["train"]), tuple(folds[name]["test"]))
        for name in sorted(folds, key=lambda n: int(n.rsplit("_", 1)[-1]))
    ]


def _matbench_folds(
    splits: MatbenchFolds, resolved: ResolvedFiles, examples: dict[str, Example], report: LoadReport
) -> list[Fold]:
    official = read_matbench_folds(resolved.paths["folds"], splits.matbench_name)
    official_ids = set(official[0].train_ids) | set(official[0].test_ids)
    unknown = sorted(set(examples) - official_ids)
    if unknown:
        raise ValueError(
            f"{resolved.paths['data']}: {len(unknown)} row ids are not in the official "
            f"{splits.matbench_name} folds (e.g. {unknown[:3]}); wrong file or row keys"
        )
    if len(examples) == len(official_ids):
        return official
    # A subset (the shipped sample): the official folds restricted to the rows present.
    report.notes.append(
        f"only {len(examples)} of the {len(official_ids)} official rows are present: every "
        "fold is the official fold restricted to them (scores are NOT comparable to the "
        "Matbench leaderboard)"
    )
    restricted = []
    for fold in official:
        train = tuple(i for i in fold.train_ids if i in examples)
        test = tuple(i for i in fold.test_ids if i in examples)
        report.notes.append(
            f"{fold.name}: train {len(train)}/{len(fold.train_ids)}, "
            f"test {len(test)}/{len(fold.test_ids)} official rows"
        )
        restricted.append(Fold(fold.name, train, test))
    return restricted


def _index_fold(splits: IndexSplit, resolved: ResolvedFiles, examples: dict[str, Example]) -> Fold:
    ordered = list(examples)  # file order

    def ids(role: str) -> tuple[str, ...]:
        text = resolved.paths[role].read_text()
        indices = [int(token) for token in text.split()]
        bad = [i for i in indices if not 0 <= i < len(ordered)]
        if bad:
            raise ValueError(
                f"{resolved.paths[role]}: row indices {bad[:5]} outside 0-{len(ordered) - 1}"
            )
        return tuple(ordered[i] for i in indices)

    val = ids("val_index") if splits.val_index is not None else None
    return Fold("fold_0", ids("train_index"), ids("test_index"), val)


def split_fold(
    data: TaskData, fold: Fold, *, val_fraction: float = 0.1, seed: int = 0
) -> FoldSplit:
    """The training, validation and test ids of one fold.

    Without a given validation set, ``val_fraction`` of the fold's usable training rows
    (seeded shuffle) become the validation set and leave the training set. Unusable
    training/validation rows are returned in ``excluded`` with their reason; every test id
    is kept (each gets a prediction). Asserts that the three sets are disjoint.
    """
    if fold.val_ids is None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    excluded = {
        i: data.examples[i].error or ""
        for i in (*fold.train_ids, *(fold.val_ids or ()))
        if not data.examples[i].ok
    }
    usable_train = [i for i in fold.train_ids if i not in excluded]
    if fold.val_ids is not None:
        train, val = usable_train, [i for i in fold.val_ids if i not in excluded]
    else:
        train, val = carve_validation(usable_train, val_fraction, seed)
    split = FoldSplit(fold.name, tuple(train), tuple(val), tuple(fold.test_ids), excluded)
    assert_disjoint(split)
    if not split.train_ids or not split.val_ids:
        raise ValueError(
            f"task {data.task.name} {fold.name}: {len(split.train_ids)} training and "
            f"{len(split.val_ids)} validation rows; need at least one of each"
        )
    return split


def carve_validation(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val): a seeded ``fraction`` of ``ids`` (at least one) becomes validation."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(fraction * len(order))), max(len(order) - 1, 0))
    val = set(order[:n_val])
    # Keep the original order in both parts: it makes runs easier to compare by eye.
    return [i for i in ids if i not in val], [i for i in ids if i in val]


def assert_disjoint(split: FoldSplit) -> None:
    """No id may be in two of train / validation / test (a leak would void the benchmark)."""
    train, val, test = set(split.train_ids), set(split.val_ids), set(split.test_ids)
    overlaps = {
        "train∩val": train & val,
        "train∩test": train & test,
        "val∩test": val & test,
    }
    leaks = {name: sorted(ids)[:5] for name, ids in overlaps.items() if ids}
    if leaks:
        raise AssertionError(f"{split.fold}: overlapping splits {leaks}")
