"""The task registry: each fine-tuning benchmark declared once, what loading it yields, and
the readers that name its rows.

A ``Task`` says where its data live (relative to a data root), how to read them, which
column is the target, how it is scored and how it is split:

* ``MatbenchFolds``: the official Matbench v0.1 5-fold splits by mb-id (row i of the dataset
  is ``mb-<name>-{i+1:04d}``);
* ``GivenSplits``: given train / (val) / test files;
* ``IndexSplit``: one data file and files of row indices per split;
* ``SeededSplit``: one data set (read from one or more files) and a seeded random test part,
  for the large property sets used as an intermediate supervised stage.

Adding a task is one ``register_task(Task(...))``; the benchmarks of this repository are
registered at the end of this module. Loading is ``train.finetune.loading.load_task``, the
folds and the validation carve-out ``train.finetune.protocol``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.common.paths import REPO
from train.finetune.scoring import CLASSIFICATION_METRICS, HIGHER_IS_BETTER, REGRESSION_METRICS

SAMPLE_ROOT = REPO / "data"
"""The small real sample shipped with the repository."""
MATBENCH_FOLDS_FILE = "matbench/matbench_v0.1_validation_dielectric_phonons.json"


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
    more_train: tuple[str, ...] = ()
    """Further training files pooled with ``train``: other sources of the same property
    (e.g. a second data set's band gaps), read by the same reader; row ids must stay unique
    across all the files. Their rows are training rows like ``train``'s."""

    def files(self) -> dict[str, str]:
        files = {"train": self.train}
        files.update({f"train+{k}": path for k, path in enumerate(self.more_train, 1)})
        files["test"] = self.test
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


@dataclass(frozen=True)
class SeededSplit:
    """One data set and a seeded random test part (a single fold, ``fold_0``)."""

    data: str
    """The file the reader is given, relative to the data root."""
    companions: Mapping[str, str] = field(default_factory=dict)
    """Further files the reader joins with ``data`` ({role: path}), e.g. phonondb's
    structures beside its thermal properties."""
    sample: Mapping[str, str] | None = None
    """The same roles in ``data/`` (``data`` included), used when the data root lacks them."""
    test_fraction: float = 0.1
    """Share of the rows (seeded shuffle) that form the test part."""
    seed: int = 0
    """Seeds the test part; the validation carve-out has its own seed (the run's)."""

    def files(self) -> dict[str, str]:
        return {"data": self.data, **self.companions}

    def sample_files(self) -> dict[str, str] | None:
        return None if self.sample is None else dict(self.sample)


Splits = MatbenchFolds | GivenSplits | IndexSplit | SeededSplit


def role_of_file(key: str) -> str:
    """The split role of the rows of a task file: ``train+2`` (a pooled training file,
    ``GivenSplits.more_train``) → ``train``; any other key is its own role."""
    return key.partition("+")[0]


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
    """Key in ``READERS``: ``records`` (any format ``cluster.readers`` reads), ``matbench``
    (the same, with rows named by their official mb-ids) or ``phonondb`` (thermal properties
    joined with structures by mp_id)."""
    unit: str = ""
    """Unit of the target, for tables and plots."""
    description: str = ""
    """One line about the data and the split (shown in reports)."""
    label: Callable[[Any], Any] | None = None
    """Turns the raw column value into the target (e.g. band gap → is_metal); None: as is."""
    keep: Callable[[Any], bool] | None = None
    """Which rows belong to the task, by the raw column value (e.g. a gap set's non-metals:
    gap > 0), in every file: a row it rejects is no row of the task (in no fold, not
    scored) and is counted in ``LoadReport.n_outside``. None: every row."""
    keep_rule: str = ""
    """What ``keep`` admits, in words, for the report (e.g. ``band_gap > 0``)."""
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
        if self.keep is not None and not self.keep_rule:
            raise ValueError(f"task {self.name}: a keep filter needs its keep_rule in words")

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


def iter_tasks() -> Iterator[Task]:
    yield from (TASKS[name] for name in task_names())


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
    n_outside: int = 0
    """Rows of the files that ``Task.keep`` rejects: not rows of the task, not in ``n_rows``."""
    keep_rule: str = ""
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
        if self.keep_rule:
            out.append(f"  kept rows with {self.keep_rule}; {self.n_outside} others not used")
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
            "n_outside": self.n_outside,
            "keep_rule": self.keep_rule,
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
    structures: dict[str, Any] | None = None
    """The readable structures by row id, kept when asked (``load_task(keep_structures=)``),
    for matching crystals across tasks without reading the files again."""

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


@dataclass(frozen=True)
class ResolvedFiles:
    root: Path
    paths: dict[str, Path]
    is_sample: bool


# --------------------------------------------------------------------------- readers


@dataclass
class Row:
    """What a reader yields: an id and a ``cluster.readers.Record``."""

    id: str
    record: Any


def read_records(path: Path, task: Task, files: Mapping[str, Path]) -> list[Row]:
    """Any format ``cluster.readers`` reads, rows named by the reader's ids."""
    from cluster.readers import read_file

    return [Row(record.source_id, record) for record in read_file(path)]


def read_matbench(path: Path, task: Task, files: Mapping[str, Path]) -> list[Row]:
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


THZ_TO_INVERSE_CM = 33.35641
"""1 THz in cm⁻¹ (c = 299,792,458 m/s)."""


def read_phonondb(path: Path, task: Task, files: Mapping[str, Path]) -> list[Row]:
    """phonondb's thermal file ``path`` joined by mp_id with ``files["structures"]``: one row
    per material named by its mp_id, with properties ``max_frequency`` and ``min_frequency``
    in cm⁻¹ (negative: imaginary modes). A row that cannot be paired keeps its reason."""
    from cloud.phonons import load_phonondb
    from cluster.readers import Record

    rejected: list[Any] = []
    materials = load_phonondb(
        path.parent,
        structures_file=files["structures"].name,
        thermal_file=path.name,
        rejected=rejected,
    )
    rows = [
        Row(
            m.mp_id,
            Record(
                source=str(path),
                source_id=m.mp_id,
                position=f"{path}:{m.mp_id}",
                structure=m.structure,
                properties={
                    "max_frequency": m.max_freq_thz * THZ_TO_INVERSE_CM,
                    "min_frequency": m.min_freq_thz * THZ_TO_INVERSE_CM,
                    "space_group": m.space_group,
                },
            ),
        )
        for m in materials
    ]
    seen = {row.id for row in rows}
    for bad in rejected:
        position = f"{bad.path}:{bad.row}"
        # A duplicate's mp_id is taken by its first row: name it by where it was read.
        row_id = bad.mp_id if bad.mp_id and bad.mp_id not in seen else f"{bad.path.name}:{bad.row}"
        seen.add(row_id)
        rows.append(Row(row_id, Record(str(bad.path), row_id, position, None, error=bad.reason)))
    return rows


READERS: dict[str, Callable[[Path, Task, Mapping[str, Path]], list[Row]]] = {
    "records": read_records,
    "matbench": read_matbench,
    "phonondb": read_phonondb,
}


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

# Three sources' PBE gaps pooled for training, tested on MP-20's test part as mp20_band_gap.
_PBE_GAPS = GivenSplits(
    train="mp_20_biternary/val.csv.gz",
    more_train=("mp_20_pilot/train.csv.gz", "wbm/val.csv.gz"),
    test="mp_20_biternary/test.csv.gz",
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
    Task(
        name="phonondb_max_frequency",
        target="max_frequency",
        splits=SeededSplit(
            data="phonondb/thermal.jsonl.gz",
            companions={"structures": "phonondb/structures.jsonl.gz"},
            sample={
                "data": "phonondb/thermal_sample.jsonl.gz",
                "structures": "phonondb/structures_sample.jsonl.gz",
            },
        ),
        reader="phonondb",
        unit="cm⁻¹",
        description=(
            "highest phonon frequency of 10,034 MP materials (Togo's phonondb, phonopy; "
            "materials with imaginary modes included); seeded 90/10 split. A large "
            "intermediate stage before matbench_phonons (exclude_tasks keeps its structures out)"
        ),
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
    Task(
        name="pbe_band_gap",
        target="band_gap",
        splits=_PBE_GAPS,
        unit="eV",
        description=(
            "PBE band gaps pooled for an intermediate stage: MP-20 binary/ternary val "
            "(7,140), the MP-20 pilot's train part (1,000, no overlap) and WBM (10,000): "
            "18,140 training materials, 4,085 of them non-metals (mp20_band_gap: 2,116); "
            "tested on MP-20 binary/ternary test, as mp20_band_gap"
        ),
    ),
    Task(
        name="pbe_band_gap_nonmetals",
        target="band_gap",
        splits=_PBE_GAPS,
        unit="eV",
        description=(
            "the non-metals of pbe_band_gap (PBE gap > 0): 4,085 training materials from "
            "MP-20 binary/ternary val, the MP-20 pilot's train part and WBM, tested on the "
            "2,185 non-metals of MP-20 binary/ternary test; a stage for targets defined on "
            "non-metals only, such as matbench_dielectric's refractive index"
        ),
        keep=lambda gap: float(gap) > 0.0,
        keep_rule="band_gap > 0",
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
