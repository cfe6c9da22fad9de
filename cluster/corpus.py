"""Corpus building: structures → SCOPE strings and token ids → WebDataset shards, with Ray.

Ray tasks read and encode deterministic work units (``cluster.readers.plan_units``); the driver
takes the results in unit order, drops duplicates and excluded structures, and appends the
samples to the one open shard. So the shards and the manifest are a function of the inputs and
the settings only, never of the number of workers or of which worker finished first.

Resuming: the driver commits its position (unit and record within it) together with the byte
lengths of the open shard, the quarantine file and the dedup index to ``DIR/.build/state.json``
(atomically, after fsyncing those files) whenever a shard is completed and every few seconds.
A re-run with the same arguments truncates the appended files to the committed lengths,
replays the dedup index, verifies finished shards by sha256 and carries on from the committed
record; the end result is byte-identical to an uninterrupted build. A task whose worker dies is
retried by Ray (``max_retries``); units are pure functions of their input, so a retry gives the
same records.

Directory layout (see ``cluster.manifest``)::

    DIR/corpus-000000.tar …        finished shards (``corpus-%06d.tar.partial`` while open)
    DIR/quarantine.jsonl           {"source", "position", "source_id", "reason"} per bad input
    DIR/manifest.json              written last: its presence means the build is complete
    DIR/.build/state.json, index.jsonl   resume state, removed once the manifest is written
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from cluster.manifest import (
    COUNT_FIELDS,
    DEDUP_MODES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    check_balance,
    fsync_directory,
    read_manifest,
    sha256_file,
    shard_name,
    tool_version,
    write_json_atomic,
)
from cluster.ray_env import LOOPBACK_ENV as LOOPBACK_ENV  # re-exported: its old home
from cluster.ray_env import setdefault_loopback
from tokenizer.scope import (
    DEFAULT_ANGLE_TOLERANCE,
    DEFAULT_SYMPREC,
    ENGINES,
    SPGLIB_ONLY_VARIANTS,
    VARIANTS,
    Cell,
    ScopeError,
    Symmetry,
    analyze_cell,
    cell_fingerprint,
    cell_of,
    format_variant,
)

if TYPE_CHECKING:
    from cluster.readers import InputFile, Record, WorkUnit
    from tokenizer.vocab import ScopeTokenizer

DEFAULT_SHARD_SIZE = 10_000
# Big enough that scheduling and per-unit reader start-up are noise, small enough that a dead
# worker or a resumed build redoes only seconds of work and that work spreads over many cores.
DEFAULT_UNIT_SIZE = 1_000
# About 200 bytes each for a 10-site cell: a few hundred MB at most, in one actor.
DEFAULT_MEMO_ENTRIES = 1_000_000
STATE_DIR = ".build"
STATE_NAME = "state.json"
INDEX_NAME = "index.jsonl"
PARTIAL_SUFFIX = ".partial"
QUARANTINE_SHOWN = 5
"""Quarantine lines a build prints at its end; the rest are counted."""
CHECKPOINT_SECONDS = 5.0
MAX_RETRIES = 3

# Test-only fault injection: a path; the first task to create it (O_EXCL) dies mid-unit.
KILL_ONCE_ENV = "CLOUD_CORPUS_TEST_KILL_ONCE"


_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_RECORD = tarfile.RECORDSIZE


# =============================================================================== worker side


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
    kill_once: str | None = None,
    memo: Any = None,
) -> list[Encoded | Failed]:
    """Read one work unit and encode each record (runs in a Ray task).

    ``memo`` is the build's ``SymmetryMemo`` actor (or None): cells it has already analysed
    skip the symmetry search, and the unit's new analyses are handed back to it.
    """
    from cluster.readers import read_unit

    records = list(read_unit(unit))
    cells = [_cell(record) for record in records]
    keys = [_fingerprint(cell, options) for cell in cells]
    packed = _memo_lookup(memo, [k for k in keys if k is not None])
    known: dict[bytes, Symmetry] = {}
    results: list[Encoded | Failed] = []
    for record, cell, key in zip(records, cells, keys, strict=True):
        if key in packed and key not in known and not isinstance(cell, Failed):
            known[key] = Symmetry.unpack(packed[key], cell, options.engine)
        results.append(_encode_cell(record, cell, key, options, known))
        if kill_once:
            _die_once(kill_once)
    _memo_store(memo, {k: v.pack() for k, v in known.items() if k not in packed})
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
        member = tar_member(key, _sample_json(sample))
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


class SymmetryMemo:
    """Packed symmetry analyses (``Symmetry.pack``) by cell fingerprint, shared by every task
    of one build (a Ray actor).

    The same relaxed structure often comes in several property datasets, byte for byte; one
    search serves them all, whichever worker meets them. Oldest entries go first beyond
    ``max_entries``. Only an optimisation: a lost or restarted memo changes speed, not output.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: dict[bytes, bytes] = {}
        self.hits = 0
        self.lookups = 0

    def lookup(self, keys: list[bytes]) -> dict[bytes, bytes]:
        found = {k: self.entries[k] for k in keys if k in self.entries}
        self.lookups += len(keys)
        self.hits += len(found)
        return found

    def store(self, items: dict[bytes, bytes]) -> None:
        self.entries.update(items)
        while len(self.entries) > self.max_entries:
            del self.entries[next(iter(self.entries))]

    def stats(self) -> dict[str, int]:
        return {"entries": len(self.entries), "lookups": self.lookups, "hits": self.hits}


