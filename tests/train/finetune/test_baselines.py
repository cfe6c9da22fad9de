"""The classical baseline's features: what a random forest reads off a SCOPE string."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from tokenizer import encode
from train.baselines import ClassicalBaseline, feature_matrix, feature_names, scope_features


@pytest.fixture(scope="module")
def rocksalt() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def _named(scope: str) -> dict[str, float]:
    return dict(zip(feature_names(), scope_features(scope), strict=True))


@pytest.mark.parametrize("variant", ["cloud", "canonical"])
def test_features_of_rock_salt_say_what_the_string_says(rocksalt, variant: str) -> None:
    features = _named(encode(rocksalt, variant))
    assert features["fraction_Na"] == pytest.approx(0.5)
    assert features["fraction_Cl"] == pytest.approx(0.5)
    assert features["fraction_O"] == 0.0
    assert features["space_group"] == 225
    assert features["system_cubic"] == 1.0 and features["system_triclinic"] == 0.0
    assert features["n_wyckoff"] == 2 and features["multiplicity_sum"] == 8  # 4a + 4b
    assert features["n_elements"] == 2
    # Cl is heavier than Na: the range of the (standardised) mass is positive, its minimum
    # is Na's and its mean lies between them.
    assert features["atomic_mass_range"] > 0
    assert features["atomic_mass_min"] < features["atomic_mass_mean"] < features["atomic_mass_max"]


def test_both_variants_give_the_same_composition_features(rocksalt) -> None:
    cloud, canonical = (scope_features(encode(rocksalt, v)) for v in ("cloud", "canonical"))
    np.testing.assert_allclose(cloud, canonical)


def test_the_forest_learns_a_property_of_the_composition(rocksalt) -> None:
    # Target: the fraction-weighted mass, which the features carry; the forest must beat
    # the mean on held-out strings.
    rng = np.random.default_rng(0)
    pairs = [("Na", "Cl"), ("K", "Br"), ("Li", "F"), ("Rb", "I"), ("Cs", "Cl"), ("Mg", "O")]
    scopes, targets = [], []
    for a, b in pairs:
        for scale in rng.uniform(4.0, 6.5, size=3):
            # The fixture's cell with other ions and size (from_spacegroup takes ~2 s a call).
            s = rocksalt.copy()
            s.replace_species({"Na": a, "Cl": b})
            s.scale_lattice(scale**3)
            scopes.append(encode(s))
            targets.append(_named(scopes[-1])["atomic_mass_mean"])
    forest = ClassicalBaseline(n_estimators=50).fit(scopes[::2], targets[::2])
    predicted = forest.predict(scopes[1::2])
    truth = np.array(targets[1::2])
    assert np.abs(predicted - truth).mean() < np.abs(truth.mean() - truth).mean()
    assert feature_matrix([]).shape == (0, len(feature_names()))
