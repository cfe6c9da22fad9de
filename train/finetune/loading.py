"""Loading a task: its files resolved under the data root (or the shipped sample), every row
read, labelled and SCOPE-encoded, the folds built.

``load_task`` resolves the files under the data root (``../shared/data`` beside the clone,
or ``$CLOUD_SHARED_DATA``), falling back to the sample shipped in ``data/`` when the root
lacks them (the folds are then restricted to the rows present, and the report says so).
Every row is kept: a structure that cannot be read or encoded, or a row without a target,
carries the reason in ``Example.error`` and is counted in the ``LoadReport``; nothing is
dropped silently.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from train.finetune.protocol import _build_folds
from train.finetune.tasks import (
    READERS,
    SAMPLE_ROOT,
    Example,
    GivenSplits,
    LoadReport,
    ResolvedFiles,
    Row,
    Splits,
    Task,
    TaskData,
    default_data_root,
    get_task,
    role_of_file,
)


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


def load_task(
    task: Task | str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    variant: str = "cloud",
    allow_sample: bool = True,
    keep_structures: bool = False,
) -> TaskData:
    """Read, label and SCOPE-encode every row of a task and build its folds; with
    ``keep_structures`` the readable structures are kept too (``TaskData.structures``)."""
    task = get_task(task) if isinstance(task, str) else task
    resolved = resolve_files(task, data_root, allow_sample=allow_sample)
    report = LoadReport(
        task=task.name,
        root=str(resolved.root),
        files={role: str(p) for role, p in resolved.paths.items()},
        is_sample=resolved.is_sample,
        keep_rule=task.keep_rule,
    )
    structures: dict[str, Any] | None = {} if keep_structures else None
    examples = _load_examples(task, resolved, variant, report, structures)
    _count_problems(examples.values(), report)
    folds = _build_folds(task, resolved, examples, report)
    return TaskData(task, examples, folds, report, structures)


def task_structures(
    task: Task | str,
    data_root: str | os.PathLike[str] | None = None,
    *,
    allow_sample: bool = True,
) -> dict[str, Any]:
    """The readable structures of a task's rows by id (no symmetry search: fast; rows
    ``Task.keep`` rejects are no rows of the task), for matching crystals across tasks."""
    task = get_task(task) if isinstance(task, str) else task
    resolved = resolve_files(task, data_root, allow_sample=allow_sample)
    reader = READERS[task.reader]
    return {
        row.id: row.record.structure
        for role in _data_roles(task.splits)
        for row in reader(resolved.paths[role], task, resolved.paths)
        if row.record.structure is not None and not _outside_task(task, row.record.properties)
    }


def same_crystals(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every (my id, their id) whose structures pymatgen's StructureMatcher (default
    tolerances) finds the same crystal, compared within the same reduced formula only."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    by_formula: dict[str, list[str]] = {}
    for their_id, structure in theirs.items():
        by_formula.setdefault(structure.composition.reduced_formula, []).append(their_id)
    matcher = StructureMatcher()
    return [
        (my_id, their_id)
        for my_id, structure in mine.items()
        for their_id in by_formula.get(structure.composition.reduced_formula, [])
        if matcher.fit(structure, theirs[their_id])
    ]


def _data_roles(splits: Splits) -> list[str]:
    if isinstance(splits, GivenSplits):
        return list(splits.files())
    return ["data"]


def _load_examples(
    task: Task,
    resolved: ResolvedFiles,
    variant: str,
    report: LoadReport,
    structures: dict[str, Any] | None = None,
) -> dict[str, Example]:
    """Every row of the task's files as an ``Example``, but those ``Task.keep`` rejects,
    which are only counted (``report.n_outside``); each readable structure also goes into
    ``structures`` when one is given."""
    reader = READERS[task.reader]
    examples: dict[str, Example] = {}
    for role in _data_roles(task.splits):
        path = resolved.paths[role]
        for row in reader(path, task, resolved.paths):
            if _outside_task(task, row.record.properties):
                report.n_outside += 1
                continue
            if row.id in examples:
                raise ValueError(
                    f"task {task.name}: id {row.id!r} occurs twice ({examples[row.id].position} "
                    f"and {row.record.position}); ids must be unique across the task's files"
                )
            examples[row.id] = _example(task, row, role_of_file(role), variant, path)
            if structures is not None and row.record.structure is not None:
                structures[row.id] = row.record.structure
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


def _outside_task(task: Task, properties: Mapping[str, Any]) -> bool:
    """Whether ``Task.keep`` rejects the row; a missing or unreadable target is not for the
    filter to judge (``_target_of`` reports it)."""
    if task.keep is None:
        return False
    value, error = _raw_target(task, properties)
    if error is not None:
        return False
    try:
        return not task.keep(value)
    except (TypeError, ValueError):
        return False


def _raw_target(task: Task, properties: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The target column's value as the file has it, or why there is none."""
    if task.target not in properties:
        keys = ", ".join(sorted(properties)[:12])
        return None, f"target: no column {task.target!r} (columns: {keys})"
    value = properties[task.target]
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None, f"target: missing {task.target}"
    return value, None


def _target_of(task: Task, properties: Mapping[str, Any]) -> tuple[Any, str | None]:
    value, error = _raw_target(task, properties)
    if error is not None:
        return None, error
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
