"""The Ray plumbing of a build: the runtime, planning work units, and encoding them in Ray
tasks whose results come back in unit order, under the watchdog (``cluster.corpus.watchdog``).

A task whose worker dies is retried by Ray (``MAX_RETRIES``); units are pure functions of
their input, so a retry gives the same records. A task the watchdog cancels is not retried:
its halves run instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from cluster.corpus.encode import Encoded, EncodeOptions, Failed, Faults, encode_records
from cluster.corpus.watchdog import Piece, Watchdog, announce, timed_out
from cluster.corpus.writer import Exclusion
from cluster.ray_env import setdefault_loopback

if TYPE_CHECKING:
    from cluster.readers import InputFile, WorkUnit

MAX_RETRIES = 3


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


def encode_piece(
    unit: WorkUnit,
    piece: Piece,
    options: EncodeOptions,
    faults: Faults | None,
    memo: Any,
    clock: Any,
    token: int,
) -> tuple[tuple[float, int], list[Encoded | Failed]]:
    """The records of ``piece`` (of ``unit``) encoded, as a Ray task of two returns: the
    seconds and records of the encoding (the watchdog's rate), then the results. Tells
    ``clock`` (if any) when the encoding starts, under ``token``."""
    from cluster.readers import read_unit

    with contextlib.closing(read_unit(unit)) as reading:
        records = list(itertools.islice(reading, piece.start, piece.stop))
    first = (records[0].source, records[0].source_id, records[0].position) if records else None
    announce(clock, token, len(records), first)
    began = time.perf_counter()
    results = encode_records(records, options, faults, memo)
    return (time.perf_counter() - began, len(records)), results


class _Job(NamedTuple):
    """A submitted piece: ``timing`` and the results' ref (the key of ``running``) are its
    task's two returns."""

    piece: Piece
    token: int
    timing: Any


def ordered_results(
    units: Sequence[WorkUnit],
    start: int,
    options: EncodeOptions,
    concurrency: int,
    faults: Faults | None = None,
    memo: Any = None,
    watchdog: Watchdog | None = None,
) -> Iterator[tuple[int, list[Encoded | Failed]]]:
    """Results of ``units[start:]`` in unit order, with ``concurrency`` tasks kept running.

    With a ``watchdog``, a piece running past its deadline is cancelled and its halves run
    instead (``cluster.corpus.watchdog``); a unit's results are those of its pieces in record
    order: what one task would have returned, but for the structures that timed out.
    """
    return _Schedule(units, options, concurrency, faults, memo, watchdog).results(start)


class _Schedule:
    """The state of ``ordered_results``: tasks running, pieces finished, halves to run."""

    def __init__(
        self,
        units: Sequence[WorkUnit],
        options: EncodeOptions,
        concurrency: int,
        faults: Faults | None,
        memo: Any,
        watchdog: Watchdog | None,
    ) -> None:
        import ray

        self.task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, num_returns=2)(encode_piece)
        self.units = units
        self.arguments = (options, faults, memo, watchdog.clock if watchdog else None)
        self.concurrency = concurrency
        self.watchdog = watchdog
        self.running: dict[Any, _Job] = {}
        self.parts: dict[int, dict[int, Any]] = {}  # unit → piece start → results (ref or list)
        self.pending: Counter[int] = Counter()  # unit → its pieces not finished yet
        self.halves: deque[Piece] = deque()
        self.tokens = itertools.count()

    def results(self, start: int) -> Iterator[tuple[int, list[Encoded | Failed]]]:
        import ray

        # Finished results wait in the object store until their turn; bound how far ahead we run.
        max_ahead = 4 * self.concurrency + 4
        poll = self.watchdog.poll_s if self.watchdog else None
        last_check = time.monotonic()
        next_submit = next_yield = start
        while next_yield < len(self.units):
            while len(self.running) < self.concurrency:
                if self.halves:  # first: the writer may be waiting for their unit
                    self._submit(self.halves.popleft())
                elif next_submit < len(self.units) and next_submit - next_yield < max_ahead:
                    self.parts[next_submit] = {}
                    self.pending[next_submit] = 1
                    self._submit(Piece(next_submit))
                    next_submit += 1
                else:
                    break
            if next_yield in self.parts and not self.pending[next_yield]:
                yield next_yield, self._assemble(next_yield)
                next_yield += 1
                continue
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=poll)
            for ref in ready:
                self._finished(ref)
            if poll is not None and time.monotonic() - last_check >= poll:
                self._cancel_overdue()
                last_check = time.monotonic()

    def _submit(self, piece: Piece) -> None:
        token = next(self.tokens)
        unit = self.units[piece.unit]
        timing, results = self.task.remote(unit, piece, *self.arguments, token)
        self.running[results] = _Job(piece, token, timing)

    def _finished(self, ref: Any) -> None:
        import ray

        job = self.running.pop(ref)
        if self.watchdog is not None:
            # A failed task raises when its unit's turn comes, in _assemble, as before.
            with contextlib.suppress(ray.exceptions.RayError):
                self.watchdog.finished(*ray.get(job.timing))
        self._done(job.piece, ref)

    def _done(self, piece: Piece, results: Any) -> None:
        self.parts[piece.unit][piece.start] = results
        self.pending[piece.unit] -= 1

    def _assemble(self, unit: int) -> list[Encoded | Failed]:
        import ray

        parts = self.parts.pop(unit)
        del self.pending[unit]
        if len(parts) == 1:  # the usual case: the unit's one task
            (only,) = parts.values()
            return only if isinstance(only, list) else ray.get(only)
        results: list[Encoded | Failed] = []
        for start in sorted(parts):
            part = parts[start]
            results.extend(part if isinstance(part, list) else ray.get(part))
        return results

    def _cancel_overdue(self) -> None:
        """Cancel the pieces past their deadline; queue their halves, or quarantine a single
        structure (a piece that finished meanwhile keeps its results)."""
        import ray

        assert self.watchdog is not None
        refs = {job.token: ref for ref, job in self.running.items()}
        overdue = self.watchdog.overdue(list(refs))
        if not overdue:
            return
        finished, _ = ray.wait([refs[t] for t in overdue], num_returns=len(overdue), timeout=0)
        for token, (deadline, records, first) in overdue.items():
            ref = refs[token]
            if ref in finished:
                continue
            job = self.running.pop(ref)
            ray.cancel(ref, force=True)  # kills the worker: nothing else stops C code
            if records > 1:
                self.halves.extendleft(reversed(job.piece.halves(records)))
                self.pending[job.piece.unit] += 1
            else:
                self._done(job.piece, [timed_out(first, deadline)] if first else [])


def plan_work(files: list[InputFile], unit_size: int) -> list[WorkUnit]:
    """Work units; item counts come from Ray tasks, one per file, in parallel."""
    import ray

    from cluster.readers import count_items, plan_units

    if not files:
        return []
    counter = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(count_items)
    counts = ray.get([counter.remote(f) for f in files])
    return plan_units(files, unit_size, counts=counts)


def encode_exclusion(
    files: list[InputFile],
    options: EncodeOptions,
    concurrency: int,
    unit_size: int,
    memo: Any,
    watchdog: Watchdog | None = None,
) -> Exclusion:
    """The dedup keys (and cells) of every structure in ``files``, encoded as the corpus is."""
    excluded = Exclusion()
    units = plan_work(files, unit_size)
    for _, entries in ordered_results(units, 0, options, concurrency, None, memo, watchdog):
        for entry in entries:
            excluded.add(entry)
    return excluded
