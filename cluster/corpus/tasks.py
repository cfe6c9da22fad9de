"""The Ray plumbing of a build: the runtime, planning work units, and running ``encode_unit``
over them as Ray tasks whose results come back in unit order.

A task whose worker dies is retried by Ray (``MAX_RETRIES``); units are pure functions of
their input, so a retry gives the same records.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from cluster.corpus.encode import Encoded, EncodeOptions, Failed, encode_unit
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


def ordered_results(
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
) -> Exclusion:
    """The dedup keys (and cells) of every structure in ``files``, encoded as the corpus is."""
    excluded = Exclusion()
    units = plan_work(files, unit_size)
    for _, entries in ordered_results(units, 0, options, concurrency, None, memo):
        for entry in entries:
            excluded.add(entry)
    return excluded
