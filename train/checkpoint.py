"""Atomic, resumable DeepSpeed checkpoints.

Layout of a checkpoint directory (``<run_dir>/checkpoints`` by default)::

    checkpoints/
      latest                      # text: the tag of the newest complete checkpoint
      config.json                 # CloudConfig of the model (CloudConfig.from_dict)
      tokenizer.json              # ScopeTokenizer.save / ScopeTokenizer.load
      pretrain_config.json        # the resolved PretrainConfig of the run
      zero_to_fp32.py             # DeepSpeed's consolidation script
      step_00000100/              # one tag per saved step
        mp_rank_00_model_states.pt               # DeepSpeed: module, client_state, scheduler
        zero_pp_rank_R_mp_rank_00_optim_states.pt   # DeepSpeed: ZeRO partitions (stage >= 1)
        rank_state_0000R.pt       # ours: data-stream position and RNG states of rank R
        config.json tokenizer.json pretrain_config.json   # copies, so a tag is self-contained
        trainer_state.json        # step, tokens seen, world size (human-readable)

``latest`` uses DeepSpeed's own format, so ``engine.load_checkpoint(dir)`` and
``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(dir)`` work as is.

Publication is atomic: every rank writes into ``checkpoints/.staging/<tag>``; after a barrier
rank 0 renames the complete directory to ``checkpoints/<tag>`` and only then replaces
``latest`` (written to a temporary file, fsynced, renamed). A run killed at any moment leaves
either the previous ``latest`` or the new one, each pointing at a complete checkpoint; a
half-written ``.staging`` is removed when the next run starts. All ranks must see the same
file system (a node-local disk per host is not supported).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.common.files import atomic_write_text
from train.distributed import barrier

LATEST = "latest"
STAGING = ".staging"
TAG_PATTERN = re.compile(r"^step_(\d{8,})$")
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")


def checkpoint_tag(step: int) -> str:
    """The directory name of the checkpoint taken after optimizer step ``step``."""
    return f"step_{step:08d}"


def tag_step(tag: str) -> int:
    match = TAG_PATTERN.match(tag)
    if not match:
        raise ValueError(f"{tag!r} is not a checkpoint tag (step_NNNNNNNN)")
    return int(match.group(1))


def read_latest(checkpoint_dir: str | os.PathLike) -> str | None:
    """The tag ``latest`` points to, or None when there is no complete checkpoint."""
    pointer = Path(checkpoint_dir) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not (Path(checkpoint_dir) / tag).is_dir():
        raise FileNotFoundError(f"{pointer} names {tag!r}, which does not exist")
    return tag


def list_checkpoints(checkpoint_dir: str | os.PathLike) -> list[str]:
    """Published tags, oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    tags = [p.name for p in root.iterdir() if p.is_dir() and TAG_PATTERN.match(p.name)]
    return sorted(tags, key=tag_step)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states of this process."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def clean_staging(checkpoint_dir: str | os.PathLike, rank: int) -> None:
    """Remove what a killed save left behind (rank 0), then wait for every rank."""
    if rank == 0:
        shutil.rmtree(Path(checkpoint_dir) / STAGING, ignore_errors=True)
    barrier()


def save_checkpoint(
    engine: Any,
    checkpoint_dir: str | os.PathLike,
    step: int,
    *,
    rank: int,
    world_size: int,
    client_state: dict[str, Any],
    rank_state: dict[str, Any],
    metadata: Mapping[str, str],
    keep_last: int | None = None,
) -> Path:
    """Save and atomically publish the checkpoint of ``step``; every rank must call it.

    ``client_state`` goes into DeepSpeed's model-states file (rank 0's copy is kept);
    ``rank_state`` is per rank (data position, RNG) and goes to ``rank_state_<rank>.pt``;
    ``metadata`` maps file names (config.json...) to text written beside the checkpoint.
    Returns the published directory.
    """
    root = Path(checkpoint_dir)
    staging = root / STAGING
    tag = checkpoint_tag(step)
    engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False)
    torch.save(rank_state, staging / tag / f"rank_state_{rank:05d}.pt")
    if rank == 0:
        trainer_state = {"step": step, "world_size": world_size, **_json_scalars(client_state)}
        files = {**metadata, "trainer_state.json": json.dumps(trainer_state, indent=1)}
        for name, text in files.items():
            (staging / tag / name).write_text(text)
    barrier()  # every rank's files are in place before the rename
    final = root / tag
    if rank == 0:
        _publish(staging, tag, root, metadata)
        if keep_last:
            prune_checkpoints(root, keep_last)
    barrier()
    return final


def _publish(staging: Path, tag: str, root: Path, metadata: Mapping[str, str]) -> None:
    final = root / tag
    if final.exists():
        # Re-saving a step (a run resumed before it and reached it again): move the old copy
        # aside first; os.replace cannot overwrite a non-empty directory.
        trash = staging / f"replaced-{tag}"
        os.replace(final, trash)
        os.replace(staging / tag, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging / tag, final)
    for name, text in metadata.items():
        atomic_write_text(root / name, text)
    for script in RECOVERY_SCRIPTS:
        if (staging / script).exists():
            os.replace(staging / script, root / script)
    atomic_write_text(root / LATEST, tag)
    with contextlib.suppress(OSError):
        staging.rmdir()  # only if empty: nothing else is left to clean up


def prune_checkpoints(checkpoint_dir: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` tags (never the one ``latest`` names)."""
    latest = read_latest(checkpoint_dir)
    tags = list_checkpoints(checkpoint_dir)
    for tag in tags[: max(len(tags) - keep_last, 0)]:
        if tag != latest:
            shutil.rmtree(Path(checkpoint_dir) / tag, ignore_errors=True)


def load_checkpoint(
    engine: Any,
    checkpoint_dir: str | os.PathLike,
    *,
    rank: int,
    world_size: int,
    tag: str | None = None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Restore model, optimizer and scheduler into ``engine``; return (tag, client, rank state).

    The caller restores the data position and the RNG from the rank state. A different world
    size is refused: each rank's data position belongs to that rank's shard of the stream.
    """
    tag = tag or read_latest(checkpoint_dir)
    if tag is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir} (no '{LATEST}' file)")
    rank_file = Path(checkpoint_dir) / tag / f"rank_state_{rank:05d}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file} missing: was {tag} saved by a smaller job?")
    rank_state = torch.load(rank_file, map_location="cpu", weights_only=False)
    if rank_state.get("world_size") != world_size:
        raise ValueError(
            f"checkpoint {tag} was saved by {rank_state.get('world_size')} processes; resuming "
            f"with {world_size} would replay or skip data. Resume with the same world size."
        )
    load_path, client_state = engine.load_checkpoint(
        str(checkpoint_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {checkpoint_dir}")
    return tag, dict(client_state or {}), rank_state


def _json_scalars(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are JSON scalars (int, float, str, bool, None); the
    others are left out. Not ``train.common.serialization.jsonable``, which converts every
    value: a client state may hold objects (tensors, configs) that the JSON trainer state of
    a checkpoint must not carry, and DeepSpeed saves the whole client state anyway."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool, type(None)))}
