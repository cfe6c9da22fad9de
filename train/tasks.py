"""Fine-tuning tasks: each benchmark declared once, loaded into SCOPE strings and folds.

A ``Task`` says where its data live (relative to a data root), how to read them, which
column is the target, how it is scored and how it is split:

* ``MatbenchFolds``: the official Matbench v0.1 5-fold splits by mb-id (row i of the dataset
  is ``mb-<name>-{i+1:04d}``);
* ``GivenSplits``: given train / (val) / test files;
* ``IndexSplit``: one data file and files of row indices per split.

Adding a task is one ``register_task(Task(...))``. ``load_task`` resolves the files under the
data root (``../shared/data`` beside the clone, or ``$CLOUD_SHARED_DATA``), falling back to
the sample shipped in ``data/`` when the root lacks them (the folds are then restricted to
the rows present, and the report says so). Every row is kept: a structure that cannot be
read or encoded, or a row without a target, carries the reason in ``Example.error`` and is
counted in the ``LoadReport``; nothing is dropped silently.

``split_fold`` turns a fold into the ids actually used: the validation set for early
stopping is carved (seeded) from the training fold and removed from it, unless the task
gives one, and the function asserts that train, validation and test are disjoint.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.common.paths import REPO

SAMPLE_ROOT = REPO / "data"
"""The small real sample shipped with the repository."""
MATBENCH_FOLDS_FILE = "matbench/matbench_v0.1_validation_dielectric_phonons.json"

REGRESSION_METRICS = ("mae", "rmse", "mape", "max_error")
"""Matbench's per-fold regression scores (``matbench.constants.REG_METRICS``)."""
CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1", "rocauc")
"""Matbench's per-fold classification scores (``matbench.constants.CLF_METRICS``)."""
HIGHER_IS_BETTER = frozenset({"accuracy", "balanced_accuracy", "f1", "rocauc"})


def default_data_root() -> Path:
    """``$CLOUD_SHARED_DATA``, else ``../shared/data`` beside the clone."""
    return Path(os.environ.get("CLOUD_SHARED_DATA", REPO.parent / "shared" / "data"))


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class MatbenchFolds:
    """The official Matbench v0.1 cross-validation folds of one dataset."""

    data: str
    """Dataset file relative to the data root (pandas "columns" JSON or list of records)."""
    matbench_name: str
    """Dataset key in the folds file, e.g. ``matbench_dielectric``."""
    folds_file: str = MATBENCH_FOLDS_FILE
    """Official splits by mb-id, relative to the data root."""
    sample: str | None = None
    """Subset shipped in ``data/`` (same row keys) used when the data root lacks ``data``."""

    def files(self) -> dict[str, str]:
        return {"data": self.data, "folds": self.folds_file}

    def sample_files(self) -> dict[str, str] | None:
        return None if self.sample is None else {"data": self.sample, "folds": self.folds_file}


@dataclass(frozen=True)
class GivenSplits:
    """Given train / test files and optionally a validation file for early stopping."""

    train: str
    """Training file relative to the data root."""
    test: str
    """Test file relative to the data root (touched once, at the end)."""
    val: str | None = None
    """Validation file; None: carve the validation set from ``train``."""

    def files(self) -> dict[str, str]:
        files = {"train": self.train, "test": self.test}
        if self.val is not None:
            files["val"] = self.val
        return files

    def sample_files(self) -> dict[str, str] | None:
        # The shipped sample mirrors the data root's layout (data/aflow/debye_temperature/…).
        return self.files()


@dataclass(frozen=True)
class IndexSplit:
    """One data file and text files of 0-based row indices (whitespace-separated)."""

    data: str
    """Data file relative to the data root."""
    train_index: str
    """Row indices of the training set."""
    test_index: str
    """Row indices of the test set."""
    val_index: str | None = None
    """Row indices of the validation set; None: carve it from the training set."""

    def files(self) -> dict[str, str]:
        files = {"data": self.data, "train_index": self.train_index, "test_index": self.test_index}
        if self.val_index is not None:
            files["val_index"] = self.val_index
        return files

    def sample_files(self) -> dict[str, str] | None:
        return self.files()


