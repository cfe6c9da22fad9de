"""`cloud demo`: the whole pipeline on the shipped real data, ending with a report."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run corpus → pretraining → export → scaling → fine-tuning → Debye → report",
        description=(
            "Run every stage of CLOUD on the real data in data/ and write report.html and "
            "report.md. Finished stages are reused when the demo is run again."
        ),
    )
    parser.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    parser.add_argument("--quick", action="store_true", help="every stage at its smallest size")
    parser.add_argument("--fresh", action="store_true", help="delete the run folder and start over")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from train.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, fresh=args.fresh)
    return 0