def _memo_lookup(memo: Any, keys: list[bytes]) -> dict[bytes, bytes]:
    if memo is None or not keys:
        return {}
    import ray

    try:
        return ray.get(memo.lookup.remote(keys))
    except ray.exceptions.RayError:  # a dead memo costs speed only
        return {}


def _memo_store(memo: Any, items: dict[bytes, bytes]) -> None:
    if memo is None or not items:
        return
    import ray

    with contextlib.suppress(ray.exceptions.RayError):
        memo.store.remote(items)


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
    size = tarfile.TarInfo.frombuf(member[:_TAR_BLOCK], "utf-8", "strict").size
    return member[_TAR_BLOCK : _TAR_BLOCK + size]


def _sample_json(sample: dict[str, Any]) -> bytes:
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


# =============================================================================== driver side


@dataclass
class _Counts:
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, source: str, outcome: str) -> None:
        counts = self.per_source.get(source)
        if counts is None:
            counts = self.per_source[source] = dict.fromkeys(COUNT_FIELDS, 0)
        counts["read"] += 1
        counts[outcome] += 1

    def sorted(self) -> dict[str, dict[str, int]]:
        return {s: dict(self.per_source[s]) for s in sorted(self.per_source)}

    def totals(self) -> dict[str, int]:
        return {f: sum(c[f] for c in self.per_source.values()) for f in COUNT_FIELDS}


class _StructureMatcher:
    """pymatgen's StructureMatcher on compact cells, created once (it is slow to set up)."""

    def __init__(self) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self._matcher = StructureMatcher()

    def any_match(self, candidate: tuple, others: Iterable[tuple]) -> bool:
        from pymatgen.core import Structure

        built = Structure(*candidate)
        return any(self._matcher.fit(built, Structure(*other)) for other in others)


class _Exclusion:
    """Dedup keys (and cells, for dedup="structure") of the structures that must stay out."""

    def __init__(self) -> None:
        self.keys: set[int] = set()
        self.structures: dict[int, list[tuple]] = {}
        self.encoded = 0
        self.unreadable = 0

    def add(self, entry: Encoded | Failed) -> None:
        if isinstance(entry, Failed):
            self.unreadable += 1
            return
        assert entry.dedup_key is not None
        self.encoded += 1
        self.keys.add(entry.dedup_key)
        if entry.structure is not None:
            self.structures.setdefault(entry.dedup_key, []).append(entry.structure)


class _TarAppender:
    """Append-only tar writer with fixed member metadata; resumable at any committed length."""

    def __init__(self, path: Path, start: int, samples: int) -> None:
        self.path = path
        mode = "r+b" if path.exists() else "w+b"
        self.handle: IO[bytes] = open(path, mode)  # noqa: SIM115 - closed by finish()/close()
        size = self.handle.seek(0, os.SEEK_END)
        if size < start:
            self.handle.close()
            raise RuntimeError(
                f"{path} has {size} bytes but the build state says {start} were committed; "
                "the directory was changed outside the builder (delete it and rebuild)"
            )
        self.handle.truncate(start)
        self.handle.seek(start)
        self.samples = samples

    @property
    def tell(self) -> int:
        return self.handle.tell()

    def add(self, member: bytes) -> None:
        self.handle.write(member)
        self.samples += 1

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def finish(self) -> None:
        """End-of-archive blocks, padded to a whole record as ``tarfile`` writes them."""
        end = self.handle.tell() + 2 * _TAR_BLOCK
        self.handle.write(b"\0" * (2 * _TAR_BLOCK + (-end % _TAR_RECORD)))
        self.sync()
        self.handle.close()

    def close(self) -> None:
        self.handle.close()


