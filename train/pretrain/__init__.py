"""MLM pre-training of CLOUD with DeepSpeed: config, Trainer, function API and launcher.

Entry points:

* ``cloud pretrain --config configs/pretrain/tiny.yaml [optim.lr=3e-4 ...] [--resume]``, with
  ``--nproc-per-node N`` (``train.launcher``; one per node with ``--nnodes`` across nodes),
  under ``torchrun --nproc-per-node N $(which cloud) pretrain ...`` or without a launcher;
  ``deepspeed --module train.cli pretrain --config ...`` for the DeepSpeed launcher (which adds
  ``--local_rank``, accepted here).
* :func:`run_pretraining` (in-process, any world size, repeatable in one process) and
  :func:`launch` (runs ``train.launcher``'s workers and returns the run's ``summary.json``);
  the scaling sweep should prefer :func:`launch`, which isolates each run completely.

Determinism: model init uses ``train.seed`` on every rank (identical replicas); dropout then
uses a per-rank stream; MLM masking draws from a generator seeded by (seed, step, rank,
micro-step), validation masking from (seed, batch index). Checkpoints hold the data-stream
position and every RNG state per rank, so a resumed run reproduces the uninterrupted run's
losses exactly (same world size, same hardware); on another world size (``train.elastic``)
the model, optimizer and counters are restored exactly and the rest of the epoch is dealt anew.

The package's rooms: ``config`` (the config sections, ``PretrainConfig`` and its valid
ranges, ``load_config``, ``model_config``, ``build_optimizer``), ``evaluation`` (the
validation batches, ``model_inputs``, ``evaluate_batches`` and its standard error,
``sdpa_context``), ``checkpoints`` (``Progress``, the Trainer's save and resume), ``trainer``
(``Trainer``: setup, steps, logging, the loop) and ``run`` (``run_pretraining``, ``launch``,
``main_from_args``). The data stream, masking, distributed wrapping, checkpoint layout,
elastic resume and metrics are ``train.data``, ``train.masking``, ``train.distributed``,
``train.checkpoint``, ``train.elastic`` and ``train.metrics``. The names below are the
pretraining API; each is imported from its room when first used, so importing the package
costs nothing until then. The rooms log as ``train.pretrain``.
"""

from __future__ import annotations

import warnings

from train.common.exports import lazy_exports

# DeepSpeed calls the c10d collectives torch 2.13 renamed; one warning per call floods logs.
warnings.filterwarnings(
    "ignore", message=r".*`torch\.distributed\.\w+` is deprecated", category=FutureWarning
)

ROOMS: dict[str, tuple[str, ...]] = {
    "config": (
        "ATTENTION_BACKENDS",
        "MIN_MAX_LENGTH",
        "SUMMARY_FILE",
        "CheckpointSection",
        "DataSection",
        "LoggingSection",
        "ModelSection",
        "OptimSection",
        "PretrainConfig",
        "SystemSection",
        "TrainSection",
        "apply_overrides",
        "build_optimizer",
        "config_from_dict",
        "load_config",
        "model_config",
    ),
    "evaluation": (
        "Evaluation",
        "evaluate_batches",
        "model_inputs",
        "sdpa_context",
        "validation_batches",
    ),
    "checkpoints": ("Progress", "TrainerCheckpoints"),
    "trainer": ("Trainer", "empty_interval", "lr_factor"),
    "run": ("launch", "main_from_args", "run_pretraining"),
}
"""Each public name of the package, by the room that holds it (``apply_overrides`` and
``lr_factor`` are ``train.config``'s and ``train.common.schedule``'s, as they were)."""

__all__ = sorted(name for names in ROOMS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, ROOMS)
