"""Running a pretraining: in this process (:func:`run_pretraining`), as fresh worker
processes (:func:`launch`) and from the command line (:func:`main_from_args`)."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from train import checkpoint as ckpt
from train.distributed import forget_single_process_env
from train.pretrain.config import SUMMARY_FILE, PretrainConfig, load_config
from train.pretrain.trainer import Trainer


def run_pretraining(config: PretrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train as ``config`` says and return the summary (every rank gets it).

    Works under a launcher or single-process (a 1-process gloo/nccl group is created and kept
    for later calls; the launcher variables it set are taken back from ``os.environ``). The
    caller's global RNG states are restored afterwards, and the engine is released, so
    repeated calls in one process are independent.
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
        forget_single_process_env()
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
        # No rank tears its group down while another may still be in a collective with it
        # (once, in CI, a rank aborted at exit right after its peer had gone).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0
