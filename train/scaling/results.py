"""The sweep's results CSV: its columns and :func:`read_results`."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.common.files import atomic_write
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
FIT_ROLE = "fit"
PREDICTION_ROLE = "prediction"

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
    val_loss_se: FloatArray
    """Standard error of each validation loss (nan where the CSV has none)."""
    steps: FloatArray
    """Optimizer steps of each run (nan where the CSV has none)."""
    role: tuple[str, ...]
    """``fit`` (a grid run) or ``prediction`` (a run held out of the fit); blank = fit."""

    def __len__(self) -> int:
        return len(self.val_loss)

    def where(self, keep: Sequence[bool]) -> ScalingRuns:
        """The runs where ``keep`` is true."""
        mask = np.asarray(keep, dtype=bool)
        values = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, np.ndarray):
                values[item.name] = value[mask]
            else:
                values[item.name] = tuple(v for v, k in zip(value, mask, strict=True) if k)
        return ScalingRuns(**values)

    def fitted(self) -> ScalingRuns:
        """The runs the law is fitted to: every run but those held out for a prediction."""
        return self.where([role != PREDICTION_ROLE for role in self.role])

    def held_out(self) -> ScalingRuns:
        """The runs held out of the fit to test a prediction."""
        return self.where([role == PREDICTION_ROLE for role in self.role])


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

    for line, row in rows:
        role = (row.get("role") or FIT_ROLE).strip()
        if role not in (FIT_ROLE, PREDICTION_ROLE):
            raise ScalingFitError(
                f"{path} line {line}: role {role!r} is neither {FIT_ROLE!r} nor {PREDICTION_ROLE!r}"
            )

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
        val_loss_se=column("val_loss_se"),
        steps=column("steps"),
        role=tuple((row.get("role") or FIT_ROLE).strip() for _, row in rows),
    )


def append_row(
    results_csv: Path, row: Mapping[str, Any], columns: Sequence[str] | None = None
) -> None:
    """Add one row; the whole file is rewritten through a temporary file and a rename, so an
    interrupted sweep never leaves a half-written CSV. An exclusive lock on a sibling file
    lets several sweep processes (``--part``) append to one CSV without losing rows.
    ``columns`` default to the results CSV's (plus ``steps`` and ``run_dir``)."""
    columns = list(columns or (*RESULTS_COLUMNS, "steps", "run_dir"))
    results_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(results_csv.with_name(results_csv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # newline="": read_text() would turn the csv module's \r\n into \n, rewriting every
        # earlier row on each append.
        existing = ""
        if results_csv.is_file():
            with results_csv.open(newline="") as handle:
                existing = handle.read()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        if not existing:
            writer.writeheader()
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
        text = existing + buffer.getvalue()
        atomic_write(results_csv, lambda tmp: tmp.write_text(text, newline=""))
