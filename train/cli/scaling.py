"""`cloud scaling ACTION`: scaling-law work on pretraining runs.

Actions: ``fit`` (fit L(N, D) to a sweep's results CSV and write the report). Another
action (``sweep``, which produces the CSV) registers through ``ACTION_MODULES``: each listed
module defines ``register(actions)`` and adds its parser to the ``actions`` sub-subparsers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules adding further `cloud scaling` actions, e.g. "train.cli.scaling_sweep".
ACTION_MODULES: tuple[str, ...] = ("train.cli.scaling_sweep",)

DEFAULT_BOOTSTRAP = 200  # mirrors train.scaling.DEFAULT_BOOTSTRAP without importing numpy


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `cloud scaling` and its actions."""
    parser = subparsers.add_parser(
        "scaling",
        help="scaling laws: fit L(N, D) = E + A/N^alpha + B/D^beta to pretraining runs",
        description="Scaling-law work on CLOUD pretraining runs.",
    )
    actions = parser.add_subparsers(dest="scaling_action", required=True, metavar="ACTION")
    register_fit(actions)
    for module_name in ACTION_MODULES:
        importlib.import_module(module_name).register(actions)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {value}")
    return value


def register_fit(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "fit",
        help="fit the scaling law to a results CSV and write report.md, fit.json and plots",
        description=(
            "Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3: Huber "
            "loss on log L, L-BFGS from a grid of starts) to the runs of RESULTS.csv, with "
            "bootstrap confidence intervals, and write report.md, fit.json and PNG plots. "
            "CSV columns: flavour, n_params_non_embedding (N), n_params_total, tokens (D), "
            "flops, val_loss (L), wall_time_s, device. Exit status 2 when the runs cannot "
            "identify the law (the reason is printed)."
        ),
    )
    parser.add_argument("results", metavar="RESULTS.csv", help="the sweep's results CSV")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the report")
    parser.add_argument(
        "--bootstrap",
        type=_non_negative_int,
        default=DEFAULT_BOOTSTRAP,
        metavar="N",
        help=f"bootstrap resamples for 95%% intervals; 0: none (default {DEFAULT_BOOTSTRAP})",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed")
    parser.add_argument(
        "--prediction",
        metavar="FILE",
        help="prediction.json of a held-out run to score (default: the one beside the CSV)",
    )
    parser.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from train.scaling import ScalingFitError, format_summary, write_report

    try:
        content = write_report(
            args.results,
            args.out,
            bootstrap=args.bootstrap,
            seed=args.seed,
            prediction=args.prediction,
        )
    except ScalingFitError as err:
        print(f"cloud scaling fit: cannot fit {args.results}: {err}", file=sys.stderr)
        return 2
    print(format_summary(content, args.out))
    return 0
