"""The worker side of a corpus build: records → samples (tar members) or quarantine reasons.

Everything here runs inside Ray tasks (or in-process in tests and benchmarks) and is a pure
function of its inputs and options, so a retried or re-run unit gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from cluster.corpus.memo import memo_lookup, memo_store
from tokenizer.scope import (
    DEFAULT_ANGLE_TOLERANCE,
    DEFAULT_SYMPREC,
    Cell,
    ScopeError,
    Symmetry,
    analyze_cell,
    cell_fingerprint,
    cell_of,
    format_variant,
)

if TYPE_CHECKING:
    from cluster.readers import Record, WorkUnit
    from tokenizer.vocab import ScopeTokenizer

# Test-only fault injection: a path; the first task to create it (O_EXCL) dies mid-unit.
KILL_ONCE_ENV = "CLOUD_CORPUS_TEST_KILL_ONCE"
# Test-only fault injection: a source_id whose symmetry search "never ends" (the task sleeps
# STALL_SECONDS instead), for the watchdog's tests.
STALL_ENV = "CLOUD_CORPUS_TEST_STALL"
STALL_SECONDS = 3600.0

_TAR_BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class EncodeOptions:
    """What a task computes for each record of its unit."""

    variants: tuple[str, ...]
    dedup_key: bool  # the canonical SCOPE + reduced formula key (dedup and exclusion)
    keep_structure: bool  # compact cell for StructureMatcher (dedup="structure")
    payload: bool  # the sample's tar member (False for exclusion sets)
    symprec: float = DEFAULT_SYMPREC
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE
    engine: str = "spglib"  # symmetry search; "moyo" only for canonical-only corpora


@dataclass(frozen=True)
class Faults:
    """Test hooks, off in production: the driver builds one only when the variables
    ``KILL_ONCE_ENV`` or ``STALL_ENV`` are set in its environment, and hands it to every task
    (a Ray worker's own environment is not the test's)."""

    kill_once: str | None = None
    """A path: the first task to create it dies abruptly after encoding a record."""
    stall: str | None = None
    """A source_id: its symmetry search sleeps ``STALL_SECONDS`` instead of running."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Faults | None:
        """The hooks the environment asks for, or None (the production case)."""
        faults = cls(environ.get(KILL_ONCE_ENV) or None, environ.get(STALL_ENV) or None)
        return faults if faults != cls() else None


class Encoded(NamedTuple):
    """A structure encoded by a worker, ready for the driver to deduplicate and write."""

    source: str
    source_id: str
    position: str
    key: str
    dedup_key: int | None
    member: bytes  # the sample as a tar member (header + JSON + padding), built in the worker
    space_group: int
    lengths: tuple[int, ...]  # token count per variant, in ``EncodeOptions.variants`` order
    structure: tuple | None


class Failed(NamedTuple):
    """An input that could not be read or encoded; becomes a quarantine line."""

    source: str
    source_id: str
    position: str
    reason: str


_TOKENIZER: ScopeTokenizer | None = None


def _tokenizer() -> ScopeTokenizer:
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizer.vocab import ScopeTokenizer

        _TOKENIZER = ScopeTokenizer()
    return _TOKENIZER


def sample_key(source: str, source_id: str, salt: str = "") -> str:
    """A short stable key; WebDataset splits names at the first dot, so hex only."""
    text = f"{source}\0{source_id}\0{salt}" if salt else f"{source}\0{source_id}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def dedup_key(canonical: str, formula: str) -> int:
    """64 bits of canonical SCOPE + reduced formula (collision odds ~1e-6 at 6M structures)."""
    digest = hashlib.blake2b(f"{canonical}\n{formula}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def encode_unit(
    unit: WorkUnit,
    options: EncodeOptions,
    faults: Faults | None = None,
    memo: Any = None,
) -> list[Encoded | Failed]:
    """Read one work unit and encode each record (runs in a Ray task).

    ``memo`` is the build's ``SymmetryMemo`` actor (or None): cells it has already analysed
    skip the symmetry search, and the unit's new analyses are handed back to it.
    """
    from cluster.readers import read_unit

    return encode_records(list(read_unit(unit)), options, faults, memo)


def encode_records(
    records: Sequence[Record],
    options: EncodeOptions,
    faults: Faults | None = None,
    memo: Any = None,
) -> list[Encoded | Failed]:
    """Encode ``records`` (all or part of one unit), one result each, in order; ``memo`` as
    in ``encode_unit``."""
    cells = [_cell(record) for record in records]
    keys = [_fingerprint(cell, options) for cell in cells]
    packed = memo_lookup(memo, [k for k in keys if k is not None])
    known: dict[bytes, Symmetry] = {}
    results: list[Encoded | Failed] = []
    for record, cell, key in zip(records, cells, keys, strict=True):
        if key in packed and key not in known and not isinstance(cell, Failed):
            known[key] = Symmetry.unpack(packed[key], cell, options.engine)
        results.append(_encode_cell(record, cell, key, options, known, faults))
        if faults is not None and faults.kill_once:
            _die_once(faults.kill_once)
    memo_store(memo, {k: v.pack() for k, v in known.items() if k not in packed})
    return results


