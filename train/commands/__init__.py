"""Subcommands of the `cloud` CLI.

Each module defines ``register(subparsers)``, which adds its parser and sets ``func``.
Modules import nothing heavy at import time (torch, ray, deepspeed are imported inside
the command functions) so that ``cloud --help`` stays instant.
"""
