"""Arguments that several ``cloud`` subcommands declare alike."""

from __future__ import annotations

import argparse

FINETUNE_OVERRIDES_HELP = "dotted config overrides parsed as YAML, e.g. epochs=20 head.dropout=0.2"
"""The overrides help of the fine-tuning commands (``cloud finetune``, ``cloud debye``)."""


def add_overrides(parser: argparse.ArgumentParser, help: str = FINETUNE_OVERRIDES_HELP) -> None:
    """The positional ``KEY=VALUE`` config overrides (any number, ``args.overrides``), which
    the command's ``load_config`` applies on top of its YAML config."""
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=help)