def _die_once(sentinel: str) -> None:
    """Fault injection for tests: the first caller creates ``sentinel`` and dies abruptly."""
    try:
        fd = os.open(sentinel, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)


def encode_record(record: Record, options: EncodeOptions) -> Encoded | Failed:
    """One record → its sample (or the reason it cannot be one)."""
    cell = _cell(record)
    return _encode_cell(record, cell, _fingerprint(cell, options), options, {})


def _cell(record: Record) -> Cell | Failed:
    if record.error is not None or record.structure is None:
        return Failed(record.source, record.source_id, record.position, record.error or "empty")
    try:
        return cell_of(record.structure)
    except ScopeError as exc:
        return Failed(record.source, record.source_id, record.position, str(exc))


def _fingerprint(cell: Cell | Failed, options: EncodeOptions) -> bytes | None:
    if isinstance(cell, Failed):
        return None
    return cell_fingerprint(cell, options.symprec, options.angle_tolerance, options.engine)


def _encode_cell(
    record: Record,
    cell: Cell | Failed,
    fingerprint: bytes | None,
    options: EncodeOptions,
    known: dict[bytes, Symmetry],
    faults: Faults | None = None,
) -> Encoded | Failed:
    """A record whose cell has been taken → its sample; ``known`` holds analyses by
    fingerprint, and gains this one."""
    if isinstance(cell, Failed):
        return cell
    assert fingerprint is not None and record.structure is not None
    structure = record.structure
    wanted = options.variants
    if options.dedup_key and "canonical" not in wanted:
        wanted = (*wanted, "canonical")
    try:
        symmetry = known.get(fingerprint)
        if symmetry is None:
            if faults is not None and faults.stall == record.source_id:
                time.sleep(STALL_SECONDS)  # a search that does not end, for the watchdog
            symmetry = analyze_cell(cell, options.symprec, options.angle_tolerance, options.engine)
            known[fingerprint] = symmetry
        texts = {v: format_variant(symmetry, v) for v in wanted}
        formula = structure.composition.reduced_formula
    except ScopeError as exc:
        return Failed(record.source, record.source_id, record.position, str(exc))
    except Exception as exc:  # spglib/pymatgen raise many types; one bad input must not stop a unit
        reason = f"{type(exc).__name__}: {exc}"
        return Failed(record.source, record.source_id, record.position, reason)
    key = sample_key(record.source, record.source_id)
    tokenizer = _tokenizer()
    ids = {v: tokenizer.encode(texts[v]) for v in options.variants}
    member = b""
    if options.payload:
        sample = {
            "key": key,
            "source": record.source,
            "source_id": record.source_id,
            "formula": formula,
            "space_group": symmetry.space_group,
            "num_sites": len(structure),
            "properties": record.properties,
            "scope": {v: texts[v] for v in options.variants},
            "input_ids": ids,
        }
        member = tar_member(key, sample_json(sample))
    return Encoded(
        source=record.source,
        source_id=record.source_id,
        position=record.position,
        key=key,
        dedup_key=dedup_key(texts["canonical"], formula) if options.dedup_key else None,
        member=member,
        space_group=symmetry.space_group,
        lengths=tuple(len(ids[v]) for v in options.variants),
        structure=_compact_structure(structure) if options.keep_structure else None,
    )


def tar_member(key: str, payload: bytes) -> bytes:
    """``<key>.json`` as a tar member with fixed metadata (mtime 0, root, 0644): the same bytes
    wherever and whenever it is written."""
    info = tarfile.TarInfo(f"{key}.json")
    info.size = len(payload)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
    return header + payload + b"\0" * (-len(payload) % _TAR_BLOCK)


def member_payload(member: bytes) -> bytes:
    """The JSON payload of a member built by ``tar_member``."""
    size = tarfile.TarInfo.frombuf(member[:_TAR_BLOCK], "utf-8", "strict").size
    return member[_TAR_BLOCK : _TAR_BLOCK + size]


def sample_json(sample: dict[str, Any]) -> bytes:
    """A sample as compact UTF-8 JSON; non-finite property values become null."""
    try:
        text = json.dumps(sample, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN/inf in properties: JSON has no spelling for them
        sample = {**sample, "properties": _finite(sample["properties"])}
        text = json.dumps(sample, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _compact_structure(structure: Any) -> tuple:
    """Lattice, species and fractional coordinates: small to ship and to keep for matching."""
    return (
        [[round(x, 6) for x in row] for row in structure.lattice.matrix.tolist()],
        [site.specie.symbol for site in structure],
        [[round(x, 6) for x in row] for row in structure.frac_coords.tolist()],
    )
