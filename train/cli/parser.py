"""The `cloud` parser: the subcommands of ``COMMAND_MODULES``, overrides anywhere among a
command's options, and user mistakes as one-line errors."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "train.cli.scope",
    "train.cli.corpus",
    "train.cli.pretrain",
    "train.cli.export",  # export, then import-hf
    "train.cli.finetune",
    "train.cli.predict",
    "train.cli.debye",
    "train.cli.scaling",
    "train.cli.submit",
    "train.cli.demo",
)
"""In pipeline order, which is the order ``cloud --help`` lists the commands in."""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends an option's line with "(default: …)" where there is a default to tell:
    not None, not a flag's False, not empty, and not where the help text speaks of it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default, text = action.default, action.help or ""
        if (
            not action.option_strings
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or (isinstance(default, list | tuple) and not default)
            or "default" in text.lower()
        ):
            return action.help
        shown = ", ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every parser below it ``DefaultsHelpFormatter``, keeping each one's
    own formatter otherwise (raw descriptions stay raw)."""
    if not issubclass(parser.formatter_class, DefaultsHelpFormatter):
        own = parser.formatter_class
        parser.formatter_class = type(
            f"{own.__name__}WithDefaults", (DefaultsHelpFormatter, own), {}
        )
    for action in parser._actions:  # argparse has no public accessor for subcommands
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                show_defaults(subparser)


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
    show_defaults(parser)
    return parser


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that a command's KEY=VALUE overrides may stand
    anywhere among its options (``pretrain --config X a=1 --resume b=2``), kept in order.

    argparse fills a ``nargs="*"`` positional from one run of arguments only and returns the
    runs after a later option as unrecognised; those are the rest of the overrides. Anything
    else left over is argparse's usual "unrecognized arguments" error.
    """
    args, extras = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if extras and isinstance(overrides, list) and not any(e.startswith("-") for e in extras):
        args.overrides = [*overrides, *extras]
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_arguments(parser, argv)
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
