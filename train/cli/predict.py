"""`cloud predict --checkpoint FINETUNED --input PATH...`: predictions as CSV.

Reads every structure of the inputs (CIF, POSCAR, pymatgen / Matbench JSON, CSV with a cif
column, JSON Lines, OPTIMADE…; folders recursively) and writes one CSV row per structure:
id, source (file:index), scope, prediction (classification: label and probabilities), error.
Structures that cannot be read or encoded get an empty prediction and the reason in the
error column, and are listed on stderr; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict a property with a fine-tuned package (CSV out)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", required=True, help="fine-tuned package (or a cloud finetune --out dir)"
    )
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="PATH", help="structure files or folders"
    )
    parser.add_argument("--out", default="-", help="CSV file to write (default: stdout)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda …")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from train.finetune.predict import load_predictor, predict_files

    predictor = load_predictor(args.checkpoint, device=args.device)
    if args.out == "-":
        predicted, failed = predict_files(predictor, args.input, sys.stdout, sys.stderr)
    else:
        with open(args.out, "w", newline="") as handle:
            predicted, failed = predict_files(predictor, args.input, handle, sys.stderr)
    print(
        f"{predicted} structures predicted, {failed} without a prediction"
        + (f" (see the error column of {args.out})" if failed and args.out != "-" else ""),
        file=sys.stderr,
    )
    return 1 if failed else 0
