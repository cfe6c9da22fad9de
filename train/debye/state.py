"""A training loop's state between epochs, as safetensors files with a JSON record (nothing
is unpickled): the model, the best weights, the optimizer, the RNG states and the counters,
so that a stopped ``fit`` resumes and ends as an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class FitProgress:
    """The counters of a ``fit`` between epochs (saved with its state; JSON)."""

    best_val: float
    best_epoch: int
    """0-based, like ``history``'s epochs; -1 before any epoch."""
    epochs_done: int = 0
    step: int = 0
    """Optimizer steps taken (sets the learning-rate schedule)."""
    elapsed_s: float = 0.0
    """Training seconds so far, over every run that trained this unit."""
    history: list[dict[str, float]] = field(default_factory=list)


STATE_RECORD_KEY = "record"
"""The safetensors header metadata key under which ``write_state`` keeps its JSON record."""


def write_state(path: Path, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> None:
    """One safetensors file: ``tensors`` and, in its header, ``record`` as JSON. Written
    atomically (``train.common.files``): a run killed meanwhile leaves the old file or the new
    one, so tensors and counters always belong together."""
    from safetensors.torch import save_file

    from train.common.files import atomic_write

    metadata = {STATE_RECORD_KEY: json.dumps(record)}
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))


def read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and record of a ``write_state`` file (safetensors and JSON: nothing is
    unpickled)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        record = json.loads((handle.metadata() or {})[STATE_RECORD_KEY])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    return tensors, record


def state_tensors(prefix: str, state: Mapping[str, torch.Tensor]) -> tuple[dict, dict[str, str]]:
    """A state dict as ``write_state`` tensors under ``prefix`` (tied tensors once, dtypes
    kept) and its {alias: stored name} ties (``cloud.export.dedupe_tensors``)."""
    from cloud.export import dedupe_tensors

    tensors, tied = dedupe_tensors(state, dtype=None)
    return {f"{prefix}{name}": tensor for name, tensor in tensors.items()}, tied


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_state_tensors(
    model: torch.nn.Module,
    tensors: Mapping[str, torch.Tensor],
    tied: Mapping[str, str],
    source: Any,
) -> None:
    """Load ``state_tensors`` output (without its prefix) into ``model`` (every tensor used)."""
    from cloud.export import load_weights

    device = next(model.parameters()).device
    load_weights(model, {k: v.to(device) for k, v in tensors.items()}, tied, source=source)


def save_fit_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    progress: FitProgress,
    best_state: Mapping[str, torch.Tensor] | None,
    label: str,
) -> None:
    """Everything ``fit`` needs to go on after ``progress.epochs_done`` epochs."""
    tensors, model_tied = state_tensors("model.", model.state_dict())
    best_tied: dict[str, str] = {}
    if best_state is not None:
        best, best_tied = state_tensors("best.", best_state)
        tensors.update(best)
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    device = next(model.parameters()).device
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    record = {
        "label": label,
        "progress": dataclasses.asdict(progress),
        "numpy_rng": rng.bit_generator.state,
        "optimizer_groups": optimizer_state["param_groups"],
        "model_tied": model_tied,
        "best_tied": best_tied,
        "has_best": best_state is not None,
    }
    write_state(path, tensors, record)


def load_fit_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    label: str,
) -> tuple[FitProgress, dict[str, torch.Tensor] | None]:
    """Restore what ``save_fit_state`` wrote into ``model``, ``optimizer``, ``rng`` and the
    torch RNG; returns the counters and the best weights so far."""
    tensors, record = read_state(path)
    if record.get("label") != label:
        raise ValueError(f"{path}: training state of {record.get('label')!r}, not {label!r}")
    load_state_tensors(model, unprefixed("model.", tensors), record["model_tied"], path)
    best_state = None
    if record["has_best"]:
        device = next(model.parameters()).device
        best_state = {k: v.to(device) for k, v in unprefixed("best.", tensors).items()}
        for alias, target in record["best_tied"].items():
            best_state[alias] = best_state[target]
    optimizer_state: dict[str, Any] = {"state": {}, "param_groups": record["optimizer_groups"]}
    for name, tensor in unprefixed("optimizer.", tensors).items():
        index, key = name.split(".", 1)
        optimizer_state["state"].setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict(optimizer_state)
    rng.bit_generator.state = record["numpy_rng"]
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and next(model.parameters()).device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], next(model.parameters()).device)
    return FitProgress(**record["progress"]), best_state
