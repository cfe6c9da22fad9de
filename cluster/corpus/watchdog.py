"""The watchdog of a build: a deadline for every running piece of a work unit, and the bisection
of a piece past its deadline down to the structure that hangs.

A symmetry search that does not end (spglib or moyopy lost in C code on one cell) would stall
its task, and with it the whole build: the writer takes units in order. So each task tells a
``UnitClock`` actor when it starts encoding (after its imports and its reading, which take a
cold worker seconds), with how many records it holds, and the driver cancels a piece that has
been encoding for longer than

    max(unit_timeout_s, TIMEOUT_FACTOR × its records × the seconds per record measured so far)

with ``ray.cancel(force=True)``, which kills the worker process: the one thing that stops a
search stuck in C code or asleep. The piece's two halves run instead, and so on down to single
structures; one that still runs past its deadline becomes the quarantine record "symmetry
search timed out after N s", naming its file, position and id. The rest of the unit is encoded
as it would have been, so the unit's results hold the same records in the same order: the
writer, the accounting and resuming do not know about pieces. Only encoding is watched: a
piece that has not yet said it started (queued, importing, reading) has no deadline.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NamedTuple

from cluster.corpus.encode import Failed

DEFAULT_UNIT_TIMEOUT_S = 60.0
# How many times its expected time a piece may take: generous, since a unit of large cells
# legitimately takes several times the corpus's average.
TIMEOUT_FACTOR = 10.0
POLL_S = 1.0
"""How often (at most) the driver looks for pieces past their deadline."""

Identity = tuple[str, str, str]
"""(source, source_id, position) of a record: what a quarantine line names."""


class Piece(NamedTuple):
    """Records ``start`` to ``stop`` (None: the end) of work unit number ``unit``, in the order
    ``read_unit`` gives them: the whole unit, or a part of one that timed out."""

    unit: int
    start: int = 0
    stop: int | None = None

    def halves(self, records: int) -> tuple[Piece, Piece]:
        """The piece's two halves, given that it holds ``records`` (at least 2) records."""
        middle = self.start + records // 2
        return Piece(self.unit, self.start, middle), Piece(self.unit, middle, self.start + records)


class UnitClock:
    """When each running piece started encoding, on this actor's clock (a Ray actor): the
    driver's and the workers' clocks are never compared, so nodes' clocks need not agree."""

    def __init__(self) -> None:
        self.started: dict[int, tuple[float, int, Identity | None]] = {}

    def start(self, token: int, records: int, first: Identity | None) -> None:
        """Piece ``token`` starts encoding ``records`` records, the first being ``first``; a
        retried task starts its clock again."""
        self.started[token] = (time.monotonic(), records, first)

    def running(self, tokens: list[int]) -> dict[int, tuple[float, int, Identity | None]]:
        """Seconds encoding, records and first record of each started piece of ``tokens``,
        the pieces still running; the others (finished, cancelled) are forgotten."""
        now = time.monotonic()
        self.started = {t: self.started[t] for t in tokens if t in self.started}
        return {t: (now - began, n, first) for t, (began, n, first) in self.started.items()}


def announce(clock: Any, token: int, records: int, first: Identity | None) -> None:
    """From the worker: piece ``token`` starts encoding now (nothing without a clock)."""
    if clock is None:
        return
    import ray

    with contextlib.suppress(ray.exceptions.RayError):  # a lost clock costs the deadline only
        clock.start.remote(token, records, first)


class Watchdog:
    """The driver's side: the clock actor, the measured rate and the deadlines."""

    def __init__(self, unit_timeout_s: float, factor: float | None = None) -> None:
        import ray

        self.unit_timeout_s = unit_timeout_s
        self.factor = TIMEOUT_FACTOR if factor is None else factor
        self.poll_s = min(POLL_S, unit_timeout_s / 4)
        self.seconds = 0.0
        self.records = 0
        # No CPU: it answers one call per piece and one per poll; restarted empty if lost.
        self.clock = ray.remote(num_cpus=0, max_restarts=-1)(UnitClock).remote()

    def finished(self, seconds: float, records: int) -> None:
        """A piece encoded ``records`` records in ``seconds``: the rate the deadlines use."""
        self.seconds += seconds
        self.records += records

    def deadline(self, records: int) -> float:
        """Seconds a piece of ``records`` records may take."""
        expected = records * self.seconds / self.records if self.records else 0.0
        return max(self.unit_timeout_s, self.factor * expected)

    def overdue(self, tokens: list[int]) -> dict[int, tuple[float, int, Identity | None]]:
        """Of the pieces ``tokens``, those past their deadline: token → (deadline, records,
        first record)."""
        import ray

        try:
            started = ray.get(self.clock.running.remote(tokens))
        except ray.exceptions.RayError:
            return {}
        return {
            token: (self.deadline(records), records, first)
            for token, (elapsed, records, first) in started.items()
            if elapsed > self.deadline(records)
        }

    def close(self) -> None:
        import ray

        ray.kill(self.clock)


def timed_out(first: Identity, deadline: float) -> Failed:
    """The quarantine entry of a structure whose encoding ran past ``deadline`` seconds."""
    source, source_id, position = first
    return Failed(source, source_id, position, f"symmetry search timed out after {deadline:.0f} s")
