"""Structures from the representations several formats share: pymatgen dicts (with a fast
path), ASE-style dicts, and structure values of a record field (dict, CIF or JSON text)."""

from __future__ import annotations

import ast
from typing import Any

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Species, Structure

from cluster.readers.cif import _CIF_BLOCK_START, _single_cif_structure
from cluster.readers.records import _MIN_VOLUME, _BadRecord, _cell_volume, _validated
from cluster.readers.streams import _JSON_ERRORS, _loads


def _valid_structure_from_value(value: Any) -> Structure:
    """A structure stored in a record field: pymatgen dict, ASE-style dict, CIF text or JSON text."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            return _valid_structure_from_value(_parse_dict_text(text))
        if _CIF_BLOCK_START.search(text):
            return _validated(_single_cif_structure(text))
        raise _BadRecord("structure text is neither CIF nor a JSON/Python dict")
    if isinstance(value, dict):
        if "lattice" in value and "sites" in value:
            return _valid_structure_from_pymatgen_dict(value)
        if "numbers" in value and "positions" in value and "cell" in value:
            return _validated(_structure_from_ase_dict(value))
        if "lattice" not in value:
            raise _BadRecord("missing lattice")
        raise _BadRecord("structure dict without sites")
    if value is None:
        raise _BadRecord("missing structure")
    raise _BadRecord(f"unsupported structure value of type {type(value).__name__}")


def _parse_dict_text(text: str) -> Any:
    try:
        return _loads(text)
    except _JSON_ERRORS:
        pass
    try:  # pandas writes dicts with Python's repr (single quotes, True)
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _BadRecord(f"structure text is not a JSON or Python dict: {exc}") from None


_COMPOSITION_CACHE: dict[tuple[str, float | None, float], Composition] = {}
_SPECIES_KEYS = frozenset({"element", "occu", "oxidation_state", "@module", "@class", "@version"})
_SITE_KEYS = frozenset({"species", "abc", "xyz", "label", "properties"})
_PLAIN_SPECIES_CLASSES = frozenset({None, "Element", "Species"})


def structure_from_pymatgen_dict(data: dict[str, Any]) -> Structure:
    """``Structure.from_dict`` about 2-3x faster, with the same sites, order, labels and properties.

    The fast path builds ``Structure(lattice, compositions, frac_coords)`` from the dict's arrays
    and reuses one ``Composition`` per species; dicts it does not cover exactly (Cartesian-only
    sites, dummy species, spins, nested site properties) go through ``Structure.from_dict``.
    The structure is not validated (it may be disordered); records are.
    """
    return _structure_from_pymatgen_dict(data)[0]


def _valid_structure_from_pymatgen_dict(data: dict[str, Any]) -> Structure:
    structure, prechecked = _structure_from_pymatgen_dict(data)
    return structure if prechecked else _validated(structure)


def _structure_from_pymatgen_dict(data: dict[str, Any]) -> tuple[Structure, bool]:
    """The structure, and whether the fast path already checked everything ``_validated`` does."""
    if not isinstance(data, dict):
        raise _BadRecord(f"structure is a {type(data).__name__}, not a dict")
    lattice_data = data.get("lattice")
    if not isinstance(lattice_data, dict):
        raise _BadRecord("missing lattice")
    sites = data.get("sites")
    if not isinstance(sites, list):
        raise _BadRecord("missing sites")
    if not sites:
        raise _BadRecord("zero sites")
    fast = _fast_structure(lattice_data, sites, data)
    if fast is not None:
        return fast
    return Structure.from_dict(data), False


def _fast_structure(
    lattice_data: dict[str, Any], sites: list[Any], data: dict[str, Any]
) -> tuple[Structure, bool] | None:
    matrix = lattice_data.get("matrix")
    if matrix is None:
        return None
    pbc = _pbc(lattice_data)
    matrix_array = _float_array(matrix, (3, 3), "lattice")
    species = []
    ordered = True
    for site in sites:
        if not isinstance(site, dict) or not _SITE_KEYS.issuperset(site) or "abc" not in site:
            return None
        composition = _site_composition(site.get("species"))
        if composition is None:
            return None
        species.append(composition)
        ordered = ordered and len(site["species"]) == 1 and site["species"][0].get("occu", 1) == 1
    site_properties = _uniform_site_properties(sites)
    if site_properties is None:
        return None
    labels = [site.get("label") for site in sites]
    coords = _float_array([site["abc"] for site in sites], (len(sites), 3), "coordinates")
    structure = Structure(
        Lattice(matrix_array, pbc=pbc),
        species,
        coords,
        charge=data.get("charge"),
        site_properties=site_properties or None,
        labels=labels if any(label is not None for label in labels) else None,
        properties=data.get("properties"),
    )
    # The same checks as _validated, on the arrays at hand: a per-site pass costs a third of
    # the reading time. Anything odd goes to _validated, which words the error.
    prechecked = (
        ordered
        and all(pbc)
        and bool(np.isfinite(matrix_array).all())
        and _cell_volume(matrix_array) >= _MIN_VOLUME
        and bool(np.isfinite(coords).all())
    )
    return structure, prechecked


def _site_composition(species: Any) -> Composition | None:
    if not isinstance(species, list) or not species:
        return None
    if len(species) > 1:
        return _mixed_composition(species)
    entry = species[0]
    if not _is_plain_species(entry):
        return None
    key = (entry["element"], entry.get("oxidation_state"), entry.get("occu", 1))
    composition = _COMPOSITION_CACHE.get(key)
    if composition is None:
        composition = Composition({_species(key[0], key[1]): key[2]})
        if len(_COMPOSITION_CACHE) < 50_000:  # bounded: occupancies are free floats
            _COMPOSITION_CACHE[key] = composition
    return composition


def _mixed_composition(species: list[Any]) -> Composition | None:
    if not all(_is_plain_species(entry) for entry in species):
        return None
    amounts: dict[Element | Species, float] = {}
    for entry in species:
        specie = _species(entry["element"], entry.get("oxidation_state"))
        amounts[specie] = amounts.get(specie, 0) + entry.get("occu", 1)
    return Composition(amounts)


def _is_plain_species(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("element"), str)
        and _SPECIES_KEYS.issuperset(entry)
        and entry.get("@class") in _PLAIN_SPECIES_CLASSES
    )


def _species(symbol: str, oxidation_state: float | None) -> Element | Species:
    if oxidation_state is None:
        return _element(symbol)
    return Species(symbol, oxidation_state)


def _element(symbol: str) -> Element:
    try:
        return Element(symbol)
    except ValueError:
        raise _BadRecord(f"unknown element {symbol!r}") from None


def _uniform_site_properties(sites: list[dict[str, Any]]) -> dict[str, list[Any]] | None:
    """Per-key value lists when every site has the same plain properties; None when not."""
    first = sites[0].get("properties") or {}
    keys = set(first)
    if not keys:
        return {} if all(not site.get("properties") for site in sites) else None
    columns: dict[str, list[Any]] = {key: [] for key in keys}
    for site in sites:
        properties = site.get("properties") or {}
        if set(properties) != keys:
            return None
        for key, value in properties.items():
            if isinstance(value, dict):  # may hold MSON objects that from_dict decodes
                return None
            columns[key].append(value)
    return columns


def _pbc(lattice_data: dict[str, Any]) -> tuple[bool, bool, bool]:
    pbc = lattice_data.get("pbc", (True, True, True))
    if not isinstance(pbc, list | tuple) or len(pbc) != 3:
        raise _BadRecord(f"invalid pbc {pbc!r}")
    return (bool(pbc[0]), bool(pbc[1]), bool(pbc[2]))


def _float_array(values: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError):
        raise _BadRecord(f"invalid {what} (null or non-numeric values)") from None
    if array.shape != shape:
        raise _BadRecord(f"invalid {what} shape {array.shape}, expected {shape}")
    return array


def _structure_from_ase_dict(value: dict[str, Any]) -> Structure:
    """``{"numbers", "positions" (Cartesian, Å), "cell", "pbc"}`` as in the Petretto CSV."""
    numbers = value["numbers"]
    if not isinstance(numbers, list) or not numbers:
        raise _BadRecord("zero sites")
    pbc = value.get("pbc", (True, True, True))
    if not all(pbc):
        raise _BadRecord(f"not periodic in 3D (pbc={list(pbc)})")
    cell = _float_array(value["cell"], (3, 3), "lattice")
    positions = _float_array(value["positions"], (len(numbers), 3), "coordinates")
    species = [_element_from_number(z) for z in numbers]
    return Structure(Lattice(cell), species, positions, coords_are_cartesian=True)


def _element_from_number(number: Any) -> Element:
    try:
        return Element.from_Z(int(number))
    except (TypeError, ValueError):
        raise _BadRecord(f"invalid atomic number {number!r}") from None
