"""`cloud debye --checkpoint PKG --data petretto|phonondb`: train and evaluate CLOUD-DEBYE.

The encoder of a pretrained package predicts a Debye temperature θ_D per material; the Debye
model turns it into C_v(T) and U(T) at any temperature. Targets come from real phonon data:
Petretto's DFPT DOS (C_v and U integrated from it) or phonondb's phonopy C_v and U.

  --protocol single   the paper's protocol: C_v at 300 K only
  --protocol curve    C_v, U or both (--target) on a temperature grid (--temperatures)

Writes results.json, report.md, predictions.csv, figures/ and the trained model package
(model/) to --out. --compare all also trains a direct MLP on C_v at 300 K and CLOUD-DEBYE
under the single-temperature protocol, and evaluates the best constant θ and the per-material
oracle Debye fit on the same test materials.

Progress: a bar within each epoch when stderr is a terminal (progress=true|false forces it),
else a log line every progress_every_s seconds (30), and one line per epoch. The outputs are
written, marked partial, as soon as the untrained baselines are known and again after each
model is trained. Rerunning the same command with the same --out resumes a stopped run:
finished models are read back from <out>/progress/ and the interrupted one goes on after its
last finished epoch (a run with another config, encoder or data there starts afresh).
"""

from __future__ import annotations

import argparse
import sys

from train.cli.arguments import add_overrides
from train.debye.options import (
    COMPARE_METHODS,
    PROTOCOLS,
    SOURCES,
    TARGETS,
    parse_temperatures,
)


def temperature_spec(text: str) -> str:
    """argparse type: a valid temperature spec, kept as text (the config stores text)."""
    try:
        parse_temperatures(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def compare_list(text: str) -> list[str]:
    """argparse type: ``all``, ``none`` or a comma list of COMPARE_METHODS."""
    if text.strip().lower() == "all":
        return list(COMPARE_METHODS)
    if text.strip().lower() == "none":
        return []
    methods = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in methods if m not in COMPARE_METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown}; choose from {', '.join(COMPARE_METHODS)}, all, none"
        )
    return methods


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "debye",
        help="train CLOUD-DEBYE (θ_D head + Debye physics) on phonon C_v(T), U(T)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="pretrained export package (cloud export)")
    parser.add_argument("--data", choices=SOURCES, help="thermal data (default petretto)")
    parser.add_argument("--target", choices=TARGETS, help="loss on C_v, U or both")
    parser.add_argument(
        "--temperatures",
        type=temperature_spec,
        metavar="SPEC",
        help="training grid in K: start:stop:step (e.g. 50:800:50), a comma list or one value",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, help="single (C_v at 300 K) or curve")
    parser.add_argument(
        "--fold", type=int, metavar="K", help="test fold K of a seeded 5-fold CV by material"
    )
    parser.add_argument("--config", help="YAML config, e.g. configs/debye/curves.yaml")
    parser.add_argument("--out", help="output directory (default runs/debye/<data>-...)")
    parser.add_argument("--data-root", help="data root (default ../shared/data)")
    parser.add_argument(
        "--compare",
        type=compare_list,
        metavar="LIST",
        help=f"also evaluate: all, none or a comma list of {', '.join(COMPARE_METHODS)}",
    )
    parser.add_argument("--seed", type=int, help="split, init and batch-order seed")
    parser.add_argument("--device", help="auto (default), cpu, cuda …")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    add_overrides(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from train.debye import PROGRESS_DIR, load_config, output_directory, results_table, run_debye

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        config = load_config(
            args.config,
            args.overrides,
            checkpoint=args.checkpoint,
            data=args.data,
            target=args.target,
            temperatures=args.temperatures,
            protocol=args.protocol,
            fold=args.fold,
            out=args.out,
            data_root=args.data_root,
            compare=args.compare,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not config.checkpoint:
        print("error: cloud debye needs --checkpoint (or checkpoint: in --config)", file=sys.stderr)
        return 2
    try:
        result = run_debye(config, progress=True)
    except KeyboardInterrupt:
        out = output_directory(config)
        print(
            f"\ninterrupted: partial results in {out} (report.md says what is missing); rerun "
            f"the same command to resume from {out / PROGRESS_DIR}",
            file=sys.stderr,
        )
        return 130
    print(results_table(result.metrics))
    print(f"\nresults: {result.out}/results.json, report: {result.out}/report.md")
    return 0
