"""Loading that cannot run code: a checkpoint file carrying a pickle payload is refused (or,
when the command does not read that file, ignored) by ``cloud pretrain --resume`` and
``cloud export``, and the payload never runs.

The payload is harmless and observable: unpickling it calls ``open(marker, "w")``, which
creates the marker file. ``test_the_payload_runs_when_unpickled`` shows that it does, so the
other tests' "no marker" means the file was not unpickled, not that the payload was inert.
Package bounds (config.json limits, safetensors headers) are tested in test_export.py.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.checkpoint import (
    LEGACY_RANK_STATE_GLOBALS,
    CheckpointFileError,
    rng_state,
    safe_torch_load,
    set_rng_state,
    storable_rng_state,
    weights_only_torch_load,
)

REPO = Path(__file__).resolve().parents[2]
DEBUG = REPO / "configs" / "pretrain" / "debug.yaml"
TAG = "step_00000002"
# The files of a ZeRO-1 checkpoint tag (one process), by what they hold.
FILES = {
    "rank_state": "rank_state_00000.pt",
    "model_states": "mp_rank_00_model_states.pt",
    "optim_states": "zero_pp_rank_0_mp_rank_00_optim_states.pt",
}


class Payload:
    """Unpickled, it creates ``marker`` (as an attacker's payload would run a command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    """Add a ``Payload`` to the torch file at ``path``, keeping everything else it holds."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own fresh file
    state["payload"] = Payload(marker)
    torch.save(state, path)


# ------------------------------------------------------------------------------ fast


def test_the_payload_runs_when_unpickled(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "state.pt")
    plant(tmp_path / "state.pt", tmp_path / "marker")
    assert not (tmp_path / "marker").exists()
    torch.load(tmp_path / "state.pt", weights_only=False)
    assert (tmp_path / "marker").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the damaged file
def test_torch_load_is_weights_only_inside_the_block_whatever_the_caller_asks(
    tmp_path: Path,
) -> None:
    plain, planted, garbage = (tmp_path / name for name in ("plain.pt", "planted.pt", "bad.pt"))
    torch.save({"weights": torch.ones(3)}, plain)
    shutil.copy(plain, planted)
    plant(planted, tmp_path / "marker")
    garbage.write_bytes(b"\x80 truncated by SIGKILL")
    original = torch.load
    with weights_only_torch_load():
        assert torch.equal(torch.load(plain, weights_only=False)["weights"], torch.ones(3))
        with pytest.raises(CheckpointFileError, match=rf"^{planted}: refused, .*io\.open"):
            torch.load(planted, map_location="cpu", weights_only=False)
        with pytest.raises(CheckpointFileError, match=rf"^{garbage}: "):
            torch.load(garbage, weights_only=False)
    assert torch.load is original and not (tmp_path / "marker").exists()


@pytest.fixture
def caller_rng():
    """Leave the global RNGs as the test found them."""
    state = rng_state()
    yield
    set_rng_state(state)


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), torch.rand(1).item()


def test_a_rank_state_needs_no_allow_list_and_restores_every_rng(
    tmp_path: Path, caller_rng
) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = {"world_size": 1, "data": {"epoch": 0, "live": [0, 1]}, "rng": rng_state()}
    torch.save({**state, "rng": storable_rng_state(state["rng"])}, tmp_path / "rank.pt")
    expected = draws()
    loaded = safe_torch_load(tmp_path / "rank.pt")  # tensors and plain containers only
    assert loaded["data"] == state["data"]
    set_rng_state(loaded["rng"])
    assert draws() == expected


