"""Elastic resume: a checkpoint saved by N processes resumes on M, with the exact state.

What each part of the training state needs:

- **The data stream** is re-dealt from every old rank's position
  (``train.data.CorpusStream.load_resharded_states``): the rest of the interrupted epoch goes
  to the new ranks sample by sample, so none is seen twice or skipped.
- **Model and optimizer under ZeRO 1–3.** DeepSpeed 0.19 refuses to load ZeRO partitions into
  another data-parallel size ("Automatic adjustment of ZeRO's optimizer state partitioning
  with a new world size is not currently supported"), and its universal-checkpoint converter
  (``ds_to_universal``) expects Megatron's client state. So every checkpoint also holds
  ``elastic_state.safetensors`` (``checkpoint.elastic``): each parameter's fp32 master weight
  and both Adam moments, whole, and the optimizer's step, gathered through DeepSpeed's
  tensor-fragment API (``safe_get_full_*``). On a resume with another world size each rank
  writes its own fragments back (``safe_set_full_*``) and the module's weights follow.
- **ZeRO-0** keeps the whole optimizer state in its model-states file, which DeepSpeed loads
  at any world size: nothing extra is saved.
- **RNG**: rank r takes old rank r's state where there was one; a new rank keeps its own
  per-rank seed (dropout masks cannot match a run of another width anyway).

Pure bookkeeping around DeepSpeed's engine: no file format of DeepSpeed's own is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

ELASTIC_FILE = "elastic_state.safetensors"
MOMENTS = ("exp_avg", "exp_avg_sq")
STEP_KEY = "optimizer_step"


def has_partitioned_optimizer(engine: Any) -> bool:
    """ZeRO 1–3: the optimizer state is split over the ranks."""
    return int(engine.zero_optimization_stage()) > 0


def relink_optimizer_fragments(engine: Any) -> None:
    """Point every parameter's fragment mapping at the optimizer's current state tensors.

    DeepSpeed links them once, after the first ``step()`` of the first parameter group, so
    the moments of a second group (our no-decay biases and LayerNorms) are never linked and
    ``safe_get_full_optimizer_state`` fails for them; linking again after all groups have
    state fixes it.
    """
    optimizer = engine.optimizer
    if hasattr(optimizer, "_hp_optimizer_states_linked"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def _base_optimizer(engine: Any) -> torch.optim.Optimizer:
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def optimizer_step(engine: Any) -> float | None:
    """The Adam step count (the same for every state entry), None before the first step."""
    steps = {float(entry["step"]) for entry in _base_optimizer(engine).state.values()}
    if not steps:
        return None
    if len(steps) != 1:
        raise RuntimeError(f"optimizer state entries disagree on the step: {sorted(steps)}")
    return steps.pop()


def gather_elastic_state(engine: Any) -> dict[str, torch.Tensor] | None:
    """Every parameter's whole fp32 weight and Adam moments, and the step (collective: every
    rank must call it); None for ZeRO-0 or before the first optimizer step."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    if not has_partitioned_optimizer(engine):
        return None
    step = optimizer_step(engine)
    if step is None:
        return None
    relink_optimizer_fragments(engine)
    state: dict[str, torch.Tensor] = {STEP_KEY: torch.tensor([step], dtype=torch.float64)}
    for name, param in engine.module.named_parameters():
        state[f"fp32.{name}"] = safe_get_full_fp32_param(param).detach().float().cpu()
        for moment in MOMENTS:
            full = safe_get_full_optimizer_state(param, moment)
            state[f"{moment}.{name}"] = full.detach().float().cpu()
    return state


def write_elastic_state(state: Mapping[str, torch.Tensor], directory: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / ELASTIC_FILE))


def read_elastic_state(tag_dir: Path) -> dict[str, torch.Tensor]:
    """The elastic state of a checkpoint tag (safetensors: no code can run from it)."""
    from safetensors.torch import load_file

    path = tag_dir / ELASTIC_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} missing: this checkpoint was saved without checkpoint.elastic (or before "
            "elastic checkpoints existed), so it resumes only on the number of processes that "
            "saved it"
        )
    return load_file(str(path))


def restore_elastic_state(
    engine: Any,
    state: Mapping[str, torch.Tensor],
    *,
    step: int,
    zero_lr_step: Callable[[], None],
) -> None:
    """Write ``state`` into a freshly built engine of any world size (collective).

    ``zero_lr_step`` runs one optimizer step at learning rate 0 on zero gradients, which
    creates the optimizer's state tensors (AdamW makes them lazily) without moving a weight;
    the moments, the step count, the scheduler and DeepSpeed's counters are then set to the
    saved step's.
    """
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero_lr_step()
    relink_optimizer_fragments(engine)
    names = {name for name, _ in engine.module.named_parameters()}
    saved = {key.split(".", 1)[1] for key in state if key.startswith("fp32.")}
    if names != saved:
        raise ValueError(
            "the elastic state holds other parameters than the model: missing "
            f"{sorted(names - saved)[:5]}, unexpected {sorted(saved - names)[:5]}"
        )
    partitioned_weights = int(engine.zero_optimization_stage()) == 3
    for name, param in engine.module.named_parameters():
        weight = state[f"fp32.{name}"]
        if partitioned_weights:
            _set_zero3_partition(engine, param, weight, None)
            for moment in MOMENTS:
                _set_zero3_partition(engine, param, state[f"{moment}.{name}"], moment)
        else:
            safe_set_full_fp32_param(param, weight.to(param.device))
            for moment in MOMENTS:
                full = state[f"{moment}.{name}"].to(param.device)
                safe_set_full_optimizer_state(param, full, moment)
        if partitioned_weights:
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(weight.to(param.device, param.dtype))
        else:
            param.data.copy_(weight.to(param.device, param.dtype))
    saved_step = float(state[STEP_KEY].item())
    for entry in _base_optimizer(engine).state.values():
        if torch.is_tensor(entry["step"]):
            entry["step"].fill_(saved_step)
        else:
            entry["step"] = saved_step
    _set_counters(engine, step)


def _set_zero3_partition(
    engine: Any, param: torch.nn.Parameter, full: torch.Tensor, key: str | None
) -> None:
    """This rank's slice of ``full`` into ZeRO-3's fp32 (``key`` None) or moment partition.

    DeepSpeed's own ``set_full_hp_param`` reads past the end of a parameter whose size does
    not divide by the world size (the last partition is padded), so the slice is cut here
    and zero-padded as the partition is.
    """
    optimizer = engine.optimizer
    partition, _ = optimizer._get_fp32_opt_state_partition(
        param, release_swap_buffers=False, optim_state_key=key
    )
    size = partition.numel()
    start = size * optimizer._get_param_partition_rank(param)
    piece = full.flatten()[start : start + size]
    with torch.no_grad():
        partition.zero_()
        partition.view(-1)[: piece.numel()].copy_(piece.to(partition.device, partition.dtype))


def _set_counters(engine: Any, step: int) -> None:
    """Scheduler and DeepSpeed step counters as after ``step`` optimizer steps."""
    scheduler = engine.lr_scheduler
    if scheduler is not None:
        scheduler.last_epoch = step - 1
        scheduler.step()  # sets every group's learning rate for ``step``
    engine.global_steps = step
    engine.global_samples = step * engine.train_batch_size()
    engine.micro_steps = step * engine.gradient_accumulation_steps()
