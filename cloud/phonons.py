"""Harmonic thermodynamics from a phonon DOS, and readers for the two real phonon data sets.

Thermodynamics (NumPy, float64, batched): the DOS is a set of weights g_i at frequencies ν_i,
rescaled so that the weights at ν > 0 sum to 3·n_atoms modes per cell (modes at ν <= 0, zero or
imaginary, are skipped). Then, per mole of cells, with x = hν/(k_B T),
    C_v = R Σ_i w_i x_i² e^{x_i}/(e^{x_i}−1)²          in J/(mol K),
    U   = N_A Σ_i w_i hν_i (1/2 + 1/(e^{x_i}−1))        in J/mol (zero-point energy included).
Frequencies are in cm⁻¹ by default (``freq_unit="cm-1"``) or THz (``freq_unit="THz"``).

Readers:
  * ``load_petretto(data.csv)`` — Petretto et al. (2018) DFPT DOS on a 0–1000 cm⁻¹ grid
    (51 points, max-normalised) with ASE-style structure dicts, parsed with ``ast.literal_eval``
    only; ``load_petretto_splits(directory, n_rows)`` reads ``idx_{train,valid,test}.txt``.
  * ``load_phonondb(directory)`` — Togo's phonondb: ``structures.jsonl.gz`` joined by mp_id with
    ``thermal.jsonl.gz`` (phonopy C_v, S per mole of atoms; U, F converted from kJ to J per mole
    of atoms; 100-bin DOS histogram); ``stable(records)`` keeps min frequency >= −0.3 THz.

Bad rows: every reader checks every row. With ``rejected=None`` (the default) it reads the whole
file and then raises ``DataFormatError`` listing each bad row (file, row, reason); given a list,
it appends a ``RejectedRow`` per bad row to it and returns the good rows. Nothing is dropped
silently. ``mp_ids=`` filters phonondb rows on request; that is a selection, not a rejection.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pymatgen.core import Lattice, Structure

__all__ = [
    "DataFormatError",
    "PhononRecord",
    "PhonondbRecord",
    "RejectedRow",
    "cv_from_dos",
    "load_petretto",
    "load_petretto_splits",
    "load_phonondb",
    "stable",
    "u_from_dos",
]

PLANCK = 6.62607015e-34  # J s
BOLTZMANN = 1.380649e-23  # J/K
AVOGADRO = 6.02214076e23  # 1/mol
GAS_CONSTANT = AVOGADRO * BOLTZMANN  # J/(mol K)
SPEED_OF_LIGHT_CM = 2.99792458e10  # cm/s: ν[Hz] = c·ν̃[cm⁻¹]
_HZ_PER_UNIT = {"cm-1": SPEED_OF_LIGHT_CM, "THz": 1.0e12}
_CHUNK_ELEMENTS = 1 << 22  # bounds the (materials, T, frequencies) scratch arrays to ~32 MiB
_MAX_X = 700.0  # e^x stays finite; beyond it a mode is frozen out to double precision

FrequencyUnit = Literal["cm-1", "THz"]


# --------------------------------------------------------------------------- thermodynamics


def _frequencies_hz(freqs: np.ndarray, freq_unit: FrequencyUnit) -> np.ndarray:
    if freq_unit not in _HZ_PER_UNIT:
        raise ValueError(f"freq_unit must be one of {sorted(_HZ_PER_UNIT)}, got {freq_unit!r}")
    return freqs * _HZ_PER_UNIT[freq_unit]


def _mode_weights(
    freqs_hz: np.ndarray, dos: np.ndarray, n_atoms: np.ndarray, normalise_over_all: bool
) -> np.ndarray:
    """Modes per cell at each frequency, zero at ν <= 0; they sum to 3·n_atoms over ν > 0.

    With normalise_over_all, 3·n_atoms is spread over every mode and those at ν <= 0 carry
    their share away (phonopy's convention for imaginary modes).
    """
    if np.any(dos < 0) or not np.all(np.isfinite(dos)):
        raise ValueError("DOS weights must be finite and >= 0")
    positive = freqs_hz > 0
    normalised_over = np.ones_like(positive) if normalise_over_all else positive
    total = np.sum(dos * normalised_over, axis=-1, keepdims=True)
    if np.any(np.sum(dos * positive, axis=-1) <= 0):
        raise ValueError("a DOS has no weight at frequencies > 0")
    return 3.0 * n_atoms[..., None] * dos * positive / total


def _prepare(
    freqs: Any, dos: Any, T: Any, n_atoms: Any, freq_unit: FrequencyUnit, normalise_over_all: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Flattened (ν in Hz, weights, T) and the output batch shape."""
    freqs_b, dos_b = np.broadcast_arrays(np.asarray(freqs, float), np.asarray(dos, float))
    batch_shape = freqs_b.shape[:-1]
    temperatures = np.asarray(T, float)
    if np.any(temperatures < 0) or not np.all(np.isfinite(temperatures)):
        raise ValueError("T (temperature, K) must be finite and >= 0")
    atoms = np.broadcast_to(np.asarray(n_atoms, float), batch_shape)
    freqs_hz = _frequencies_hz(freqs_b, freq_unit)
    weights = _mode_weights(freqs_hz, dos_b, atoms, normalise_over_all)
    n_freqs = freqs_b.shape[-1]
    return (
        freqs_hz.reshape(-1, n_freqs),
        weights.reshape(-1, n_freqs),
        temperatures.reshape(-1),
        batch_shape,
    )


def _reduced_frequencies(freqs_hz: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """x = hν/(k_B T), shape (materials, T, frequencies), clipped to [tiny, 700].

    Entries at ν <= 0 or T = 0 are stand-ins: their weights or the T = 0 limits discard them.
    """
    safe_t = np.where(temperatures > 0, temperatures, 1.0)
    x = PLANCK * freqs_hz[:, None, :] / (BOLTZMANN * safe_t[None, :, None])
    return np.clip(np.where(x > 0, x, 1.0), 1e-300, _MAX_X)


def _chunks(n_rows: int, n_t: int, n_freqs: int) -> Iterator[slice]:
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n_t * n_freqs))
    for start in range(0, n_rows, rows_per_chunk):
        yield slice(start, start + rows_per_chunk)


