"""A whole fine-tuning run: load the package and the task, run the requested folds with
their side outputs (curves, parity plots, packages), and write results.json.gz,
summary.json, report.md and config.yaml under ``out``."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from train.common.files import atomic_write_text
from train.common.packages import checkpoint_variant
from train.finetune.config import FinetuneConfig
from train.finetune.loading import load_task, same_crystals, task_structures
from train.finetune.report import REPORT_FILE, _fold_line, parity_plot, render_report
from train.finetune.results import RESULTS_FILE, SUMMARY_FILE, summarise, write_results
from train.finetune.tasks import Task, TaskData, get_task
from train.finetune.trainer import (
    BaselineResult,
    Encoded,
    FoldResult,
    Observer,
    encode_examples,
    finetune_fold,
    torch_threads,
)

# The name of the module this was before it became a package: log configuration and
# filters that name it keep working.
logger = logging.getLogger("train.finetune")


# --------------------------------------------------------------------------------- a run


@dataclass
class RunResult:
    """A whole run: the task, per-fold results and where the outputs are."""

    task: Task
    folds: list[FoldResult]
    out: Path
    load_report: list[str]
    summary: dict[str, Any]


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """The pretrained export package (``cloud.export.load_pretrained``)."""
    from cloud.export import load_pretrained

    return load_pretrained(path)


def run_finetune(
    config: FinetuneConfig,
    *,
    pretrained: Any = None,
    data: TaskData | None = None,
    observer: Observer | None = None,
    progress: bool = False,
) -> RunResult:
    """Fine-tune ``config.checkpoint`` on every requested fold of ``config.task`` and write
    the outputs to ``config.out``. ``pretrained``/``data`` skip loading them again."""
    from train.threads import choose_threads

    choice = choose_threads(config.threads)  # once: later folds see this run's own load
    logger.info(choice.describe())
    with torch_threads(choice.threads):
        return _run_finetune(config, pretrained, data, observer, progress)


def _run_finetune(
    config: FinetuneConfig,
    pretrained: Any,
    data: TaskData | None,
    observer: Observer | None,
    progress: bool,
) -> RunResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    pretrained = pretrained if pretrained is not None else load_checkpoint(config.checkpoint)
    variant = config.variant or checkpoint_variant(pretrained)
    task = get_task(config.task)
    data = data or load_task(
        task,
        config.data_root,
        variant=variant,
        allow_sample=config.allow_sample,
        keep_structures=bool(config.exclude_tasks),
    )
    for line in data.report.lines():
        logger.info(line)
    max_length = pretrained.model.encoder.config.max_position_embeddings
    encoded = encode_examples(data, pretrained.tokenizer, max_length)
    encoded.blocked = blocked_rows(data, config, variant)
    if encoded.blocked:
        logger.info(
            "%d rows are a structure of %s (same SCOPE string or crystal): kept out of "
            "training and validation; those in a test part stay there",
            len(encoded.blocked),
            ", ".join(config.exclude_tasks),
        )
    fold_indices = config.folds if config.folds is not None else list(range(len(data.folds)))
    for fold_index in fold_indices:
        data.fold(fold_index)  # an unknown fold fails now, not after training the others
    out = Path(config.out or f"runs/finetune/{task.name}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    results: list[FoldResult] = []
    best_val = math.inf
    for fold_index in fold_indices:
        fold = data.fold(fold_index).name
        kept = read_fold_result(out, fold, config) if config.resume else None
        if kept is not None:
            logger.info("%s: kept from the earlier run in %s (--resume)", fold, out / fold)
            result = kept
        else:
            result = _run_fold(
                data, fold_index, pretrained, encoded, config, variant, out, observer, progress
            )
            # The fold with the best validation score, chosen without looking at any test
            # fold; published as soon as it is known, so an interrupted run keeps it.
            if config.save_model == "best" and result.best_val < best_val:
                _save_model(result, task, config, pretrained, variant, out / "model")
            if config.save_model != "best":
                result.model = None  # saved already, or not wanted: free it
            write_fold_result(out, result, config)
        best_val = min(best_val, result.best_val)
        results.append(result)
    timing = (time.perf_counter() - started, time.process_time() - cpu_started)
    summary = summarise(task, results, data, config, timing)
    write_results(out / RESULTS_FILE, task, results, summary, config)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    (out / REPORT_FILE).write_text(render_report(task, results, data, summary, config))
    return RunResult(task, results, out, data.report.lines(), summary)


def blocked_rows(data: TaskData, config: FinetuneConfig, variant: str) -> dict[str, str]:
    """Rows of ``data`` that are a structure of ``config.exclude_tasks``: the same SCOPE
    string, or the same crystal by pymatgen's StructureMatcher (default tolerances) among
    the structures of the same reduced formula (``same_crystals``). The second test catches
    a material whose two relaxations (e.g. Materials Project's and phonondb's) the symmetry
    search reads as different space groups."""
    blocked: dict[str, str] = {}
    mine = data.structures
    for name in config.exclude_tasks:
        other = load_task(
            name,
            config.data_root,
            variant=variant,
            allow_sample=config.allow_sample,
            keep_structures=True,
        )
        scopes = {e.scope for e in other.examples.values() if e.scope is not None}
        for example in data.examples.values():
            if example.scope in scopes and example.id not in blocked:
                blocked[example.id] = f"excluded: its SCOPE string is a structure of {name}"
        if mine is None:  # loaded by a caller without its structures
            mine = task_structures(data.task, config.data_root, allow_sample=config.allow_sample)
        theirs = other.structures or {}
        unblocked = {i: s for i, s in mine.items() if i not in blocked}
        for row_id, _ in same_crystals(unblocked, theirs):
            blocked[row_id] = f"excluded: the same crystal as a structure of {name}"
    return blocked


def _run_fold(
    data: TaskData,
    fold_index: int,
    pretrained: Any,
    encoded: Encoded,
    config: FinetuneConfig,
    variant: str,
    out: Path,
    observer: Observer | None,
    progress: bool,
) -> FoldResult:
    """One fold with its side outputs (curves, parity plot, per-fold package)."""
    task = data.task
    started, cpu_started = time.perf_counter(), time.process_time()
    writer = _fold_writer(out, data.fold(fold_index).name, config)
    try:
        result = finetune_fold(
            data,
            fold_index,
            pretrained.model,
            pretrained.tokenizer,
            config,
            encoded=encoded,
            observer=observer,
            writer=writer,
        )
    finally:
        writer.close()
    result.parameters["wall_time_s"] = round(time.perf_counter() - started, 2)
    result.parameters["cpu_time_s"] = round(time.process_time() - cpu_started, 2)
    if config.plots and task.is_regression:
        parity_plot(result, task, out / result.fold / "parity.png")
    if config.save_model == "all":
        _save_model(result, task, config, pretrained, variant, out / "models" / result.fold)
    if progress:
        print(_fold_line(task, result), file=sys.stderr, flush=True)
    return result


FOLD_RESULT_FILE = "result.json"
"""Each finished fold's result, under ``<out>/<fold>/``: what ``--resume`` keeps."""
FOLD_RESULT_VERSION = 1
# Settings that change neither the rows nor the numbers a fold produces.
_NOT_RESULT_SETTINGS = ("out", "folds", "resume", "threads", "tensorboard", "plots", "save_model")


