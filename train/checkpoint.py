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
                                  #   (tensors and plain containers only, see below)
        elastic_state.safetensors # ours (ZeRO 1-3): whole fp32 weights and Adam moments, so
                                  #   the run resumes on another world size (train.elastic)
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

Reading a checkpoint never runs code from it. Every ``.pt`` file is read with
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers and
refuses any other global unless it is allow-listed:

- ``rank_state_*.pt`` holds only tensors, dicts, lists, tuples and scalars (the numpy RNG
  state is saved as a list), so it needs no allow-list; a rank state written before that, with
  the numpy state as an array, needs ``LEGACY_RANK_STATE_GLOBALS`` (a uint32 array, nothing
  else).
- DeepSpeed's files are read by DeepSpeed itself, which calls ``torch.load(...,
  weights_only=False)``. ``weights_only_torch_load`` patches ``torch.load`` for the duration
  of the resume (and of the ZeRO consolidation of ``cloud export``) so those calls read with
  ``weights_only=True`` and exactly ``DEEPSPEED_SAFE_GLOBALS``, the three classes DeepSpeed
  0.19 writes (found by loading real stage 0-3, fp32 and bf16, 1- and 2-process checkpoints).

A file holding anything else is refused with a ``CheckpointFileError`` naming it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
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

DEEPSPEED_SAFE_GLOBALS: tuple[str, ...] = (
    # ZeRO optimizer shards (stage 1-3, and the bf16 optimizer at stage 0) record the loss
    # scaler object (a plain object of floats, even when unused), the stage as an int enum
    # and, at stages 1-2, dataclasses of (numel, start) per parameter fragment. Model-states
    # files hold only tensors and plain containers.
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
"""Everything beyond tensors and plain containers that DeepSpeed's checkpoint files may hold.
Each is a data class whose unpickling only sets attributes (or, for the enum, looks a member
up); none runs code of the file's choosing."""

LEGACY_RANK_STATE_GLOBALS: tuple[str, ...] = (
    # Rank states written before the numpy RNG state was saved as a list hold it as a uint32
    # array: rebuilding one needs numpy's array reconstructor, the array and dtype classes and
    # the uint32 dtype's class (an object array, the only kind that could hold more, is not
    # allowed: its dtype class is not listed).
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.UInt32DType",
)


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read safely: it holds objects outside the allow-list
    (a tampered or foreign file) or is not a torch file at all. The message names the file."""


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
    """Restore what ``rng_state`` returned, or its ``storable_rng_state`` form."""
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def storable_rng_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` (``rng_state``) with the numpy key as a list of ints instead of an array, so
    ``torch.load(weights_only=True)`` reads it without allow-listing numpy."""
    name, key, *rest = state["numpy"]
    return {**state, "numpy": (name, np.asarray(key).tolist(), *rest)}


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
    elastic_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Save and atomically publish the checkpoint of ``step``; every rank must call it.

    ``client_state`` goes into DeepSpeed's model-states file (rank 0's copy is kept);
    ``rank_state`` is per rank (data position, RNG: tensors and plain containers; an ``rng``
    entry from ``rng_state`` is stored with ``storable_rng_state``) and goes to
    ``rank_state_<rank>.pt``; ``metadata`` maps file names (config.json...) to text written
    beside the checkpoint; ``elastic_state`` (``train.elastic.gather_elastic_state``, the same
    on every rank) is written once by rank 0. Returns the published directory.
    """
    root = Path(checkpoint_dir)
    staging = root / STAGING
    tag = checkpoint_tag(step)
    engine.save_checkpoint(str(staging), tag=tag, client_state=client_state, save_latest=False)
    if "rng" in rank_state:
        rank_state = {**rank_state, "rng": storable_rng_state(rank_state["rng"])}
    torch.save(rank_state, staging / tag / f"rank_state_{rank:05d}.pt")
    if rank == 0:
        trainer_state = {"step": step, "world_size": world_size, **_json_scalars(client_state)}
        files = {**metadata, "trainer_state.json": json.dumps(trainer_state, indent=1)}
        for name, text in files.items():
            (staging / tag / name).write_text(text)
        if elastic_state is not None:
            from train.elastic import write_elastic_state

            write_elastic_state(elastic_state, staging / tag)
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
    Nothing in the checkpoint is unpickled beyond tensors, plain containers and the listed
    DeepSpeed classes; a file holding more raises ``CheckpointFileError`` naming it.
    """
    tag = tag or read_latest(checkpoint_dir)
    if tag is None:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir} (no '{LATEST}' file)")
    rank_state = read_rank_state(Path(checkpoint_dir) / tag, rank)
    if rank_state.get("world_size") != world_size:
        raise ValueError(
            f"checkpoint {tag} was saved by {rank_state.get('world_size')} processes; resuming "
            f"with {world_size} needs the elastic path (train.pretrain resumes through it)"
        )
    return tag, load_engine_states(engine, checkpoint_dir, tag), rank_state


