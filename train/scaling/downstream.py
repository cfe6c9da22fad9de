"""Downstream scaling: does a lower pretraining loss give a better property model?

Some of the sweep's checkpoints are exported and fine-tuned on one benchmark (every fold, the
same recipe); one row per finished checkpoint goes to ``downstream.csv`` beside the sweep's
``results.csv``, so the stage resumes like the grid. The report sets the benchmark's error
against each checkpoint's pretraining compute and validation loss.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.scaling.results import append_row

DOWNSTREAM_FILE = "downstream.csv"
DOWNSTREAM_COLUMNS = (
    "run",
    "flavour",
    "n_params_non_embedding",
    "tokens",
    "flops",
    "val_loss",
    "task",
    "metric",
    "score_mean",
    "score_std",
    "folds",
    "wall_time_s",
    "finetune_dir",
)


@dataclass(frozen=True)
class DownstreamConfig:
    """The ``downstream:`` section of a sweep config."""

    task: str
    """Benchmark to fine-tune on (``cloud finetune --list-tasks``)."""
    runs: tuple[str, ...]
    """Run directories of the sweep (``<model>-s<steps>``) whose checkpoints are fine-tuned."""
    config: str | None = None
    """Fine-tuning YAML (e.g. configs/finetune/matbench.yaml); null = the built-in defaults."""
    overrides: tuple[str, ...] = ()
    """Dotted fine-tuning overrides applied to every checkpoint (e.g. ``baselines=[]``)."""


def downstream_from_mapping(entry: Any, path: Path) -> DownstreamConfig | None:
    """Parse and check the ``downstream:`` section (None when absent)."""
    if entry is None:
        return None
    known = {"task", "runs", "config", "overrides"}
    if not isinstance(entry, Mapping) or "task" not in entry or not entry.get("runs"):
        raise ValueError(f"{path}: downstream needs a task and a list of runs, got {entry!r}")
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ValueError(f"{path}: unknown downstream keys {unknown}; valid: {sorted(known)}")
    return DownstreamConfig(
        task=str(entry["task"]),
        runs=tuple(str(run) for run in entry["runs"]),
        config=None if entry.get("config") is None else str(entry["config"]),
        overrides=tuple(str(o) for o in entry.get("overrides") or ()),
    )


def finished_runs(downstream_csv: Path) -> set[str]:
    if not downstream_csv.is_file():
        return set()
    with downstream_csv.open(newline="") as handle:
        return {row["run"] for row in csv.DictReader(handle)}


def pretraining_rows(results_csv: Path) -> dict[str, dict[str, str]]:
    """The sweep's rows by run-directory name."""
    if not results_csv.is_file():
        return {}
    with results_csv.open(newline="") as handle:
        return {Path(row["run_dir"]).name: row for row in csv.DictReader(handle)}


def run_downstream(
    out_dir: str | os.PathLike[str],
    downstream: DownstreamConfig,
    *,
    on_event: Callable[[str], None] = print,
) -> Path:
    """Export and fine-tune every listed run that has finished pretraining and has no row yet;
    a run still training (or not in the CSV) is reported and left for the next call."""
    out = Path(out_dir)
    table = out / DOWNSTREAM_FILE
    done = finished_runs(table)
    rows = pretraining_rows(out / "results.csv")
    for index, name in enumerate(downstream.runs, start=1):
        label = f"[downstream {index}/{len(downstream.runs)}] {name} on {downstream.task}"
        if name in done:
            on_event(f"{label}: finished earlier, skipped")
            continue
        if name not in rows:
            on_event(f"{label}: its pretraining run has no row in results.csv yet; left for later")
            continue
        claim = _claim(out / "downstream" / f"{name}.claim")
        if claim is None:
            on_event(f"{label}: another live process is fine-tuning it; left to that process")
            continue
        on_event(f"{label}: exporting and fine-tuning")
        try:
            summary, finetune_dir = _finetune(out, name, downstream)
        finally:
            claim.unlink(missing_ok=True)
        score = summary["scores"][summary["metric"]]
        pretraining = rows[name]
        append_row(
            table,
            {
                "run": name,
                "flavour": pretraining.get("flavour", ""),
                "n_params_non_embedding": pretraining["n_params_non_embedding"],
                "tokens": pretraining["tokens"],
                "flops": pretraining.get("flops", ""),
                "val_loss": pretraining["val_loss"],
                "task": downstream.task,
                "metric": summary["metric"],
                "score_mean": score["mean"],
                "score_std": score["std"],
                "folds": len(summary["folds"]),
                "wall_time_s": summary.get("wall_time_s", ""),
                "finetune_dir": str(finetune_dir),
            },
            DOWNSTREAM_COLUMNS,
        )
        on_event(f"{label}: {summary['metric']} {score['mean']:.4g} ± {score['std']:.3g}")
    return table


def _claim(path: Path) -> Path | None:
    """Claim one checkpoint's fine-tuning for this process (a file naming host and pid, made
    with O_EXCL), so several ``cloud scaling downstream`` processes share the list; a claim
    whose process is gone (same host) is taken over. None: a live process holds it."""
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            host, _, pid = path.read_text().partition(" ")
            if host != socket.gethostname() or _alive(int(pid or 0)):
                return None
            path.unlink(missing_ok=True)  # its process died: take the claim over
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(me)
        return path
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finetune(out: Path, name: str, downstream: DownstreamConfig) -> tuple[dict[str, Any], Path]:
    import json

    from train.export import export_checkpoint
    from train.finetune import load_config, run_finetune

    package = out / "packages" / name
    if not (package / "SHA256SUMS").is_file():
        export_checkpoint(out / name, package, overwrite=True)
    finetune_dir = out / "downstream" / name
    config = load_config(
        downstream.config,
        downstream.overrides,
        checkpoint=str(package),
        task=downstream.task,
        out=str(finetune_dir),
        allow_sample=False,
    )
    run_finetune(config, progress=True)
    return json.loads((finetune_dir / "summary.json").read_text()), finetune_dir


def read_downstream(downstream_csv: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``downstream.csv`` with numbers as floats, ordered by pretraining compute."""
    with Path(downstream_csv).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    numeric = ("n_params_non_embedding", "tokens", "flops", "val_loss", "score_mean", "score_std")
    parsed = [
        {**row, **{key: _float(row.get(key)) for key in numeric}, "folds": int(row["folds"])}
        for row in rows
    ]
    return sorted(parsed, key=lambda row: 6 * row["n_params_non_embedding"] * row["tokens"])


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def downstream_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rank correlation of the benchmark error with pretraining loss and compute (Spearman)."""
    loss = np.asarray([row["val_loss"] for row in rows])
    score = np.asarray([row["score_mean"] for row in rows])
    compute = np.asarray([6 * row["n_params_non_embedding"] * row["tokens"] for row in rows])
    return {
        "n": len(rows),
        "spearman_score_vs_val_loss": _spearman(loss, score),
        "spearman_score_vs_compute": _spearman(compute, score),
    }


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3:
        return None
    rank_x = np.argsort(np.argsort(x)).astype(float)
    rank_y = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rank_x, rank_y)[0, 1])
