"""MLM pre-training of CLOUD with DeepSpeed: config, Trainer, function API and launcher.

Entry points:

* ``cloud pretrain --config configs/pretrain/tiny.yaml [optim.lr=3e-4 ...] [--resume]``, under
  ``torchrun --nproc-per-node N $(which cloud) pretrain ...`` or without a launcher;
  ``deepspeed --module train.cli pretrain --config ...`` for the DeepSpeed launcher (which adds
  ``--local_rank``, accepted here).
* :func:`run_pretraining` (in-process, any world size, repeatable in one process) and
  :func:`launch` (runs ``torchrun`` in a subprocess and returns the run's ``summary.json``);
  the scaling sweep should prefer :func:`launch`, which isolates each run completely.

Determinism: model init uses ``train.seed`` on every rank (identical replicas); dropout then
uses a per-rank stream; MLM masking draws from a generator seeded by (seed, step, rank,
micro-step), validation masking from (seed, batch index). Checkpoints hold the data-stream
position and every RNG state per rank, so a resumed run reproduces the uninterrupted run's
losses exactly (same world size, same hardware); on another world size (``train.elastic``)
the model, optimizer and counters are restored exactly and the rest of the epoch is dealt anew.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from cloud import CloudConfig, CloudForMaskedLM, count_parameters, family
from cloud.model import IGNORE_INDEX
from train import checkpoint as ckpt
from train.common.batching import is_packed, sequence_lengths
from train.common.schedule import lr_factor
from train.config import apply_overrides, build_config, read_yaml_mapping
from train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_object,
    build_engine,
    deepspeed_config,
    init_distributed,
    resolve_precision,
)
from train.elastic import gather_elastic_state, read_elastic_state, restore_elastic_state
from train.masking import VALIDATION_STREAM, MaskingConfig, MLMMasker, make_generator, mask_seed
from train.metrics import MetricsWriter, device_peak_flops, mfu, peak_memory_bytes

logger = logging.getLogger(__name__)

# DeepSpeed calls the c10d collectives torch 2.13 renamed; one warning per call floods logs.
warnings.filterwarnings(
    "ignore", message=r".*`torch\.distributed\.\w+` is deprecated", category=FutureWarning
)

ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
SUMMARY_FILE = "summary.json"


# --------------------------------------------------------------------------------- config


@dataclass
class ModelSection:
    """Which CLOUD model to train."""

    flavour: str = "debug"
    """A ``cloud.family`` name: debug, tiny, mini, small, base, large, xl."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """CloudConfig fields set over the flavour (e.g. hidden_dropout: 0.0). vocab_size and
    max_position_embeddings come from the tokenizer and ``data.max_length``."""


@dataclass
class DataSection:
    """The WebDataset corpus and how it is batched."""

    corpus: str = "runs/corpus"
    """Directory of corpus-*.tar shards and manifest.json (``cluster.corpus.build_corpus``)."""
    variant: str = "cloud"
    """SCOPE variant stored in the shards to train on (cloud, full, canonical)."""
    val_shards: int = 1
    """Shards held out for validation (``split_train_val``)."""
    max_length: int = 128
    """Longest sequence in tokens, [CLS]/[SEP] included; also the position-table size."""
    micro_batch_size: int = 64
    """Sequences per rank per forward/backward (padded batches; with ``tokens_per_batch``
    only DeepSpeed's bookkeeping reads it)."""
    tokens_per_batch: int | None = None
    """Pack each rank's micro-batch to this many tokens instead of ``micro_batch_size``
    sequences: the strings one after the other with no padding, positions restarting at
    each, attention kept within each (``cloud.packed``); null = padded batches. At least
    ``max_length``."""
    eval_batch_size: int = 128
    """Sequences per validation batch."""
    eval_batches: int = 20
    """Validation batches evaluated (the first ones of the held-out shards; 0 = all)."""
    num_workers: int = 0
    """DataLoader workers per rank for the training stream."""
    shuffle_buffer: int = 1000
    """Sample shuffle buffer of the training stream."""


@dataclass
class OptimSection:
    """AdamW with linear warm-up then cosine decay."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of warm-up."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr`` (end of the cosine)."""
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up from lr/warmup_steps to lr."""
    weight_decay: float = 0.01
    """Decoupled weight decay on matrices (biases and LayerNorms are not decayed)."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.98
    """AdamW second-moment decay (0.98: steadier with large batches, as RoBERTa)."""
    eps: float = 1e-6
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    fused: bool | None = None
    """Fused AdamW kernel (torch ``fused=True``): null = on CPU and CUDA (measured faster on
    both); false = foreach."""


@dataclass
class TrainSection:
    """The training loop."""

    max_steps: int = 1000
    """Optimizer steps of the whole run; the LR schedule spans them."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step and rank."""
    seed: int = 0
    """Seeds model init, data order, masking and dropout."""
    log_interval: int = 10
    """Optimizer steps between train-metric records (loss, LR, tokens/s...)."""
    eval_interval: int = 100
    """Optimizer steps between validations (0 = only at the end)."""
    eval_at_start: bool = True
    """Validate the initialised model too (step 0), the reference for the loss drop."""
    stop_at_step: int | None = None
    """End this invocation after this step (with a checkpoint), as a pre-empted job would;
    the schedule still spans max_steps and ``--resume`` continues the run."""


@dataclass
class CheckpointSection:
    """When and where checkpoints are written (layout: ``train.checkpoint``)."""

    interval: int = 500
    """Optimizer steps between checkpoints (0 = only the final one)."""
    keep_last: int = 3
    """Published checkpoints kept (older ones are deleted; 0 keeps all)."""
    dir: str | None = None
    """Checkpoint directory; default ``<run_dir>/checkpoints``."""
    save_final: bool = True
    """Checkpoint at the last step (and at ``stop_at_step``)."""
    elastic: bool = True
    """Also save every parameter's whole fp32 weight and Adam moments (ZeRO 1-3), so that the
    run can resume on another number of processes (``train.elastic``); costs a gather of
    three copies of the parameters at each save."""


@dataclass
class SystemSection:
    """Parallelism, precision and kernels."""

    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3."""
    precision: str = "auto"
    """auto (bf16 on GPUs with bf16, fp32 otherwise), bf16 or fp32."""
    compile: bool = False
    """torch.compile the model (via ``engine.compile``, dynamic shapes)."""
    padded_compute: bool = False
    """Compute padded batches over every position, padding included, as before unpadded
    compute (``cloud.packed``); only for comparison: the result is the same, slower."""
    attention_backend: str = "auto"
    """SDPA kernels preferred: auto (torch's choice), flash, efficient, cudnn, math. Batches
    without padding drop the attention mask so that flash kernels can run."""
    cpu_threads: int = 0
    """torch intra-op threads per rank; 0 chooses the free cores shared among the ranks of
    this node (``train.threads.choose_threads``), printed at start."""
    dist_backend: str = "auto"
    """torch.distributed backend; auto = nccl on CUDA, gloo on CPU."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Raw DeepSpeed config merged over the generated one (escape hatch)."""


@dataclass
class LoggingSection:
    """What gets reported."""

    tensorboard: bool = True
    """Write TensorBoard scalars to ``<run_dir>/tensorboard``."""
    progress: bool | None = None
    """tqdm bar on rank 0: null = when stderr is a terminal; true/false = always/never."""
    deepspeed_log_level: str = "warning"
    """Level of DeepSpeed's own logger."""


# [CLS] + [SEP] + a few words: a shorter max_length leaves nothing to mask.
MIN_MAX_LENGTH = 8


def _long_enough(value: int) -> bool:
    return value >= MIN_MAX_LENGTH


def _non_negative(value: float) -> bool:
    return value >= 0


def _positive(value: float) -> bool:
    return value > 0


def _fraction(value: float) -> bool:
    return 0 <= value <= 1


def _decay(value: float) -> bool:
    return 0 <= value < 1


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; loaded from YAML by :func:`load_config`."""

    run_dir: str = "runs/pretrain"
    """Output directory: checkpoints/, tensorboard/, metrics.jsonl, summary.json."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    system: SystemSection = field(default_factory=SystemSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def __post_init__(self) -> None:
        problems = []
        if self.train.max_steps < 1:
            problems.append("train.max_steps must be >= 1")
        if self.train.grad_accum_steps < 1:
            problems.append("train.grad_accum_steps must be >= 1")
        if self.train.log_interval < 1:
            problems.append("train.log_interval must be >= 1")
        if self.data.micro_batch_size < 1 or self.data.eval_batch_size < 1:
            problems.append("data.micro_batch_size and data.eval_batch_size must be >= 1")
        if self.system.zero_stage not in (0, 1, 2, 3):
            problems.append(f"system.zero_stage must be 0-3, got {self.system.zero_stage}")
        if self.system.precision not in ("auto", "bf16", "fp32"):
            problems.append(f"system.precision must be auto, bf16 or fp32: {self.system.precision}")
        if self.system.attention_backend not in ATTENTION_BACKENDS:
            problems.append(f"system.attention_backend must be one of {ATTENTION_BACKENDS}")
        problems += [
            f"{name} must be {rule}, got {value}"
            for name, value, valid, rule in self._ranges()
            if value is not None and not valid(value)
        ]
        if problems:
            raise ValueError("invalid pretrain config: " + "; ".join(problems))

    def _ranges(self) -> list[tuple[str, Any, Any, str]]:
        """(key, value, predicate, rule) for every numeric setting with a valid range."""
        d, o, t, c = self.data, self.optim, self.train, self.checkpoint
        return [
            ("data.max_length", d.max_length, _long_enough, f">= {MIN_MAX_LENGTH}"),
            (
                "data.tokens_per_batch",
                d.tokens_per_batch,
                lambda n: n >= d.max_length,
                f">= data.max_length ({d.max_length}) or null",
            ),
            ("data.val_shards", d.val_shards, _non_negative, ">= 0"),
            ("data.eval_batches", d.eval_batches, _non_negative, ">= 0 (0: all)"),
            ("data.num_workers", d.num_workers, _non_negative, ">= 0"),
            ("data.shuffle_buffer", d.shuffle_buffer, _non_negative, ">= 0"),
            ("optim.lr", o.lr, _positive, "> 0"),
            ("optim.min_lr_ratio", o.min_lr_ratio, _fraction, "in [0, 1]"),
            ("optim.warmup_steps", o.warmup_steps, _non_negative, ">= 0"),
            ("optim.weight_decay", o.weight_decay, _non_negative, ">= 0"),
            ("optim.beta1", o.beta1, _decay, "in [0, 1)"),
            ("optim.beta2", o.beta2, _decay, "in [0, 1)"),
            ("optim.eps", o.eps, _positive, "> 0"),
            ("optim.grad_clip", o.grad_clip, _non_negative, ">= 0 (0: no clipping)"),
            ("train.eval_interval", t.eval_interval, _non_negative, ">= 0 (0: only at the end)"),
            ("train.stop_at_step", t.stop_at_step, _positive, ">= 1"),
            ("checkpoint.interval", c.interval, _non_negative, ">= 0 (0: only the final save)"),
            ("checkpoint.keep_last", c.keep_last, _non_negative, ">= 0 (0: keep all)"),
            ("system.cpu_threads", self.system.cpu_threads, _non_negative, ">= 0 (0: automatic)"),
        ]

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.checkpoint.dir or Path(self.run_dir) / "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(values: Mapping[str, Any]) -> PretrainConfig:
    """Build a PretrainConfig from nested dicts; unknown keys and wrong types are errors."""
    return build_config(PretrainConfig, values)


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a YAML config (``yaml.safe_load``), apply dotted overrides, validate."""
    values = read_yaml_mapping(path, "pretrain")
    try:
        return config_from_dict(apply_overrides(values, overrides))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def model_config(config: PretrainConfig, vocab_size: int, pad_id: int) -> CloudConfig:
    """The CloudConfig a run trains: the flavour, the overrides, the tokenizer's vocabulary."""
    return family(
        config.model.flavour,
        vocab_size=vocab_size,
        pad_token_id=pad_id,
        max_position_embeddings=config.data.max_length,
        **config.model.overrides,
    )


# ----------------------------------------------------------------------- schedule & optim


def build_optimizer(model: torch.nn.Module, optim: OptimSection, device: torch.device):
    """AdamW with decay on matrices only (BERT: no decay on biases and LayerNorm weights)."""
    decay, no_decay = [], []
    for param in model.parameters():  # tied weights are yielded once
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel measured 12 % faster steps than foreach on CPU too (mini, 1 thread,
    # benchmarks/train_throughput.py --ablations); torch has it for CPU and CUDA.
    fused = device.type in ("cpu", "cuda") if optim.fused is None else optim.fused
    kwargs: dict[str, Any] = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(
        groups, lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps, **kwargs
    )


def sdpa_context(backend: str):
    """Context preferring the configured SDPA kernels (falling back to the others)."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION],
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
    }[backend]
    if SDPBackend.MATH not in order:
        order = [*order, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


# --------------------------------------------------------------------------- validation


def validation_batches(
    config: PretrainConfig, tokenizer: Any, val_paths: Sequence[str]
) -> list[dict[str, torch.Tensor]]:
    """The validation set: the first ``eval_batches`` batches of the held-out shards, each
    masked once with a generator keyed by its index, so every evaluation (and any process,
    e.g. an export check) sees the same inputs and targets."""
    from train.data import CorpusStream

    stream = CorpusStream(
        list(val_paths),
        tokenizer=tokenizer,
        batch_size=config.data.eval_batch_size,
        variant=config.data.variant,
        rank=0,
        world_size=1,
        num_workers=0,
        seed=config.train.seed,
        shuffle_buffer=0,
        max_length=config.data.max_length,
        epochs=1,
        drop_last=False,
    )
    masker = MLMMasker.from_tokenizer(tokenizer, config.masking)
    batches = []
    for index, batch in enumerate(stream):
        if config.data.eval_batches and index >= config.data.eval_batches:
            break
        generator = make_generator(config.train.seed, VALIDATION_STREAM, index)
        masked, labels = masker(batch["input_ids"], generator)
        batches.append(
            {
                "input_ids": masked,
                "attention_mask": batch["attention_mask"],
                "segment_ids": batch["segment_ids"],
                "labels": labels,
            }
        )
    if not batches:
        raise ValueError(f"the validation shards {list(val_paths)} yielded no batch")
    return batches


def model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """Keyword arguments of ``CloudForMaskedLM.forward`` on ``device``.

    A padded batch without padding passes no attention mask (the same result, and SDPA may
    use its flash kernels); a packed batch passes ``cu_seqlens``, ``position_ids`` and its
    longest sequence, read on the CPU batch so that the model never syncs to find it.
    """
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"].to(device, non_blocking=True),
        "segment_ids": batch["segment_ids"].to(device, non_blocking=True),
    }
    if is_packed(batch):
        inputs["cu_seqlens"] = batch["cu_seqlens"].to(device, non_blocking=True)
        inputs["position_ids"] = batch["position_ids"].to(device, non_blocking=True)
        inputs["max_seqlen"] = int(sequence_lengths(batch).max())
    else:
        attention_mask = batch["attention_mask"]
        has_padding = not bool(attention_mask.all())
        inputs["attention_mask"] = (
            attention_mask.to(device, non_blocking=True) if has_padding else None
        )
    if "labels" in batch:
        inputs["labels"] = batch["labels"].to(device, non_blocking=True)
    return inputs


def _finite_or_none(value: float) -> float | None:
    """JSON has no nan: an undefined figure is written as null."""
    return value if math.isfinite(value) else None


class Evaluation(NamedTuple):
    """Masked-LM validation result over every rank's batches."""

    loss: float
    """Mean loss per masked token."""
    accuracy: float
    """Fraction of masked tokens predicted exactly."""
    count: int
    """Masked tokens scored."""
    loss_se: float
    """Standard error of ``loss``: the ratio estimator's with each sequence as one cluster
    (the masked tokens of one structure are not independent draws); nan below 2 sequences."""


def _ratio_standard_error(sums: Sequence[float]) -> float:
    """SE of R = Σy/Σc from the cluster sums (Σy, Σc, Σy², Σyc, Σc², n)."""
    total_y, total_c, yy, yc, cc, n = sums
    if n < 2 or total_c <= 0:
        return math.nan
    ratio = total_y / total_c
    spread = max(yy - 2 * ratio * yc + ratio * ratio * cc, 0.0)
    return math.sqrt(n / (n - 1) * spread) / total_c


def _sequence_cluster_sums(
    logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """(Σy², Σy·c, Σc², n) over the sequences of a batch, y = a sequence's summed token loss
    and c = its masked tokens; ``targets`` are in the row-major order of ``labels``."""
    token_loss = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none")
    rows = (labels != IGNORE_INDEX).nonzero()[:, 0].to(token_loss.device)
    per_sequence = torch.zeros(labels.shape[0], dtype=torch.float64, device=token_loss.device)
    y = per_sequence.index_add(0, rows, token_loss)
    c = per_sequence.index_add(0, rows, torch.ones_like(token_loss))
    return torch.stack([(y * y).sum(), (y * c).sum(), (c * c).sum(), (c > 0).sum().double()])


@torch.no_grad()
def evaluate_batches(
    forward: Any,
    batches: Sequence[Mapping[str, torch.Tensor]],
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Evaluation:
    """Mean masked-token loss, accuracy, masked tokens and the loss's standard error of
    ``forward`` on ``batches``.

    Rank r evaluates batches r, r + W, ...; every rank runs the same number of forwards (a
    rank short of batches repeats batch 0 with weight 0) because ZeRO-3 gathers parameters
    collectively in each forward. Sums are all-reduced, so every rank gets the totals. With
    ``forward`` a plain ``CloudForMaskedLM`` and world size 1 this is the same evaluation.
    """
    mine = list(batches[rank::world_size])
    rounds = math.ceil(len(batches) / world_size)
    # loss sum, correct, count, then the cluster sums of the standard error: y², y·c, c², n.
    totals = torch.zeros(7, dtype=torch.float64, device=device)
    for index in range(rounds):
        weight = 1.0 if index < len(mine) else 0.0
        batch = mine[index] if index < len(mine) else batches[0]
        output = forward(**model_inputs(batch, device))
        targets = output.masked_labels
        correct = (output.logits.argmax(-1) == targets).sum().double()
        count = torch.tensor(float(targets.numel()), dtype=torch.float64, device=device)
        totals[:3] += weight * torch.stack([output.loss.double() * count, correct, count])
        totals[3:] += weight * _sequence_cluster_sums(output.logits, targets, batch["labels"])
    loss_sum, correct, count, yy, yc, cc, n = all_reduce_sum(totals.tolist(), device)
    return Evaluation(
        loss=loss_sum / max(count, 1),
        accuracy=correct / max(count, 1),
        count=int(count),
        loss_se=_ratio_standard_error((loss_sum, count, yy, yc, cc, n)),
    )


# ------------------------------------------------------------------------------ trainer


@dataclass
class Progress:
    """Counters saved in checkpoints (global over ranks)."""

    step: int = 0
    tokens: int = 0
    sequences: int = 0
    flops: float = 0.0
    train_time_s: float = 0.0
    positions: int = 0
    """Token positions the projections and MLPs computed: the real tokens, plus the padding
    when padded batches are computed padded (``system.padded_compute``)."""


def empty_interval() -> dict[str, float]:
    """Per-rank counters of one logging interval, before any step."""
    return {"loss": 0.0, "steps": 0, "tokens": 0, "sequences": 0, "sq": 0.0, "positions": 0}


class Trainer:
    """DeepSpeed MLM trainer: small stateful steps, driven by :meth:`fit`."""

    def __init__(self, config: PretrainConfig, *, resume: bool = False) -> None:
        self.config = config
        self.resume = resume
        self.dist: DistInfo = init_distributed(
            config.system.dist_backend, config.logging.deepspeed_log_level
        )
        from train.threads import apply_threads

        self.threads = apply_threads(config.system.cpu_threads)
        logger.info("rank %d: %s", self.dist.rank, self.threads.describe())
        if self.dist.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.precision = resolve_precision(config.system.precision, self.dist.device)
        self.progress = Progress()
        self.run_dir = Path(config.run_dir)
        self.checkpoint_dir = config.checkpoint_dir
        self._pending = empty_interval()
        self._pending_loss = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        self._interval_time = 0.0
        self.last_val: dict[str, float] = {}
        self.last_val_se = math.nan
        self.first_val: dict[str, float] = {}
        self.last_train_loss = float("nan")
        self.grad_norm: float | None = None
        self.writer: MetricsWriter | None = None
        self.bar: Any = None

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        if not self.resume:
            self.refuse_existing_checkpoints()
        self.build_tokenizer()
        self.build_model()
        self.build_data()
        self.build_engine()
        if self.resume:
            self.load()
        self.setup_logging()

    def refuse_existing_checkpoints(self) -> None:
        """A fresh run must not overwrite another run's checkpoints and history."""
        latest = ckpt.read_latest(self.checkpoint_dir) if self.dist.is_main else None
        latest = broadcast_object(latest)
        if latest is not None:
            raise FileExistsError(
                f"{self.checkpoint_dir} already holds checkpoint {latest}: pass --resume "
                "(resume=True) to continue that run, or choose another run_dir"
            )

    def build_tokenizer(self) -> None:
        from tokenizer import ScopeTokenizer

        self.tokenizer = ScopeTokenizer(max_length=self.config.data.max_length)
        self.masker = MLMMasker.from_tokenizer(self.tokenizer, self.config.masking)

    def build_model(self) -> None:
        seed = self.config.train.seed
        # Same seed on every rank: ZeRO-3 partitions each rank's own replica, so the replicas
        # must be identical from the start.
        self._seed_all(seed)
        self.model_config = model_config(
            self.config, self.tokenizer.vocab_size, self.tokenizer.pad_id
        )
        self.model = CloudForMaskedLM(self.model_config)
        self.model.encoder.compute_padded = self.config.system.padded_compute
        if self.model_config.token_features is not None:
            self.model.set_token_features(self.tokenizer.tokens)
        self.n_params = count_parameters(self.model_config)
        self.n_params_non_embedding = count_parameters(self.model_config, embedding=False)
        # From here on each rank draws its own dropout masks.
        self._seed_all(mask_seed(seed, 0xD0, self.dist.rank))

    @staticmethod
    def _seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (1 << 32))
        torch.manual_seed(seed)

    def build_data(self) -> None:
        from train.data import CorpusStream, split_train_val

        data = self.config.data
        train_paths, val_paths = split_train_val(data.corpus, val_shards=data.val_shards)
        self.train_stream = CorpusStream(
            list(train_paths),
            tokenizer=self.tokenizer,
            batch_size=data.micro_batch_size,
            variant=data.variant,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            num_workers=data.num_workers,
            seed=self.config.train.seed,
            shuffle_buffer=data.shuffle_buffer,
            max_length=data.max_length,
            epochs=None,
            drop_last=True,
            tokens_per_batch=data.tokens_per_batch,
        )
        self.val_batches = validation_batches(self.config, self.tokenizer, val_paths)
        self._train_iter: Iterator[dict[str, torch.Tensor]] | None = None

    def build_engine(self) -> None:
        cfg = self.config
        self.model.to(self.dist.device)
        optimizer = build_optimizer(self.model, cfg.optim, self.dist.device)
        schedule = lambda step: lr_factor(  # noqa: E731
            step,
            warmup_steps=cfg.optim.warmup_steps,
            max_steps=cfg.train.max_steps,
            min_ratio=cfg.optim.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        ds_config = deepspeed_config(
            micro_batch_size=cfg.data.micro_batch_size,
            grad_accum_steps=cfg.train.grad_accum_steps,
            world_size=self.dist.world_size,
            zero_stage=cfg.system.zero_stage,
            precision=self.precision,
            grad_clip=cfg.optim.grad_clip,
            extra=cfg.system.deepspeed,
        )
        self.engine = build_engine(
            self.model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
            compile_model=cfg.system.compile,
        )
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.peak_flops, self.peak_description = device_peak_flops(self.dist.device)

    def setup_logging(self) -> None:
        main = self.dist.is_main
        purge = self.progress.step + 1 if self.progress.step else None
        self.writer = MetricsWriter(
            self.run_dir,
            enabled=main,
            tensorboard=self.config.logging.tensorboard,
            purge_step=purge,
        )
        if main:
            self.writer.log_text("config", json.dumps(self.config.to_dict(), indent=1))
            self.writer.log_text("peak_flops", self.peak_description)
        show = self.config.logging.progress
        if show is None:
            show = sys.stderr.isatty()
        self.bar = None
        if main and show:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.config.train.max_steps,
                initial=self.progress.step,
                desc="pretrain",
                unit="step",
                dynamic_ncols=True,
            )

    # ---------------------------------------------------------------- steps

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._train_iter is None:
            self._train_iter = iter(self.train_stream)
        return next(self._train_iter)

    def train_step(self, measure: bool = True) -> None:
        """One optimizer step: grad_accum_steps micro-batches through the engine.

        ``measure``: read the gradient norm (a device sync on GPUs; only on logged steps).
        """
        cfg = self.config
        step = self.progress.step + 1
        self.engine.train()
        start = time.perf_counter()
        loss = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        for micro in range(cfg.train.grad_accum_steps):
            batch = self.next_batch()
            generator = make_generator(cfg.train.seed, step, self.dist.rank, micro)
            masked, labels = self.masker(batch["input_ids"], generator)
            inputs = model_inputs(
                {**batch, "input_ids": masked, "labels": labels}, self.dist.device
            )
            with sdpa_context(cfg.system.attention_backend):
                output = self.engine(**inputs)
            self.engine.backward(output.loss)
            if micro == cfg.train.grad_accum_steps - 1:
                self.lr = self.optimizer.param_groups[0]["lr"]
                if measure:
                    self._measure_grad_norm_before_step()
            self.engine.step()
            loss += output.loss.detach().double()
            lengths = sequence_lengths(batch)
            self._pending["tokens"] += int(lengths.sum())
            self._pending["sequences"] += len(lengths)
            self._pending["sq"] += float((lengths.double() ** 2).sum())
            padded = cfg.system.padded_compute and not is_packed(batch)
            self._pending["positions"] += (
                batch["input_ids"].numel() if padded else int(lengths.sum())
            )
        self._pending_loss += loss / cfg.train.grad_accum_steps
        self._pending["steps"] += 1
        norm = self.engine.get_global_grad_norm() if measure else None
        if norm is not None:
            self.grad_norm = float(norm)
        self.progress.step = step
        self._interval_time += time.perf_counter() - start

    def _measure_grad_norm_before_step(self) -> None:
        # Stage-0 fp32 DeepSpeed clips without reporting the norm; the gradients are already
        # all-reduced at this point (boundary backward), so the local norm is the global one.
        if self.config.system.zero_stage == 0 and self.precision == "fp32":
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                self.grad_norm = float(torch.nn.utils.get_total_norm(grads))

    def sync_progress(self) -> dict[str, float]:
        """Fold this interval's per-rank counters into the global Progress (collective)."""
        pending = self._pending
        loss_sum, tokens, sequences, sq, positions = all_reduce_sum(
            [
                float(self._pending_loss),
                float(pending["tokens"]),
                float(pending["sequences"]),
                pending["sq"],
                float(pending["positions"]),
            ],
            self.dist.device,
        )
        (interval_time,) = all_reduce_max([self._interval_time], self.dist.device)
        steps = pending["steps"]
        cfg = self.model_config
        # Exact attention FLOPs: flops_per_token is linear in the length, so summing len²
        # over sequences gives sum over tokens of flops_per_token(own sequence length).
        attention_per_token_len = 12 * cfg.num_layers * cfg.hidden_size
        flops = 6 * self.n_params_non_embedding * tokens + attention_per_token_len * sq
        self.progress.tokens += int(tokens)
        self.progress.sequences += int(sequences)
        self.progress.positions += int(positions)
        self.progress.flops += flops
        self.progress.train_time_s += interval_time
        self._pending = empty_interval()
        self._pending_loss.zero_()
        self._interval_time = 0.0
        world = self.dist.world_size
        return {
            "loss": loss_sum / world / steps if steps else float("nan"),
            "tokens": tokens,
            "flops": flops,
            "time": interval_time,
        }

    def log_train(self) -> dict[str, float]:
        stats = self.sync_progress()
        (peak_mem,) = all_reduce_max([float(peak_memory_bytes(self.dist.device))], self.dist.device)
        seconds = max(stats["time"], 1e-9)
        tokens_per_s = stats["tokens"] / seconds
        self.last_train_loss = stats["loss"]
        record = {
            "train/loss": stats["loss"],
            "train/lr": self.lr,
            "train/grad_norm": self.grad_norm,
            "train/tokens": self.progress.tokens,
            "perf/tokens_per_s": tokens_per_s,
            "perf/mfu": mfu(
                tokens_per_s,
                stats["flops"] / max(stats["tokens"], 1),
                self.peak_flops * self.dist.world_size,
            ),
            "perf/peak_memory_gb": peak_mem / 2**30,
            "perf/step_time_s": seconds / max(self.config.train.log_interval, 1),
        }
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}")
        elif self.dist.is_main:
            logger.info(
                "step %d loss %.4f lr %.2e tokens/s %.0f",
                self.progress.step,
                stats["loss"],
                self.lr,
                tokens_per_s,
            )
        return record

    def evaluate(self) -> dict[str, float]:
        """Validation loss and masked-token accuracy on the fixed validation batches."""
        self.engine.eval()
        with sdpa_context(self.config.system.attention_backend):
            result = evaluate_batches(
                self.engine,
                self.val_batches,
                self.dist.device,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        self.engine.train()
        self.last_val = {"val/loss": result.loss, "val/accuracy": result.accuracy}
        self.last_val_se = result.loss_se
        if not self.first_val:
            self.first_val = dict(self.last_val)
        if self.dist.is_main:
            msg = (
                f"step {self.progress.step}: val loss {result.loss:.4f} "
                f"± {result.loss_se:.4f}, accuracy {result.accuracy:.4f}"
            )
            if self.bar is not None:
                self.bar.write(msg)
            else:
                logger.info("%s (%d masked tokens)", msg, result.count)
        return dict(self.last_val)

    # ---------------------------------------------------------------- checkpoints

    def metadata_files(self) -> dict[str, str]:
        tokenizer_json = json.dumps(self.tokenizer.to_dict(), indent=1)
        return {
            "config.json": json.dumps(self.model_config.to_dict(), indent=1),
            "tokenizer.json": tokenizer_json,
            "pretrain_config.json": json.dumps(self.config.to_dict(), indent=1),
        }

    def save(self) -> Path:
        if any(self._pending[k] for k in ("steps", "tokens")):
            self.sync_progress()
        client_state = {
            **dataclasses.asdict(self.progress),
            "first_val_loss": self.first_val.get("val/loss"),
            "first_val_accuracy": self.first_val.get("val/accuracy"),
        }
        rank_state = {
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
            "data": self.train_stream.state_dict(),
            "rng": ckpt.rng_state(),
        }
        elastic = gather_elastic_state(self.engine) if self.config.checkpoint.elastic else None
        return ckpt.save_checkpoint(
            self.engine,
            self.checkpoint_dir,
            self.progress.step,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            client_state=client_state,
            rank_state=rank_state,
            metadata=self.metadata_files(),
            keep_last=self.config.checkpoint.keep_last or None,
            elastic_state=elastic,
        )

    def load(self) -> None:
        ckpt.clean_staging(self.checkpoint_dir, self.dist.rank)
        tag = broadcast_object(ckpt.read_latest(self.checkpoint_dir) if self.dist.is_main else None)
        if tag is None:
            if self.dist.is_main:
                logger.warning(
                    "--resume: no checkpoint in %s, starting afresh", self.checkpoint_dir
                )
            return
        tag_dir = Path(self.checkpoint_dir) / tag
        self._check_resumable(tag_dir)
        saved_world = ckpt.read_trainer_state(tag_dir)["world_size"]
        if saved_world != self.dist.world_size:
            self.load_elastic(tag_dir, saved_world)
            return
        tag, client_state, rank_state = ckpt.load_checkpoint(
            self.engine,
            self.checkpoint_dir,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            tag=tag,
        )
        self._restore_counters(client_state)
        self.train_stream.load_state_dict(rank_state["data"])
        self._train_iter = None
        ckpt.set_rng_state(rank_state["rng"])
        if self.dist.is_main:
            logger.info("resumed from %s at step %d", tag, self.progress.step)

    def load_elastic(self, tag_dir: Path, saved_world: int) -> None:
        """Resume a checkpoint saved by ``saved_world`` processes on this world size: model
        and optimizer from the whole tensors of ``train.elastic`` (ZeRO 1-3) or DeepSpeed's
        own whole state (ZeRO-0), the data stream re-dealt from every old rank's position."""
        client_state = ckpt.read_trainer_state(tag_dir)
        if self.config.system.zero_stage == 0:
            ckpt.load_engine_states(self.engine, self.checkpoint_dir, tag_dir.name)
        else:
            restore_elastic_state(
                self.engine,
                read_elastic_state(tag_dir),
                step=int(client_state["step"]),
                zero_lr_step=self._zero_lr_step,
            )
        self._restore_counters(client_state)
        old_states = [ckpt.read_rank_state(tag_dir, rank) for rank in range(saved_world)]
        self.train_stream.load_resharded_states([state["data"] for state in old_states])
        self._train_iter = None
        if self.dist.rank < saved_world:
            ckpt.set_rng_state(old_states[self.dist.rank]["rng"])
        if self.dist.is_main:
            logger.info(
                "resumed from %s at step %d on %d process(es) (saved by %d): model and optimizer "
                "re-sharded, the rest of the epoch dealt anew",
                tag_dir.name,
                self.progress.step,
                self.dist.world_size,
                saved_world,
            )

    def _restore_counters(self, client_state: Mapping[str, Any]) -> None:
        fields = {f.name for f in dataclasses.fields(Progress)}
        self.progress = Progress(**{k: v for k, v in client_state.items() if k in fields})
        if client_state.get("first_val_loss") is not None:
            self.first_val = {
                "val/loss": client_state["first_val_loss"],
                "val/accuracy": client_state["first_val_accuracy"],
            }

    def _zero_lr_step(self) -> None:
        """One optimizer step at learning rate 0 on zero gradients (creates AdamW's state
        tensors without moving a weight; ``train.elastic`` then overwrites them)."""
        groups = self.optimizer.param_groups
        rates = [group["lr"] for group in groups]
        for group in groups:
            group["lr"] = 0.0
        self.engine.eval()
        output = self.engine(**model_inputs(self.val_batches[0], self.dist.device))
        self.engine.backward(output.loss * 0.0)
        self.engine.step()
        self.engine.train()
        for group, rate in zip(groups, rates, strict=True):
            group["lr"] = rate

    def _check_resumable(self, tag_dir: Path) -> None:
        saved = json.loads((tag_dir / "config.json").read_text())
        if saved != self.model_config.to_dict():
            raise ValueError(
                f"{tag_dir} holds a different model ({saved}) than the config asks for "
                f"({self.model_config.to_dict()}); resume with the run's own config"
            )

    # ---------------------------------------------------------------- loop

    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` (or ``stop_at_step``); returns the run summary."""
        cfg = self.config
        ckpt.clean_staging(self.checkpoint_dir, self.dist.rank)
        if cfg.train.eval_at_start and self.progress.step == 0:
            self.writer.log(0, self.evaluate())
        last = cfg.train.max_steps
        if cfg.train.stop_at_step is not None:
            last = min(last, cfg.train.stop_at_step)
        wall_start = time.perf_counter()
        while self.progress.step < last:
            step = self.progress.step + 1
            final = step == last
            self.train_step(measure=step % cfg.train.log_interval == 0 or final)
            record: dict[str, float | None] = {}
            if step % cfg.train.log_interval == 0 or final:
                record.update(self.log_train())
            if (cfg.train.eval_interval and step % cfg.train.eval_interval == 0) or final:
                record.update(self.evaluate())
            if record:
                self.writer.log(step, record)
            if (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or (
                final and cfg.checkpoint.save_final
            ):
                self.save()
            if self.bar is not None:
                self.bar.update(1)
        if self._pending["steps"]:
            self.sync_progress()
        if not self.last_val:
            # Resumed from the final checkpoint: nothing ran, but the summary needs the loss.
            self.writer.log(self.progress.step, self.evaluate())
        summary = self.summary(time.perf_counter() - wall_start)
        self.close(summary)
        return summary

    def summary(self, wall_time_s: float) -> dict[str, Any]:
        """The run's result; keys match ``train.scaling.RESULTS_COLUMNS`` where they overlap."""
        device = (
            torch.cuda.get_device_name(self.dist.device)
            if self.dist.device.type == "cuda"
            else "cpu"
        )
        progress = self.progress
        return {
            "flavour": self.config.model.flavour,
            "n_params_non_embedding": self.n_params_non_embedding,
            "n_params_total": self.n_params,
            "tokens": progress.tokens,
            "sequences": progress.sequences,
            "flops": progress.flops,
            "val_loss": self.last_val.get("val/loss"),
            "val_loss_se": _finite_or_none(self.last_val_se),
            "val_accuracy": self.last_val.get("val/accuracy"),
            "initial_val_loss": self.first_val.get("val/loss"),
            "train_loss": self.last_train_loss,
            "steps": progress.step,
            "wall_time_s": wall_time_s,
            "train_time_s": progress.train_time_s,
            "tokens_per_s": progress.tokens / max(progress.train_time_s, 1e-9),
            # Old checkpoints did not count positions: their share is unknown (null).
            "padding_fraction": (
                1 - progress.tokens / progress.positions
                if progress.positions >= progress.tokens > 0
                else None
            ),
            "device": device,
            "world_size": self.dist.world_size,
            "zero_stage": self.config.system.zero_stage,
            "precision": self.precision,
            "run_dir": str(self.run_dir),
            "checkpoint_dir": str(self.checkpoint_dir),
        }

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Write the summary (rank 0), close the writers, wait for every rank."""
        if self.dist.is_main and summary is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
        barrier()

    def release(self) -> None:
        """Drop the engine (ZeRO-3 hooks included) and the model, so memory is freed."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "destroy"):
            engine.destroy()
        self.engine = self.model = self.optimizer = self.scheduler = None
        self.train_stream = None
        self._train_iter = None


def run_pretraining(config: PretrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train as ``config`` says and return the summary (every rank gets it).

    Works under a launcher or single-process (a 1-process gloo/nccl group is created and kept
    for later calls). The caller's global RNG states are restored afterwards, and the engine
    is released, so repeated calls in one process are independent.
    """
    caller_rng = ckpt.rng_state()
    trainer: Trainer | None = None
    try:
        trainer = Trainer(config, resume=resume)
        trainer.setup()
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.release()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        ckpt.set_rng_state(caller_rng)


def launch(
    config_path: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    nproc: int = 1,
    resume: bool = False,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run ``python -m train.cli pretrain`` as ``nproc`` fresh processes on this machine
    (``train.launcher``: rendezvous through a file, collectives on loopback, nothing listening
    beyond 127.0.0.1) and return the run's ``summary.json``.

    Each run gets fresh processes, so nothing leaks between runs of a sweep. ``env`` is added
    to this process's environment for the workers. Every rank's output goes to ``log_path``
    (default ``<run_dir>/launch.log``); a failed run raises ``RuntimeError`` (a
    ``train.launcher.WorkerFailed`` when a worker failed) with the tail of that log, a run
    past ``timeout`` seconds ``subprocess.TimeoutExpired``.
    """
    from train.launcher import launch_workers, log_tail, pretrain_command

    config = load_config(config_path, overrides)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / SUMMARY_FILE
    summary_path.unlink(missing_ok=True)
    command = pretrain_command(config_path, overrides, resume=resume)
    log_file = Path(log_path) if log_path else run_dir / "launch.log"
    launch_workers(
        command, nproc=nproc, log_path=log_file, env={**os.environ, **(env or {})}, timeout=timeout
    )
    if not summary_path.is_file():
        raise RuntimeError(
            f"pretraining failed: every rank exited 0 but {summary_path} is missing: "
            f"{' '.join(command)}\n{log_tail(log_file)}"
        )
    return json.loads(summary_path.read_text())


# --------------------------------------------------------------------------------- main


def main_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = load_config(args.config, args.overrides)
    summary = run_pretraining(config, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0
