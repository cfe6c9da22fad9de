"""SCOPE encoding: released-format parity, canonical invariance, errors that say where."""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from tokenizer import ScopeError, encode, parse
from tokenizer.scope import VARIANTS, encode_variants

ROCK_SALT_CLOUD = "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5"


@pytest.fixture(scope="module")
def rock_salt() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def perovskite(a_site: str, b_site: str) -> Structure:
    """ABO3 in Pm-3m: A at the corner (1a), B at the body centre (1b), O on the faces (3c)."""
    coords = [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Structure(Lattice.cubic(3.9), [a_site, b_site, "O", "O", "O"], coords)


def load_matbench_dielectric(path: Path) -> dict[str, tuple[dict, float]]:
    with gzip.open(path, "rb") as f:
        data = json.loads(f.read())
    return {key: (data["structure"][key], data["n"][key]) for key in data["structure"]}


def dielectric_pairs(matbench_path: Path, released_csv: Path) -> list[tuple[Structure, str]]:
    """Pair released strings with Matbench structures by refractive index (unique for most)."""
    rows = load_matbench_dielectric(matbench_path)
    by_n: dict[float, list[dict]] = {}
    for structure, n in rows.values():
        by_n.setdefault(round(n, 8), []).append(structure)
    pairs = []
    with open(released_csv, newline="") as f:
        for row in csv.DictReader(f):
            matches = by_n.get(round(float(row["n"]), 8), [])
            if len(matches) == 1:
                pairs.append((Structure.from_dict(matches[0]), row["scope"]))
    return pairs


# ------------------------------------------------------------------ released format


def test_rock_salt_matches_the_released_example(rock_salt: Structure) -> None:
    assert encode(rock_salt) == ROCK_SALT_CLOUD
    assert encode(rock_salt, variant="cloud", symprec=0.01, angle_tolerance=5.0) == ROCK_SALT_CLOUD


def test_full_variant_lists_every_site(rock_salt: Structure) -> None:
    text = encode(rock_salt, variant="full")
    scope = parse(text)
    assert scope.variant == "full"
    assert len(scope.wyckoff) == len(rock_salt) == 8
    assert scope.elements == tuple(site.specie.symbol for site in rock_salt)
    assert text.endswith("| Na Na Na Na Cl Cl Cl Cl")


def test_cloud_strings_equal_released_ones_on_the_shipped_dielectric_sample(
    repo_data: Path,
) -> None:
    # The pairing (by n, unique over the full set) was recorded by data/make_sample.py.
    rows = load_matbench_dielectric(repo_data / "matbench/matbench_dielectric_sample.json.gz")
    with open(repo_data / "cloud_reference/finetune_dielectric_test_pairs.csv", newline="") as f:
        pairs = [
            (Structure.from_dict(rows[r["matbench_row"]][0]), r["scope"]) for r in csv.DictReader(f)
        ]
    assert len(pairs) >= 100, "the shipped sample should hold over 100 released test-fold rows"
    mismatches = [(s.formula, text, encode(s)) for s, text in pairs if encode(s) != text]
    assert mismatches == []


@pytest.mark.shared_data
def test_cloud_strings_equal_all_released_dielectric_strings(shared_data: Path) -> None:
    pairs = dielectric_pairs(
        shared_data / "matbench/matbench_dielectric.json.gz",
        shared_data / "cloud_reference/finetune_dielectric_test.csv",
    )
    # 953 released strings; a handful share their n with another row and cannot be paired.
    assert len(pairs) >= 940
    mismatches = [(s.formula, text, encode(s)) for s, text in pairs if encode(s) != text]
    assert mismatches == []


def test_every_released_pretraining_string_parses_and_round_trips(repo_data: Path) -> None:
    with open(repo_data / "cloud_reference/pretrain_cloud_10k.csv", newline="") as f:
        texts = [row["cloud"] for row in csv.DictReader(f)]
    assert len(texts) == 10_000
    for text in texts:
        scope = parse(text)
        assert scope.variant == "cloud"
        assert scope.to_text() == text
        assert math.isclose(sum(f for _, f in scope.composition), 1.0, abs_tol=0.05)


# ------------------------------------------------------------------ canonical variant


def test_canonical_says_which_element_sits_on_which_orbit() -> None:
    sr_ti = parse(encode(perovskite("Sr", "Ti"), "canonical"))
    assert set(zip(sr_ti.wyckoff, sr_ti.elements, strict=True)) in (
        {("1a", "Sr"), ("1b", "Ti"), ("3c", "O")},
        {("1b", "Sr"), ("1a", "Ti"), ("3d", "O")},
    )
    # Swapping A and B gives another crystal; the cloud variant cannot tell them apart.
    swapped = perovskite("Ti", "Sr")
    assert encode(swapped, "canonical") != encode(perovskite("Sr", "Ti"), "canonical")


def test_canonical_chooses_one_of_the_normalizer_equivalent_assignments(
    rock_salt: Structure,
) -> None:
    # Na 4a + Cl 4b and Na 4b + Cl 4a are the same crystal: one string for both.
    shifted = Structure(rock_salt.lattice, rock_salt.species, rock_salt.frac_coords + 0.5)
    assert encode(shifted, "canonical") == encode(rock_salt, "canonical")
    assert encode(rock_salt, "canonical").split(" | ")[1] == "4a Na 4b Cl"


def test_canonical_counts_orbits_of_the_same_letter() -> None:
    # Two distinct O orbits on the same Wyckoff letter must both be written.
    structure = Structure.from_spacegroup(
        "P2_1/c",
        Lattice.monoclinic(5.0, 6.0, 7.0, 100.0),
        ["Si", "O", "O"],
        [[0.1, 0.2, 0.3], [0.3, 0.1, 0.15], [0.35, 0.4, 0.05]],
    )
    orbits = parse(encode(structure, "canonical")).wyckoff
    assert orbits == ("4e", "4e", "4e")


@pytest.fixture(scope="module")
def robust_structures(repo_data: Path) -> list[Structure]:
    """Real Matbench crystals whose space group does not depend on the symmetry tolerance."""
    from data.make_sample import ROBUST_DIELECTRIC_ROWS

    rows = load_matbench_dielectric(repo_data / "matbench/matbench_dielectric_sample.json.gz")
    return [Structure.from_dict(rows[str(i)][0]) for i in ROBUST_DIELECTRIC_ROWS]


def rotation_matrix(angles: tuple[float, float, float]) -> np.ndarray:
    a, b, c = angles
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def transformed(structure: Structure, data: st.DataObject) -> Structure:
    """The same crystal under a random cell choice, rotation, origin shift and site order."""
    cell = data.draw(st.sampled_from(["as-given", "primitive", "conventional", "supercell"]))
    if cell == "primitive":
        structure = SpacegroupAnalyzer(structure, symprec=0.01).get_primitive_standard_structure()
    elif cell == "conventional":
        structure = SpacegroupAnalyzer(
            structure, symprec=0.01
        ).get_conventional_standard_structure()
    elif cell == "supercell":
        scaling = data.draw(
            st.sampled_from([[2, 1, 1], [1, 2, 1], [[1, 1, 0], [0, 1, 0], [0, 0, 1]]])
        )
        structure = structure.copy()
        structure.make_supercell(scaling)
    angle = st.floats(0, 2 * np.pi, allow_nan=False)
    rotation = rotation_matrix((data.draw(angle), data.draw(angle), data.draw(angle)))
    shift = np.array([data.draw(st.floats(0, 1, allow_nan=False)) for _ in range(3)])
    order = data.draw(st.permutations(range(len(structure))))
    return Structure(
        Lattice(structure.lattice.matrix @ rotation.T),
        [structure.species[i] for i in order],
        structure.frac_coords[list(order)] + shift,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_canonical_is_invariant_under_cell_rotation_origin_and_site_order(
    robust_structures: list[Structure], data: st.DataObject
) -> None:
    structure = data.draw(st.sampled_from(robust_structures))
    assert encode(transformed(structure, data), "canonical") == encode(structure, "canonical")


def test_canonical_invariance_covers_many_space_groups(robust_structures: list[Structure]) -> None:
    groups = {parse(encode(s, "canonical")).space_group for s in robust_structures}
    assert len(groups) >= 100


# ------------------------------------------------------------------ errors


def test_partial_occupancy_is_refused_with_the_site() -> None:
    structure = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(ScopeError, match="partial occupancy: site 0"):
        encode(structure)


def test_empty_and_non_finite_structures_are_refused() -> None:
    with pytest.raises(ScopeError, match="no sites"):
        encode(Structure(Lattice.cubic(4.0), [], []))
    nan_structure = Structure(Lattice.cubic(4.0), ["Fe"], [[0, 0, 0]])
    nan_structure.replace(0, "Fe", [np.nan, 0, 0])
    with pytest.raises(ScopeError, match="NaN"):
        encode(nan_structure)


def test_unknown_variant_is_refused(rock_salt: Structure) -> None:
    with pytest.raises(ScopeError, match="unknown SCOPE variant 'smiles'"):
        encode(rock_salt, variant="smiles")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 6 a | 4a", "expected 3 segments"),
        ("1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl", "pairs"),
        ("1 6 Q | 4a | Na 1.0", "is not the generator code"),
        ("16 6 a | 4a | Na 1.0", "token 0: '16' is not one character"),
        (
            ROCK_SALT_CLOUD.replace("4b", "5z"),
            "token 1: '5z' is not a Wyckoff position of space group 225",
        ),
        (ROCK_SALT_CLOUD.replace("Cl 0.5", "Qq 0.5"), "token 2: 'Qq' is not a chemical element"),
        (ROCK_SALT_CLOUD.replace("Cl 0.5", "Cl 0.9"), "fractions sum to 1.400"),
        (ROCK_SALT_CLOUD.replace("Cl 0.5", "Cl half"), "token 3: 'half' is not a fraction"),
        (ROCK_SALT_CLOUD.replace("4a 4b", "4a 4a"), "writes each symbol once"),
        (
            "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na Na Cl",
            "2 Wyckoff symbols but 3 species",
        ),
        (
            "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a Na 4b | Na 1.0",
            "symbol/element pairs",
        ),
    ],
)
def test_malformed_strings_say_what_is_wrong_and_where(text: str, message: str) -> None:
    with pytest.raises(ScopeError, match=message.replace("(", r"\(")):
        parse(text)


