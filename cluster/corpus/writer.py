"""The driver's side of a build: deduplication, exclusion, shards, quarantine, counts and the
resume state, fed one work unit's results at a time in unit order.

Resuming: the writer commits its position (unit and record within it) together with the byte
lengths of the open shard, the quarantine file and the dedup index to ``DIR/.build/state.json``
(atomically, after fsyncing those files) whenever a shard is completed and every few seconds.
A re-run with the same arguments truncates the appended files to the committed lengths,
replays the dedup index, verifies finished shards by sha256 and carries on from the committed
record; the end result is byte-identical to an uninterrupted build.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.corpus.encode import (
    Encoded,
    Failed,
    member_payload,
    sample_json,
    sample_key,
    tar_member,
)
from cluster.corpus.files import (
    INDEX_NAME,
    PARTIAL_SUFFIX,
    STATE_DIR,
    STATE_NAME,
    TarAppender,
    appendable,
    clear_build,
    lock_directory,
    refuse_foreign_files,
)
from cluster.manifest import (
    COUNT_FIELDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    check_balance,
    fsync_directory,
    sha256_file,
    shard_name,
    write_json_atomic,
)

CHECKPOINT_SECONDS = 5.0
"""How often (at most) the writer commits its state between shard completions."""


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


class Exclusion:
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


class CorpusWriter:
    """The driver's side of one build: dedup, shards, quarantine, counts and resume state."""

    def __init__(
        self,
        out: Path,
        settings: dict[str, Any],
        plan: dict[str, int],
        exclusion: Exclusion | None,
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
        self._lock = lock_directory(self.state_dir)
        if fresh:  # under the lock: never pull files from under a build still running
            clear_build(out)
        state = self._load_state()
        self._open(state)
        if state is None:
            self.commit()

    # ------------------------------------------------------------------ state

    def _load_state(self) -> dict[str, Any] | None:
        state_path = self.state_dir / STATE_NAME
        if not state_path.is_file():
            refuse_foreign_files(self.out)
            # Only this builder writes *.partial: a build killed before its first commit.
            for partial in self.out.glob(f"corpus-*.tar{PARTIAL_SUFFIX}"):
                partial.unlink()
            return None
        state = json.loads(state_path.read_text())
        if state.get("settings") != self.settings or state.get("plan") != self.plan:
            if not any(c.get("written") for c in state.get("counts", {}).values()):
                # Nothing of it would be kept: a retry with the right inputs just starts over.
                clear_build(self.out)
                return self._load_state()
            raise ValueError(
                f"{self.out} holds an unfinished build with other inputs or settings "
                f"({differences(state.get('settings', {}), self.settings) or 'the work plan'}); "
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
        self.shard = TarAppender(
            self._partial_path(open_shard["index"]), open_shard["bytes"], open_shard["samples"]
        )
        self.quarantine = appendable(self.out / QUARANTINE_NAME, state.get("quarantine_bytes", 0))
        self.index = appendable(self.state_dir / INDEX_NAME, state.get("index_bytes", 0))
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
        return key, tar_member(key, sample_json(sample))

    def _complete_shard(self) -> None:
        """Close the open shard, commit it as finished, then give it its final name."""
        self.shard.finish()
        index = len(self.shards)
        partial = self._partial_path(index)
        name = shard_name(index)
        self.shards.append(
            {"name": name, "sha256": sha256_file(partial), "num_samples": self.shard.samples}
        )
        self.shard = TarAppender(self._partial_path(index + 1), 0, 0)
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


def _hist_json(counter: Counter[int]) -> dict[str, int]:
    return {str(k): counter[k] for k in sorted(counter)}


def differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
