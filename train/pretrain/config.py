"""The pretraining config: its sections, :class:`PretrainConfig` (with the valid range of
every numeric setting), reading it from YAML, the CloudConfig it trains and its optimizer."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cloud import CloudConfig, family, flavours
from train.common.ranges import Check, below_one, fraction, non_negative, out_of_range, positive
from train.config import apply_overrides, build_config, read_yaml_mapping
from train.masking import MaskingConfig

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
        if self.model.flavour not in flavours():
            # Here, not at model build: that comes after the process group and the corpus.
            problems.append(
                f"unknown CLOUD flavour {self.model.flavour!r}; valid flavours: {flavours()}"
            )
        if self.system.attention_backend not in ATTENTION_BACKENDS:
            problems.append(f"system.attention_backend must be one of {ATTENTION_BACKENDS}")
        problems += out_of_range(self._ranges())
        if problems:
            raise ValueError("invalid pretrain config: " + "; ".join(problems))

    def _ranges(self) -> list[Check]:
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
            ("data.val_shards", d.val_shards, non_negative, ">= 0"),
            ("data.eval_batches", d.eval_batches, non_negative, ">= 0 (0: all)"),
            ("data.num_workers", d.num_workers, non_negative, ">= 0"),
            ("data.shuffle_buffer", d.shuffle_buffer, non_negative, ">= 0"),
            ("optim.lr", o.lr, positive, "> 0"),
            ("optim.min_lr_ratio", o.min_lr_ratio, fraction, "in [0, 1]"),
            ("optim.warmup_steps", o.warmup_steps, non_negative, ">= 0"),
            ("optim.weight_decay", o.weight_decay, non_negative, ">= 0"),
            ("optim.beta1", o.beta1, below_one, "in [0, 1)"),
            ("optim.beta2", o.beta2, below_one, "in [0, 1)"),
            ("optim.eps", o.eps, positive, "> 0"),
            ("optim.grad_clip", o.grad_clip, non_negative, ">= 0 (0: no clipping)"),
            ("train.eval_interval", t.eval_interval, non_negative, ">= 0 (0: only at the end)"),
            ("train.stop_at_step", t.stop_at_step, positive, ">= 1"),
            ("checkpoint.interval", c.interval, non_negative, ">= 0 (0: only the final save)"),
            ("checkpoint.keep_last", c.keep_last, non_negative, ">= 0 (0: keep all)"),
            ("system.cpu_threads", self.system.cpu_threads, non_negative, ">= 0 (0: automatic)"),
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