def test_every_variant_round_trips_through_parse(robust_structures: list[Structure]) -> None:
    for structure in robust_structures[:40]:
        symmetry, texts = encode_variants(structure, VARIANTS)
        for variant, text in texts.items():
            scope = parse(text)
            assert scope.variant == variant
            assert scope.space_group == symmetry.space_group
            assert scope.to_text() == text


# ------------------------------------------------------------------ symmetry engines


def test_moyo_engine_gives_the_same_canonical_strings(robust_structures: list[Structure]) -> None:
    pytest.importorskip("moyopy")
    different = [
        s.formula
        for s in robust_structures
        if encode(s, "canonical", engine="moyo") != encode(s, "canonical")
    ]
    assert different == []


def test_moyo_engine_is_refused_for_the_released_variants(rock_salt: Structure) -> None:
    for variant in ("cloud", "full"):
        with pytest.raises(ScopeError, match="use engine='spglib'"):
            encode(rock_salt, variant, engine="moyo")
    with pytest.raises(ScopeError, match="unknown symmetry engine 'fast'"):
        encode(rock_salt, "canonical", engine="fast")


def test_cell_fingerprint_tells_apart_exactly_what_the_search_can(rock_salt: Structure) -> None:
    from tokenizer.scope import analyze, analyze_cell, cell_fingerprint, cell_of

    cell = cell_of(rock_salt)
    again = cell_of(rock_salt.copy())
    assert cell_fingerprint(cell) == cell_fingerprint(again)
    assert analyze_cell(cell) == analyze(rock_salt)

    nudged = rock_salt.copy()
    x = nudged.frac_coords[1]
    nudged.replace(1, "Cl", [np.nextafter(x[0], 1.0), x[1], x[2]])
    swapped = rock_salt.copy()
    swapped.replace(0, "K")
    different = {
        cell_fingerprint(cell_of(nudged)),
        cell_fingerprint(cell_of(swapped)),
        cell_fingerprint(cell, symprec=1e-3),
        cell_fingerprint(cell, angle_tolerance=-1.0),
        cell_fingerprint(cell, engine="moyo"),
    }
    assert len(different) == 5 and cell_fingerprint(cell) not in different


