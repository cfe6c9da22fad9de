"""The classical baseline every fine-tuning report carries: a tree ensemble on features read
straight off the SCOPE string.

A user should see whether the transformer earns its cost, so the baseline sees exactly what
CLOUD sees (the SCOPE string, no coordinates) and the same element knowledge the model's
token features give it (``cloud.token_features.element_properties``), but no learned
representation. Features of one string (``scope_features``):

- the fraction of each element (119 columns: the dummy species and the 118 elements);
- per element property, the fraction-weighted mean, the minimum, the maximum, the range and
  the fraction-weighted mean absolute deviation over the elements present (Magpie-style);
- the space group number, its crystal system (one-hot), the number of Wyckoff symbols
  written, their multiplicities (sum, mean, minimum, maximum) and the number of elements.

The regressor is scikit-learn's ``RandomForestRegressor`` (the model of Matbench's RF-SCM /
Magpie baseline); classification uses ``RandomForestClassifier``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud.token_features import DESCRIPTOR_STATISTICS, element_properties
from tokenizer import tables
from tokenizer.elements import DUMMY_SPECIES, ELEMENTS
from tokenizer.scope import parse

_SPECIES: tuple[str, ...] = (DUMMY_SPECIES, *ELEMENTS)
_SPECIES_INDEX = {symbol: k for k, symbol in enumerate(_SPECIES)}
_CRYSTAL_SYSTEMS = (
    ("triclinic", 2),
    ("monoclinic", 15),
    ("orthorhombic", 74),
    ("tetragonal", 142),
    ("trigonal", 167),
    ("hexagonal", 194),
    ("cubic", 230),
)
_SYMMETRY_COLUMNS = (
    "space_group",
    *(f"system_{name}" for name, _ in _CRYSTAL_SYSTEMS),
    "n_wyckoff",
    "multiplicity_sum",
    "multiplicity_mean",
    "multiplicity_min",
    "multiplicity_max",
    "n_elements",
)


def feature_names() -> list[str]:
    """Column names of ``scope_features``, in order."""
    properties = element_properties()[0]
    return [
        *(f"fraction_{symbol}" for symbol in _SPECIES),
        *(f"{name}_{stat}" for stat in DESCRIPTOR_STATISTICS for name in properties),
        *_SYMMETRY_COLUMNS,
    ]


def scope_features(scope: str) -> np.ndarray:
    """The baseline's feature vector of one SCOPE string (any variant); see the module."""
    parsed = parse(scope)
    fractions = np.zeros(len(_SPECIES))
    for symbol, amount in parsed.composition:
        fractions[_SPECIES_INDEX[symbol]] += amount
    return np.concatenate([fractions, _property_statistics(scope), _symmetry_features(parsed)])


def _property_statistics(scope: str) -> np.ndarray:
    """The model's own ``composition_descriptor`` of the string, so that the forest and the
    transformer's descriptor head read the same numbers."""
    import torch

    from cloud.token_features import composition_descriptor

    tokenizer, table = _tokenizer_and_table()
    ids = tokenizer.encode(scope)
    descriptor = composition_descriptor(
        torch.tensor([ids]), torch.tensor([tokenizer.segment_ids(ids)]), table
    )
    return descriptor[0].double().numpy()


@functools.cache
def _tokenizer_and_table() -> tuple[Any, Any]:
    from cloud.token_features import token_feature_table
    from tokenizer import ScopeTokenizer

    tokenizer = ScopeTokenizer()
    return tokenizer, token_feature_table(tokenizer.tokens)


def _symmetry_features(parsed: Any) -> np.ndarray:
    group = parsed.space_group
    system = [float(_crystal_system(group) == name) for name, _ in _CRYSTAL_SYSTEMS]
    letters = tables.multiplicities()[group]
    mults = np.array([letters[symbol.lstrip("0123456789")] for symbol in parsed.wyckoff], float)
    return np.array(
        [
            group,
            *system,
            len(mults),
            mults.sum(),
            mults.mean(),
            mults.min(),
            mults.max(),
            len(parsed.composition),
        ],
        dtype=float,
    )


def _crystal_system(space_group: int) -> str:
    return next(name for name, last in _CRYSTAL_SYSTEMS if space_group <= last)


@dataclass
class ClassicalBaseline:
    """A random forest on ``scope_features``; fitted on the training rows of one fold."""

    task_type: str = "regression"
    """regression or classification."""
    n_estimators: int = 300
    """Trees in the forest."""
    seed: int = 0
    """Seeds the bootstrap samples and feature draws."""

    def fit(self, scopes: Sequence[str], targets: Sequence[Any]) -> ClassicalBaseline:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        model_class = (
            RandomForestRegressor if self.task_type == "regression" else RandomForestClassifier
        )
        self.model = model_class(
            n_estimators=self.n_estimators, n_jobs=1, random_state=self.seed
        ).fit(feature_matrix(scopes), np.asarray(targets))
        return self

    def predict(self, scopes: Sequence[str]) -> np.ndarray:
        """Regression: predictions [N]; classification: class probabilities [N, C]."""
        features = feature_matrix(scopes)
        if self.task_type == "regression":
            return self.model.predict(features)
        return self.model.predict_proba(features)


def feature_matrix(scopes: Sequence[str]) -> np.ndarray:
    """[len(scopes), n_features] matrix of ``scope_features``."""
    if not scopes:
        return np.zeros((0, len(feature_names())))
    return np.stack([scope_features(scope) for scope in scopes])
