"""The corpus build's watchdog, on real structures and a real Ray: a structure whose symmetry
search does not end (the test hook ``STALL_ENV`` makes it sleep for an hour) is cancelled,
bisected out of its work unit and quarantined, and the build finishes."""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import time
from pathlib import Path

import pytest

from cluster.corpus import STALL_ENV, CorpusWriter, build_corpus, watchdog
from cluster.manifest import read_manifest
from tests.cluster.test_corpus import (
    SAMPLE,
    assert_balanced,
    jsonl_prefix,
    quarantine_lines,
    shard_samples,
)

STRUCTURES = 12
STALLED = 1  # in the first unit: three timeouts (4 records, then 2, then 1) find it
TIMEOUT_S = 3.0
# Small units and shards: the bisection has levels to go through, the writer shards to commit.
BUILD = {
    "shard_size": 3,
    "unit_size": 4,
    "workers": 2,
    "dedup": "none",
    "unit_timeout_s": TIMEOUT_S,
    "progress": False,
}


def _tight_deadlines(patch: pytest.MonkeyPatch) -> None:
    """Deadlines of max(3 s, 1 x the expected time) rather than 10 x, so that each level of
    the bisection waits about 3 s whatever the load of the machine (the driver reads the
    factor: monkeypatching reaches it, unlike the Ray workers)."""
    patch.setattr(watchdog, "TIMEOUT_FACTOR", 1.0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jsonl_prefix(SAMPLE, tmp_path_factory.mktemp("watchdog") / "twelve.jsonl.gz", STRUCTURES)


@pytest.fixture(scope="module")
def stalled_id(inputs: Path) -> str:
    with gzip.open(inputs, "rt") as handle:
        return json.loads(handle.readlines()[STALLED])["id"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, ray_session, inputs: Path) -> Path:
    """The same build with no search hanging."""
    out = tmp_path_factory.mktemp("reference")
    build_corpus([inputs], out, **BUILD)
    return out


@pytest.fixture(scope="module")
def stalled(
    tmp_path_factory: pytest.TempPathFactory, ray_session, inputs: Path, stalled_id: str
) -> tuple[Path, float]:
    """The build in which ``stalled_id``'s search hangs, and how long it took."""
    out = tmp_path_factory.mktemp("stalled")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STALL_ENV, stalled_id)
        _tight_deadlines(patch)
        began = time.perf_counter()
        build_corpus([inputs], out, **BUILD)
        return out, time.perf_counter() - began


def test_a_hanging_search_is_cancelled_bisected_and_quarantined(
    stalled: tuple[Path, float], reference: Path, inputs: Path, stalled_id: str
) -> None:
    out, seconds = stalled
    # Three timeouts of 3 s, worker restarts after each forced cancel, and the rest.
    assert seconds < 45, f"the build took {seconds:.0f} s"
    assert quarantine_lines(out) == [
        {
            "source": "matbench_dielectric",
            "position": f"{inputs}:{STALLED}",
            "source_id": stalled_id,
            "reason": f"symmetry search timed out after {TIMEOUT_S:.0f} s",
        }
    ]
    manifest = read_manifest(out)
    assert_balanced(manifest)
    assert manifest["totals"] == {
        "read": STRUCTURES,
        "written": STRUCTURES - 1,
        "quarantined": 1,
        "duplicates": 0,
        "excluded": 0,
    }
    # Every other structure is written, in input order, exactly as without the hang.
    expected = [s for s in shard_samples(reference) if s["source_id"] != stalled_id]
    assert len(expected) == STRUCTURES - 1
    assert shard_samples(out) == expected
    assert not (out / ".build").exists()


class _Interrupted(Exception):
    """Raised by the driver in place of a kill, once it is past the stalled unit."""


def test_a_build_interrupted_after_a_timeout_resumes_to_the_same_corpus(
    ray_session,
    tmp_path: Path,
    inputs: Path,
    stalled_id: str,
    stalled: tuple[Path, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consume = CorpusWriter.consume

    def interrupted(self: CorpusWriter, unit_index: int, entries: list) -> None:
        if unit_index == 2:  # units 0 (with the timeout) and 1 are taken; shards committed
            raise _Interrupted
        consume(self, unit_index, entries)

    monkeypatch.setenv(STALL_ENV, stalled_id)
    _tight_deadlines(monkeypatch)
    monkeypatch.setattr(CorpusWriter, "consume", interrupted)
    out = tmp_path / "corpus"
    with contextlib.suppress(_Interrupted):
        build_corpus([inputs], out, **BUILD)
    gc.collect()  # the interrupted writer's frames go, and with them its directory lock
    assert (out / ".build" / "state.json").is_file() and not (out / "manifest.json").exists()
    state = json.loads((out / ".build" / "state.json").read_text())
    assert state["next_unit"] >= 1 and state["quarantine_lines"] == 1

    monkeypatch.setattr(CorpusWriter, "consume", consume)
    resumed = build_corpus([inputs], out, **BUILD)
    assert resumed == read_manifest(stalled[0])
    assert quarantine_lines(out) == quarantine_lines(stalled[0])


def test_a_forced_cancel_stops_a_task_stuck_in_c_code(ray_session, tmp_path: Path) -> None:
    """What the watchdog relies on: ``ray.cancel(force=True)`` ends a task that never returns to
    the interpreter (a regular expression backtracking for ever holds the GIL, as a stuck
    spglib search does), where a signal handler or a thread could not: it kills the worker."""
    import psutil
    import ray

    @ray.remote(num_cpus=1, max_retries=3)
    def backtrack(started: str) -> bool:
        import os
        import re

        Path(started).write_text(str(os.getpid()))
        return re.match(r"(a+)+$", "a" * 64 + "b") is not None

    started = tmp_path / "started"
    ref = backtrack.remote(str(started))
    deadline = time.monotonic() + 60
    while not started.is_file() or not started.read_text():
        assert time.monotonic() < deadline, "the task did not start within 60 s"
        time.sleep(0.05)
    worker = psutil.Process(int(started.read_text()))
    time.sleep(0.5)  # well inside the regular expression now
    ray.cancel(ref, force=True)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=30)
    worker.wait(timeout=30)  # the worker process is gone (raises if it is still there)
    assert not worker.is_running()


def test_pieces_halve_and_options_check_the_timeout(tmp_path: Path) -> None:
    from cluster.corpus import CorpusOptions
    from cluster.corpus.watchdog import Piece

    assert Piece(7).halves(5) == (Piece(7, 0, 2), Piece(7, 2, 5))
    assert Piece(7, 2, 5).halves(3) == (Piece(7, 2, 3), Piece(7, 3, 5))
    assert CorpusOptions().unit_timeout_s == watchdog.DEFAULT_UNIT_TIMEOUT_S
    assert CorpusOptions(unit_timeout_s=None).unit_timeout_s is None
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="unit_timeout_s must be positive"):
            CorpusOptions(unit_timeout_s=bad)
