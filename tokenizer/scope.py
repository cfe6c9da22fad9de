"""SCOPE: Symmetry-Consistent Ordered Parameter Encoding of a crystal.

A SCOPE string writes a crystal as three segments separated by ``" | "``:

    <generator> | <wyckoff> | <composition>

with no coordinates. Three variants (``docs/scope.md`` has the full grammar):

``"cloud"``
    The released CLOUD format, byte for byte. Generator characters of the space group joined
    by spaces; the Wyckoff symbols (multiplicity + letter) of the sites in the structure's
    own site order, each written once; each element with its fraction rounded to 2 decimals
    in the order of ``composition.fractional_composition.get_el_amt_dict()``.
    Rock salt: ``1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5``.
``"full"``
    The released unreduced form: every site's Wyckoff symbol, then every site's element.
``"canonical"``
    Our invariant form: one ``<symbol> <element>`` pair per crystallographic orbit, sorted,
    minimised over the Wyckoff-letter permutations of the group's normalizer, and the
    composition in order of atomic number. The same crystal gives the same string whatever
    its site order, cell choice, rotation or origin.
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from tokenizer import tables
from tokenizer.elements import ATOMIC_NUMBER

if TYPE_CHECKING:
    from pymatgen.core import Structure

VARIANTS: tuple[str, ...] = ("cloud", "full", "canonical")
ENGINES: tuple[str, ...] = ("spglib", "moyo")
# Variants whose strings depend on which of the normalizer-equivalent Wyckoff settings the
# symmetry search picks; only spglib's pick reproduces the released strings.
SPGLIB_ONLY_VARIANTS = frozenset({"cloud", "full"})
SEPARATOR = " | "
DEFAULT_SYMPREC = 0.01
DEFAULT_ANGLE_TOLERANCE = 5.0

_FRACTION = re.compile(r"^(0\.\d{1,2}|1\.0|0\.0)$")

# What a physical crystal can be. The shortest bond known, H-H in H2, is 0.74 Å, so two
# atoms (or an atom and its own periodic image) nearer than MIN_DISTANCE mean a broken cell,
# not chemistry; MAX_AXIS is ten times the longest axes of protein crystals, a hundred times
# those of inorganic ones.
MIN_DISTANCE = 0.5  # Å
MAX_AXIS = 1e4  # Å
# Spheres MIN_DISTANCE apart pack at most this densely (fcc): below it some pair must be
# nearer, which is how a cell too dense to search pair by pair is refused at once.
_MIN_VOLUME_PER_SITE = MIN_DISTANCE**3 / math.sqrt(2)
# Pair-image distances the closest-approach search may cost on a cell already known to be
# impossible (its shortest lattice vector or its density) before it names that cause instead.
_SEARCH_BUDGET = 2_000_000
_CHUNK_ELEMENTS = 1 << 16


class ScopeError(ValueError):
    """A structure that cannot be encoded, or a string that is not valid SCOPE."""


class ImpossibleStructureError(ScopeError):
    """A structure no crystal can have: atoms closer than ``MIN_DISTANCE`` (periodic images
    included), an axis longer than ``MAX_AXIS``, a cell of zero volume, non-finite numbers."""


@dataclass(frozen=True)
class Scope:
    """A parsed SCOPE string.

    ``wyckoff`` holds the symbols as written: distinct symbols in first-appearance order
    (cloud), one per site (full), one per orbit (canonical). ``elements`` is None for the
    cloud variant, which does not say which element sits on which position; otherwise it is
    aligned with ``wyckoff`` (per site for full, per orbit for canonical).
    """

    variant: str
    space_group: int
    generator: str
    wyckoff: tuple[str, ...]
    composition: tuple[tuple[str, float], ...]
    elements: tuple[str, ...] | None = None

    def to_text(self) -> str:
        """The SCOPE string this object was parsed from (or would be written as)."""
        generator = " ".join(self.generator)
        if self.variant == "full":
            assert self.elements is not None
            return SEPARATOR.join((generator, " ".join(self.wyckoff), " ".join(self.elements)))
        if self.variant == "canonical":
            assert self.elements is not None
            orbits = " ".join(f"{s} {e}" for s, e in zip(self.wyckoff, self.elements, strict=True))
            return SEPARATOR.join((generator, orbits, _composition_text(self.composition)))
        return SEPARATOR.join(
            (generator, " ".join(self.wyckoff), _composition_text(self.composition))
        )

    def __str__(self) -> str:
        return self.to_text()


class Cell(NamedTuple):
    """A structure as the symmetry search sees it (``cell_of`` builds one)."""

    lattice: np.ndarray  # 3 x 3, rows are the lattice vectors (Å)
    frac: np.ndarray  # n x 3 fractional coordinates
    numbers: list[int]  # atomic number per site (0 for the dummy species X)
    elements: tuple[str, ...]  # element symbol per site


@dataclass(frozen=True)
class Symmetry:
    """What one symmetry search tells about a structure; every variant is formatted from it."""

    space_group: int
    wyckoff_letters: tuple[str, ...]
    orbit_of_site: tuple[int, ...]
    elements: tuple[str, ...]
    el_amt: tuple[tuple[str, float], ...]
    engine: str = "spglib"

    @property
    def num_sites(self) -> int:
        return len(self.elements)

    def pack(self) -> bytes:
        """What the search found, in about five bytes per site (``unpack`` restores it)."""
        letters = "".join(self.wyckoff_letters).encode("ascii")
        if len(letters) != self.num_sites:
            raise ValueError(f"Wyckoff letters {self.wyckoff_letters} are not one per site")
        orbits = array("I", self.orbit_of_site).tobytes()
        return bytes([self.space_group]) + letters + orbits

    @classmethod
    def unpack(cls, packed: bytes, cell: Cell, engine: str = "spglib") -> Symmetry:
        """The ``Symmetry`` that ``pack`` wrote, for the cell it was found on."""
        n = len(cell.elements)
        if len(packed) != 1 + 5 * n:
            raise ValueError(f"{len(packed)} packed bytes do not describe a {n}-site cell")
        return cls(
            space_group=packed[0],
            wyckoff_letters=tuple(packed[1 : 1 + n].decode("ascii")),
            orbit_of_site=tuple(array("I", packed[1 + n :])),
            elements=cell.elements,
            el_amt=_fractional_composition(cell.elements),
            engine=engine,
        )


# --------------------------------------------------------------------------- encoding


def encode(
    structure: Structure,
    variant: str = "cloud",
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    engine: str = "spglib",
) -> str:
    """The SCOPE string of a pymatgen ``Structure``.

    ``engine="moyo"`` runs the symmetry search with moyopy (a Rust implementation, several
    times faster) and is allowed for the canonical variant only, where the normalizer
    minimisation removes the setting choice in which it differs from spglib
    (``docs/performance.md`` has the measured agreement). moyo ignores ``angle_tolerance``
    (see ``_moyo_symmetry``).

    Raises ``ScopeError`` naming the reason for structures that cannot be encoded: partial
    occupancy, no sites, non-finite lattice or coordinates, a failed symmetry search.
    """
    _check_variant(variant)
    _check_engine(engine, (variant,))
    return format_variant(analyze(structure, symprec, angle_tolerance, engine), variant)


def encode_variants(
    structure: Structure,
    variants: tuple[str, ...] | list[str] = ("cloud",),
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    engine: str = "spglib",
) -> tuple[Symmetry, dict[str, str]]:
    """Several variants from one symmetry search (the corpus builder's path)."""
    for variant in variants:
        _check_variant(variant)
    _check_engine(engine, variants)
    symmetry = analyze(structure, symprec, angle_tolerance, engine)
    return symmetry, {v: format_variant(symmetry, v) for v in variants}


def analyze(
    structure: Structure,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    engine: str = "spglib",
) -> Symmetry:
    """Run the symmetry search once on a structure and keep what the SCOPE variants need."""
    return analyze_cell(cell_of(structure), symprec, angle_tolerance, engine)


def analyze_cell(
    cell: Cell,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    engine: str = "spglib",
) -> Symmetry:
    """``analyze`` on a cell already taken from its structure with ``cell_of``."""
    _check_engine(engine, ())
    if engine == "moyo":
        return _moyo_symmetry(cell, symprec)
    import spglib

    dataset = _symmetry_dataset(
        spglib, (cell.lattice, cell.frac, cell.numbers), symprec, angle_tolerance
    )
    return Symmetry(
        space_group=int(dataset.number),
        wyckoff_letters=tuple(dataset.wyckoffs),
        orbit_of_site=tuple(int(i) for i in dataset.crystallographic_orbits),
        elements=cell.elements,
        el_amt=_fractional_composition(cell.elements),
    )


def cell_fingerprint(
    cell: Cell,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    engine: str = "spglib",
) -> bytes:
    """16 bytes that are equal exactly when ``analyze_cell`` must give the same answer.

    The symmetry search is a deterministic function of the lattice, the coordinates and the
    species, bit for bit, and of its settings; property datasets often repeat one relaxed
    structure byte for byte (a quarter of the 104k stand-in corpus), so a build can look an
    analysis up instead of searching again.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{engine}\0{symprec!r}\0{angle_tolerance!r}\0".encode())
    digest.update(np.ascontiguousarray(cell.lattice, dtype=np.float64).tobytes())
    digest.update(np.ascontiguousarray(cell.frac, dtype=np.float64).tobytes())
    digest.update(np.asarray(cell.numbers, dtype=np.int64).tobytes())
    return digest.digest()


def format_variant(symmetry: Symmetry, variant: str) -> str:
    """Write a SCOPE string of the given variant from a symmetry analysis."""
    _check_variant(variant)
    _check_engine(symmetry.engine, (variant,))
    generator = " ".join(tables.generators()[symmetry.space_group])
    symbols = tables.wyckoff_symbols()[symmetry.space_group]
    if variant == "cloud":
        written = dict.fromkeys(symbols[w] for w in symmetry.wyckoff_letters)
        return SEPARATOR.join((generator, " ".join(written), _composition_text(symmetry.el_amt)))
    if variant == "full":
        wyckoff = " ".join(symbols[w] for w in symmetry.wyckoff_letters)
        return SEPARATOR.join((generator, wyckoff, " ".join(symmetry.elements)))
    orbits = canonical_orbits(symmetry)
    orbit_text = " ".join(f"{s} {e}" for s, e in orbits)
    return SEPARATOR.join((generator, orbit_text, _composition_text(_canonical_el_amt(symmetry))))


def canonical_orbits(symmetry: Symmetry) -> list[tuple[str, str]]:
    """One (Wyckoff symbol, element) per crystallographic orbit, in canonical order.

    Each normalizer permutation of the Wyckoff letters gives an equally valid description of
    the same crystal; the canonical one is the smallest sorted list of (letter rank, atomic
    number) pairs. Multiplicities do not change under these permutations.
    """
    orbits = [
        (symmetry.wyckoff_letters[i], symmetry.elements[i])
        for i in sorted(set(symmetry.orbit_of_site))
    ]
    best: list[tuple[int, int, str, str]] | None = None
    for mapping in tables.letter_permutations()[symmetry.space_group]:
        candidate = sorted(
            (tables.letter_rank(mapping[letter]), ATOMIC_NUMBER[el], mapping[letter], el)
            for letter, el in orbits
        )
        if best is None or candidate < best:
            best = candidate
    assert best is not None
    symbols = tables.wyckoff_symbols()[symmetry.space_group]
    return [(symbols[letter], el) for _, _, letter, el in best]


def _canonical_el_amt(symmetry: Symmetry) -> list[tuple[str, float]]:
    counts = Counter(symmetry.elements)
    total = sum(counts.values())
    return [(el, counts[el] / total) for el in sorted(counts, key=ATOMIC_NUMBER.__getitem__)]


def _composition_text(el_amt: Any) -> str:
    # str(numpy.round(x, 2)) is what the released corpus wrote: "0.5", "0.33", "1.0"; numpy
    # rounds halves differently from Python's round(), so numpy it is, in one vectorised call.
    rounded = np.round(np.array([amount for _, amount in el_amt], dtype=float), 2)
    return " ".join(f"{el} {x}" for (el, _), x in zip(el_amt, rounded, strict=True))


def _check_engine(engine: str, variants: tuple[str, ...] | list[str]) -> None:
    if engine not in ENGINES:
        raise ScopeError(f"unknown symmetry engine {engine!r}; choose one of {', '.join(ENGINES)}")
    bound = sorted(SPGLIB_ONLY_VARIANTS.intersection(variants))
    if engine != "spglib" and bound:
        raise ScopeError(
            f"the {', '.join(bound)} variant(s) reproduce the released strings, whose Wyckoff "
            f"letters are spglib's choice of setting; use engine='spglib' (engine={engine!r} "
            "is for the canonical variant)"
        )


def _moyo_symmetry(cell: Cell, symprec: float) -> Symmetry:
    """moyo's search, with a distance tolerance only: given spglib's 5° angle tolerance,
    moyopy 0.21 can search without end, its memory growing by gigabytes, on some cells
    (``mp_20_biternary_val_test:10110``, a 20-site R3m oxide); without it, it does not."""
    import moyopy

    # moyo has no element 0; the dummy species X gets a number no element uses.
    species = [n if n > 0 else 200 for n in cell.numbers]
    try:
        moyo_cell = moyopy.Cell(cell.lattice.tolist(), cell.frac.tolist(), species)
        dataset = moyopy.MoyoDataset(moyo_cell, symprec=symprec)
    except Exception as exc:  # moyopy raises its own error types
        raise ScopeError(f"symmetry search (moyo) failed at symprec={symprec}: {exc}") from exc
    return Symmetry(
        space_group=int(dataset.number),
        wyckoff_letters=tuple(dataset.wyckoffs),
        orbit_of_site=tuple(int(i) for i in dataset.orbits),
        elements=cell.elements,
        el_amt=_fractional_composition(cell.elements),
        engine="moyo",
    )


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ScopeError(f"unknown SCOPE variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def cell_of(structure: Structure) -> Cell:
    """The structure's lattice, fractional coordinates, atomic numbers and elements, validated.

    Raises ``ScopeError`` for what no SCOPE string can describe: no sites, partial occupancy,
    a species that is not an element; ``ImpossibleStructureError`` (a ``ScopeError``) for what
    no crystal can be (``check_physical``): non-finite numbers, an axis longer than
    ``MAX_AXIS``, a singular lattice, atoms nearer than ``MIN_DISTANCE``.

    One pass over the sites: pymatgen's ``site.specie`` and ``structure.is_ordered`` each
    re-check the occupancy of every site, which costs as much as a third of spglib's search.
    """
    if len(structure) == 0:
        raise ScopeError("structure has no sites")
    elements: list[str] = []
    numbers: list[int] = []
    for i, site in enumerate(structure):
        species = site.species
        if len(species) != 1 or species.num_atoms != 1:
            raise ScopeError(
                f"partial occupancy: site {i} is {species.formula!r}; "
                "SCOPE encodes ordered crystals only"
            )
        symbol = next(iter(species)).symbol
        number = ATOMIC_NUMBER.get(symbol)
        if number is None:
            raise ScopeError(f"site {i}: {symbol!r} is not a chemical element")
        elements.append(symbol)
        numbers.append(number)
    lattice = np.asarray(structure.lattice.matrix, dtype=float)
    frac = np.asarray(structure.frac_coords, dtype=float)
    check_physical(lattice, frac)
    return Cell(lattice, frac, numbers, tuple(elements))


def check_physical(lattice: np.ndarray, frac: np.ndarray) -> None:
    """Raise ``ImpossibleStructureError`` naming the first reason the cell cannot be a crystal.

    In this order: NaN or infinity in the lattice or in a site's coordinates; a lattice
    vector longer than ``MAX_AXIS``; a singular lattice (zero volume); two sites, or a site
    and its own periodic image, nearer than ``MIN_DISTANCE``. ``lattice`` has the lattice
    vectors as rows (Å), ``frac`` the fractional coordinates of the sites.
    """
    if not np.isfinite(lattice).all():
        raise ImpossibleStructureError("lattice contains NaN or infinity")
    if not np.isfinite(frac).all():
        site = int(np.flatnonzero(~np.isfinite(frac).all(axis=1))[0])
        raise ImpossibleStructureError(f"coordinates contain NaN or infinity (site {site})")
    # Nine numbers: plain floats are several times faster than numpy's 3 x 3 routines, and
    # math.hypot measures a 1e300 Å axis where squaring it would overflow.
    rows = lattice.tolist()
    for axis, row in zip("abc", rows, strict=True):
        length = math.hypot(*row)
        if length > MAX_AXIS:
            raise ImpossibleStructureError(
                f"lattice vector {axis} is {length:.3g} Å long (maximum {MAX_AXIS:g} Å)"
            )
    normals = [_cross(rows[1], rows[2]), _cross(rows[2], rows[0]), _cross(rows[0], rows[1])]
    volume = abs(sum(x * y for x, y in zip(rows[0], normals[0], strict=True)))
    if volume < 1e-8:
        raise ImpossibleStructureError("lattice is singular (zero cell volume)")
    # Lattice planes k are volume / |normal_k| apart.
    reach = [math.floor(0.5 + MIN_DISTANCE * math.hypot(*n) / volume) for n in normals]
    closest = _closest_approach(lattice, frac, volume, reach)
    if closest is not None:
        raise ImpossibleStructureError(closest)


def _cross(u: list[float], v: list[float]) -> tuple[float, float, float]:
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _closest_approach(
    lattice: np.ndarray, frac: np.ndarray, volume: float, reach: list[int]
) -> str | None:
    """Why the cell has atoms nearer than ``MIN_DISTANCE``, or None when it has none.

    Every pair of sites and every site with its own images is searched, exactly: in a basis
    whose lattice planes are ``h_k`` apart, a vector shorter than ``r`` spans at most
    ``r / h_k`` cells along axis k, so after wrapping a difference of fractional coordinates
    into [-½, ½] the image offsets ``|m_k| <= ½ + r / h_k`` (``reach``) hold every
    candidate: only the minimum image when all planes are more than 2r apart, as in nearly
    every real cell.
    """
    n_sites = len(frac)
    basis = lattice
    if math.prod(2 * k + 1 for k in reach) > 27:  # skewed: search a shorter basis instead
        basis = _size_reduced(lattice)
        inverse = np.linalg.inv(basis)  # its columns are the reciprocal vectors, 1 / h_k long
        reach = np.floor(0.5 + MIN_DISTANCE * np.sqrt((inverse**2).sum(axis=0))).tolist()
    shortest = math.inf
    offsets = _MINIMUM_IMAGE
    if any(reach):
        offsets = np.stack(
            np.meshgrid(*(np.arange(-k, k + 1) for k in map(int, reach)), indexing="ij"), axis=-1
        ).reshape(-1, 3)
        images = offsets[np.any(offsets != 0, axis=1)] @ basis
        shortest = math.sqrt(float(np.einsum("ij,ij->i", images, images).min()))
    if n_sites * n_sites * len(offsets) > _SEARCH_BUDGET:
        # Only a cell already known to be impossible is refused without the pair search.
        per_site = volume / n_sites
        if shortest >= MIN_DISTANCE and per_site < _MIN_VOLUME_PER_SITE:
            return (
                f"{per_site:.3g} Å³ per atom, denser than atoms {MIN_DISTANCE:g} Å apart can "
                f"pack (minimum {_MIN_VOLUME_PER_SITE:.3g} Å³)"
            )
        if shortest < MIN_DISTANCE:
            return _image_reason(shortest)
    in_basis = frac if basis is lattice else frac @ lattice @ np.linalg.inv(basis)
    pair = _closest_pair(in_basis, basis, offsets)
    if pair is not None and pair[0] < min(shortest, MIN_DISTANCE):
        distance, i, j = pair
        return f"atoms {distance:.3g} Å apart (sites {i} and {j}; minimum {MIN_DISTANCE:g} Å)"
    return _image_reason(shortest) if shortest < MIN_DISTANCE else None


def _image_reason(distance: float) -> str:
    return (
        f"atoms {distance:.3g} Å apart (a site and its periodic image; minimum {MIN_DISTANCE:g} Å)"
    )


_MINIMUM_IMAGE = np.zeros((1, 3), dtype=int)


def _size_reduced(basis: np.ndarray) -> np.ndarray:
    """The same lattice in a basis of shorter, more orthogonal vectors (pairwise Gauss
    reduction: each vector loses the nearest integer multiple of each other one)."""
    reduced = basis.copy()
    for _ in range(100):  # each step shortens a vector; a tie (|μ| = ½) can repeat, hence a cap
        changed = False
        for i in range(3):
            for j in range(3):
                if i == j:
                    continue
                k = round(float(reduced[i] @ reduced[j]) / float(reduced[j] @ reduced[j]))
                if k:
                    reduced[i] -= k * reduced[j]
                    changed = True
        if not changed:
            break
    return reduced


def _closest_pair(
    frac: np.ndarray, basis: np.ndarray, offsets: np.ndarray
) -> tuple[float, int, int] | None:
    """The nearest two distinct sites over the image ``offsets``: (distance, i, j), i < j.

    Rows of the distance matrix are taken in blocks of about ``_CHUNK_ELEMENTS`` distances;
    once a block holds a pair nearer than ``MIN_DISTANCE`` the search stops there, so for a
    structure of more than a few hundred sites the pair named is the nearest of the blocks
    read, not necessarily of the whole cell."""
    n_sites = len(frac)
    if n_sites < 2:
        return None
    wrapped = frac - np.floor(frac)
    best: tuple[float, int, int] | None = None
    rows = max(1, _CHUNK_ELEMENTS // (n_sites * len(offsets)))
    for start in range(0, n_sites, rows):
        stop = min(start + rows, n_sites)
        # Rows start..stop-1 against every site; the matrix is symmetric, so i > j is harmless.
        delta = wrapped[None, :, :] - wrapped[start:stop, None, :]
        delta -= np.rint(delta)
        if len(offsets) == 1:
            vectors = delta @ basis
            squared = np.einsum("ijk,ijk->ij", vectors, vectors)
        else:
            vectors = (delta[:, :, None, :] + offsets) @ basis
            squared = np.einsum("ijlk,ijlk->ijl", vectors, vectors).min(axis=-1)
        squared.reshape(-1)[start :: n_sites + 1] = np.inf  # (r, start + r): a site itself
        row, column = divmod(int(np.argmin(squared)), n_sites)
        distance = math.sqrt(float(squared[row, column]))
        if best is None or distance < best[0]:
            i, j = sorted((start + row, column))
            best = (distance, i, j)
        if best[0] < MIN_DISTANCE:  # the cell is refused: the rest of a big one can wait
            break
    return best


def _fractional_composition(elements: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """Element fractions in first-appearance order.

    Equal, value and order, to pymatgen's ``composition.fractional_composition
    .get_el_amt_dict()`` for ordered structures (occupancies are all 1), without building
    two Composition objects per structure.
    """
    counts = Counter(elements)
    total = float(len(elements))
    return tuple((el, n / total) for el, n in counts.items())


def _symmetry_dataset(spglib: Any, cell: tuple, symprec: float, angle_tolerance: float) -> Any:
    try:
        dataset = spglib.get_symmetry_dataset(
            cell, symprec=symprec, angle_tolerance=angle_tolerance
        )
    except Exception as exc:  # spglib raises its own error types across versions
        raise ScopeError(f"symmetry search failed: {exc}") from exc
    if dataset is None:
        message = spglib.get_error_message() if hasattr(spglib, "get_error_message") else ""
        raise ScopeError(f"symmetry search failed at symprec={symprec}: {message or 'no result'}")
    if dataset.number not in tables.multiplicities():
        raise ScopeError(f"spglib returned space group {dataset.number}, outside 1–230")
    return dataset


# --------------------------------------------------------------------------- parsing


def parse(text: str, variant: str | None = None) -> Scope:
    """Parse and validate a SCOPE string; the variant is inferred when not given.

    Raises ``ScopeError`` saying what is wrong and where (segment and token position).
    """
    if not isinstance(text, str):
        raise ScopeError(f"SCOPE string must be str, got {type(text).__name__}")
    segments = text.strip().split(" | ")
    if len(segments) != 3:
        raise ScopeError(
            f"expected 3 segments separated by ' | ' (generator | wyckoff | composition), "
            f"found {len(segments)} in {text!r}"
        )
    gen_tokens, wyk_tokens, comp_tokens = (s.split() for s in segments)
    space_group, generator = _parse_generator(gen_tokens)
    variant = variant or _infer_variant(wyk_tokens, comp_tokens)
    _check_variant(variant)
    if variant == "canonical":
        return _parse_canonical(space_group, generator, wyk_tokens, comp_tokens)
    if variant == "full":
        return _parse_full(space_group, generator, wyk_tokens, comp_tokens)
    wyckoff = _parse_symbols(space_group, wyk_tokens)
    if len(set(wyckoff)) != len(wyckoff):
        raise ScopeError("wyckoff segment: the cloud variant writes each symbol once")
    return Scope("cloud", space_group, generator, wyckoff, _parse_composition(comp_tokens))


def _parse_generator(tokens: list[str]) -> tuple[int, str]:
    if not tokens:
        raise ScopeError("generator segment is empty")
    for i, token in enumerate(tokens):
        if len(token) != 1:
            raise ScopeError(f"generator segment, token {i}: {token!r} is not one character")
    code = "".join(tokens)
    group = tables.group_of_generator().get(code)
    if group is None:
        raise ScopeError(
            f"generator segment: {code!r} is not the generator code of any space group"
        )
    return group, code


def _infer_variant(wyk_tokens: list[str], comp_tokens: list[str]) -> str:
    if any(t in ATOMIC_NUMBER for t in wyk_tokens):
        return "canonical"
    if comp_tokens and all(t in ATOMIC_NUMBER for t in comp_tokens):
        return "full"
    return "cloud"


def _parse_symbols(
    space_group: int, tokens: list[str], offset: int = 0, step: int = 1
) -> tuple[str, ...]:
    if not tokens:
        raise ScopeError("wyckoff segment is empty")
    valid = set(tables.wyckoff_symbols()[space_group].values())
    for i, token in enumerate(tokens):
        if token not in valid:
            raise ScopeError(
                f"wyckoff segment, token {offset + i * step}: {token!r} is not a Wyckoff position "
                f"of space group {space_group} (valid: {' '.join(sorted(valid, key=tables.symbol_sort_key))})"
            )
    return tuple(tokens)


def _parse_element(token: str, where: str) -> str:
    if token not in ATOMIC_NUMBER:
        raise ScopeError(f"{where}: {token!r} is not a chemical element")
    return token


def _parse_composition(tokens: list[str]) -> tuple[tuple[str, float], ...]:
    if not tokens or len(tokens) % 2:
        raise ScopeError(
            f"composition segment must be element/fraction pairs, found {len(tokens)} tokens"
        )
    pairs = []
    for i in range(0, len(tokens), 2):
        element = _parse_element(tokens[i], f"composition segment, token {i}")
        if not _FRACTION.match(tokens[i + 1]):
            raise ScopeError(
                f"composition segment, token {i + 1}: {tokens[i + 1]!r} is not a fraction "
                "rounded to 2 decimals"
            )
        pairs.append((element, float(tokens[i + 1])))
    elements = [e for e, _ in pairs]
    if len(set(elements)) != len(elements):
        raise ScopeError(f"composition segment: an element is repeated in {' '.join(elements)}")
    total = sum(f for _, f in pairs)
    # Each fraction is rounded to 0.01, so the sum may be off by up to 0.005 per element.
    if not math.isclose(total, 1.0, abs_tol=0.005 * len(pairs) + 1e-9):
        raise ScopeError(f"composition segment: fractions sum to {total:.3f}, not 1")
    return tuple(pairs)


def _parse_full(space_group: int, generator: str, wyk: list[str], comp: list[str]) -> Scope:
    symbols = _parse_symbols(space_group, wyk)
    elements = tuple(_parse_element(t, f"species segment, token {i}") for i, t in enumerate(comp))
    if len(elements) != len(symbols):
        raise ScopeError(
            f"full variant: {len(symbols)} Wyckoff symbols but {len(elements)} species; "
            "both list every site"
        )
    counts = Counter(elements)
    composition = tuple((el, round(n / len(elements), 2)) for el, n in counts.items())
    return Scope("full", space_group, generator, symbols, composition, elements)


def _parse_canonical(space_group: int, generator: str, wyk: list[str], comp: list[str]) -> Scope:
    if not wyk or len(wyk) % 2:
        raise ScopeError(
            f"canonical wyckoff segment must be symbol/element pairs, found {len(wyk)} tokens"
        )
    symbols = _parse_symbols(space_group, wyk[0::2], offset=0, step=2)
    elements = tuple(
        _parse_element(t, f"wyckoff segment, token {2 * i + 1}") for i, t in enumerate(wyk[1::2])
    )
    composition = _parse_composition(comp)
    missing = set(elements) ^ {e for e, _ in composition}
    if missing:
        raise ScopeError(
            f"canonical variant: elements {' '.join(sorted(missing))} appear in only one of the "
            "orbit and composition segments"
        )
    return Scope("canonical", space_group, generator, symbols, composition, elements)