def cv_from_dos(
    freqs: Any,
    dos: Any,
    T: Any,
    n_atoms: Any,
    *,
    freq_unit: FrequencyUnit = "cm-1",
    normalise_over_all: bool = False,
) -> np.ndarray:
    """Harmonic C_v in J/(mol K) per mole of cells from a phonon DOS.

    freqs (cm⁻¹, or THz with freq_unit="THz") and dos (any scale) broadcast to batch + (F,);
    n_atoms (atoms per cell) broadcasts to the batch shape; T in K (>= 0, any shape).
    Returns batch + T.shape. Modes at ν <= 0 are skipped; see the module docstring.
    """
    freqs_hz, weights, temperatures, batch_shape = _prepare(
        freqs, dos, T, n_atoms, freq_unit, normalise_over_all
    )
    out = np.empty((freqs_hz.shape[0], temperatures.size))
    for rows in _chunks(freqs_hz.shape[0], temperatures.size, freqs_hz.shape[1]):
        half_x = 0.5 * _reduced_frequencies(freqs_hz[rows], temperatures)
        einstein = (half_x / np.sinh(half_x)) ** 2  # x²eˣ/(eˣ−1)², no overflow, → 1 at x → 0
        out[rows] = GAS_CONSTANT * np.einsum("mtf,mf->mt", einstein, weights[rows])
    out[:, temperatures == 0] = 0.0
    return out.reshape(batch_shape + np.shape(T))


def u_from_dos(
    freqs: Any,
    dos: Any,
    T: Any,
    n_atoms: Any,
    *,
    freq_unit: FrequencyUnit = "cm-1",
    normalise_over_all: bool = False,
) -> np.ndarray:
    """Harmonic internal energy in J/mol per mole of cells, with the zero-point ½hν per mode.

    Arguments and shapes as for ``cv_from_dos``; U(T = 0) is the zero-point energy.
    """
    freqs_hz, weights, temperatures, batch_shape = _prepare(
        freqs, dos, T, n_atoms, freq_unit, normalise_over_all
    )
    out = np.empty((freqs_hz.shape[0], temperatures.size))
    mode_energy = AVOGADRO * PLANCK * freqs_hz * weights  # J/mol per frequency, 0 at ν <= 0
    for rows in _chunks(freqs_hz.shape[0], temperatures.size, freqs_hz.shape[1]):
        occupation = 1.0 / np.expm1(_reduced_frequencies(freqs_hz[rows], temperatures))
        occupation[:, temperatures == 0, :] = 0.0
        out[rows] = np.einsum("mtf,mf->mt", 0.5 + occupation, mode_energy[rows])
    return out.reshape(batch_shape + np.shape(T))