def load_engine_states(engine: Any, checkpoint_dir: str | os.PathLike, tag: str) -> dict[str, Any]:
    """DeepSpeed's model, optimizer and scheduler states of ``tag`` into ``engine`` (read
    under ``weights_only_torch_load``); returns the client state."""
    with weights_only_torch_load():
        load_path, client_state = engine.load_checkpoint(
            str(checkpoint_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {checkpoint_dir}")
    return dict(client_state or {})


def read_rank_state(tag_dir: Path, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s ``rank_state_*.pt`` of a checkpoint tag, read without running code."""
    rank_file = tag_dir / f"rank_state_{rank:05d}.pt"
    if not rank_file.is_file():
        raise FileNotFoundError(f"{rank_file} missing: was {tag_dir.name} saved by a smaller job?")
    rank_state = safe_torch_load(rank_file, LEGACY_RANK_STATE_GLOBALS)
    if not isinstance(rank_state, dict):
        raise CheckpointFileError(f"{rank_file}: not a rank state (a {type(rank_state).__name__})")
    return rank_state


def read_trainer_state(tag_dir: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint tag: step, world size and the JSON counters."""
    path = tag_dir / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointFileError(f"{path}: unreadable ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("world_size"), int):
        raise CheckpointFileError(f"{path}: no world_size (not a trainer state)")
    return state


def safe_torch_load(
    path: str | os.PathLike,
    allowed: Sequence[str] = (),
    *,
    map_location: Any = "cpu",
    **kwargs: Any,
) -> Any:
    """``torch.load(path, weights_only=True)`` with the globals named in ``allowed`` (dotted
    paths, e.g. ``DEEPSPEED_SAFE_GLOBALS``) allowed besides torch's own tensors and plain
    containers. A file holding anything else, or no torch file at all, raises
    ``CheckpointFileError``: one line naming the file and the first offending global."""
    load = getattr(torch.load, "__wrapped__", torch.load)  # the real one, even when patched
    with torch.serialization.safe_globals(_resolve_globals(allowed)):
        try:
            return load(path, map_location=map_location, weights_only=True, **kwargs)
        except pickle.UnpicklingError as exc:
            raise CheckpointFileError(
                f"{path}: refused, not plain tensors and containers ({_unpickler_reason(exc)}); "
                "was it modified, or written by something else?"
            ) from None
        except OSError:
            raise  # missing or unreadable: the OS error names the file
        except Exception as exc:  # a damaged file makes the unpickler raise about anything
            first_line = (str(exc).strip().splitlines() or [""])[0]
            raise CheckpointFileError(
                f"{path}: not a readable torch file ({type(exc).__name__}: {first_line})"
            ) from None


@contextlib.contextmanager
def weights_only_torch_load(allowed: Sequence[str] = DEEPSPEED_SAFE_GLOBALS) -> Iterator[None]:
    """Within the block, every ``torch.load(...)`` call reads as ``safe_torch_load(...,
    allowed)`` does, even when the caller passes ``weights_only=False``.

    DeepSpeed reads its checkpoints in several places (its checkpoint engine, the state-dict
    loader, ``zero_to_fp32``), each with ``torch.load(..., weights_only=False)`` and no hook to
    change it; all of them look ``torch.load`` up on the module at call time, so replacing
    that attribute for the duration of a load covers every one, including ones a DeepSpeed
    upgrade may add. A custom checkpoint engine would cover only the engine's reads, not the
    consolidation in ``cloud export``. The patch is process-wide while the block runs; loading
    happens on one thread with nothing else reading files meanwhile.
    """
    original = torch.load

    def load(f: Any, map_location: Any = None, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("weights_only", None)
        if args or kwargs.pop("pickle_module", None) is not None:
            raise CheckpointFileError(f"{f}: refused, a custom unpickler was asked for")
        return safe_torch_load(f, allowed, map_location=map_location, **kwargs)

    load.__wrapped__ = original  # type: ignore[attr-defined]
    torch.load = load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original


def _resolve_globals(names: Sequence[str]) -> list[tuple[Any, str]]:
    """(object, dotted name) pairs for ``torch.serialization.safe_globals``; a name that does
    not import (another numpy or DeepSpeed version) is skipped: its files cannot exist here."""
    resolved = []
    for name in names:
        module_name, _, attribute = name.rpartition(".")
        try:
            resolved.append((getattr(importlib.import_module(module_name), attribute), name))
        except (ImportError, AttributeError):
            continue
    return resolved


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)|but got (<[^>]*>)")


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The offending global of a weights-only refusal, without torch's advice to allow it."""
    match = _UNSUPPORTED_GLOBAL.search(str(exc))
    if match:
        return f"{match.group(1) or match.group(2)} is not allowed"
    lines = [line for line in str(exc).splitlines() if "WeightsUnpickler error" in line]
    return lines[0].split("WeightsUnpickler error:", 1)[1].strip() if lines else "not weights"


def _json_scalars(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that are JSON scalars (int, float, str, bool, None); the
    others are left out. Not ``train.common.serialization.jsonable``, which converts every
    value: a client state may hold objects (tensors, configs) that the JSON trainer state of
    a checkpoint must not carry, and DeepSpeed saves the whole client state anyway."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float, str, bool, type(None)))}
