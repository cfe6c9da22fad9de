"""The `cloud` command line: one parser, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "train.commands.scope",
    "train.commands.scaling",
    "train.commands.corpus",
    "train.commands.export",
    "train.commands.submit",
    "train.commands.pretrain",
    "train.commands.finetune",
    "train.commands.predict",
    "train.commands.debye",
    "train.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloud",
        description="CLOUD: crystal language model on SCOPE strings.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of an error instead of its one-line message",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # The reader went away (`cloud scope encode … | head`): end quietly, as Unix tools
        # do. Point stdout at devnull so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as err:
        # User mistakes (a bad file, key, value or record) are raised as ValueError or OSError
        # with a message that names what is wrong: one line, not a traceback (--debug: both).
        if args.debug:
            raise
        print(f"cloud {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
