"""How many torch threads a job uses: what the user asked for, or the cores actually free.

torch's default is one thread per core of the machine whatever else runs on it; on two cores
shared with one other busy process that made ``tiny`` pre-training 8× slower than one thread
(issue 13). ``choose_threads(0)`` counts the cores this process may run on
(``os.sched_getaffinity``), takes away the load other processes put on them (the 1-minute
load average, measured before this job starts working) and shares what is left among the
processes of a ``torchrun`` launch on this node (``LOCAL_WORLD_SIZE``), never fewer than one.
Every job prints the choice in its first lines (``describe``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a job runs with and why."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"torch threads: {self.threads} ({self.reason})"


def usable_cores() -> int:
    """Cores this process may be scheduled on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(requested: int = 0) -> ThreadChoice:
    """``requested`` threads when positive, else the free cores per local process."""
    if requested < 0:
        raise ValueError(f"thread count must be >= 0 (0: choose), got {requested}")
    if requested:
        return ThreadChoice(requested, "as configured")
    cores = usable_cores()
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    free = max(cores - math.floor(busy + 0.5), 1)
    threads = max(free // local, 1)
    return ThreadChoice(
        threads,
        f"chosen: {cores} usable cores, load {busy:.1f} from other work, "
        f"{local} process{'es' if local > 1 else ''} on this node; set the thread option "
        "to override",
    )


def apply_threads(requested: int = 0) -> ThreadChoice:
    """Choose (``choose_threads``) and set torch's intra-op thread count."""
    import torch

    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