# --------------------------------------------------------------------------- bad rows


@dataclass(frozen=True)
class RejectedRow:
    """A row a reader refused. row: 0-based data row in CSV files (the numbering idx_*.txt
    uses), 1-based line number in JSON Lines and index files, −1 for a bad CSV header."""

    path: Path
    row: int
    reason: str
    mp_id: str | None = None

    def __str__(self) -> str:
        if self.row < 0:
            return f"{self.path} header: {self.reason}"
        where = "data row" if self.path.suffix == ".csv" else "line"
        material = f" ({self.mp_id})" if self.mp_id else ""
        return f"{self.path} {where} {self.row}{material}: {self.reason}"


class DataFormatError(ValueError):
    """Raised by a reader given no ``rejected`` list; ``.rejected`` holds every bad row."""

    def __init__(self, rejected: Iterable[RejectedRow]) -> None:
        self.rejected = list(rejected)
        shown = "\n  ".join(str(row) for row in self.rejected[:20])
        more = f"\n  … and {len(self.rejected) - 20} more" if len(self.rejected) > 20 else ""
        super().__init__(f"{len(self.rejected)} bad row(s):\n  {shown}{more}")


class _BadRow(ValueError):
    """Reason a single row is unusable; readers turn it into a RejectedRow."""


def _settle(rejected_here: list[RejectedRow], rejected: list[RejectedRow] | None) -> None:
    if rejected is not None:
        rejected.extend(rejected_here)
    elif rejected_here:
        raise DataFormatError(rejected_here)


def _literal(text: str | None, field: str) -> Any:
    """A Python literal via JSON when it is valid JSON (fast), else ast.literal_eval; never eval."""
    if text is None:
        raise _BadRow(f"missing field {field!r}")
    try:
        return json.loads(text)
    except ValueError:
        pass  # Python-only syntax ('quotes', True): fall back to the literal parser
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise _BadRow(f"{field} is not a Python literal ({type(error).__name__})") from None


