"""The sweep's results CSV: its columns and :func:`read_results`."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.scaling.law import FloatArray, ScalingFitError

RESULTS_COLUMNS = (
    "flavour",
    "n_params_non_embedding",
    "n_params_total",
    "tokens",
    "flops",
    "val_loss",
    "wall_time_s",
    "device",
    "val_loss_se",
    "role",
)
REQUIRED_COLUMNS = ("n_params_non_embedding", "tokens", "val_loss")

# --------------------------------------------------------------------------------------------
# Results CSV
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScalingRuns:
    """The sweep's runs as arrays (one entry per CSV row)."""

    n_params: FloatArray
    tokens: FloatArray
    val_loss: FloatArray
    flops: FloatArray
    n_params_total: FloatArray
    wall_time_s: FloatArray
    flavour: tuple[str, ...]
    device: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.val_loss)


def _parse_float(text: str | None, line: int, column: str, required: bool) -> float:
    if text is None or text.strip() == "":
        if required:
            raise ScalingFitError(f"line {line}: column {column!r} is empty")
        return math.nan
    try:
        return float(text)
    except ValueError as err:
        raise ScalingFitError(f"line {line}: column {column!r} is not a number: {text!r}") from err


def read_results(results_csv: str | os.PathLike[str]) -> ScalingRuns:
    """Read the sweep's CSV (columns: see ``RESULTS_COLUMNS``; N, D and loss are required)."""
    path = Path(results_csv)
    if not path.is_file():
        raise ScalingFitError(f"results CSV not found: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ScalingFitError(
                f"{path} lacks column(s) {', '.join(missing)} (has: {reader.fieldnames})"
            )
        rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise ScalingFitError(f"{path} has a header but no runs")

    def column(name: str, required: bool = False) -> FloatArray:
        return np.asarray([_parse_float(row.get(name), line, name, required) for line, row in rows])

    return ScalingRuns(
        n_params=column("n_params_non_embedding", required=True),
        tokens=column("tokens", required=True),
        val_loss=column("val_loss", required=True),
        flops=column("flops"),
        n_params_total=column("n_params_total"),
        wall_time_s=column("wall_time_s"),
        flavour=tuple((row.get("flavour") or "").strip() for _, row in rows),
        device=tuple((row.get("device") or "").strip() for _, row in rows),
    )
