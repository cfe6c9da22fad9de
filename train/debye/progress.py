"""Resuming a run: the finished units of a run under ``<out>/progress/`` and the fingerprint
that says whether they belong to this run."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.common.serialization import jsonable
from train.debye.context import RunContext
from train.debye.state import read_state, write_state

# The name of the module this was before it became a package: log configuration, filters
# and tests that name it keep working.
logger = logging.getLogger("train.debye")


UnitResult = tuple[dict[str, torch.Tensor], dict[str, Any]]
"""A finished unit as ``RunProgress`` keeps it: tensors and a JSON record."""


PROGRESS_DIR = "progress"
RUN_FILE = "run.json"
RESUME_IGNORES = (
    "checkpoint",
    "out",
    "device",
    "threads",
    "save_model",
    "plots",
    "progress",
    "progress_every_s",
    "compare",
    "eval_temperatures",
)
"""Config fields no finished unit depends on (a unit keeps θ or predictions of the test
materials, not curves on the evaluation grid; the checkpoint is fingerprinted by its weights,
not its path), so changing them keeps a run resumable."""


def run_fingerprint(context: RunContext) -> dict[str, Any]:
    """What a run's finished units depend on: the config less ``RESUME_IGNORES``, a SHA-256
    of the encoder's weights and one of the materials (ids, SCOPE strings, token ids, n_atoms,
    training targets); JSON-normalised, so it compares equal to its run.json."""
    config = {k: v for k, v in context.config.to_dict().items() if k not in RESUME_IGNORES}
    data = hashlib.sha256(
        json.dumps([context.data.ids, context.data.scopes, context.encoded.sequences]).encode()
    )
    for array in (context.data.n_atoms, context.c_train, context.u_train):
        data.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    fingerprint = {
        "config": config,
        "encoder_sha256": tensor_digest(context.encoder_owner.state_dict()),
        "data_sha256": data.hexdigest(),
    }
    return json.loads(json.dumps(jsonable(fingerprint)))


def tensor_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class RunProgress:
    """The finished units of a run under ``<out>/progress/``, so that a rerun resumes.

    ``run.json`` is the run's ``run_fingerprint``; ``<unit>.safetensors`` a finished unit (its
    θ or predictions of the test materials, the weights it leaves where later units need them,
    its training history, as ``write_state`` files); ``<unit>.training.safetensors`` the
    state after the last epoch of the unit in training (``fit``). When run.json holds another
    fingerprint (another config, encoder or data), that run's files are removed and the run
    starts afresh, as the outputs beside them are about to be replaced.
    """

    def __init__(self, out: Path, fingerprint: Mapping[str, Any]) -> None:
        from train.common.files import atomic_write_text

        self.directory = out / PROGRESS_DIR
        run_file = self.directory / RUN_FILE
        previous = _read_json_or_none(run_file)
        if previous != fingerprint:
            if previous is not None:
                logger.warning(
                    "%s holds the progress of another run (it differs in %s); starting afresh",
                    self.directory,
                    ", ".join(_fingerprint_differences(previous, fingerprint)),
                )
            for path in self.directory.glob("*.safetensors"):
                path.unlink()
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_file, json.dumps(fingerprint, indent=1) + "\n")
        self.finished_before = sorted(
            path.name.removesuffix(".safetensors")
            for path in self.directory.glob("*.safetensors")
            if not path.name.endswith(".training.safetensors")
        )
        if self.finished_before:
            logger.info(
                "%s: resuming; finished by an earlier run: %s",
                self.directory,
                ", ".join(self.finished_before),
            )

    def unit(self, name: str, train: Callable[[Path], UnitResult]) -> UnitResult:
        """The tensors and record of unit ``name``: read back when an earlier run finished
        it, else ``train(state_path)`` (``state_path``: its per-epoch state for ``fit``),
        saved, and its training state removed."""
        path = self.directory / f"{name}.safetensors"
        if path.is_file():
            logger.info("%s: finished by an earlier run, read back from %s", name, path)
            return read_state(path)
        training = self.directory / f"{name}.training.safetensors"
        tensors, record = train(training)
        write_state(path, tensors, record)
        training.unlink(missing_ok=True)
        return tensors, record


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _fingerprint_differences(previous: Any, current: Mapping[str, Any]) -> list[str]:
    if not isinstance(previous, dict):
        return ["an unreadable run.json"]
    old_config, new_config = previous.get("config") or {}, current["config"]
    differing = [
        key
        for key in sorted(set(old_config) | set(new_config))
        if old_config.get(key) != new_config.get(key)
    ]
    if previous.get("encoder_sha256") != current["encoder_sha256"]:
        differing.append("the encoder's weights")
    if previous.get("data_sha256") != current["data_sha256"]:
        differing.append("the materials")
    return differing or ["its format"]