def _result_settings(config: FinetuneConfig) -> dict[str, Any]:
    settings = config.to_dict()
    for name in _NOT_RESULT_SETTINGS:
        settings.pop(name, None)
    return json.loads(json.dumps(settings))  # tuples → lists, as read back


def write_fold_result(out: Path, result: FoldResult, config: FinetuneConfig) -> None:
    """``<out>/<fold>/result.json`` (atomically): the fold's predictions, scores, baselines
    and the settings that made them."""
    record = {
        "version": FOLD_RESULT_VERSION,
        "settings": _result_settings(config),
        **{name: getattr(result, name) for name in _FOLD_FIELDS},
        "baselines": {
            name: {"predictions": b.predictions, "scores": b.scores}
            for name, b in result.baselines.items()
        },
    }
    atomic_write_text(out / result.fold / FOLD_RESULT_FILE, json.dumps(record))


def read_fold_result(out: Path, fold: str, config: FinetuneConfig) -> FoldResult | None:
    """The fold's earlier result under ``out`` when its settings are ``config``'s; None when
    there is none, it cannot be read, or it was made with other settings (each said)."""
    path = out / fold / FOLD_RESULT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("version") != FOLD_RESULT_VERSION:
            raise ValueError(f"version {record.get('version')!r}, not {FOLD_RESULT_VERSION}")
        if record["settings"] != _result_settings(config):
            logger.info("%s: made with other settings; running the fold again", path)
            return None
        baselines = {
            name: BaselineResult(b["predictions"], b["scores"])
            for name, b in record["baselines"].items()
        }
        return FoldResult(**{name: record[name] for name in _FOLD_FIELDS}, baselines=baselines)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: cannot be read back (%s); running the fold again", path, exc)
        return None


_FOLD_FIELDS = (
    "fold",
    "predictions",
    "scores",
    "baseline_scores",
    "parameters",
    "best_val",
    "history",
    "truth",
)


def _fold_writer(out: Path, fold: str, config: FinetuneConfig) -> Any:
    from train.metrics import MetricsWriter

    return MetricsWriter(out / fold, tensorboard=config.tensorboard)


def _save_model(
    result: FoldResult,
    task: Task,
    config: FinetuneConfig,
    pretrained: Any,
    variant: str,
    path: Path,
) -> None:
    """The fine-tuned model as an export package; the pretraining facts are carried over."""
    from cloud.export import save_pretrained

    if result.model is None:
        return
    parent = getattr(pretrained, "metadata", None) or {}
    metadata = {
        "finetune": {
            "task": task.name,
            "target": task.target,
            "unit": task.unit,
            "task_type": task.task_type,
            "classes": result.parameters.get("classes"),
            "fold": result.fold,
            "n_train": result.parameters["n_train"],
            "best_epoch": result.parameters["best_epoch"],
            "best_val_score": result.best_val,
            "test_scores": result.scores,
            "config": config.to_dict(),
        },
        "training": parent.get("training"),
        "training_data": {**(parent.get("training_data") or {}), "variant": variant},
        "source": {"pretrained_checkpoint": str(config.checkpoint)},
    }
    save_pretrained(
        result.model, pretrained.tokenizer, path, metadata=metadata, variant=variant, overwrite=True
    )
