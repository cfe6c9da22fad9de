"""Fine-tuning a pretrained CLOUD encoder on a property task, with the Matbench protocol.

Per fold of a task (``train.finetune.tasks``, also importable as ``train.tasks``):

1. the validation set for early stopping is carved (seeded) from the training fold and
   removed from it, unless the task gives one (``split_fold``);
2. regression targets are standardised with the mean and standard deviation of the
   training rows only (stored in the model, so it predicts in data units);
3. the encoder (from an export package) and a fresh MLP head are trained with AdamW: an
   optional warm-up of ``freeze_encoder_epochs`` with the encoder frozen, optional layer-wise
   learning-rate decay, L1 loss (regression) or cross-entropy (classification), early
   stopping on the validation score, the best epoch's weights restored;
4. the test fold is predicted once, at the end. A ``LeakGuard`` asserts that no test id is
   ever in a training or validation batch.

Outputs under ``out``: ``results.json.gz`` (Matbench's layout: per fold the predictions by
id, the scores and the parameters; fold statistics in ``user_metadata``), ``report.md``,
``summary.json``, ``config.yaml``, per fold ``fold_<k>/`` with TensorBoard curves,
``metrics.jsonl`` and ``parity.png``, and the fine-tuned model(s) as export packages.

Plain PyTorch in one process: the datasets are small (≤ 15k rows).

The package's rooms: ``tasks`` (the task registry: declarations, loaded data, readers),
``loading`` (files, rows, SCOPE strings), ``protocol`` (folds, ``split_fold``), ``scoring``
(Matbench's metrics), ``config`` (``FinetuneConfig``), ``trainer`` (one fold), ``results``
(summary.json, results.json.gz), ``report`` (report.md, the printed table, parity plots),
``run`` (a whole run), ``baselines`` (the random forest on SCOPE features) and ``predict``
(``cloud predict``). The names below are the fine-tuning API; each is imported from its room
when first used, so importing the package costs nothing until then.
"""

from __future__ import annotations

from train.common.exports import lazy_exports

ROOMS: dict[str, tuple[str, ...]] = {
    "config": (
        "BASELINES",
        "BASELINE_LABELS",
        "FinetuneConfig",
        "HeadSection",
        "config_from_dict",
        "load_config",
        "parse_folds",
    ),
    "trainer": (
        "BaselineResult",
        "Encoded",
        "FoldResult",
        "LeakGuard",
        "Observer",
        "encode_examples",
        "finetune_fold",
        "lr_factor",
        "parameter_groups",
        "randomly_initialised",
        "torch_threads",
    ),
    "results": (
        "RESULTS_FILE",
        "SUMMARY_FILE",
        "matbench_document",
        "read_results",
        "summarise",
        "write_results",
    ),
    "report": ("REPORT_FILE", "metrics_table", "parity_plot", "render_report"),
    "run": ("RunResult", "blocked_rows", "load_checkpoint", "run_finetune"),
}
"""Each public name of the package, by the room that holds it."""

__all__ = sorted(name for names in ROOMS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, ROOMS)