def _appendable(path: Path, committed: int) -> IO[bytes]:
    """Open an append-only text log truncated to its committed length."""
    handle = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - owned by the build
    size = handle.seek(0, os.SEEK_END)
    if size < committed:
        handle.close()
        raise RuntimeError(f"{path} is shorter ({size} bytes) than its committed {committed}")
    handle.truncate(committed)
    handle.seek(committed)
    return handle


class _CorpusWriter:
    """The driver's side of one build: dedup, shards, quarantine, counts and resume state."""

    def __init__(
        self,
        out: Path,
        settings: dict[str, Any],
        plan: dict[str, int],
        exclusion: _Exclusion | None,
        fresh: bool = False,
    ) -> None:
        self.out = out
        self.settings = settings
        self.plan = plan
        self.shard_size = int(settings["shard_size"])
        self.dedup = settings["dedup"]
        self.variants = tuple(settings["variants"])
        self.exclusion = exclusion
        self.state_dir = out / STATE_DIR
        self.counts = _Counts()
        self.space_groups: Counter[int] = Counter()
        self.token_lengths: dict[str, Counter[int]] = {v: Counter() for v in self.variants}
        self.shards: list[dict[str, Any]] = []
        self.quarantine_lines = 0
        self.next_unit = 0
        self.records_done = 0
        self.keys: set[int] = set()
        self.kept: set[int] = set()
        self.kept_structures: dict[int, list[tuple]] = {}
        self._matcher: _StructureMatcher | None = None
        self._last_commit = time.monotonic()
        self._lock = _lock_directory(self.state_dir)
        if fresh:  # under the lock: never pull files from under a build still running
            _clear_build(out)
        state = self._load_state()
        self._open(state)
        if state is None:
            self.commit()

    # ------------------------------------------------------------------ state

    def _load_state(self) -> dict[str, Any] | None:
        state_path = self.state_dir / STATE_NAME
        if not state_path.is_file():
            _refuse_foreign_files(self.out)
            # Only this builder writes *.partial: a build killed before its first commit.
            for partial in self.out.glob(f"corpus-*.tar{PARTIAL_SUFFIX}"):
                partial.unlink()
            return None
        state = json.loads(state_path.read_text())
        if state.get("settings") != self.settings or state.get("plan") != self.plan:
            if not any(c.get("written") for c in state.get("counts", {}).values()):
                # Nothing of it would be kept: a retry with the right inputs just starts over.
                _clear_build(self.out)
                return self._load_state()
            raise ValueError(
                f"{self.out} holds an unfinished build with other inputs or settings "
                f"({_differences(state.get('settings', {}), self.settings) or 'the work plan'}); "
                "re-run with the same arguments to resume it, use another --out, or --force "
                "to start this one afresh"
            )
        return state

    def _open(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.next_unit = state.get("next_unit", 0)
        self.records_done = state.get("records_done", 0)
        self.shards = state.get("shards", [])
        for source, counts in state.get("counts", {}).items():
            self.counts.per_source[source] = dict(counts)
        self.space_groups.update({int(k): v for k, v in state.get("space_groups", {}).items()})
        for variant, hist in state.get("token_lengths", {}).items():
            self.token_lengths[variant].update({int(k): v for k, v in hist.items()})
        self.quarantine_lines = state.get("quarantine_lines", 0)
        self._settle_finished_shards()
        open_shard = state.get("open_shard", {"index": len(self.shards), "bytes": 0, "samples": 0})
        self.shard = _TarAppender(
            self._partial_path(open_shard["index"]), open_shard["bytes"], open_shard["samples"]
        )
        self.quarantine = _appendable(self.out / QUARANTINE_NAME, state.get("quarantine_bytes", 0))
        self.index = _appendable(self.state_dir / INDEX_NAME, state.get("index_bytes", 0))
        self._replay_index()

    def _settle_finished_shards(self) -> None:
        """Finished shards must be intact; one committed but not yet renamed is renamed now."""
        for shard in self.shards:
            final = self.out / shard["name"]
            partial = final.with_name(final.name + PARTIAL_SUFFIX)
            if not final.exists() and partial.exists() and sha256_file(partial) == shard["sha256"]:
                os.replace(partial, final)
                fsync_directory(self.out)
            if not final.exists():
                raise RuntimeError(f"{final}: finished shard is missing; delete {self.out}")
            if sha256_file(final) != shard["sha256"]:
                raise RuntimeError(
                    f"{final}: sha256 differs from the one recorded when it was written "
                    f"(corrupted or edited); delete {self.out} and rebuild"
                )

    def _replay_index(self) -> None:
        self.index.seek(0)
        for line in self.index:
            key, dkey, *structure = line.rstrip(b"\n").split(b" ", 2)
            self.keys.add(int(key, 16))
            if dkey != b"-":
                self.kept.add(int(dkey, 16))
            if structure:
                self.kept_structures.setdefault(int(dkey, 16), []).append(json.loads(structure[0]))
        self.index.seek(0, os.SEEK_END)

    def _partial_path(self, index: int) -> Path:
        return self.out / (shard_name(index) + PARTIAL_SUFFIX)

    def commit(self) -> None:
        """Make everything appended so far durable, then record how far it goes."""
        for handle in (self.quarantine, self.index):
            handle.flush()
            os.fsync(handle.fileno())
        self.shard.sync()
        state = {
            "settings": self.settings,
            "plan": self.plan,
            "next_unit": self.next_unit,
            "records_done": self.records_done,
            "shards": self.shards,
            "open_shard": {
                "index": len(self.shards),
                "bytes": self.shard.tell,
                "samples": self.shard.samples,
            },
            "counts": self.counts.sorted(),
            "space_groups": _hist_json(self.space_groups),
            "token_lengths": {v: _hist_json(h) for v, h in self.token_lengths.items()},
            "quarantine_bytes": self.quarantine.tell(),
            "quarantine_lines": self.quarantine_lines,
            "index_bytes": self.index.tell(),
        }
        write_json_atomic(self.state_dir / STATE_NAME, state)
        self._last_commit = time.monotonic()

    # ------------------------------------------------------------------ consuming results

    def consume(self, unit_index: int, entries: Sequence[Encoded | Failed]) -> None:
        """Take one unit's results, in unit order; skip the records a resumed state has."""
        assert unit_index == self.next_unit, (unit_index, self.next_unit)
        for position in range(self.records_done, len(entries)):
            self._take(entries[position])
            self.records_done = position + 1
            if self.shard.samples >= self.shard_size:
                self._complete_shard()
        self.next_unit += 1
        self.records_done = 0
        if time.monotonic() - self._last_commit >= CHECKPOINT_SECONDS:
            self.commit()

    def _take(self, entry: Encoded | Failed) -> None:
        if isinstance(entry, Failed):
            self._quarantine(entry)
            self.counts.add(entry.source, "quarantined")
        elif self._excluded(entry):
            self.counts.add(entry.source, "excluded")
        elif self._duplicate(entry):
            self.counts.add(entry.source, "duplicates")
        else:
            self._write(entry)
            self.counts.add(entry.source, "written")

    def _quarantine(self, entry: Failed) -> None:
        line = {
            "source": entry.source,
            "position": entry.position,
            "source_id": entry.source_id,
            "reason": entry.reason,
        }
        self.quarantine.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        self.quarantine_lines += 1

    def _excluded(self, entry: Encoded) -> bool:
        if self.exclusion is None or entry.dedup_key not in self.exclusion.keys:
            return False
        if self.dedup != "structure":
            return True
        return self._structures_match(entry, self.exclusion.structures.get(entry.dedup_key, []))

    def _duplicate(self, entry: Encoded) -> bool:
        if self.dedup == "none" or entry.dedup_key not in self.kept:
            return False
        if self.dedup == "scope":
            return True
        return self._structures_match(entry, self.kept_structures.get(entry.dedup_key, []))

    def _structures_match(self, entry: Encoded, others: list[tuple]) -> bool:
        if self._matcher is None:
            self._matcher = _StructureMatcher()
        assert entry.structure is not None
        return self._matcher.any_match(entry.structure, others)

    def _write(self, entry: Encoded) -> None:
        key, member = self._unique_key(entry)
        self.shard.add(member)
        # One index line per written sample: "<key> <dedup key or -> [<cell JSON>]".
        line = f"{key} -"
        if entry.dedup_key is not None and self.dedup != "none":
            self.kept.add(entry.dedup_key)
            line = f"{key} {entry.dedup_key:016x}"
            if self.dedup == "structure":
                self.kept_structures.setdefault(entry.dedup_key, []).append(entry.structure)
                line += " " + json.dumps(entry.structure, separators=(",", ":"))
        self.index.write(line.encode() + b"\n")
        self.space_groups[entry.space_group] += 1
        for variant, length in zip(self.variants, entry.lengths, strict=True):
            self.token_lengths[variant][length] += 1

    def _unique_key(self, entry: Encoded) -> tuple[str, bytes]:
        """Keys must be unique within the corpus; a repeated source_id gets a salted key."""
        key, salt = entry.key, 0
        while int(key, 16) in self.keys:
            salt += 1
            key = sample_key(entry.source, entry.source_id, f"{entry.position}#{salt}")
        self.keys.add(int(key, 16))
        if key == entry.key:
            return key, entry.member
        sample = json.loads(member_payload(entry.member))
        sample["key"] = key
        return key, tar_member(key, _sample_json(sample))

    def _complete_shard(self) -> None:
        """Close the open shard, commit it as finished, then give it its final name."""
        self.shard.finish()
        index = len(self.shards)
        partial = self._partial_path(index)
        name = shard_name(index)
        self.shards.append(
            {"name": name, "sha256": sha256_file(partial), "num_samples": self.shard.samples}
        )
        self.shard = _TarAppender(self._partial_path(index + 1), 0, 0)
        self.commit()
        os.replace(partial, self.out / name)
        fsync_directory(self.out)

    # ------------------------------------------------------------------ finishing

    def finish(self, sources: list[dict[str, Any]], exclusion_summary: dict | None) -> dict:
        if self.shard.samples:
            self._complete_shard()
        self.shard.close()
        self._partial_path(len(self.shards)).unlink(missing_ok=True)
        for handle in (self.quarantine, self.index):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        counts = self.counts.sorted()
        check_balance(counts)
        manifest = self._manifest(counts, sources, exclusion_summary)
        for stray in self.out.glob(f".{MANIFEST_NAME}.*.tmp"):  # left by a kill mid-write
            stray.unlink()
        write_json_atomic(self.out / MANIFEST_NAME, manifest)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._lock.close()
        return manifest

    def _manifest(
        self,
        counts: dict[str, dict[str, int]],
        sources: list[dict[str, Any]],
        exclusion_summary: dict | None,
    ) -> dict[str, Any]:
        settings = self.settings
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tool": {"name": "cloud-crystal", "version": settings["tool_version"]},
            "num_samples": sum(s["num_samples"] for s in self.shards),
            "shards": self.shards,
            "counts": counts,
            "totals": self.counts.totals(),
            "sources": sources,
            "exclude": exclusion_summary,
            "variants": list(self.variants),
            "tokenizer": settings["tokenizer"],
            "symprec": settings["symprec"],
            "angle_tolerance": settings["angle_tolerance"],
            "dedup": settings["dedup"],
            "shard_size": settings["shard_size"],
            "unit_size": settings["unit_size"],
            "quarantine": {
                "name": QUARANTINE_NAME,
                "lines": self.quarantine_lines,
                "sha256": sha256_file(self.out / QUARANTINE_NAME),
            },
            "histograms": {
                "space_group": _hist_json(self.space_groups),
                "token_length": {v: _hist_json(h) for v, h in self.token_lengths.items()},
            },
            "settings": settings,
        }


