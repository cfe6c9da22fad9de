"""Fixed physical features of SCOPE tokens: what the model knows about a token before training.

A learned embedding row knows nothing of an element until pre-training has shown it in many
contexts; composition models (Roost, CrabNet) get much of their edge from starting with what
chemistry already knows. ``token_feature_table`` gives every token of a SCOPE vocabulary a
fixed vector:

- element tokens ``E:<symbol>``: the properties of ``tables/element_properties.json`` (mass,
  1/√mass, electronegativity, radius, row, group, valence electrons, …), each standardised
  over the elements, an unknown value at the mean (0);
- fraction tokens ``F:<x>``: the fraction itself, so 0.33 and 0.34 start close;
- Wyckoff tokens ``W:<mult><letter>``: log2 of the multiplicity;
- one indicator column per kind (element, fraction, Wyckoff);
- everything else (special tokens, generators, ``|``, ``[MASK]``): zeros, so a masked token
  carries none of the features of the token it hides.

``cloud.model.Embeddings`` adds a learned linear projection of this table to the word
embedding when ``CloudConfig.token_features`` names a feature set. The table is a buffer of
the model, saved and loaded with the weights, so an exported package needs no side file.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

ELEMENT_TABLE = Path(__file__).parent / "tables" / "element_properties.json"
FEATURE_SETS: tuple[str, ...] = ("elements-v1",)
"""Names a ``CloudConfig.token_features`` may take; a new set gets a new name, never edits."""
_KIND_COLUMNS = ("is_element", "is_fraction", "fraction", "is_wyckoff", "log2_multiplicity")
"""The columns after the element properties, in this order (their offsets are below)."""
_IS_ELEMENT, _IS_FRACTION, _FRACTION, _IS_WYCKOFF, _LOG2_MULTIPLICITY = range(5)


@functools.cache
def element_properties() -> tuple[tuple[str, ...], dict[str, tuple[float, ...]]]:
    """(property names, {symbol: standardised values}) from the shipped element table.

    Each property is standardised over the elements that have it; missing values become 0.
    """
    table = json.loads(ELEMENT_TABLE.read_text())
    names = tuple(table["properties"])
    records = table["elements"]
    columns: dict[str, tuple[float, float]] = {}
    for name in names:
        known = [r[name] for r in records.values() if r[name] is not None]
        mean = sum(known) / len(known)
        std = math.sqrt(sum((v - mean) ** 2 for v in known) / len(known)) or 1.0
        columns[name] = (mean, std)
    values = {
        symbol: tuple(
            0.0 if record[name] is None else (record[name] - columns[name][0]) / columns[name][1]
            for name in names
        )
        for symbol, record in records.items()
    }
    return names, values


def feature_names(feature_set: str) -> tuple[str, ...]:
    """Column names of ``feature_set``'s table."""
    _check_feature_set(feature_set)
    return (*element_properties()[0], *_KIND_COLUMNS)


def num_token_features(feature_set: str | None) -> int:
    """Width of ``feature_set``'s table (0 for None: no token features)."""
    return 0 if feature_set is None else len(feature_names(feature_set))


def token_feature_table(tokens: Sequence[str], feature_set: str = "elements-v1") -> torch.Tensor:
    """[len(tokens), num_token_features] float32 table for a SCOPE vocabulary's tokens."""
    names, elements = element_properties()
    n_element = len(names)
    table = torch.zeros(len(tokens), len(feature_names(feature_set)))
    for row, token in enumerate(tokens):
        kind, _, value = token.partition(":")
        if kind == "E" and value in elements:
            table[row, :n_element] = torch.tensor(elements[value])
            table[row, n_element + _IS_ELEMENT] = 1.0
        elif kind == "F":
            table[row, n_element + _IS_FRACTION] = 1.0
            table[row, n_element + _FRACTION] = float(value)
        elif kind == "W":
            multiplicity = int(value.rstrip("abcdefghijklmnopqrstuvwxyzA"))
            table[row, n_element + _IS_WYCKOFF] = 1.0
            table[row, n_element + _LOG2_MULTIPLICITY] = math.log2(multiplicity)
    return table


DESCRIPTOR_STATISTICS: tuple[str, ...] = ("mean", "min", "max", "range", "mad")


def descriptor_width(feature_set: str) -> int:
    """Width of ``composition_descriptor`` for ``feature_set``."""
    _check_feature_set(feature_set)
    return len(element_properties()[0]) * len(DESCRIPTOR_STATISTICS)


def composition_descriptor(
    input_ids: torch.Tensor,
    segment_ids: torch.Tensor,
    table: torch.Tensor,
    composition_segment: int = 2,
) -> torch.Tensor:
    """[B, T] ids of SCOPE sequences → [B, 5P] fraction-weighted statistics of the element
    properties of each composition (Magpie-style: mean, min, max, range, mean absolute
    deviation), read from the composition segment ``El x El x …`` with ``table`` (a
    ``token_feature_table``). Differentiable in nothing (the table is fixed); it gives a
    head what a composition model knows about the elements, exactly, from the string."""
    n_props = len(element_properties()[0])
    features = table[input_ids]  # [B, T, K]
    in_composition = segment_ids == composition_segment
    is_element = (features[..., n_props + _IS_ELEMENT] > 0) & in_composition
    fraction_after = torch.zeros_like(features[..., 0])
    # each element's amount is the fraction token that follows it
    fraction_after[:, :-1] = features[:, 1:, n_props + _FRACTION]
    weights = fraction_after * is_element
    total = weights.sum(dim=1, keepdim=True).clamp_min(1e-8)
    weights = (weights / total).unsqueeze(-1)  # [B, T, 1]
    props = features[..., :n_props]
    mean = (weights * props).sum(dim=1)
    present = is_element.unsqueeze(-1)
    high = props.masked_fill(~present, -torch.inf).amax(dim=1)
    low = props.masked_fill(~present, torch.inf).amin(dim=1)
    any_element = is_element.any(dim=1, keepdim=True)
    high, low = (torch.where(any_element, v, torch.zeros_like(v)) for v in (high, low))
    mad = (weights * (props - mean.unsqueeze(1)).abs()).sum(dim=1)
    return torch.cat([mean, low, high, high - low, mad], dim=-1)


def _check_feature_set(feature_set: str) -> None:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown token feature set {feature_set!r}; valid: {FEATURE_SETS}")
