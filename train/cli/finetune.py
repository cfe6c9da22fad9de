"""`cloud finetune --checkpoint PKG --task NAME`: fine-tune on a property benchmark.

Runs the requested folds of a ``train.tasks`` task (Matbench protocol: validation carved from
the training fold, test fold touched once) and writes results.json.gz (Matbench layout),
report.md, TensorBoard curves, parity plots and the fine-tuned model package to --out.
"""

from __future__ import annotations

import argparse
import sys

from train.cli.arguments import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained package on a property task (Matbench protocol)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="pretrained export package (cloud export)")
    parser.add_argument("--task", help="task name; --list-tasks shows them")
    parser.add_argument("--folds", help="folds to run: 0-4, 0,2 or all (default: all)")
    parser.add_argument("--config", help="YAML config, e.g. configs/finetune/matbench.yaml")
    parser.add_argument("--out", help="output directory (default runs/finetune/<task>)")
    parser.add_argument("--data-root", help="task data root (default ../shared/data)")
    parser.add_argument(
        "--no-sample-fallback",
        action="store_true",
        help="fail instead of using the sample in data/ when the data root lacks the task",
    )
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 …")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the folds an earlier run with the same settings finished in --out",
    )
    parser.add_argument("--list-tasks", action="store_true", help="list the tasks and exit")
    add_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from train.tasks import iter_tasks

    if args.list_tasks:
        for task in iter_tasks():
            print(f"{task.name:28s} {task.task_type:14s} {task.metric:6s} {task.description}")
        return 0
    if not args.checkpoint or not args.task:
        print("cloud finetune: error: --checkpoint and --task are needed", file=sys.stderr)
        return 2
    from train.finetune import load_config, metrics_table, parse_folds, run_finetune

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    config = load_config(
        args.config,
        args.overrides,
        checkpoint=args.checkpoint,
        task=args.task,
        folds=parse_folds(args.folds),
        out=args.out,
        data_root=args.data_root,
        device=args.device,
        allow_sample=False if args.no_sample_fallback else None,
        resume=True if args.resume else None,
    )
    result = run_finetune(config, progress=True)
    print(metrics_table(result.task, result.folds, result.summary))
    print(f"\nresults: {result.out}/results.json.gz, report: {result.out}/report.md")
    return 0