def _float_array(value: Any, field: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """value as a finite float array whose shape matches (None = any length)."""
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise _BadRow(f"{field} is not an array of numbers") from None
    matches = array.ndim == len(shape) and all(
        want is None or want == got for want, got in zip(shape, array.shape, strict=False)
    )
    if not matches:
        raise _BadRow(f"{field} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise _BadRow(f"{field} has non-finite values")
    return array


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _BadRow(f"{field} must be a positive integer, got {value!r}")
    return value


def _mp_id(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadRow(f"mp_id must be a non-empty string, got {value!r}")
    return value


def _check_frequency_grid(freqs: np.ndarray, weights: np.ndarray, what: str) -> None:
    if np.any(np.diff(freqs) <= 0):
        raise _BadRow(f"{what} frequencies are not strictly increasing")
    if np.any(weights < 0):
        raise _BadRow(f"{what} has negative weights")
    if np.sum(weights[freqs > 0]) <= 0:
        raise _BadRow(f"{what} has no weight at frequencies > 0")


# --------------------------------------------------------------------------- Petretto


@dataclass(frozen=True, eq=False)
class PhononRecord:
    """One material of Petretto et al. (2018): structure and DFPT phonon DOS.

    row is the 0-based data row of data.csv; frequencies_cm in cm⁻¹ (0–1000, 51 points in the
    release); dos max-normalised as released (scale-free: the thermodynamics rescales it).
    """

    mp_id: str
    row: int
    structure: Structure
    frequencies_cm: np.ndarray
    dos: np.ndarray

    @property
    def n_atoms(self) -> int:
        """Atoms per cell."""
        return len(self.structure)

    def heat_capacity(self, T: Any) -> np.ndarray:
        """C_v(T) in J/(mol K) per mole of cells (T in K)."""
        return cv_from_dos(self.frequencies_cm, self.dos, T, self.n_atoms)

    def internal_energy(self, T: Any) -> np.ndarray:
        """U(T) in J/mol per mole of cells, zero-point energy included (T in K)."""
        return u_from_dos(self.frequencies_cm, self.dos, T, self.n_atoms)


_PETRETTO_COLUMNS = ("mp_id", "structure", "phfreq", "phdos")


def _ase_structure(value: Any) -> Structure:
    """pymatgen Structure from an ASE-style dict: numbers, Cartesian positions (Å), cell (Å)."""
    if not isinstance(value, dict):
        raise _BadRow("structure is not a dict")
    missing = [key for key in ("numbers", "positions", "cell") if key not in value]
    if missing:
        raise _BadRow(f"structure lacks {missing}")
    numbers = value["numbers"]
    if (
        not isinstance(numbers, list | tuple)
        or not numbers
        or not all(
            isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118 for z in numbers
        )
    ):
        raise _BadRow("structure numbers must be a non-empty list of atomic numbers 1–118")
    positions = _float_array(value["positions"], "structure positions", (len(numbers), 3))
    cell = _float_array(value["cell"], "structure cell", (3, 3))
    if abs(np.linalg.det(cell)) < 1e-3:
        raise _BadRow("structure cell is singular (volume < 1e-3 Å³)")
    if not all(value.get("pbc", (True, True, True))):
        raise _BadRow("structure is not periodic in all three directions")
    try:
        return Structure(Lattice(cell), numbers, positions, coords_are_cartesian=True)
    except Exception as error:  # pymatgen raises several types; the reason is what matters
        raise _BadRow(f"structure rejected by pymatgen: {error}") from None


def _petretto_record(index: int, fields: dict[str | None, Any]) -> PhononRecord:
    if None in fields or any(fields.get(column) is None for column in _PETRETTO_COLUMNS):
        raise _BadRow(f"expected exactly the {len(_PETRETTO_COLUMNS)} fields {_PETRETTO_COLUMNS}")
    mp_id = _mp_id(fields["mp_id"])
    structure = _ase_structure(_literal(fields["structure"], "structure"))
    freqs = _float_array(_literal(fields["phfreq"], "phfreq"), "phfreq", (None,))
    dos = _float_array(_literal(fields["phdos"], "phdos"), "phdos", (len(freqs),))
    if len(freqs) < 2:
        raise _BadRow("phfreq has fewer than 2 points")
    _check_frequency_grid(freqs, dos, "phdos")
    return PhononRecord(mp_id, index, structure, freqs, dos)


def _read_csv_rows(path: Path) -> tuple[list[str], list[dict[str | None, Any]]]:
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(max(previous_limit, 1 << 26))  # structure dicts can exceed 128 KiB
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)
    finally:
        csv.field_size_limit(previous_limit)


def load_petretto(
    path: str | Path, *, rejected: list[RejectedRow] | None = None
) -> list[PhononRecord]:
    """Read the Petretto phonon DOS CSV (columns mp_id, structure, phfreq, phdos).

    Each good row becomes a PhononRecord (row = its 0-based data row). Bad rows, duplicate
    mp_ids included, raise DataFormatError after the whole file is read, or are appended to
    ``rejected`` when a list is given.
    """
    path = Path(path)
    header, rows = _read_csv_rows(path)
    missing = [column for column in _PETRETTO_COLUMNS if column not in header]
    if missing:
        raise DataFormatError([RejectedRow(path, -1, f"header lacks columns {missing}")])
    records: list[PhononRecord] = []
    bad: list[RejectedRow] = []
    first_row_of: dict[str, int] = {}
    for index, fields in enumerate(rows):
        mp_id = fields.get("mp_id") if isinstance(fields.get("mp_id"), str) else None
        try:
            record = _petretto_record(index, fields)
            if record.mp_id in first_row_of:
                raise _BadRow(f"duplicate mp_id, first at data row {first_row_of[record.mp_id]}")
        except _BadRow as error:
            bad.append(RejectedRow(path, index, str(error), mp_id))
            continue
        first_row_of[record.mp_id] = index
        records.append(record)
    _settle(bad, rejected)
    return records


_PETRETTO_SPLITS = ("train", "valid", "test")


def load_petretto_splits(
    directory: str | Path, n_rows: int, *, rejected: list[RejectedRow] | None = None
) -> dict[str, np.ndarray]:
    """Row indices of idx_train.txt, idx_valid.txt, idx_test.txt (one 0-based data row a line).

    Every index must be an integer in [0, n_rows) and appear once across the three files;
    offending lines raise DataFormatError, or are appended to ``rejected`` and left out.
    """
    directory = Path(directory)
    splits: dict[str, np.ndarray] = {}
    bad: list[RejectedRow] = []
    seen: dict[int, str] = {}
    for split in _PETRETTO_SPLITS:
        path = directory / f"idx_{split}.txt"
        indices: list[int] = []
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            text = line.strip()
            if not text:
                continue
            try:
                index = int(text)
            except ValueError:
                bad.append(RejectedRow(path, line_number, f"not an integer: {text!r}"))
                continue
            if not 0 <= index < n_rows:
                reason = f"index {index} outside [0, {n_rows}) rows of data.csv"
                bad.append(RejectedRow(path, line_number, reason))
            elif index in seen:
                bad.append(
                    RejectedRow(path, line_number, f"index {index} already in {seen[index]}")
                )
            else:
                seen[index] = path.name
                indices.append(index)
        splits[split] = np.asarray(indices, dtype=np.int64)
    _settle(bad, rejected)
    return splits


# --------------------------------------------------------------------------- phonondb


@dataclass(frozen=True, eq=False)
class PhonondbRecord:
    """One phonondb material: phonopy thermal properties per mole of atoms.

    temperatures in K; cv_per_atom and entropy_per_atom in J/(K mol-atom); internal_energy_per_atom
    and free_energy_per_atom in J/mol-atom (converted from the file's kJ); min/max frequency in THz
    (a negative minimum means imaginary modes); dos_hist over dos_edges_thz (THz, len + 1 edges).
    structure is the unit cell (None when loaded with with_structures=False).
    """

    mp_id: str
    structure: Structure | None
    space_group: int
    formula: str
    natoms_primitive: int
    natoms_unitcell: int
    temperatures: np.ndarray
    cv_per_atom: np.ndarray
    entropy_per_atom: np.ndarray
    free_energy_per_atom: np.ndarray
    internal_energy_per_atom: np.ndarray
    min_freq_thz: float
    max_freq_thz: float
    dos_edges_thz: np.ndarray
    dos_hist: np.ndarray

    @property
    def dos_centres_thz(self) -> np.ndarray:
        """Bin centres of dos_hist, THz."""
        return 0.5 * (self.dos_edges_thz[1:] + self.dos_edges_thz[:-1])

    def is_stable(self, threshold_thz: float = -0.3) -> bool:
        """No imaginary mode below threshold_thz (THz)."""
        return self.min_freq_thz >= threshold_thz

    def dos_heat_capacity_per_atom(self, T: Any) -> np.ndarray:
        """C_v(T) in J/(K mol-atom) from the DOS histogram (bin centres), T in K."""
        return cv_from_dos(self.dos_centres_thz, self.dos_hist, T, 1, freq_unit="THz")


def stable(records: Iterable[PhonondbRecord], threshold_thz: float = -0.3) -> list[PhonondbRecord]:
    """The records whose minimum phonon frequency is >= threshold_thz (THz)."""
    return [record for record in records if record.is_stable(threshold_thz)]


_MP_ID_PREFIX = re.compile(r'^\s*\{\s*"mp_id"\s*:\s*"([^"\\]*)"')
_THREE_R_PER_ATOM = 3 * GAS_CONSTANT


def _json_lines(
    path: Path, wanted: set[str] | None
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, parsed object or None, error) for the lines of a gzip JSON Lines file.

    With ``wanted``, lines whose leading "mp_id" is visibly another material are not parsed.
    """
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if wanted is not None:
                match = _MP_ID_PREFIX.match(line)
                if match and match.group(1) not in wanted:
                    continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield line_number, None, f"invalid JSON ({error.msg})"
                continue
            if not isinstance(value, dict):
                yield line_number, None, "not a JSON object"
                continue
            if wanted is not None and value.get("mp_id") not in wanted:
                continue
            yield line_number, value, None


def _phonondb_structure(
    entry: dict[str, Any], build: bool
) -> tuple[Structure | None, int, int, str]:
    """(structure, nsites, space group, formula) of a structures.jsonl.gz entry."""
    nsites = _positive_int(entry.get("nsites"), "nsites")
    space_group = entry.get("spg")
    if isinstance(space_group, bool) or not isinstance(space_group, int):
        raise _BadRow(f"spg must be an integer, got {space_group!r}")
    if not 1 <= space_group <= 230:
        raise _BadRow(f"spg {space_group} outside 1–230")
    formula = entry.get("formula")
    if not isinstance(formula, str):
        raise _BadRow("formula missing")
    structure_dict = entry.get("structure")
    if not isinstance(structure_dict, dict) or not isinstance(structure_dict.get("sites"), list):
        raise _BadRow("structure is not a pymatgen Structure dict")
    if len(structure_dict["sites"]) != nsites:
        raise _BadRow(f"structure has {len(structure_dict['sites'])} sites, nsites says {nsites}")
    lattice = structure_dict.get("lattice")
    matrix = lattice.get("matrix") if isinstance(lattice, dict) else None
    cell = _float_array(matrix, "structure lattice matrix", (3, 3))
    if abs(np.linalg.det(cell)) < 1e-3:
        raise _BadRow("structure lattice is singular (volume < 1e-3 Å³)")
    structure = None
    if build:
        try:
            structure = Structure.from_dict(structure_dict)
        except Exception as error:  # pymatgen raises several types; the reason is what matters
            raise _BadRow(f"structure rejected by pymatgen: {error}") from None
    return structure, nsites, space_group, formula


def _finite_float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _BadRow(f"{field} must be a finite number, got {value!r}")
    return float(value)


def _phonondb_thermal(entry: dict[str, Any]) -> dict[str, Any]:
    """Checked thermal properties of a thermal.jsonl.gz entry, energies converted to J/mol-atom."""
    temperatures = _float_array(entry.get("T"), "T", (None,))
    n_t = len(temperatures)
    if n_t < 2 or temperatures[0] < 0 or np.any(np.diff(temperatures) <= 0):
        raise _BadRow("T must be >= 0, strictly increasing, with at least 2 points")
    columns = {name: _float_array(entry.get(name), name, (n_t,)) for name in ("Cv", "S", "F", "U")}
    cv = columns["Cv"]
    if np.any(cv < -1e-6) or np.any(cv > 1.01 * _THREE_R_PER_ATOM):
        raise _BadRow("Cv outside [0, 3R] J/(K mol-atom): not per mole of atoms?")
    min_freq = _finite_float(entry.get("min_freq_THz"), "min_freq_THz")
    max_freq = _finite_float(entry.get("max_freq_THz"), "max_freq_THz")
    if not min_freq <= max_freq or max_freq <= 0:
        raise _BadRow(f"frequency range [{min_freq}, {max_freq}] THz is not a valid range")
    natoms_primitive = _positive_int(entry.get("natoms_primitive"), "natoms_primitive")
    natoms_unitcell = _positive_int(entry.get("natoms_unitcell"), "natoms_unitcell")
    if natoms_unitcell % natoms_primitive:
        raise _BadRow(f"natoms_unitcell {natoms_unitcell} not a multiple of {natoms_primitive}")
    hist = _float_array(entry.get("dos_hist"), "dos_hist", (None,))
    edges = _float_array(entry.get("dos_THz_edges"), "dos_THz_edges", (None,))
    if len(edges) == 2 and len(hist) > 1:  # [low, high] of equal bins, as released
        edges = np.linspace(edges[0], edges[1], len(hist) + 1)
    if len(edges) != len(hist) + 1:
        raise _BadRow(f"{len(edges)} dos_THz_edges for {len(hist)} dos_hist bins")
    _check_frequency_grid(0.5 * (edges[1:] + edges[:-1]), hist, "dos_hist")
    return {
        "natoms_primitive": natoms_primitive,
        "natoms_unitcell": natoms_unitcell,
        "temperatures": temperatures,
        "cv_per_atom": cv,
        "entropy_per_atom": columns["S"],
        "free_energy_per_atom": 1e3 * columns["F"],
        "internal_energy_per_atom": 1e3 * columns["U"],
        "min_freq_thz": min_freq,
        "max_freq_thz": max_freq,
        "dos_edges_thz": edges,
        "dos_hist": hist,
    }


def _read_phonondb_structures(
    path: Path, wanted: set[str] | None, build: bool, bad: list[RejectedRow]
) -> tuple[dict[str, tuple[int, tuple[Structure | None, int, int, str]]], set[str]]:
    """Good entries by mp_id as (line, parsed), and the mp_ids whose row was rejected."""
    good: dict[str, tuple[int, tuple[Structure | None, int, int, str]]] = {}
    rejected_ids: set[str] = set()
    for line_number, entry, error in _json_lines(path, wanted):
        mp_id = entry.get("mp_id") if entry is not None else None
        mp_id = mp_id if isinstance(mp_id, str) else None
        try:
            if error or entry is None:
                raise _BadRow(error or "empty entry")
            mp_id = _mp_id(entry.get("mp_id"))
            if mp_id in good:
                raise _BadRow(f"duplicate mp_id, first at line {good[mp_id][0]}")
            good[mp_id] = (line_number, _phonondb_structure(entry, build))
        except _BadRow as reason:
            bad.append(RejectedRow(path, line_number, str(reason), mp_id))
            if mp_id is not None and mp_id not in good:
                rejected_ids.add(mp_id)
    return good, rejected_ids


def load_phonondb(
    directory: str | Path,
    *,
    mp_ids: Iterable[str] | None = None,
    with_structures: bool = True,
    rejected: list[RejectedRow] | None = None,
    structures_file: str = "structures.jsonl.gz",
    thermal_file: str = "thermal.jsonl.gz",
) -> list[PhonondbRecord]:
    """Read phonondb's structures.jsonl.gz and thermal.jsonl.gz (or the files so named in
    ``directory``, e.g. the shipped sample's), joined by mp_id.

    Returns one PhonondbRecord per material present and valid in both files, in the order of
    thermal.jsonl.gz. ``mp_ids`` restricts reading to those materials (fast: other lines are not
    parsed); ``with_structures=False`` skips building pymatgen Structures (the dicts are still
    checked). A row that is malformed, duplicated, unpaired in the other file, or whose
    natoms_unitcell differs from the structure's site count raises DataFormatError after both
    files are read, or is appended to ``rejected`` when a list is given.
    """
    directory = Path(directory)
    structures_path = directory / structures_file
    thermal_path = directory / thermal_file
    wanted = set(mp_ids) if mp_ids is not None else None
    bad: list[RejectedRow] = []
    structures, rejected_structure_ids = _read_phonondb_structures(
        structures_path, wanted, with_structures, bad
    )
    records: list[PhonondbRecord] = []
    paired: dict[str, int] = {}
    for line_number, entry, error in _json_lines(thermal_path, wanted):
        mp_id = entry.get("mp_id") if entry is not None else None
        mp_id = mp_id if isinstance(mp_id, str) else None
        try:
            if error or entry is None:
                raise _BadRow(error or "empty entry")
            mp_id = _mp_id(entry.get("mp_id"))
            if mp_id in paired:
                raise _BadRow(f"duplicate mp_id, first at line {paired[mp_id]}")
            paired[mp_id] = line_number
            if mp_id in rejected_structure_ids:
                raise _BadRow(f"its row in {structures_path.name} was rejected")
            if mp_id not in structures:
                raise _BadRow(f"no structure for this mp_id in {structures_path.name}")
            thermal = _phonondb_thermal(entry)
            structure, nsites, space_group, formula = structures[mp_id][1]
            if thermal["natoms_unitcell"] != nsites:
                raise _BadRow(
                    f"natoms_unitcell {thermal['natoms_unitcell']} but the structure has {nsites}"
                )
        except _BadRow as reason:
            bad.append(RejectedRow(thermal_path, line_number, str(reason), mp_id))
            continue
        records.append(PhonondbRecord(mp_id, structure, space_group, formula, **thermal))
    for mp_id, (line_number, _) in structures.items():
        if mp_id not in paired:
            reason = f"no thermal properties for this mp_id in {thermal_path.name}"
            bad.append(RejectedRow(structures_path, line_number, reason, mp_id))
    _settle(bad, rejected)
    return records
