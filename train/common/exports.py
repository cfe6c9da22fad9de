"""A package's public names, imported from its rooms only when first used.

A job package (``train.finetune``, ``train.debye``) names its API in its ``__init__`` and
keeps the code in rooms. Importing every room at once would make ``import train.debye``
pay for torch, matplotlib and the rest, and the ``cloud`` command line imports the light
rooms of these packages (``train.debye.options``) while building its parser, which must stay
instant (``cloud --help``). So the package resolves a name on first access (PEP 562): the
room is imported then, the value is kept on the package, and later accesses are plain
attribute reads.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, rooms: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names are ``rooms``: {room
    (a module of the package, without the package prefix): the names it provides}.

    ``__getattr__(name)`` imports ``package.room`` of ``name``, stores the value on the
    package and returns it; a name of no room raises ``AttributeError`` as for any module.
    A name may be listed in one room only, and no name may be a room's (the import system
    sets each imported room as an attribute of its package, which would shadow it).
    """
    where: dict[str, str] = {}
    for room, names in rooms.items():
        for name in names:
            if name in where or name in rooms:
                raise ValueError(f"{package}: {name!r} is listed twice or is a room's name")
            where[name] = room

    def __getattr__(name: str) -> Any:
        room = where.get(name)
        if room is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{room}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
