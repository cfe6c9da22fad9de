"""Scaling-law sweeps: a grid of model sizes × data sizes, one pretraining run each.

Every cell of the grid is a normal pretraining run (``train.pretrain.launch``: the same
launcher, DeepSpeed, checkpoints) in its own run directory. When a run finishes, one row is
appended to the results CSV (``train.scaling.RESULTS_COLUMNS``), so the CSV is the sweep's
progress record, as in nanochat: re-running the sweep skips the cells already in the CSV and
resumes a cell whose run directory holds checkpoints but no row.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.common.files import atomic_write_text
from train.common.ranges import out_of_range, positive
from train.config import read_yaml_mapping
from train.scaling.downstream import DownstreamConfig, downstream_from_mapping, run_downstream
from train.scaling.law import DEFAULT_BOOTSTRAP
from train.scaling.prediction import PREDICTION_FILE, make_prediction, read_prediction
from train.scaling.results import FIT_ROLE, PREDICTION_ROLE, append_row

ROW_KEY_COLUMN = "flavour"  # the CSV's model-name column


@dataclass(frozen=True)
class SweepModel:
    """One model size of the grid."""

    name: str
    """Label written to the CSV's ``flavour`` column (unique within the sweep)."""
    flavour: str
    """Registered flavour the size starts from (``cloud.flavours()``)."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """CloudConfig fields changed from the flavour (e.g. hidden_size, num_layers)."""


@dataclass(frozen=True)
class PredictionCell:
    """The held-out run: one model size and step count beyond the grid."""

    model: SweepModel
    """Its size; bigger than every model of the grid."""
    steps: int
    """Its training steps; more than every step count of the grid."""


@dataclass(frozen=True)
class SweepConfig:
    """A scaling sweep, loaded from ``configs/scaling/<name>.yaml``."""

    name: str
    """Sweep name; run directories are ``<out_dir>/<model>-s<steps>``."""
    base_config: str
    """Pretraining YAML every run starts from (``configs/pretrain/*.yaml``)."""
    out_dir: str
    """Folder for the run directories, ``results.csv`` and the fit report."""
    models: tuple[SweepModel, ...]
    """Model sizes (N axis); at least three to identify the law."""
    steps: tuple[int, ...]
    """Training steps per run (D axis: tokens seen = steps × batch × tokens per sequence)."""
    overrides: tuple[str, ...] = ()
    """Dotted ``key=value`` overrides applied to every run (e.g. data.corpus=DIR)."""
    nproc: int = 1
    """Processes per run (``cloud pretrain --nproc-per-node``)."""
    in_process: bool = False
    """Run each cell inside the sweep's process (1 process only) instead of as launched workers."""
    prediction: PredictionCell | None = None
    """A larger run held out of the fit: after the grid, the law fitted to the grid predicts
    its loss (written to ``prediction.json`` before it starts), then it runs and is scored."""
    downstream: DownstreamConfig | None = None
    """Checkpoints of the sweep fine-tuned on a benchmark, after the prediction."""
    warmup_fraction: float | None = None
    """Warm-up steps as a fraction of each run's own steps (at least 1); null keeps the base
    config's ``optim.warmup_steps``. With the cosine set to ``max_steps``, every run then has
    a whole schedule of its own length, not the start of a longer one."""

    @property
    def results_csv(self) -> Path:
        return Path(self.out_dir) / "results.csv"

    def run_dir(self, model: SweepModel, steps: int) -> Path:
        return Path(self.out_dir) / f"{model.name}-s{steps}"

    def cells(self) -> Iterator[tuple[SweepModel, int]]:
        for model in self.models:
            for steps in self.steps:
                yield model, steps


def load_sweep_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep YAML (``yaml.safe_load``), refusing unknown keys and empty axes."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep")
    known = {
        "name",
        "base_config",
        "out_dir",
        "models",
        "steps",
        "overrides",
        "nproc",
        "in_process",
        "warmup_fraction",
        "prediction",
        "downstream",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown sweep keys {unknown}; valid: {sorted(known)}")
    if "base_config" not in raw:
        raise ValueError(
            f"{path}: base_config (the pretraining YAML every run starts from) is missing"
        )
    models = tuple(_model(entry, path) for entry in raw.get("models") or ())
    steps = tuple(_integer(s, "steps", path) for s in raw.get("steps") or ())
    if len(models) < 1 or len(steps) < 1:
        raise ValueError(f"{path}: a sweep needs at least one model and one step count")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: model names must be unique, got {names}")
    if any(s <= 0 for s in steps):
        raise ValueError(f"{path}: steps must be positive, got {list(steps)}")
    nproc = _integer(raw.get("nproc", 1), "nproc", path)
    in_process = raw.get("in_process", False)
    if not isinstance(in_process, bool):
        raise ValueError(f"{path}: in_process must be true or false, got {in_process!r}")
    problems = out_of_range([("nproc", nproc, positive, ">= 1")])
    if in_process and nproc != 1:
        problems.append(f"in_process runs one process, but nproc is {nproc}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return SweepConfig(
        name=str(raw.get("name", path.stem)),
        base_config=str(raw["base_config"]),
        out_dir=str(raw.get("out_dir", f"runs/scaling/{path.stem}")),
        models=models,
        steps=steps,
        overrides=(*(str(o) for o in raw.get("overrides") or ()), *overrides),
        nproc=nproc,
        in_process=in_process,
        warmup_fraction=_fraction(raw.get("warmup_fraction"), path),
        prediction=_prediction(raw.get("prediction"), path, names, steps),
        downstream=downstream_from_mapping(raw.get("downstream"), path),
    )


def _integer(value: Any, key: str, path: Path) -> int:
    """A whole number from YAML (``2000``, not ``2e3`` or ``"many"``), or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{path}: {key} must be whole numbers, got {value!r}")
    return value


def _prediction(
    entry: Any, path: Path, names: Sequence[str], steps: Sequence[int]
) -> PredictionCell | None:
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or "steps" not in entry:
        raise ValueError(f"{path}: prediction needs name, flavour and steps, got {entry!r}")
    model = _model({k: v for k, v in entry.items() if k != "steps"}, path)
    cell = PredictionCell(model, _integer(entry["steps"], "prediction.steps", path))
    if model.name in names:
        raise ValueError(f"{path}: the prediction's name {model.name!r} is also a grid model")
    if cell.steps <= max(steps):
        raise ValueError(
            f"{path}: the prediction runs {cell.steps} steps, not more than the grid's "
            f"{max(steps)}; a prediction must extrapolate"
        )
    return cell


def _fraction(value: Any, path: Path) -> float | None:
    if value is None:
        return None
    fraction = float(value)
    if not 0 < fraction < 1:
        raise ValueError(f"{path}: warmup_fraction must lie in (0, 1), got {value!r}")
    return fraction


def _model(entry: Mapping[str, Any], path: Path) -> SweepModel:
    from cloud.flavours import flavours

    if not isinstance(entry, Mapping) or "name" not in entry or "flavour" not in entry:
        raise ValueError(f"{path}: each model needs a name and a flavour, got {entry!r}")
    if entry["flavour"] not in flavours():
        raise ValueError(
            f"{path}: model {entry['name']!r}: unknown flavour {entry['flavour']!r}; "
            f"known: {flavours()}"
        )
    overrides = entry.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{path}: model {entry['name']!r}: overrides must be a mapping")
    return SweepModel(str(entry["name"]), str(entry["flavour"]), dict(overrides))


def run_overrides(sweep: SweepConfig, model: SweepModel, steps: int) -> list[str]:
    """The pretraining overrides of one grid cell."""
    cell = [
        f"run_dir={sweep.run_dir(model, steps)}",
        f"model.flavour={model.flavour}",
        f"train.max_steps={steps}",
        f"train.eval_interval={steps}",
        f"checkpoint.interval={max(steps // 2, 1)}",
        "checkpoint.keep_last=1",
    ]
    if sweep.warmup_fraction is not None:
        cell.append(f"optim.warmup_steps={max(1, round(sweep.warmup_fraction * steps))}")
    cell += [f"model.overrides.{key}={value}" for key, value in model.overrides.items()]
    return [*sweep.overrides, *cell]


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` → (K, N), 1 ≤ K ≤ N: this process runs part K of N (:func:`assign_parts`)."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError as err:
        raise ValueError(f"--part wants K/N (e.g. 1/2), got {text!r}") from err
    if not 1 <= part <= parts:
        raise ValueError(f"--part {text}: K must lie in 1..N")
    return part, parts


# Per-token work that does not grow with the model (data loading, embeddings, the optimiser's
# per-step cost), in parameter-equivalents: measured on the 2-core CPU, a 7 k-parameter model
# runs at 60 k tokens/s and a 0.8 M one at 8.6 k, i.e. time per token ≈ (N + 1.3e5) · const.
FIXED_COST_PARAMETERS = 130_000


def cell_cost(model: SweepModel, steps: int) -> float:
    """Relative cost of one cell: steps × (non-embedding parameters + a fixed part)."""
    return steps * (_non_embedding_parameters(model) + FIXED_COST_PARAMETERS)


def assign_parts(sweep: SweepConfig, parts: int) -> dict[tuple[str, int], int]:
    """Part (1..parts) of each cell: longest cell first onto the least-loaded part, so the
    parts take about the same time. Depends only on the config, so every process (or cluster
    job) computes the same assignment, whatever has finished."""
    costs = {(model.name, steps): cell_cost(model, steps) for model, steps in sweep.cells()}
    loads = [0.0] * parts
    assignment = {}
    for cell in sorted(costs, key=lambda cell: -costs[cell]):
        part = min(range(parts), key=lambda p: (loads[p], p))
        loads[part] += costs[cell]
        assignment[cell] = part + 1
    return assignment


def missing_cells(sweep: SweepConfig) -> list[tuple[SweepModel, int]]:
    """Cells of the grid that have no row in the CSV yet."""
    done = finished_cells(sweep.results_csv)
    return [(m, s) for m, s in sweep.cells() if (m.name, s) not in done]


def finished_cells(results_csv: Path) -> set[tuple[str, int]]:
    """(model name, steps) of the rows already in the CSV."""
    if not results_csv.is_file():
        return set()
    with results_csv.open(newline="") as f:
        return {(row[ROW_KEY_COLUMN], int(row["steps"])) for row in csv.DictReader(f)}


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary a finished run wrote (``summary.json``), if any."""
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "checkpoints" / "latest").is_file()


Launcher = Callable[..., dict[str, Any]]


def in_process_launcher(
    config_path: str, overrides: Sequence[str], *, nproc: int = 1, resume: bool = False
) -> dict[str, Any]:
    """Run one cell in this process (``run_pretraining``: DeepSpeed on a 1-process group).

    Saves the workers' start-up per run, which dominates tiny CPU sweeps; multi-process runs
    go through ``train.pretrain.launch``.
    """
    if nproc != 1:
        raise ValueError("the in-process launcher runs one process; use train.pretrain.launch")
    from train.pretrain import load_config, run_pretraining

    return run_pretraining(load_config(config_path, overrides), resume=resume)


def run_sweep(
    sweep: SweepConfig,
    *,
    launcher: Launcher | None = None,
    on_event: Callable[[str], None] = print,
    part: tuple[int, int] = (1, 1),
) -> Path:
    """Run every cell not yet in the CSV (resuming interrupted ones); return the CSV path.

    ``part=(K, N)`` runs only the cells :func:`assign_parts` gives part K, so N processes
    (or N cluster jobs) share one grid and one CSV in about equal time.
    """
    launcher = launcher or _default_launcher(sweep)
    done = finished_cells(sweep.results_csv)
    cells = list(sweep.cells())
    mine = assign_parts(sweep, part[1]) if part[1] > 1 else None
    for index, (model, steps) in enumerate(cells, start=1):
        if mine is not None and mine[(model.name, steps)] != part[0]:
            continue
        label = f"[{index}/{len(cells)}] {model.name} × {steps} steps"
        if (model.name, steps) in done:
            on_event(f"{label}: finished earlier, skipped")
            continue
        _run_cell(sweep, model, steps, launcher, label, FIT_ROLE, on_event)
    return sweep.results_csv


def _default_launcher(sweep: SweepConfig) -> Launcher:
    if sweep.in_process:
        return in_process_launcher
    from train.pretrain import launch

    return launch


def _run_cell(
    sweep: SweepConfig,
    model: SweepModel,
    steps: int,
    launcher: Launcher,
    label: str,
    role: str,
    on_event: Callable[[str], None],
) -> dict[str, Any]:
    """Run (or resume, or recover) one cell and append its row; returns its summary."""
    run_dir = sweep.run_dir(model, steps)
    summary = finished_summary(run_dir)
    if summary is not None:
        on_event(f"{label}: finished earlier but not in the CSV; row recovered")
    else:
        resume = has_checkpoint(run_dir)
        on_event(f"{label}: {'resuming' if resume else 'running'} in {run_dir}")
        overrides = run_overrides(sweep, model, steps)
        summary = launcher(sweep.base_config, overrides, nproc=sweep.nproc, resume=resume)
    row = {**summary, ROW_KEY_COLUMN: model.name, "steps": steps, "run_dir": str(run_dir)}
    append_row(sweep.results_csv, {**row, "role": role})
    on_event(
        f"{label}: val loss {summary['val_loss']:.4f}, N={summary['n_params_non_embedding']:,}, "
        f"D={summary['tokens']:,} tokens, {summary['wall_time_s']:.0f} s"
    )
    return summary


def prediction_path(sweep: SweepConfig) -> Path:
    return Path(sweep.out_dir) / PREDICTION_FILE


def run_prediction(
    sweep: SweepConfig,
    *,
    launcher: Launcher | None = None,
    on_event: Callable[[str], None] = print,
    bootstrap: int = DEFAULT_BOOTSTRAP,
) -> dict[str, Any] | None:
    """After the grid: predict the held-out run's loss, write ``prediction.json``, then run it.

    The prediction is written (atomically) before the run starts and is never rewritten, so
    an interrupted sweep resumes the run against the prediction made first. Returns the
    prediction, or None when the sweep has no held-out run.
    """
    cell = sweep.prediction
    if cell is None:
        return None
    missing = missing_cells(sweep)
    if missing:
        raise ValueError(
            f"the grid lacks {len(missing)} run(s); the prediction is made from the whole grid"
        )
    path = prediction_path(sweep)
    label = f"[held out] {cell.model.name} × {cell.steps} steps"
    if path.is_file():
        prediction = read_prediction(path)
        on_event(f"{label}: predicted earlier ({prediction['made_at']}) in {path}")
    else:
        prediction = make_prediction(
            sweep.results_csv,
            name=cell.model.name,
            n_params=_non_embedding_parameters(cell.model),
            steps=cell.steps,
            bootstrap=bootstrap,
        )
        atomic_write_text(path, json.dumps(prediction, indent=2) + "\n")
        low_high = prediction["interval"] or [float("nan")] * 2
        on_event(
            f"{label}: predicted loss {prediction['predicted_loss']:.4f} "
            f"({prediction['confidence']:.0%} interval {low_high[0]:.4f}–{low_high[1]:.4f}) "
            f"at N={prediction['n_params_non_embedding']:,}, D≈{prediction['tokens']:,.0f}; "
            f"written to {path} before the run"
        )
    if (cell.model.name, cell.steps) in finished_cells(sweep.results_csv):
        on_event(f"{label}: finished earlier, skipped")
        return prediction
    _run_cell(
        sweep,
        cell.model,
        cell.steps,
        launcher or _default_launcher(sweep),
        label,
        PREDICTION_ROLE,
        on_event,
    )
    return prediction


def _non_embedding_parameters(model: SweepModel) -> int:
    from cloud import count_parameters, family

    return count_parameters(family(model.flavour, **dict(model.overrides)), embedding=False)


def run_downstream_stage(sweep: SweepConfig, *, on_event: Callable[[str], None] = print) -> None:
    """Fine-tune the sweep's listed checkpoints (``downstream:``), one row each."""
    if sweep.downstream is not None:
        run_downstream(sweep.out_dir, sweep.downstream, on_event=on_event)
