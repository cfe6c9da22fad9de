"""`cloud scaling sweep`: run a grid of pretraining runs and append one CSV row per run."""

from __future__ import annotations

import argparse
import sys


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "sweep",
        help="pretrain a grid of model sizes x step counts; one results.csv row per run",
        description=(
            "Run every (model, steps) cell of a sweep config as a normal pretraining run and "
            "append one row per finished run to <out_dir>/results.csv. Re-running skips the "
            "cells already in the CSV and resumes an interrupted one from its checkpoint. "
            "With a held-out run in the config (prediction:), the law fitted to the grid then "
            "predicts its loss, writes <out_dir>/prediction.json, and only then trains it. "
            "Then the checkpoints listed under downstream: are fine-tuned (one downstream.csv "
            "row each). Finally fit the scaling law and write the report to <out_dir>/report (unless "
            "--no-fit, which runs the grid only)."
        ),
    )
    parser.add_argument(
        "--config", required=True, help="sweep YAML, e.g. configs/scaling/cpu-tiny.yaml"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="pretraining overrides applied to every run, e.g. data.corpus=runs/corpus",
    )
    parser.add_argument("--out", metavar="DIR", help="override the sweep's out_dir")
    parser.add_argument(
        "--no-fit", action="store_true", help="only run the grid (no prediction, no fit)"
    )
    parser.add_argument(
        "--no-downstream",
        action="store_true",
        help="skip the downstream fine-tuning (run it with `cloud scaling downstream`)",
    )
    parser.add_argument(
        "--part",
        metavar="K/N",
        default="1/1",
        help="run only part K of N of the grid (parts of about equal cost), so N processes "
        "share it and its CSV; the fit waits until every cell has a row (default 1/1: all)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=200, help="bootstrap resamples for the fit"
    )
    parser.set_defaults(func=run_sweep_command)
    register_downstream(actions)


def _show_progress() -> None:
    """The runs' own progress lines (loss, tokens/s, evaluations, epochs) on stderr: a sweep
    or a 5-fold fine-tuning runs for hours."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def run_sweep_command(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    _show_progress()
    from train.scaling import ScalingFitError, format_summary, write_report
    from train.scaling.sweep import (
        load_sweep_config,
        missing_cells,
        parse_part,
        run_downstream_stage,
        run_prediction,
        run_sweep,
    )

    sweep = load_sweep_config(args.config, args.overrides)
    if args.out:
        sweep = dataclasses.replace(sweep, out_dir=args.out)
    part = parse_part(args.part)
    results = run_sweep(sweep, part=part)
    print(f"results: {results}")
    if args.no_fit:
        return 0
    missing = missing_cells(sweep)
    if missing:
        names = ", ".join(f"{m.name} × {s}" for m, s in missing)
        print(f"not fitted yet: {len(missing)} cell(s) still without a row ({names})")
        return 0
    if part != (1, 1) and sweep.prediction is not None:
        print(
            "the grid is complete; run `cloud scaling sweep --config ...` without --part to "
            "predict, train and score the held-out run, and fit"
        )
        return 0
    try:
        run_prediction(sweep, bootstrap=args.bootstrap)
    except ScalingFitError as exc:
        print(f"prediction refused: {exc}", file=sys.stderr)
        return 2
    if not args.no_downstream:
        run_downstream_stage(sweep)
    try:
        fit = write_report(results, Path(sweep.out_dir) / "report", bootstrap=args.bootstrap)
    except ScalingFitError as exc:
        print(f"scaling fit refused: {exc}", file=sys.stderr)
        return 2
    print(format_summary(fit))
    print(f"report: {Path(sweep.out_dir) / 'report' / 'report.md'}")
    return 0


def register_downstream(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "downstream",
        help="fine-tune a sweep's checkpoints on a benchmark; one downstream.csv row each",
        description=(
            "Export and fine-tune the runs listed under downstream: in a sweep config, on every "
            "fold of its task, and append one row per checkpoint to <out_dir>/downstream.csv "
            "(finished ones are skipped; runs still pretraining are left for the next call). "
            "`cloud scaling sweep` runs this stage too, after the grid and the prediction."
        ),
    )
    parser.add_argument("--config", required=True, help="sweep YAML, e.g. configs/scaling/cpu.yaml")
    parser.add_argument("--out", metavar="DIR", help="override the sweep's out_dir")
    parser.set_defaults(func=run_downstream_command)


def run_downstream_command(args: argparse.Namespace) -> int:
    import dataclasses

    _show_progress()
    from train.scaling.sweep import load_sweep_config, run_downstream_stage

    sweep = load_sweep_config(args.config)
    if args.out:
        sweep = dataclasses.replace(sweep, out_dir=args.out)
    if sweep.downstream is None:
        print(f"{args.config} has no downstream: section", file=sys.stderr)
        return 2
    run_downstream_stage(sweep)
    return 0
