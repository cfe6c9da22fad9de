"""The symmetry memo: one search per distinct cell, whichever worker meets it (a Ray actor)."""

from __future__ import annotations

import contextlib
from typing import Any

# About 200 bytes each for a 10-site cell: a few hundred MB at most, in one actor.
DEFAULT_MEMO_ENTRIES = 1_000_000


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


def memo_lookup(memo: Any, keys: list[bytes]) -> dict[bytes, bytes]:
    """The packed analyses ``memo`` holds for ``keys`` (none without a memo, or a dead one)."""
    if memo is None or not keys:
        return {}
    import ray

    try:
        return ray.get(memo.lookup.remote(keys))
    except ray.exceptions.RayError:  # a dead memo costs speed only
        return {}


def memo_store(memo: Any, items: dict[bytes, bytes]) -> None:
    """Hand new analyses to ``memo`` without waiting (nothing without a memo)."""
    if memo is None or not items:
        return
    import ray

    with contextlib.suppress(ray.exceptions.RayError):
        memo.store.remote(items)


def start_memo(max_entries: int) -> Any:
    """A ``SymmetryMemo`` actor of ``max_entries`` (None when that is 0 or less)."""
    if max_entries <= 0:
        return None
    import ray

    # No CPU reserved: it answers one batched lookup per unit.
    return ray.remote(num_cpus=0, max_restarts=-1)(SymmetryMemo).remote(max_entries)


def stop_memo(memo: Any) -> int:
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
