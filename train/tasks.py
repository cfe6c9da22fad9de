"""Fine-tuning tasks, under the name other code has always imported them by.

``train.tasks`` is the public name of the task layer of ``train.finetune``: each benchmark
declared once (``train.finetune.tasks``), loaded into SCOPE strings and folds
(``train.finetune.loading``), split by the Matbench protocol (``train.finetune.protocol``)
and scored (``train.finetune.scoring``). It holds no code of its own: every name below is
the very object of its room, so registering a task here registers it there.
"""

from __future__ import annotations

from train.finetune.loading import encode_structure, load_task, reason_kind, resolve_files
from train.finetune.protocol import (
    assert_disjoint,
    carve_validation,
    read_matbench_folds,
    split_fold,
)
from train.finetune.scoring import (
    CLASSIFICATION_METRICS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    fold_statistics,
    roc_auc,
    score_classification,
    score_regression,
)
from train.finetune.tasks import (
    MATBENCH_FOLDS_FILE,
    READERS,
    REPO,
    SAMPLE_ROOT,
    TASKS,
    Example,
    Fold,
    FoldSplit,
    GivenSplits,
    IndexSplit,
    LoadReport,
    MatbenchFolds,
    ResolvedFiles,
    Row,
    Splits,
    Task,
    TaskData,
    default_data_root,
    get_task,
    iter_tasks,
    read_matbench,
    read_records,
    register_task,
    task_names,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "HIGHER_IS_BETTER",
    "MATBENCH_FOLDS_FILE",
    "READERS",
    "REGRESSION_METRICS",
    "REPO",
    "SAMPLE_ROOT",
    "TASKS",
    "Example",
    "Fold",
    "FoldSplit",
    "GivenSplits",
    "IndexSplit",
    "LoadReport",
    "MatbenchFolds",
    "ResolvedFiles",
    "Row",
    "Splits",
    "Task",
    "TaskData",
    "assert_disjoint",
    "carve_validation",
    "default_data_root",
    "encode_structure",
    "fold_statistics",
    "get_task",
    "iter_tasks",
    "load_task",
    "read_matbench",
    "read_matbench_folds",
    "read_records",
    "reason_kind",
    "register_task",
    "resolve_files",
    "roc_auc",
    "score_classification",
    "score_regression",
    "split_fold",
    "task_names",
]