def _lock_directory(state_dir: Path) -> IO[str]:
    """One build per directory: two would interleave their appends. The kernel drops the
    lock when its holder dies, so a killed build never blocks its own resumption."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / "lock", "w")  # noqa: SIM115 - held for the whole build
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(
            f"{state_dir.parent} is being built by another process right now; "
            "wait for it to finish (or kill it and re-run to resume)"
        ) from None
    return handle


def _hist_json(counter: Counter[int]) -> dict[str, int]:
    return {str(k): counter[k] for k in sorted(counter)}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))


def _refuse_foreign_files(out: Path) -> None:
    """Never write over shards that this builder did not start (no state, no manifest)."""
    foreign = sorted(p.name for p in out.glob("corpus-*.tar")) if out.is_dir() else []
    if foreign:
        raise ValueError(
            f"{out} already holds {foreign[0]} (and {len(foreign) - 1} more) but no build state "
            "or manifest; use an empty --out directory, or --force to delete them"
        )


def _clear_build(out: Path) -> None:
    """Remove what a build writes to ``out`` (shards, quarantine, manifest, resume state but
    the lock held by the caller); anything else there stays."""
    patterns = (
        "corpus-*.tar",
        f"corpus-*.tar{PARTIAL_SUFFIX}",
        QUARANTINE_NAME,
        MANIFEST_NAME,
        f".{MANIFEST_NAME}.*.tmp",
        f"{STATE_DIR}/{STATE_NAME}",
        f"{STATE_DIR}/{INDEX_NAME}",
        f"{STATE_DIR}/.*.tmp",
    )
    for pattern in patterns:
        for path in out.glob(pattern):
            path.unlink()


# =============================================================================== Ray


@contextlib.contextmanager
def ray_runtime(ray_address: str | None, workers: int | None) -> Iterator[int]:
    """Use the in-process Ray if there is one, else join ``ray_address``, else start a local Ray
    on loopback with ``workers`` CPUs. Yields how many tasks to keep running at once."""
    import ray

    started = False
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address, log_to_driver=False)
        else:
            setdefault_loopback(os.environ)
            # address="local": start our own even where another Ray runs on this machine,
            # which ray.init would join (and then refuse num_cpus).
            ray.init(
                address="local",
                num_cpus=workers or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        yield max(1, workers or cpus)
    finally:
        if started:
            ray.shutdown()


def _ordered_results(
    units: Sequence[WorkUnit],
    start: int,
    options: EncodeOptions,
    concurrency: int,
    kill_once: str | None,
    memo: Any = None,
) -> Iterator[tuple[int, list[Encoded | Failed]]]:
    """Results of ``units[start:]`` in unit order, with ``concurrency`` tasks kept running."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(encode_unit)
    # Finished results wait in the object store until their turn; bound how far ahead we run.
    max_ahead = 4 * concurrency + 4
    running: dict[Any, int] = {}
    finished: dict[int, Any] = {}
    next_submit = next_yield = start
    while next_yield < len(units):
        while (
            len(running) < concurrency
            and next_submit < len(units)
            and next_submit - next_yield < max_ahead
        ):
            running[task.remote(units[next_submit], options, kill_once, memo)] = next_submit
            next_submit += 1
        if next_yield not in finished:
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                finished[running.pop(ref)] = ref
            continue
        yield next_yield, ray.get(finished.pop(next_yield))
        next_yield += 1


