"""Training metrics: peak FLOPs per device, MFU, memory, and the TensorBoard + JSONL writer.

MFU (model FLOPs utilisation, PaLM appendix B) = achieved model FLOPs / peak FLOPs, with the
model FLOPs of ``cloud.flops_per_token`` (6 N + 12 L T d per token) counted on real tokens
only: padding is work the hardware does but not work the model needs, so it lowers MFU.

Peak FLOPs are dense (no 2:4 sparsity) tensor-core figures from the vendors' data sheets for
the training precision: bf16 on GPUs, fp32 on CPU. A CPU has no data sheet figure, so it is
estimated as ``threads x clock x FLOPs per cycle per core`` (see :func:`cpu_peak_flops`).
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from train.common.files import atomic_write_text

# Dense bf16 tensor-core peak, FLOP/s, matched by substring of torch.cuda.get_device_name()
# (longest match wins, so "H100 PCIe" beats "H100"). Sources: NVIDIA data sheets.
GPU_PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,  # same SXM compute as H100 SXM, more and faster memory
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM5
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A6000": 155e12,
    "V100": 125e12,  # fp16: V100 has no bf16 tensor cores
    "T4": 65e12,  # fp16
}

# Fallback clock when neither sysfs nor /proc/cpuinfo reports one.
DEFAULT_CPU_HZ = 2.5e9


def gpu_peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU named ``device_name``, or None if the table does not know it."""
    matches = [key for key in GPU_PEAK_BF16_FLOPS if key.lower() in device_name.lower()]
    if not matches:
        return None
    return GPU_PEAK_BF16_FLOPS[max(matches, key=len)]


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_hz() -> float:
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return float(khz) * 1e3
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) * 1e6
    except (OSError, ValueError):
        pass
    return DEFAULT_CPU_HZ


def cpu_fp32_flops_per_cycle(flags: set[str] | None = None) -> int:
    """fp32 FLOPs per cycle per core: 2 FMA pipes x SIMD lanes x 2 (multiply + add).

    AVX-512: 2 x 16 x 2 = 64; AVX2 + FMA: 2 x 8 x 2 = 32; NEON/SVE-128 (arm64): 4 pipes x 4
    lanes x 2 = 32 on recent cores; plain SSE: 2 x 4 x 2 = 16. An upper bound: some parts run
    one 512-bit pipe or down-clock under AVX-512.
    """
    flags = _cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    if platform.machine() in ("aarch64", "arm64") or "asimd" in flags:
        return 32
    return 16


def cpu_peak_flops(threads: int | None = None) -> float:
    """Estimated fp32 peak of the CPU cores this process computes on.

    ``threads`` (default ``torch.get_num_threads()``, i.e. the intra-op cores) x the clock
    (cpufreq maximum, else the current /proc/cpuinfo clock, else 2.5 GHz) x
    :func:`cpu_fp32_flops_per_cycle`. Example: 2 AVX2 cores at 2.45 GHz → 157 GFLOP/s.
    """
    threads = threads or torch.get_num_threads()
    return threads * _cpu_hz() * cpu_fp32_flops_per_cycle()


def device_peak_flops(device: torch.device) -> tuple[float, str]:
    """(peak FLOP/s of one device, how it was obtained) for MFU.

    Unknown GPUs fall back to the A100 figure, and the description says so.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        if peak is None:
            return GPU_PEAK_BF16_FLOPS["A100"], f"{name}: unknown, assumed A100 bf16 312 TFLOP/s"
        return peak, f"{name}: data-sheet dense bf16 {peak / 1e12:.0f} TFLOP/s"
    peak = cpu_peak_flops()
    return peak, (
        f"CPU estimate: {torch.get_num_threads()} threads x {_cpu_hz() / 1e9:.2f} GHz x "
        f"{cpu_fp32_flops_per_cycle()} fp32 FLOP/cycle = {peak / 1e9:.0f} GFLOP/s"
    )


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (all devices together)."""
    if peak_flops <= 0:
        return float("nan")
    return tokens_per_second * flops_per_token / peak_flops


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA max_memory_allocated, or the CPU peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is kilobytes on Linux but bytes on macOS.
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _after_existing_event_files(directory: Path) -> None:
    """Wait (at most a second) until a new event file's name sorts after every existing one.

    TensorBoard reads a directory's event files in name order and applies a purge where it
    meets it. The name is ``events.out.tfevents.<10-digit second>.<host>.<pid>.<counter>``
    with the counter unpadded, so two files of one process in one second can sort the wrong
    way round (``...9`` after ``...10``); then the purge is read first and the events it
    should hide come after it.
    """
    prefix = "events.out.tfevents."
    seconds = [
        int(name.name[len(prefix) :].split(".", 1)[0])
        for name in directory.glob(prefix + "*")
        if name.name[len(prefix) :].split(".", 1)[0].isdigit()
    ]
    if seconds:
        while int(time.time()) <= max(seconds):
            time.sleep(0.05)


class MetricsWriter:
    """TensorBoard scalars plus one JSON line per logged step (rank 0 writes, others no-op).

    ``purge_step`` (the step a resumed run restarts after, plus one) makes TensorBoard hide the
    events a killed run wrote past its last checkpoint, and the JSONL file is truncated to the
    same point so that both record one consistent history.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        purge_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.jsonl_path = Path(run_dir) / "metrics.jsonl"
        self.tensorboard_dir = Path(run_dir) / "tensorboard"
        self._writer = None
        if not enabled:
            return
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if purge_step is not None:
            truncate_jsonl(self.jsonl_path, last_step=purge_step - 1)
        elif self.jsonl_path.exists():
            self.jsonl_path.unlink()  # a fresh run starts a fresh history
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            if purge_step is not None:
                _after_existing_event_files(self.tensorboard_dir)
            self._writer = SummaryWriter(str(self.tensorboard_dir), purge_step=purge_step)
        self._jsonl = self.jsonl_path.open("a")

    def log(self, step: int, scalars: Mapping[str, float | int | None]) -> None:
        """Write every non-None scalar under its tag (e.g. ``train/loss``) at ``step``."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items() if v is not None}
        if self._writer is not None:
            for tag, value in values.items():
                if math.isfinite(value):
                    self._writer.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def log_text(self, tag: str, text: str) -> None:
        """A text summary (the resolved config, the peak-FLOPs assumption) in TensorBoard."""
        if self.enabled and self._writer is not None:
            self._writer.add_text(tag, f"```\n{text}\n```", 0)

    def flush(self) -> None:
        if self.enabled and self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._writer is not None:
            self._writer.close()
        self._jsonl.close()
        self.enabled = False


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the lines of ``path`` whose ``step`` is beyond ``last_step`` (atomically)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill that interrupted the run
        if record.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
