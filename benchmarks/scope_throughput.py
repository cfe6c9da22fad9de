"""SCOPE encoding throughput: ours against the released approach and bare spglib, one run.

    python benchmarks/scope_throughput.py [--data ../shared/data] [--limit 2000] [--repeats 3]

Reads real structures (Matbench dielectric, all 4,764 when ../shared/data is present, else the
shipped sample), converts them to pymatgen Structures once (not timed), then times on one core:

- released: ``SpacegroupAnalyzer(structure, symprec, angle_tolerance)`` per structure, then
  ``get_symmetry_dataset()`` and the generator / multiplicity table look-ups (the released
  CLOUD featuriser);
- ours: ``tokenizer.scope.encode(structure, "cloud")``, and the canonical variant;
- floor: a bare ``spglib.get_symmetry_dataset`` on the same cells (arrays prepared beforehand),
  which any exact-parity encoder must call;
- moyo: ``moyopy.MoyoDataset`` on the same cells, for the agreement report.

Prints structures/s per core and the ratios the issue targets (ours ≥ 1.1× released,
ours ≥ 0.85× bare spglib), and moyo's agreement with spglib (space group, Wyckoff letters).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import spglib
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from tokenizer import tables
from tokenizer.scope import DEFAULT_ANGLE_TOLERANCE, DEFAULT_SYMPREC, encode

REPO = Path(__file__).resolve().parents[1]


def load_structures(data: Path, limit: int | None) -> tuple[list[Structure], str]:
    full = data / "matbench/matbench_dielectric.json.gz"
    path = full if full.is_file() else REPO / "data/matbench/matbench_dielectric_sample.json.gz"
    with gzip.open(path, "rb") as f:
        columns = json.loads(f.read())
    dicts = list(columns["structure"].values())[:limit]
    return [Structure.from_dict(d) for d in dicts], str(path)


def released_encode(structure: Structure) -> str:
    """The released featuriser: SpacegroupAnalyzer, then the two table look-ups."""
    analyzer = SpacegroupAnalyzer(
        structure, symprec=DEFAULT_SYMPREC, angle_tolerance=DEFAULT_ANGLE_TOLERANCE
    )
    dataset = analyzer.get_symmetry_dataset()
    number = analyzer.get_space_group_number()
    symbols: list[str] = []
    for letter in dataset.wyckoffs:
        symbol = f"{tables.multiplicities()[number][letter]}{letter}"
        if symbol not in symbols:
            symbols.append(symbol)
    composition = structure.composition.fractional_composition.get_el_amt_dict()
    comp = " ".join(f"{el} {np.round(x, 2)}" for el, x in composition.items())
    return " | ".join((" ".join(tables.generators()[number]), " ".join(symbols), comp))


def cell_of(structure: Structure) -> tuple:
    return (structure.lattice.matrix, structure.frac_coords, structure.atomic_numbers)


def rates(methods: dict[str, tuple[Callable, list]], repeats: int) -> dict[str, float]:
    """Best-of-N items per second for each method, the methods interleaved in each round.

    Interleaving exposes every method to the same machine load (2 shared cores here), and the
    best round is the least disturbed one.
    """
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeats):
        for name, (fn, items) in methods.items():
            start = time.perf_counter()
            for item in items:
                fn(item)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(methods[name][1]) / seconds for name, seconds in best.items()}


def moyo_agreement(cells: list[tuple]) -> dict[str, float] | None:
    try:
        import moyopy
    except ImportError:
        return None
    same_group = same_letters = 0
    start = time.perf_counter()
    results = []
    for lattice, frac, numbers in cells:
        cell = moyopy.Cell(np.asarray(lattice).tolist(), np.asarray(frac).tolist(), list(numbers))
        results.append(
            # No angle tolerance, as tokenizer.scope runs moyo (it can hang with one).
            moyopy.MoyoDataset(cell, symprec=DEFAULT_SYMPREC)
        )
    elapsed = time.perf_counter() - start
    for cell, moyo in zip(cells, results, strict=True):
        ref = spglib.get_symmetry_dataset(
            cell, symprec=DEFAULT_SYMPREC, angle_tolerance=DEFAULT_ANGLE_TOLERANCE
        )
        if ref is not None and moyo.number == ref.number:
            same_group += 1
            same_letters += list(moyo.wyckoffs) == list(ref.wyckoffs)
    return {
        "rate": len(cells) / elapsed,
        "same_space_group": same_group / len(cells),
        "same_wyckoff_letters": same_letters / len(cells),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    structures, source = load_structures(args.data, args.limit)
    cells = [cell_of(s) for s in structures]
    mismatched = sum(encode(s) != released_encode(s) for s in structures)

    def bare_spglib(cell: tuple) -> object:
        return spglib.get_symmetry_dataset(
            cell, symprec=DEFAULT_SYMPREC, angle_tolerance=DEFAULT_ANGLE_TOLERANCE
        )

    measured = rates(
        {
            "released": (released_encode, structures),
            "ours": (encode, structures),
            "canonical": (lambda s: encode(s, "canonical"), structures),
            "canonical_moyo": (lambda s: encode(s, "canonical", engine="moyo"), structures),
            "floor": (bare_spglib, cells),
        },
        args.repeats,
    )
    released, ours, canonical, floor, canonical_moyo = (
        measured[k] for k in ("released", "ours", "canonical", "floor", "canonical_moyo")
    )
    same_canonical = sum(
        encode(s, "canonical", engine="moyo") == encode(s, "canonical") for s in structures
    )
    moyo = moyo_agreement(cells)

    print(
        f"# SCOPE throughput, {date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, one core used"
    )
    print(
        f"data: {source} ({len(structures)} structures); released vs ours mismatches: {mismatched}"
    )
    print(f"{'method':<34}{'structures/s':>14}{'vs released':>13}{'vs spglib':>11}")
    for name, value in (
        ("released (SpacegroupAnalyzer)", released),
        ("ours, cloud", ours),
        ("ours, canonical", canonical),
        ("ours, canonical, moyo engine", canonical_moyo),
        ("bare spglib.get_symmetry_dataset", floor),
    ):
        print(f"{name:<34}{value:>14.1f}{value / released:>12.2f}x{value / floor:>10.2f}x")
    if moyo:
        print(
            f"{'moyopy.MoyoDataset':<34}{moyo['rate']:>14.1f}{moyo['rate'] / released:>12.2f}x"
            f"{moyo['rate'] / floor:>10.2f}x"
        )
        print(
            f"moyo agreement with spglib: space group {moyo['same_space_group']:.1%}, "
            f"Wyckoff letters {moyo['same_wyckoff_letters']:.1%}"
        )
    print(
        f"canonical strings, moyo engine = spglib engine: {same_canonical / len(structures):.1%} "
        f"of {len(structures)}"
    )
    print(
        f"targets: ours/released >= 1.10 -> {ours / released:.2f}; ours/spglib >= 0.85 -> {ours / floor:.2f}"
    )


if __name__ == "__main__":
    main()