def _start_memo(max_entries: int) -> Any:
    if max_entries <= 0:
        return None
    import ray

    # No CPU reserved: it answers one batched lookup per unit.
    return ray.remote(num_cpus=0, max_restarts=-1)(SymmetryMemo).remote(max_entries)


def _stop_memo(memo: Any) -> int:
    """The memo's hit count, then the actor is gone (0 without a memo)."""
    if memo is None:
        return 0
    import ray

    try:
        hits = int(ray.get(memo.stats.remote())["hits"])
    except ray.exceptions.RayError:
        hits = 0
    ray.kill(memo)
    return hits


def _plan(files: list[InputFile], unit_size: int) -> list[WorkUnit]:
    """Work units; item counts come from Ray tasks, one per file, in parallel."""
    import ray

    from cluster.readers import count_items, plan_units

    if not files:
        return []
    counter = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(count_items)
    counts = ray.get([counter.remote(f) for f in files])
    return plan_units(files, unit_size, counts=counts)


def _exclusion(
    files: list[InputFile],
    options: EncodeOptions,
    concurrency: int,
    unit_size: int,
    memo: Any,
) -> _Exclusion:
    exclusion = _Exclusion()
    units = _plan(files, unit_size)
    for _, entries in _ordered_results(units, 0, options, concurrency, None, memo):
        for entry in entries:
            exclusion.add(entry)
    return exclusion


