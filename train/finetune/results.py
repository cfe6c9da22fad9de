"""The results of a run as data: the fold statistics of ``summary.json`` and the Matbench
results document ``results.json.gz`` (``MatbenchBenchmark.to_file``'s layout)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from train.common.devices import resolve_device
from train.common.files import atomic_write
from train.finetune.config import BASELINE_LABELS, BASELINES, FinetuneConfig
from train.finetune.scoring import fold_statistics
from train.finetune.tasks import Task, TaskData
from train.finetune.trainer import FoldResult

RESULTS_FILE = "results.json.gz"


SUMMARY_FILE = "summary.json"


def summarise(
    task: Task,
    results: Sequence[FoldResult],
    data: TaskData,
    config: FinetuneConfig,
    timing: tuple[float, float],
) -> dict[str, Any]:
    """Fold statistics of every score, of the baseline, and the context numbers.
    ``timing``: (wall, CPU) seconds of the whole run, data loading included."""
    metrics = list(results[0].scores) if results else []
    return {
        "task": task.name,
        "metric": task.metric,
        "unit": task.unit,
        "folds": [r.fold for r in results],
        "scores": {m: fold_statistics([r.scores[m] for r in results]) for m in metrics},
        "baseline_scores": {
            m: fold_statistics([r.baseline_scores[m] for r in results]) for m in metrics
        },
        "baselines": {
            name: {
                m: fold_statistics([r.baselines[name].scores[m] for r in results]) for m in metrics
            }
            for name in _common_baselines(results)
        },
        "ensemble": config.ensemble,
        "per_fold": {
            r.fold: {
                "scores": r.scores,
                "baseline_scores": r.baseline_scores,
                "baselines": {name: b.scores for name, b in r.baselines.items()},
                **{
                    k: r.parameters[k]
                    for k in ("n_train", "n_val", "n_test", "best_epoch", "epochs_run")
                },
            }
            for r in results
        },
        "reference_scores": dict(task.reference_scores),
        "reference_source": task.reference_source,
        "is_sample": data.report.is_sample,
        "data_root": data.report.root,
        "checkpoint": config.checkpoint,
        "wall_time_s": round(timing[0], 1),
        "cpu_time_s": round(timing[1], 1),
        "threads": torch.get_num_threads(),
        "device": str(resolve_device(config.device)),
    }


def _common_baselines(results: Sequence[FoldResult]) -> list[str]:
    """Baselines every fold has, in ``BASELINES`` order."""
    return [name for name in BASELINES if results and all(name in r.baselines for r in results)]


def matbench_document(
    task: Task, results: Sequence[FoldResult], summary: Mapping[str, Any], config: FinetuneConfig
) -> dict[str, Any]:
    """The run in the layout of Matbench's ``MatbenchBenchmark.to_file`` (one task)."""
    benchmark = "matbench_v0.1" if task.reader == "matbench" else "cloud_finetune"
    task_doc = {
        "@module": "matbench.task",
        "@class": "MatbenchTask",
        "benchmark_name": benchmark,
        "dataset_name": task.name,
        "results": {
            r.fold: {"data": r.predictions, "parameters": r.parameters, "scores": r.scores}
            for r in results
        },
    }
    document = {
        "@module": "matbench.bench",
        "@class": "MatbenchBenchmark",
        "version": "cloud-finetune-1",
        "tasks": {task.name: task_doc},
        "user_metadata": {
            "model": "CLOUD (SCOPE-string BERT encoder) fine-tuned with cloud finetune",
            "fold_statistics": {task.name: summary["scores"]},
            "baseline_fold_statistics": {task.name: summary["baseline_scores"]},
            "baselines": {
                name: {
                    "description": BASELINE_LABELS[name],
                    "fold_statistics": summary["baselines"][name],
                    "results": {
                        r.fold: {
                            "data": r.baselines[name].predictions,
                            "scores": r.baselines[name].scores,
                        }
                        for r in results
                    },
                }
                for name in summary["baselines"]
            },
            "reference_scores": {task.name: dict(task.reference_scores)},
            "is_sample": summary["is_sample"],
            "config": config.to_dict(),
        },
        "benchmark_name": benchmark,
        "datestamp": datetime.datetime.now(datetime.UTC).strftime("%Y.%m.%d %H:%M.%S"),
    }
    canonical = json.dumps(document, sort_keys=True, default=str).encode()
    document["hash"] = hashlib.sha256(canonical).hexdigest()
    return document


def write_results(
    path: Path,
    task: Task,
    results: Sequence[FoldResult],
    summary: Mapping[str, Any],
    config: FinetuneConfig,
) -> None:
    """Write the Matbench results document (gzipped JSON) to ``path`` atomically."""
    document = matbench_document(task, results, summary, config)

    def write(temporary: Path) -> None:
        with gzip.open(temporary, "wt") as handle:
            json.dump(document, handle)

    atomic_write(path, write)


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    with gzip.open(path, "rt") as handle:
        return json.load(handle)
