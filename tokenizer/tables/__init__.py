"""Symmetry tables behind SCOPE, loaded once and cached.

- ``generator.json``: the released CLOUD generator code of each space group 1–230.
- ``wyckoff_multiplicities.json``: multiplicity of each Wyckoff letter (conventional cell).
- ``wyckoff_alternatives.json``: the Wyckoff-letter permutations of each group's Euclidean
  normalizer (rebuilt by ``build_wyckoff_alternatives.py`` from pyxtal).

The first two are the released CLOUD tables (MIT, ``LICENSE.cloud``), copied unchanged so
that the ``"cloud"`` variant reproduces released corpora byte for byte.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

TABLES = Path(__file__).resolve().parent


def _load(name: str) -> dict:
    return json.loads((TABLES / name).read_text())


@cache
def generators() -> dict[int, str]:
    """Space-group number → generator code (e.g. 225 → ``"16aODDaDODbOOOcOOOdOOOeOOO0"``)."""
    return {int(k): v for k, v in _load("generator.json").items()}


@cache
def group_of_generator() -> dict[str, int]:
    """Generator code → space-group number (the codes are unique)."""
    return {code: number for number, code in generators().items()}


@cache
def multiplicities() -> dict[int, dict[str, int]]:
    """Space-group number → {Wyckoff letter: multiplicity in the conventional cell}."""
    table = _load("wyckoff_multiplicities.json")
    return {int(k): {letter: int(m) for letter, m in v.items()} for k, v in table.items() if v}


@cache
def wyckoff_symbols() -> dict[int, dict[str, str]]:
    """Space-group number → {letter: symbol}, the symbol being multiplicity + letter (``"4a"``)."""
    return {
        number: {letter: f"{m}{letter}" for letter, m in letters.items()}
        for number, letters in multiplicities().items()
    }


@cache
def all_wyckoff_symbols() -> tuple[str, ...]:
    """Every Wyckoff symbol of the 230 groups, sorted by multiplicity then letter."""
    symbols = {s for table in wyckoff_symbols().values() for s in table.values()}
    return tuple(sorted(symbols, key=symbol_sort_key))


def letter_rank(letter: str) -> int:
    """Order of Wyckoff letters: a, b, …, z, then A (group 47 has 27 positions)."""
    return ord(letter) - ord("a") if letter.islower() else 26 + ord(letter) - ord("A")


def symbol_sort_key(symbol: str) -> tuple[int, int]:
    return int(symbol[:-1]), letter_rank(symbol[-1])


@cache
def letter_permutations() -> dict[int, tuple[dict[str, str], ...]]:
    """Space-group number → the normalizer's letter maps, each {letter: image letter}."""
    table = _load("wyckoff_alternatives.json")
    result: dict[int, tuple[dict[str, str], ...]] = {}
    for key, rows in table.items():
        letters = sorted(rows[0], key=letter_rank)
        result[int(key)] = tuple(dict(zip(letters, row, strict=True)) for row in rows)
    return result