Splits = MatbenchFolds | GivenSplits | IndexSplit


@dataclass(frozen=True)
class Task:
    """One fine-tuning benchmark."""

    name: str
    """Registry key, used on the command line (``--task``)."""
    target: str
    """Property (column) holding the target in the records the reader yields."""
    splits: Splits
    """Where the data are and how they are split."""
    task_type: str = "regression"
    """``regression`` or ``classification``."""
    metric: str = "mae"
    """Headline score: mae for regression; rocauc, accuracy, … for classification."""
    reader: str = "records"
    """Key in ``READERS``: ``records`` (any format ``cluster.readers`` reads) or ``matbench``
    (the same, with rows named by their official mb-ids)."""
    unit: str = ""
    """Unit of the target, for tables and plots."""
    description: str = ""
    """One line about the data and the split (shown in reports)."""
    label: Callable[[Any], Any] | None = None
    """Turns the raw column value into the target (e.g. band gap → is_metal); None: as is."""
    classes: tuple[Any, ...] | None = None
    """Class labels in output order (classification); None: the sorted training labels."""
    reference_scores: Mapping[str, float] = field(default_factory=dict)
    """Published scores of the headline metric, for context in reports: {model: score}."""
    reference_source: str = ""
    """Where ``reference_scores`` come from."""

    def __post_init__(self) -> None:
        if self.task_type not in ("regression", "classification"):
            raise ValueError(f"task {self.name}: task_type must be regression or classification")
        valid = REGRESSION_METRICS if self.task_type == "regression" else CLASSIFICATION_METRICS
        if self.metric not in valid:
            raise ValueError(f"task {self.name}: metric {self.metric!r} not in {valid}")
        if self.reader not in READERS:
            raise ValueError(f"task {self.name}: unknown reader {self.reader!r}")

    @property
    def is_regression(self) -> bool:
        return self.task_type == "regression"

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER


TASKS: dict[str, Task] = {}


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add a task to the registry (``replace`` to redefine one)."""
    if task.name in TASKS and not replace:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}") from None


def task_names() -> list[str]:
    return sorted(TASKS)


# --------------------------------------------------------------------------- loaded data


@dataclass
class Example:
    """One row of a task: its id, SCOPE string and target, or why it cannot be used."""

    id: str
    """mb-id for Matbench tasks, else the reader's id (material id, or ``<file>:<row>``)."""
    position: str
    """Where the row was read (``<path>:<index>``)."""
    role: str
    """The file it came from: ``data`` or ``train`` / ``val`` / ``test``."""
    target: Any = None
    """Target value (after ``Task.label``); None when missing."""
    scope: str | None = None
    """SCOPE string of the structure; None when it could not be read or encoded."""
    error: str | None = None
    """Why the row cannot be used (unreadable, unencodable, no target); None when usable."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Fold:
    """One train/test partition by id (the validation set may be given)."""

    name: str
    """``fold_<k>``, as Matbench names folds."""
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    val_ids: tuple[str, ...] | None = None
    """Given validation ids; None: carved from ``train_ids`` by ``split_fold``."""


@dataclass
class LoadReport:
    """What loading found: files used, sample fallback, rows that cannot be used and why."""

    task: str
    root: str
    files: dict[str, str]
    is_sample: bool = False
    n_rows: int = 0
    n_usable: int = 0
    problems: Counter = field(default_factory=Counter)
    """Counts of unusable rows by reason kind (``read: …``, ``encode: …``, ``target: …``)."""
    examples_of_problems: dict[str, list[str]] = field(default_factory=dict)
    """A few ids per reason kind, with the full message."""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        source = "SHIPPED SAMPLE (data/)" if self.is_sample else "data root"
        out = [f"task {self.task}: {self.n_rows} rows from {source} {self.root}"]
        out += [f"  {role}: {path}" for role, path in self.files.items()]
        unusable = self.n_rows - self.n_usable
        out.append(f"  usable rows: {self.n_usable}; unusable: {unusable}")
        for reason, count in self.problems.most_common():
            shown = "; ".join(self.examples_of_problems.get(reason, [])[:3])
            out.append(f"    {count} × {reason} (e.g. {shown})")
        out += [f"  note: {note}" for note in self.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "root": self.root,
            "files": self.files,
            "is_sample": self.is_sample,
            "n_rows": self.n_rows,
            "n_usable": self.n_usable,
            "problems": dict(self.problems),
            "examples_of_problems": self.examples_of_problems,
            "notes": self.notes,
        }


@dataclass
class TaskData:
    """A loaded task: every row by id, the folds, and the load report."""

    task: Task
    examples: dict[str, Example]
    folds: list[Fold]
    report: LoadReport

    def fold(self, index: int) -> Fold:
        if not 0 <= index < len(self.folds):
            raise ValueError(
                f"task {self.task.name} has folds 0-{len(self.folds) - 1}, not {index}"
            )
        return self.folds[index]


@dataclass(frozen=True)
class FoldSplit:
    """The ids a fine-tuning run uses on one fold; the three sets are disjoint."""

    fold: str
    train_ids: tuple[str, ...]
    """Usable training rows (validation rows removed)."""
    val_ids: tuple[str, ...]
    """Usable validation rows, for early stopping only."""
    test_ids: tuple[str, ...]
    """Every test id of the fold, usable or not (each one gets a prediction)."""
    excluded: dict[str, str]
    """Training / validation ids that could not be used, with the reason."""


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class ResolvedFiles:
    root: Path
    paths: dict[str, Path]
    is_sample: bool


def resolve_files(
    task: Task, data_root: str | os.PathLike[str] | None = None, *, allow_sample: bool = True
) -> ResolvedFiles:
    """The task's files under ``data_root`` (default ``default_data_root()``), else the
    shipped sample when the task has one and ``allow_sample``."""
    root = Path(data_root) if data_root is not None else default_data_root()
    files = task.splits.files()
    paths = {role: root / rel for role, rel in files.items()}
    if all(p.is_file() for p in paths.values()):
        return ResolvedFiles(root, paths, is_sample=False)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    sample = task.splits.sample_files() if allow_sample else None
    if sample is not None:
        sample_paths = {role: SAMPLE_ROOT / rel for role, rel in sample.items()}
        if all(p.is_file() for p in sample_paths.values()):
            return ResolvedFiles(SAMPLE_ROOT, sample_paths, is_sample=True)
    raise FileNotFoundError(
        f"task {task.name}: missing {missing}"
        + ("" if sample is None else " and no complete shipped sample in data/")
        + "; pass --data-root pointing at the shared data"
    )


# --------------------------------------------------------------------------- readers


@dataclass
class Row:
    """What a reader yields: an id and a ``cluster.readers.Record``."""

    id: str
    record: Any


def read_records(path: Path, task: Task) -> list[Row]:
    """Any format ``cluster.readers`` reads, rows named by the reader's ids."""
    from cluster.readers import read_file

    return [Row(record.source_id, record) for record in read_file(path)]


def read_matbench(path: Path, task: Task) -> list[Row]:
    """A Matbench dataset file (or a subset with the original row keys): rows named by
    their official mb-ids, ``mb-<name>-{row + 1:0Nd}`` with N the digits of the official ids."""
    from cluster.readers import read_file

    splits = task.splits
    if not isinstance(splits, MatbenchFolds):
        raise ValueError(f"task {task.name}: the matbench reader needs MatbenchFolds splits")
    records = list(read_file(path))
    labels = _matbench_row_labels(path)
    if len(labels) != len(records):
        raise ValueError(
            f"{path}: {len(records)} records but {len(labels)} table rows; not a Matbench layout"
        )
    stem = splits.matbench_name.removeprefix("matbench_").replace("_", "-")
    width = _MATBENCH_ID_WIDTH
    return [
        Row(_mb_id(stem, label, width), rec) for label, rec in zip(labels, records, strict=True)
    ]


# Matbench pads row numbers to the digits of the full dataset's row count (4,764 and 1,265
# rows: 4 digits), also for a subset; a wrong width would fail the fold check loudly.
_MATBENCH_ID_WIDTH = 4


