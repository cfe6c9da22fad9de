"""OPTIMADE responses and entries: ``attributes`` with Cartesian positions and species."""

from __future__ import annotations

from typing import Any

from pymatgen.core import Element, Lattice, Structure

from cluster.readers.records import (
    Record,
    _BadRecord,
    _checked_record,
    _is_scalar_id,
    _scalar_properties,
    _validated,
)
from cluster.readers.structures import _element, _float_array


def _is_optimade_response(value: dict[str, Any]) -> bool:
    data = value.get("data")
    if isinstance(data, dict):
        return "attributes" in data
    if not isinstance(data, list):
        return False
    if not data:
        return "meta" in value or "links" in value
    return isinstance(data[0], dict) and "attributes" in data[0]


def _record_from_optimade(
    source: str, source_id: str, position: str, item: dict[str, Any]
) -> Record:
    if _is_scalar_id(item.get("id")):
        source_id = str(item["id"])
    attributes = item["attributes"]
    properties = _scalar_properties(attributes, skip={"immutable_id"})
    return _checked_record(source, source_id, position, properties, _optimade_structure, attributes)


def _optimade_structure(attributes: dict[str, Any]) -> Structure:
    _check_optimade_dimensions(attributes)
    if attributes.get("lattice_vectors") is None:
        raise _BadRecord("missing lattice")
    sites = attributes.get("species_at_sites")
    positions = attributes.get("cartesian_site_positions")
    if not sites or not positions:
        raise _BadRecord("zero sites")
    if len(sites) != len(positions):
        raise _BadRecord(f"{len(sites)} species_at_sites for {len(positions)} positions")
    lattice = _float_array(attributes["lattice_vectors"], (3, 3), "lattice")
    coords = _float_array(positions, (len(positions), 3), "coordinates")
    elements = _optimade_species_elements(attributes.get("species"), sites)
    return _validated(Structure(Lattice(lattice), elements, coords, coords_are_cartesian=True))


def _check_optimade_dimensions(attributes: dict[str, Any]) -> None:
    dimension_types = attributes.get("dimension_types")
    if dimension_types is not None and list(dimension_types) != [1, 1, 1]:
        raise _BadRecord(f"not periodic in 3D (dimension_types={list(dimension_types)})")
    periodic = attributes.get("nperiodic_dimensions")
    if periodic is not None and periodic != 3:
        raise _BadRecord(f"not periodic in 3D (nperiodic_dimensions={periodic})")


def _optimade_species_elements(species: Any, sites: list[str]) -> list[Element]:
    """The element of each site, refusing mixed or partially occupied OPTIMADE species."""
    by_name: dict[str, Element] = {}
    for entry in species or []:
        name = entry.get("name")
        symbols = entry.get("chemical_symbols") or []
        concentration = entry.get("concentration") or [1.0] * len(symbols)
        if len(symbols) != 1 or "vacancy" in symbols or min(concentration) < 1 - 1e-6:
            mix = ", ".join(f"{s}:{c:.3f}" for s, c in zip(symbols, concentration, strict=False))
            site = next((i for i, s in enumerate(sites) if s == name), None)
            raise _BadRecord(f"partial occupancy (disordered site {site}: {mix})")
        by_name[name] = _element(symbols[0])
    # Without a species list the names are the element symbols.
    return [by_name[name] if name in by_name else _element(name) for name in sites]
