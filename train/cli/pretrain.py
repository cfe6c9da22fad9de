"""`cloud pretrain`: MLM pre-training of CLOUD with DeepSpeed (see ``train.pretrain``).

Single process: ``cloud pretrain --config configs/pretrain/debug.yaml data.corpus=DIR``.
Several on this machine: ``cloud pretrain --nproc-per-node 2 --config ...`` (listens on
127.0.0.1 only; every rank's output in RUN_DIR/launch.log). Several nodes: one
``python -m train.launcher --nnodes M --node-rank R --nproc-per-node N --rendezvous HOST:PORT
-- $(which cloud) pretrain --config ...`` per node (what ``cloud submit slurm`` runs; node 0
hosts the store on HOST only); torchrun and ``deepspeed --module train.cli pretrain ...``
work too, their stores listening on every interface of the first node.
"""

from __future__ import annotations

import argparse
import os
import sys

from train.cli.arguments import add_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cloud pretrain`` (also ``python -m train.cli pretrain``, as torchrun and
    the DeepSpeed launcher start it)."""
    parser.add_argument(
        "--config", required=True, help="YAML run config, e.g. configs/pretrain/tiny.yaml"
    )
    add_overrides(
        parser, help="dotted overrides parsed as YAML, e.g. optim.lr=3e-4 system.zero_stage=2"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint 'latest' names (starts afresh if there is none)",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=_positive_int,
        default=1,
        metavar="N",
        help="processes on this machine (default 1); N > 1 starts N workers that rendezvous "
        "over loopback only, rank 0's output here and every rank's in RUN_DIR/launch.log",
    )
    # The deepspeed launcher passes --local_rank; the LOCAL_RANK environment variable is used.
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pre-train CLOUD (masked language modelling, DeepSpeed ZeRO 0-3)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from train.launcher import inside_launched_worker

    nproc = getattr(args, "nproc_per_node", 1)
    if inside_launched_worker():
        launched = int(os.environ.get("LOCAL_WORLD_SIZE", nproc))
        if nproc not in (1, launched):
            print(
                f"cloud pretrain: error: --nproc-per-node {nproc} inside a launched worker "
                f"(RANK={os.environ.get('RANK')}, LOCAL_WORLD_SIZE={launched}): the launcher "
                "already chose the processes; drop one of the two",
                file=sys.stderr,
            )
            return 2
    elif nproc > 1:
        return run_workers(args, nproc)
    from train.pretrain import main_from_args  # torch and deepspeed load only here

    return main_from_args(args)


def run_workers(args: argparse.Namespace, nproc: int) -> int:
    """``cloud pretrain --nproc-per-node N``: N workers of this command through
    ``train.launcher`` (loopback only), supervised from here; the exit status says how it
    ended (0, 1 a worker failed, 130 interrupted)."""
    from pathlib import Path

    from train.launcher import WorkerFailed, launch_workers, pretrain_command
    from train.pretrain import load_config

    config = load_config(args.config, args.overrides)  # a bad config fails here, once
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(args.overrides)
    if config.logging.progress is None and sys.stderr.isatty():
        # Rank 0 writes into a pipe, where it would decide against its progress bar.
        overrides.append("logging.progress=true")
    log_path = run_dir / "launch.log"
    try:
        launch_workers(
            pretrain_command(args.config, overrides, resume=args.resume),
            nproc=nproc,
            log_path=log_path,
            echo=True,
        )
    except WorkerFailed as failure:
        print(f"--- last lines of {log_path} ---\n{failure.tail}", file=sys.stderr)
        print(f"cloud pretrain: {failure.line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ncloud pretrain: interrupted; the {nproc} workers were stopped (log: {log_path}); "
            "add --resume to the same command to continue from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    return 0
