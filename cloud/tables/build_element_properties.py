"""Write ``element_properties.json``: per-element physical data the CLOUD embeddings can use.

Run once with pymatgen installed (``python -m cloud.tables.build_element_properties``); the
JSON is committed so that models and baselines never depend on pymatgen's version at run
time. Each property is a float or null (unknown for that element); ``cloud.token_features``
fills and standardises them.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from pymatgen.core.periodic_table import Element

from tokenizer.elements import ELEMENTS

OUT = Path(__file__).with_name("element_properties.json")
PROPERTIES = (
    "Z",
    "row",
    "group",
    "atomic_mass",
    "inv_sqrt_mass",
    "electronegativity",
    "atomic_radius",
    "mendeleev_no",
    "melting_point",
    "ionization_energy",
    "molar_volume",
    "valence_s",
    "valence_p",
    "valence_d",
    "valence_f",
    "max_oxidation_state",
    "min_oxidation_state",
)


def _number(value: object) -> float | None:
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def _valence_counts(element: Element) -> dict[str, float]:
    """Electrons in the outermost shell of each orbital type (s, p, d, f) of the ground state."""
    counts = {"s": 0.0, "p": 0.0, "d": 0.0, "f": 0.0}
    try:
        structure = element.full_electronic_structure
    except KeyError:  # the heaviest elements have no recorded configuration
        return {orbital: math.nan for orbital in counts}
    outer_n = max(n for n, _, _ in structure)
    for n, orbital, electrons in structure:
        # Valence: the outermost s/p shell, plus partly filled d (n-1) and f (n-2) shells.
        if (orbital in "sp" and n == outer_n) or (
            orbital in "df" and electrons < (10 if orbital == "d" else 14)
        ):
            counts[orbital] += electrons
    return counts


def element_record(symbol: str) -> dict[str, float | None]:
    element = Element(symbol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mass = _number(element.atomic_mass)
        valence = _valence_counts(element)
        oxidation = element.common_oxidation_states or element.oxidation_states
        return {
            "Z": float(element.Z),
            "row": float(element.row),
            "group": float(element.group),
            "atomic_mass": mass,
            "inv_sqrt_mass": 1.0 / math.sqrt(mass) if mass else None,
            "electronegativity": _number(element.X),
            "atomic_radius": _number(element.atomic_radius),
            "mendeleev_no": _number(element.mendeleev_no),
            "melting_point": _number(element.melting_point),
            "ionization_energy": _number(element.ionization_energy),
            "molar_volume": _number(element.molar_volume),
            "valence_s": _number(valence["s"]),
            "valence_p": _number(valence["p"]),
            "valence_d": _number(valence["d"]),
            "valence_f": _number(valence["f"]),
            "max_oxidation_state": float(max(oxidation)) if oxidation else None,
            "min_oxidation_state": float(min(oxidation)) if oxidation else None,
        }


def main() -> None:
    table = {
        "source": "pymatgen.core.periodic_table.Element (pymatgen's periodic_table.json)",
        "properties": list(PROPERTIES),
        "elements": {symbol: element_record(symbol) for symbol in ELEMENTS},
    }
    OUT.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {OUT} ({len(ELEMENTS)} elements × {len(PROPERTIES)} properties)")


if __name__ == "__main__":
    main()
