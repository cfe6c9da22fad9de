"""The `cloud` command line: one parser (``train.cli.parser``) and one module per subcommand
(``train.cli.scope``, ``train.cli.corpus``, …, in ``COMMAND_MODULES``).

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func``. Command modules import nothing heavy at import time (torch, ray, deepspeed are
imported inside the command functions) so that ``cloud --help`` stays instant. The engines
(``train.pretrain``, ``train.debye``, …) never import this package.
"""

from __future__ import annotations

from train.cli.parser import (
    COMMAND_MODULES,
    DefaultsHelpFormatter,
    build_parser,
    main,
    parse_arguments,
    show_defaults,
)

__all__ = [
    "COMMAND_MODULES",
    "DefaultsHelpFormatter",
    "build_parser",
    "main",
    "parse_arguments",
    "show_defaults",
]