def _mb_id(stem: str, label: Any, width: int) -> str:
    text = str(label)
    if not re.fullmatch(r"\d+", text):
        return text  # already an id (a table indexed by mb-id)
    return f"mb-{stem}-{int(text) + 1:0{width}d}"


def _matbench_row_labels(path: Path) -> list[Any]:
    """The row keys of a Matbench JSON in the order the reader yields its rows."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        value = json.load(handle)
    if isinstance(value, list):
        return list(range(len(value)))
    if isinstance(value, dict) and isinstance(value.get("structure"), dict):
        return list(value["structure"])  # pandas "columns": {"structure": {"0": …}}
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        return list(value.get("index") or range(len(value["data"])))  # orient="split"
    raise ValueError(f"{path}: not a Matbench table (list, columns or split layout)")


READERS: dict[str, Callable[[Path, Task], list[Row]]] = {
    "records": read_records,
    "matbench": read_matbench,
}


# --------------------------------------------------------------------------- loading


def load_task(
    task: Task | str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    variant: str = "cloud",
    allow_sample: bool = True,
) -> TaskData:
    """Read, label and SCOPE-encode every row of a task and build its folds."""
    task = get_task(task) if isinstance(task, str) else task
    resolved = resolve_files(task, data_root, allow_sample=allow_sample)
    report = LoadReport(
        task=task.name,
        root=str(resolved.root),
        files={role: str(p) for role, p in resolved.paths.items()},
        is_sample=resolved.is_sample,
    )
    examples = _load_examples(task, resolved, variant)
    _count_problems(examples.values(), report)
    folds = _build_folds(task, resolved, examples, report)
    return TaskData(task, examples, folds, report)


def _data_roles(splits: Splits) -> list[str]:
    if isinstance(splits, GivenSplits):
        return list(splits.files())
    return ["data"]


def _load_examples(task: Task, resolved: ResolvedFiles, variant: str) -> dict[str, Example]:
    reader = READERS[task.reader]
    examples: dict[str, Example] = {}
    for role in _data_roles(task.splits):
        path = resolved.paths[role]
        for row in reader(path, task):
            if row.id in examples:
                raise ValueError(
                    f"task {task.name}: id {row.id!r} occurs twice ({examples[row.id].position} "
                    f"and {row.record.position}); ids must be unique across the task's files"
                )
            examples[row.id] = _example(task, row, role, variant, path)
    return examples


def _example(task: Task, row: Row, role: str, variant: str, path: Path) -> Example:
    record = row.record
    example = Example(id=row.id, position=record.position, role=role)
    if record.error is not None or record.structure is None:
        example.error = f"read: {record.error or 'no structure'}"
        return example
    target, target_error = _target_of(task, record.properties)
    example.target = target
    scope, scope_error = _scope_of(record, variant, path)
    example.scope = scope
    example.error = scope_error or target_error
    return example


def _target_of(task: Task, properties: Mapping[str, Any]) -> tuple[Any, str | None]:
    if task.target not in properties:
        keys = ", ".join(sorted(properties)[:12])
        return None, f"target: no column {task.target!r} (columns: {keys})"
    value = properties[task.target]
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None, f"target: missing {task.target}"
    if task.label is not None:
        value = task.label(value)
    if task.is_regression:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None, f"target: {task.target}={value!r} is not a number"
    return value, None


def _scope_of(record: Any, variant: str, path: Path) -> tuple[str | None, str | None]:
    from tokenizer import ScopeError

    key = (str(path), _file_stamp(path), record.position, variant)
    cached = _SCOPE_CACHE.get(key)
    if cached is not None:
        return cached
    try:
        result: tuple[str | None, str | None] = (encode_structure(record.structure, variant), None)
    except ScopeError as exc:
        result = (None, f"encode: {exc}")
    if len(_SCOPE_CACHE) < _SCOPE_CACHE_SIZE:
        _SCOPE_CACHE[key] = result
    return result


# The symmetry search is the slow part of loading (~6 ms per structure); a process that loads
# the same task again (5 folds, tests, predict after finetune) reuses the strings.
_SCOPE_CACHE: dict[tuple[str, tuple[int, int], str, str], tuple[str | None, str | None]] = {}
_SCOPE_CACHE_SIZE = 200_000


def _file_stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def encode_structure(structure: Any, variant: str = "cloud") -> str:
    """The SCOPE string of a structure (``tokenizer.encode``), spglib's chatter silenced."""
    from tokenizer import encode

    with _quiet_stderr():
        return encode(structure, variant)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (spglib prints 'ssm_get_exact_positions failed' on hard cells,
    which would bury the report of a whole data set)."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def reason_kind(error: str) -> str:
    """The kind of an error message, for counting: its text before any parenthesised detail."""
    return re.split(r"[(\[{]", error, maxsplit=1)[0].strip()[:100]


