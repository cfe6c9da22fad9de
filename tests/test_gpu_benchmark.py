"""benchmarks/gpu.py runs its CPU self-check where no GPU is at hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device runs the real benchmark")
def test_gpu_benchmark_self_check_passes_on_cpu() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu.py"), "--limit", "400", "--steps", "6"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "CPU self-check" in result.stdout
    assert "self-check passed" in result.stdout
    assert result.stdout.count("debug ") >= 2