# =============================================================================== entry point


def build_corpus(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int | None = None,
    ray_address: str | None = None,
    dedup: str = "scope",
    exclude: Sequence[str | os.PathLike[str]] = (),
    variants: Sequence[str] = ("cloud",),
    unit_size: int = DEFAULT_UNIT_SIZE,
    progress: bool = True,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    engine: str = "spglib",
    memo_entries: int = DEFAULT_MEMO_ENTRIES,
    force: bool = False,
) -> dict[str, Any]:
    """Build (or resume, or confirm) a sharded corpus in ``out_dir``; returns the manifest.

    ``out_dir`` holding a build with other inputs or settings is refused, unless that build
    wrote no sample (then it starts afresh) or ``force`` is set: the files a build writes there
    (shards, quarantine, manifest, resume state) are then removed first; other files stay.
    With ``progress``, the end says what was quarantined and why (the first few lines of
    quarantine.jsonl).

    ``memo_entries`` bounds the ``SymmetryMemo`` that lets byte-identical cells share one
    symmetry search (0 turns it off); it changes the speed, never the output.

    ``engine="moyo"`` runs the symmetry search with moyopy, for corpora of the canonical
    variant only (the released variants need spglib's Wyckoff settings).

    ``sources`` and ``exclude`` are files or directories in any format ``cluster.readers``
    reads. ``dedup``: ``none``; ``scope`` (same canonical SCOPE and reduced formula, the first
    in input order wins); ``structure`` (those, confirmed by pymatgen's StructureMatcher).
    Structures matching an ``exclude`` structure (fine-tuning test sets) never enter the corpus.
    """
    from cluster.readers import discover
    from tokenizer.vocab import ScopeTokenizer

    variants = _check_arguments(shard_size, workers, dedup, variants, unit_size)
    _check_engine(engine, variants)
    out = Path(out_dir)
    started = time.perf_counter()
    files = discover([os.path.abspath(p) for p in sources])
    exclude_files = discover([os.path.abspath(p) for p in exclude])
    tokenizer = ScopeTokenizer()
    settings = {
        "format_version": FORMAT_VERSION,
        "tool_version": tool_version(),
        "sources": _describe_files(files),
        "exclude": _describe_files(exclude_files),
        "variants": list(variants),
        "dedup": dedup,
        "shard_size": shard_size,
        "unit_size": unit_size,
        "symprec": symprec,
        "angle_tolerance": angle_tolerance,
        "engine": engine,
        "tokenizer": {
            "vocab_hash": tokenizer.vocab_hash,
            "vocab_size": tokenizer.vocab_size,
            "max_length": tokenizer.max_length,
        },
    }
    finished = None if force else _finished_manifest(out, settings)
    if finished is not None:
        if progress:
            print(f"corpus: {out} is already complete ({_summary(finished)})", file=sys.stderr)
            _print_quarantine(out, finished)
        return finished
    # Past the check, a manifest left there is one to replace (--force, or nothing written).
    fresh = force or (out / MANIFEST_NAME).is_file()
    out.mkdir(parents=True, exist_ok=True)
    with ray_runtime(ray_address, workers) as concurrency:
        memo = _start_memo(memo_entries)
        exclusion = None
        if exclude_files:
            exclusion_options = EncodeOptions(
                (), True, dedup == "structure", False, symprec, angle_tolerance, engine
            )
            exclusion = _exclusion(exclude_files, exclusion_options, concurrency, unit_size, memo)
        units = _plan(files, unit_size)
        plan = {"units": len(units), "items": sum(u.n_items for u in units)}
        writer = _CorpusWriter(out, settings, plan, exclusion, fresh=fresh)
        options = EncodeOptions(
            variants=variants,
            dedup_key=dedup != "none" or exclusion is not None,
            keep_structure=dedup == "structure",
            payload=True,
            symprec=symprec,
            angle_tolerance=angle_tolerance,
            engine=engine,
        )
        done_items = sum(u.n_items for u in units[: writer.next_unit])
        bar = _progress_bar(progress, plan["items"], done_items)
        kill_once = os.environ.get(KILL_ONCE_ENV) or None
        try:
            for index, entries in _ordered_results(
                units, writer.next_unit, options, concurrency, kill_once, memo
            ):
                writer.consume(index, entries)
                bar.update(units[index].n_items)
        finally:
            bar.close()
        exclusion_summary = None
        if exclusion is not None:
            exclusion_summary = {
                "files": settings["exclude"],
                "structures": exclusion.encoded,
                "unreadable": exclusion.unreadable,
                "keys": len(exclusion.keys),
            }
        manifest = writer.finish(settings["sources"], exclusion_summary)
        saved = _stop_memo(memo)
    if progress:
        elapsed = time.perf_counter() - started
        rate = (plan["items"] - done_items) / elapsed if elapsed > 0 else 0.0
        print(
            f"corpus: {_summary(manifest)} in {elapsed:.1f} s ({rate:.0f} structures/s; "
            f"{saved} repeated cells took their symmetry from the memo) → {out}",
            file=sys.stderr,
        )
        _print_quarantine(out, manifest)
    return manifest


