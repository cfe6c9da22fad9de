"""`cloud scope encode PATH...`: SCOPE strings of structure files, one per structure."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TextIO


def register(subparsers: argparse._SubParsersAction) -> None:
    scope = subparsers.add_parser("scope", help="encode crystal structures as SCOPE strings")
    actions = scope.add_subparsers(dest="scope_command", required=True, metavar="ACTION")
    encode = actions.add_parser(
        "encode",
        help="print the SCOPE string of each structure in CIF, POSCAR, pymatgen JSON … files",
        description=(
            "Print one SCOPE string per structure. Reads CIF, POSCAR/CONTCAR, pymatgen JSON "
            "(and every format `cloud corpus build` reads); '-' reads standard input. A file "
            "that cannot be read or encoded is reported on stderr, the others are still "
            "encoded, and the exit code is 1."
        ),
    )
    encode.add_argument("paths", nargs="+", metavar="PATH", help="structure files, or - for stdin")
    encode.add_argument("--variant", default="cloud", choices=("cloud", "full", "canonical"))
    encode.add_argument("--symprec", type=float, default=0.01, help="spglib distance tolerance, Å")
    encode.add_argument(
        "--angle-tolerance", type=float, default=5.0, help="spglib angle tolerance, degrees"
    )
    encode.add_argument(
        "--json",
        action="store_true",
        help="one JSON record per structure: file, position, id, scope, space group, formula",
    )
    encode.set_defaults(func=run_encode)


def run_encode(args: argparse.Namespace) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="cloud-stdin-") as scratch:
        for path in args.paths:
            source = _stdin_to_file(Path(scratch)) if path == "-" else path
            failures += _encode_file(source, path, args, sys.stdout, sys.stderr)
    return 1 if failures else 0


def _stdin_to_file(scratch: Path) -> str:
    # The readers detect formats by content and seek, so standard input is spooled to a file.
    target = scratch / "stdin"
    with open(target, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f)
    return str(target)


def _encode_file(
    source: str, shown: str, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    from cluster.readers import read_file
    from tokenizer.scope import ScopeError, encode_variants

    failures = 0
    for record in read_file(source):
        # Positions name the file read; standard input was spooled to a scratch file.
        where = record.position.replace(source, shown, 1) if record.position else shown
        if record.error or record.structure is None:
            print(f"error: {where}: {record.error}", file=err)
            failures += 1
            continue
        try:
            symmetry, texts = encode_variants(
                record.structure, (args.variant,), args.symprec, args.angle_tolerance
            )
        except ScopeError as exc:
            print(f"error: {where}: {exc}", file=err)
            failures += 1
            continue
        text = texts[args.variant]
        if args.json:
            line = {
                "file": shown,
                "position": where,
                "id": record.source_id,
                "scope": text,
                "variant": args.variant,
                "space_group": symmetry.space_group,
                "formula": record.structure.composition.reduced_formula,
            }
            print(json.dumps(line), file=out)
        else:
            print(text, file=out)
    return failures
