"""`cloud pretrain`: MLM pre-training of CLOUD with DeepSpeed (see ``train.pretrain``).

Single process: ``cloud pretrain --config configs/pretrain/debug.yaml data.corpus=DIR``.
Several: ``torchrun --nproc-per-node 2 $(which cloud) pretrain --config ...``, or with the
DeepSpeed launcher ``deepspeed --module train.cli pretrain --config ...``.
"""

from __future__ import annotations

import argparse

from train.commands.arguments import add_overrides


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


def run(args: argparse.Namespace) -> int:
    from train.pretrain import main_from_args  # torch and deepspeed load only here

    return main_from_args(args)
