"""What a run writes: results.json, config.yaml, predictions.csv, report.md, the figures
(each atomically, so a stopped run leaves whole files) and the model package."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cloud.debye_head import CloudDebye
from train.common.serialization import jsonable
from train.debye.config import DebyeTrainConfig
from train.debye.context import RunContext
from train.debye.evaluation import KJ_PER_J, MethodCurves, summarise_method
from train.debye.figures import write_figures
from train.debye.options import SINGLE_TEMPERATURE
from train.debye.report import render_report
from train.debye.training import FitHistory

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PREDICTIONS_FILE = "predictions.csv"


def run_metrics(
    context: RunContext,
    methods: Sequence[MethodCurves],
    histories: Mapping[str, FitHistory],
    pretrained: Any,
    variant: str,
    report_lines: list[str],
) -> dict[str, Any]:
    """Everything results.json records."""
    config, data, split = context.config, context.data, context.split
    train_scopes = {data.scopes[j] for j in split.train}
    return {
        "data": data.source,
        "protocol": config.protocol,
        "target": context.target,
        "train_temperatures": context.train_grid,
        "eval_temperatures": context.eval_grid,
        "split": {
            "description": split.description,
            "n_train": len(split.train),
            "n_val": len(split.val),
            "n_test": len(split.test),
            "test_scopes_also_in_train": sum(data.scopes[i] in train_scopes for i in split.test),
        },
        "methods": {
            m.name: summarise_method(
                m,
                context.cv_test,
                context.u_test,
                context.n_atoms_test,
                context.eval_grid,
                context.train_range,
            )
            for m in methods
        },
        "training": {name: dataclasses.asdict(h) for name, h in histories.items()},
        "checkpoint": str(config.checkpoint),
        "checkpoint_metadata": getattr(pretrained, "metadata", {}) or {},
        "variant": variant,
        "data_report": report_lines,
        "config": config.to_dict(),
    }


def write_outputs(
    out: Path, context: RunContext, methods: Sequence[MethodCurves], metrics: Mapping[str, Any]
) -> None:
    """config.yaml, results.json, predictions.csv, report.md and the figures, each written
    atomically: a run stopped at any moment leaves whole files."""
    from train.common.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out / "config.yaml", yaml.safe_dump(context.config.to_dict(), sort_keys=False)
    )
    atomic_write_text(out / RESULTS_FILE, json.dumps(jsonable(metrics), indent=1))
    write_predictions(out / PREDICTIONS_FILE, context, methods)
    atomic_write_text(out / REPORT_FILE, render_report(metrics))
    if context.config.plots and methods:  # nothing to draw before the first method
        write_figures(out / "figures", context, methods, metrics)


def _protocol_label(config: DebyeTrainConfig) -> str:
    if config.protocol == "single":
        return "paper protocol: C_v at 300 K"
    T = config.train_temperatures()
    quantity = {"cv": "C_v", "u": "U", "both": "C_v + U"}[config.resolved_target]
    return f"{quantity} on {min(T):g}–{max(T):g} K, {len(T)} temperatures"


def save_debye_model(
    model: CloudDebye, tokenizer: Any, variant: str, path: Path, metrics: Mapping[str, Any]
) -> None:
    from cloud.export import save_pretrained

    cloud_debye = metrics["methods"]["cloud_debye"]
    metadata = {
        "finetune": {
            "task": f"CLOUD-DEBYE on {metrics['data']} ({metrics['protocol']}, target {metrics['target']})",
            "output": "theta_D in K; C_v(T), U(T) per mole of cells via cloud.debye with n_atoms",
            "train_temperatures_K": metrics["train_temperatures"],
            "split": metrics["split"],
            "test_cv_mae_300K_per_cell": (cloud_debye["cv"] or {}).get("mae_300K_per_cell"),
            "pretrained_checkpoint": metrics["checkpoint"],
        },
        "training_data": {"variant": variant},
    }
    save_pretrained(
        model.eval(), tokenizer, path, metadata=jsonable(metadata), variant=variant, overwrite=True
    )


def write_predictions(path: Path, context: RunContext, methods: Sequence[MethodCurves]) -> None:
    """One CSV row per test material: θ of every Debye method, C_v and U at 300 K.

    Values are per mole of cells, in the units the column names end with and the report
    uses: ``theta_<method>_K``, ``cv300_<method>_J_per_mol_K``, ``u300_<method>_kJ_per_mol``
    (``<method>`` is ``true`` for the targets). Written atomically.
    """
    import csv

    from train.common.files import atomic_write

    at300 = context.eval_grid.index(SINGLE_TEMPERATURE)
    columns = ["mp_id", "scope", "n_atoms", "cv300_true_J_per_mol_K", "u300_true_kJ_per_mol"]
    for method in methods:
        name = method.name
        columns += [f"theta_{name}_K", f"cv300_{name}_J_per_mol_K", f"u300_{name}_kJ_per_mol"]
    data = context.data
    rows: list[list[Any]] = []
    for k, row in enumerate(context.split.test):
        values: list[Any] = [
            data.ids[row],
            data.scopes[row],
            int(data.n_atoms[row]),
            f"{context.cv_test[k, at300]:.6g}",
            f"{context.u_test[k, at300] * KJ_PER_J:.6g}",
        ]
        for method in methods:
            u_kj = None if method.u is None else method.u * KJ_PER_J
            values += [
                _cell(method.theta, k, None, ".4f"),
                _cell(method.cv, k, at300, ".6g"),
                _cell(u_kj, k, at300, ".6g"),
            ]
        rows.append(values)

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)

    atomic_write(path, write)


def _cell(values: np.ndarray | None, row: int, column: int | None, spec: str) -> str:
    if values is None:
        return ""
    value = values[row] if column is None else values[row, column]
    return "" if np.isnan(value) else format(value, spec)