def _count_problems(examples: Iterable[Example], report: LoadReport) -> None:
    for example in examples:
        report.n_rows += 1
        if example.ok:
            report.n_usable += 1
            continue
        kind = reason_kind(example.error or "")
        report.problems[kind] += 1
        shown = report.examples_of_problems.setdefault(kind, [])
        if len(shown) < 5:
            shown.append(f"{example.id}: {example.error}")


# --------------------------------------------------------------------------- folds


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
    return [_index_fold(splits, resolved, examples)]


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


# --------------------------------------------------------------------------- scoring


def score_regression(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    """Matbench's regression scores: mae, rmse, mape, max_error (floats)."""
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    error = pred - truth
    # sklearn's MAPE guards zero targets with machine epsilon; so does Matbench.
    denominator = np.maximum(np.abs(truth), np.finfo(np.float64).eps)
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mape": float(np.mean(np.abs(error) / denominator)),
        "max_error": float(np.max(np.abs(error))),
    }


def score_classification(
    y_true: Sequence[int], probabilities: np.ndarray, n_classes: int
) -> dict[str, float]:
    """accuracy, balanced_accuracy, f1 (binary: of class 1; else macro) and rocauc
    (binary; one-vs-rest mean for more classes) from class probabilities [N, C]."""
    truth = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64).reshape(len(truth), n_classes)
    pred = probs.argmax(axis=1)
    recalls, f1s = [], []
    for c in range(n_classes):
        true_c, pred_c = truth == c, pred == c
        tp = float(np.sum(true_c & pred_c))
        if true_c.any():
            recalls.append(tp / float(true_c.sum()))
        denominator = float(true_c.sum() + pred_c.sum())
        f1s.append(2 * tp / denominator if denominator else 0.0)
    aucs = [roc_auc(truth == c, probs[:, c]) for c in range(n_classes)]
    return {
        "accuracy": float(np.mean(pred == truth)),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "f1": f1s[1] if n_classes == 2 else float(np.mean(f1s)),
        "rocauc": aucs[1] if n_classes == 2 else float(np.nanmean(aucs)),
    }


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged); NaN with one class."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fold_statistics(values: Sequence[float]) -> dict[str, float]:
    """Matbench's fold-distribution statistics: mean, max, min, std (population)."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "max": float(array.max()),
        "min": float(array.min()),
        "std": float(array.std()),
    }


def iter_tasks() -> Iterator[Task]:
    yield from (TASKS[name] for name in task_names())


# --------------------------------------------------------------------------- the registry

_MATBENCH_LEADERBOARD = "Matbench v0.1 leaderboard (matbench.materialsproject.org), MAE"


def _aflow(prop: str, unit: str, description: str) -> Task:
    return Task(
        name=f"aflow_{prop}",
        target=prop,
        splits=GivenSplits(
            train=f"aflow/{prop}/train.csv.gz",
            val=f"aflow/{prop}/val.csv.gz",
            test=f"aflow/{prop}/test.csv.gz",
        ),
        unit=unit,
        description=f"AFLOW AEL-AGL {description}; WyckoffTransformer train/val/test split",
    )


def _given(
    name: str, folder: str, train: str, test: str, target: str, unit: str, text: str, **kw: Any
) -> Task:
    return Task(
        name=name,
        target=target,
        splits=GivenSplits(train=f"{folder}/{train}", test=f"{folder}/{test}"),
        unit=unit,
        description=text,
        **kw,
    )


_CASTELLI = (
    "Castelli cubic perovskites (matminer); only the valid (3,786) and test (3,786) parts of "
    "the 6:2:2 split are in the shared data, so training uses valid.csv (validation carved "
    "from it) and testing test.csv"
)
_MP20 = (
    "MP-20 binary/ternary subset; only its val (7,140) and test (7,118) parts are in the "
    "shared data: training uses val.csv.gz (validation carved from it), testing test.csv.gz"
)
_MPTS52 = (
    "MPTS-52 time split; only its val (5,000, earlier years) and test (8,096, later years) "
    "parts are in the shared data: training uses val, testing test (a forward-in-time test)"
)

for _task in (
    Task(
        name="matbench_dielectric",
        target="n",
        splits=MatbenchFolds(
            data="matbench/matbench_dielectric.json.gz",
            matbench_name="matbench_dielectric",
            sample="matbench/matbench_dielectric_sample.json.gz",
        ),
        reader="matbench",
        unit="",
        description="refractive index n of 4,764 MP materials; official 5-fold Matbench CV",
        reference_scores={"MODNet": 0.2711, "coGN": 0.3088, "CrabNet": 0.3234, "Dummy": 0.8088},
        reference_source=_MATBENCH_LEADERBOARD,
    ),
    Task(
        name="matbench_phonons",
        target="last phdos peak",
        splits=MatbenchFolds(
            data="matbench/matbench_phonons.json.gz",
            matbench_name="matbench_phonons",
            sample="matbench/matbench_phonons_sample.json.gz",
        ),
        reader="matbench",
        unit="cm⁻¹",
        description="last phonon DOS peak of 1,265 materials; official 5-fold Matbench CV",
        reference_scores={"MegNet": 28.76, "coGN": 29.71, "CrabNet": 55.11, "Dummy": 323.98},
        reference_source=_MATBENCH_LEADERBOARD,
    ),
    _aflow("debye_temperature", "K", "Debye temperature (AGL)"),
    _aflow("bulk_modulus", "GPa", "bulk modulus (AEL VRH)"),
    _aflow("shear_modulus", "GPa", "shear modulus (AEL VRH)"),
    _aflow("thermal_conductivity", "W/(m K)", "lattice thermal conductivity at 300 K (AGL)"),
    _given(
        "castelli_formation_energy",
        "castelli_perovskites",
        "valid.csv",
        "test.csv",
        "e_form",
        "eV/cell",
        _CASTELLI,
    ),
    _given(
        "castelli_band_gap",
        "castelli_perovskites",
        "valid.csv",
        "test.csv",
        "gap_gllbsc",
        "eV",
        _CASTELLI + "; GLLB-SC band gap",
    ),
    _given(
        "mp20_formation_energy",
        "mp_20_biternary",
        "val.csv.gz",
        "test.csv.gz",
        "formation_energy_per_atom",
        "eV/atom",
        _MP20,
    ),
    _given(
        "mp20_band_gap", "mp_20_biternary", "val.csv.gz", "test.csv.gz", "band_gap", "eV", _MP20
    ),
    _given(
        "mp20_is_metal",
        "mp_20_biternary",
        "val.csv.gz",
        "test.csv.gz",
        "band_gap",
        "",
        _MP20 + "; metal = PBE band gap of 0",
        task_type="classification",
        metric="rocauc",
        label=lambda gap: bool(float(gap) <= 0.0),
        classes=(False, True),
    ),
    _given(
        "mpts52_formation_energy",
        "mpts_52",
        "val.csv.gz",
        "test.csv.gz",
        "formation_energy_per_atom",
        "eV/atom",
        _MPTS52,
    ),
    _given(
        "mpts52_energy_above_hull",
        "mpts_52",
        "val.csv.gz",
        "test.csv.gz",
        "energy_above_hull",
        "eV/atom",
        _MPTS52,
    ),
):
    register_task(_task)
# MPTS-52 has no band gap column (material_id, theoretical, energy_above_hull,
# formation_energy_per_atom, year, cif), so no mpts52_band_gap task.