def _check_engine(engine: str, variants: Sequence[str]) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    bound = sorted(SPGLIB_ONLY_VARIANTS.intersection(variants))
    if engine != "spglib" and bound:
        raise ValueError(
            f"engine {engine!r} cannot write the {', '.join(bound)} variant(s): they reproduce "
            "the released strings, which need spglib; use --variants canonical or --engine spglib"
        )


def _check_arguments(
    shard_size: int, workers: int | None, dedup: str, variants: Sequence[str], unit_size: int
) -> tuple[str, ...]:
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if unit_size < 1:
        raise ValueError(f"unit_size must be at least 1, got {unit_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if dedup not in DEDUP_MODES:
        raise ValueError(f"dedup must be one of {', '.join(DEDUP_MODES)}, got {dedup!r}")
    variants = tuple(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if not variants or unknown:
        raise ValueError(
            f"variants must be a non-empty subset of {', '.join(VARIANTS)}, got {list(variants)}"
        )
    return variants


def _describe_files(files: list[InputFile]) -> list[dict[str, Any]]:
    described = []
    for file in files:
        try:
            size = os.path.getsize(file.path)
        except OSError:
            size = None
        described.append({"path": file.path, "size": size, "format": file.format})
    return described


def _finished_manifest(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete build with the same settings, its shards verified."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(out)
    if (out / STATE_DIR).exists() and manifest.get("settings") == settings:
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)  # killed just after the manifest
    if manifest.get("settings") != settings:
        if manifest["num_samples"] == 0:
            return None  # nothing to keep (say, its only input was missing): build afresh
        raise ValueError(
            f"{out} already holds a corpus built with other inputs or settings "
            f"({_differences(manifest.get('settings', {}), settings)}); use another --out, "
            "or --force to replace it"
        )
    for shard in manifest["shards"]:
        if sha256_file(out / shard["name"]) != shard["sha256"]:
            raise RuntimeError(f"{out / shard['name']}: sha256 differs from the manifest")
    return manifest


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit=" structures",
        unit_scale=True,
        smoothing=0.1,
        disable=not (enabled and sys.stderr.isatty()),
        desc="corpus",
    )


def _print_quarantine(out: Path, manifest: dict[str, Any], shown: int = QUARANTINE_SHOWN) -> None:
    """The first ``shown`` quarantine lines on stderr (position, id, reason) and how many
    more quarantine.jsonl holds: the reasons belong where the user is looking."""
    total = manifest["quarantine"]["lines"]
    if not total:
        return
    path = out / QUARANTINE_NAME
    print(f"corpus: quarantined ({path}):", file=sys.stderr)
    with open(path, encoding="utf-8") as handle:
        for line in itertools.islice(handle, shown):
            entry = json.loads(line)
            where = entry["position"]
            if entry["source_id"] and entry["source_id"] not in where:
                where += f" ({entry['source_id']})"
            print(f"  {where}: {entry['reason']}", file=sys.stderr)
    if total > shown:
        print(f"  … and {total - shown} more in {path}", file=sys.stderr)


def _summary(manifest: dict[str, Any]) -> str:
    t = manifest["totals"]
    return (
        f"{t['read']} read, {t['written']} written, {t['quarantined']} quarantined, "
        f"{t['duplicates']} duplicates, {t['excluded']} excluded; "
        f"{len(manifest['shards'])} shards"
    )
