"""Thread choice: what was asked, or the free cores shared among the local processes."""

from __future__ import annotations

import pytest

from train import threads


def test_a_configured_count_is_kept() -> None:
    choice = threads.choose_threads(3)
    assert choice.threads == 3 and "as configured" in choice.describe()


def test_busy_cores_are_not_oversubscribed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.1, 1.0, 1.0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    choice = threads.choose_threads(0)
    assert choice.threads == 1  # one core is busy with another process
    assert "2 usable cores" in choice.describe() and "load 1.1" in choice.describe()


def test_free_cores_are_shared_among_torchrun_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 16)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.choose_threads(0).threads == 4
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (30.0, 30.0, 30.0))
    assert threads.choose_threads(0).threads == 1  # never fewer than one


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="thread count must be >= 0"):
        threads.choose_threads(-1)