def test_a_legacy_rank_state_reads_with_a_uint32_array_and_nothing_more(
    tmp_path: Path, caller_rng
) -> None:
    np.random.seed(5)
    legacy = {"world_size": 1, "rng": rng_state()}  # the numpy key as an array, as before
    torch.save(legacy, tmp_path / "legacy.pt")
    expected = draws()
    loaded = safe_torch_load(tmp_path / "legacy.pt", LEGACY_RANK_STATE_GLOBALS)
    set_rng_state(loaded["rng"])
    assert draws() == expected
    # An object array, which could carry anything, is not among what the allow-list builds.
    torch.save({"rng": np.array([Payload(tmp_path / "marker")], dtype=object)}, tmp_path / "o.pt")
    with pytest.raises(CheckpointFileError, match=r"o\.pt: refused"):
        safe_torch_load(tmp_path / "o.pt", LEGACY_RANK_STATE_GLOBALS)
    assert not (tmp_path / "marker").exists()


# ------------------------------------------------------------------------------ real runs


def run_overrides(corpus: Path, run_dir: Path, stage: int, steps: int) -> list[str]:
    return [
        f"data.corpus={corpus}",
        f"run_dir={run_dir}",
        f"system.zero_stage={stage}",
        "system.cpu_threads=1",
        "logging.progress=off",
        "logging.tensorboard=false",
        f"train.max_steps={steps}",
        "train.eval_interval=0",
        "train.eval_at_start=false",
        "data.eval_batches=1",
        "checkpoint.interval=0",
    ]


@pytest.fixture(scope="module")
def runs(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two real 2-step runs, one process each: ZeRO-1 (rank state, model states, optimizer
    shard) and ZeRO-0 (the whole optimizer inside the model states)."""
    from train.pretrain import launch

    base = tmp_path_factory.mktemp("safe_loading")
    for stage in (1, 0):
        launch(DEBUG, run_overrides(sample_corpus, base / f"zero{stage}", stage, steps=2))
    return {stage: base / f"zero{stage}" for stage in (1, 0)}


def planted_copy(run: Path, tmp_path: Path, name: str | None) -> tuple[Path, Path, Path]:
    """(copy of ``run``, the planted file in it, the marker the payload would create)."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "marker"
    target = copy / "checkpoints" / TAG / (name or FILES["rank_state"])
    if name is not None:
        plant(target, marker)
    return copy, target, marker


@pytest.mark.slow
@pytest.mark.parametrize("kind", [None, *FILES])
def test_resume_refuses_a_planted_payload_naming_the_file(
    runs: dict[int, Path], sample_corpus: Path, tmp_path: Path, kind: str | None
) -> None:
    from train.common.paths import env_with_repository

    copy, target, marker = planted_copy(runs[1], tmp_path, FILES.get(kind or ""))
    command = [
        sys.executable, "-m", "train.cli", "pretrain", "--config", str(DEBUG),
        *run_overrides(sample_corpus, copy, stage=1, steps=3), "--resume",
    ]  # fmt: skip
    env = env_with_repository({**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if kind is None:  # the untouched copy resumes: the refusals below come from the payloads
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"resumed from {TAG} at step 2" in result.stderr
        return
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr[-3000:]
    assert last_line.startswith(f"cloud pretrain: error: {target}: refused, "), last_line
    assert "io.open is not allowed" in last_line
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "kind"),
    [(1, "rank_state"), (1, "model_states"), (1, "optim_states"), (0, "model_states")],
)
def test_export_refuses_a_planted_payload_or_does_not_read_the_file(
    runs: dict[int, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stage: int,
    kind: str,
) -> None:
    from cloud import load_pretrained
    from train.cli import main

    copy, target, marker = planted_copy(runs[stage], tmp_path, FILES[kind])
    code = main(["export", str(copy), "--out", str(tmp_path / "package")])
    err = capsys.readouterr().err
    assert not marker.exists()
    if kind == "rank_state":  # export never reads the rank states
        assert code == 0, err
        assert load_pretrained(tmp_path / "package").metadata["training"]["steps"] == 2
        return
    assert code == 2 and not (tmp_path / "package").exists()
    assert f"cloud export: {target}: refused, " in err and "io.open is not allowed" in err