def test_moyo_engine_finishes_on_a_sheared_rhombohedral_cell() -> None:
    """mp_20_biternary_val_test:10110 (Y2Th5O13, R3m, 9.86° cell angles): with an angle
    tolerance moyopy searched without end, eating gigabytes; it must take milliseconds."""
    pytest.importorskip("moyopy")
    import time

    from tokenizer.scope import analyze

    a = 22.822549
    alpha = math.radians(9.863811)
    lattice = Lattice.from_parameters(a, a, a, *[math.degrees(alpha)] * 3)
    xs = [0.999358, 0.716067, 0.427342, 0.142165, 0.8567, 0.28594, 0.571299, 0.392164, 0.03045,
          0.106929, 0.464196, 0.749433, 0.821621, 0.178689, 0.250814, 0.536104, 0.89322,
          0.607744, 0.326356, 0.96483]  # fmt: skip
    species = ["Y"] * 2 + ["Th"] * 5 + ["O"] * 13
    structure = Structure(lattice, species, [[x, x, x] for x in xs])
    started = time.perf_counter()
    symmetry = analyze(structure, engine="moyo")
    assert time.perf_counter() - started < 5.0
    assert symmetry.space_group == analyze(structure).space_group == 160
    assert encode(structure, "canonical", engine="moyo") == encode(structure, "canonical")


def test_symmetry_packs_into_a_few_bytes_per_site(robust_structures: list[Structure]) -> None:
    from tokenizer.scope import Symmetry, analyze_cell, cell_of

    for structure in robust_structures:
        cell = cell_of(structure)
        symmetry = analyze_cell(cell)
        packed = symmetry.pack()
        assert len(packed) == 1 + 5 * len(structure)
        assert Symmetry.unpack(packed, cell) == symmetry
    with pytest.raises(ValueError, match="do not describe"):
        Symmetry.unpack(packed[:-1], cell)
