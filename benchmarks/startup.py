"""Start-up of a training process: from a fresh interpreter to a DeepSpeed engine's first step.

    python benchmarks/startup.py [--rounds 5] [--stage 2]

Each round starts, in turn, two fresh processes that do what every `cloud pretrain` rank does
first: import the project, create a 1-process group, build the ``debug`` model, AdamW and the
ZeRO engine (``train.distributed.build_engine``), and take one step:

- now: as `cloud pretrain` runs (DeepSpeed's Muon kernels replaced by a stand-in);
- before: the same after importing DeepSpeed's real Muon module, as every ZeRO start did
  before the stand-in (``train.distributed._stand_in_for_deepspeed_muon`` keeps a module
  that is already imported), which pulls in ``torch._inductor``.

Reported: the median wall and CPU seconds per process of each, and their ratio (the rounds
interleave them, so a busy machine slows both alike). One thread per process.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import os, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
if sys.argv[1] == "before":
    import deepspeed.runtime.zero.muon.original_muon  # noqa: F401
import torch
from cloud import CloudForMaskedLM, family
from train.distributed import build_engine, deepspeed_config, init_distributed
from train.pretrain import OptimSection, build_optimizer

torch.set_num_threads(1)
init_distributed()
model = CloudForMaskedLM(family("debug", vocab_size=50))
optimizer = build_optimizer(model, OptimSection(lr=1e-3, warmup_steps=0), torch.device("cpu"))
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
config = deepspeed_config(micro_batch_size=4, grad_accum_steps=1, world_size=1,
                          zero_stage=int(sys.argv[2]), precision="fp32", grad_clip=1.0)
engine = build_engine(model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
ids = torch.randint(5, 50, (4, 10))
engine.backward(engine(input_ids=ids, labels=ids).loss)
engine.step()
print("inductor imported:", "torch._inductor.compile_fx" in sys.modules)
"""


def run_child(variant: str, stage: int) -> tuple[float, float, str]:
    """(wall s, CPU s, its last line) of one fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(stage)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--stage", type=int, default=2, choices=(1, 2, 3), help="ZeRO stage")
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"now": [], "before": []}
    notes: dict[str, str] = {}
    for _ in range(args.rounds):
        for variant in times:
            wall, cpu, note = run_child(variant, args.stage)
            times[variant].append((wall, cpu))
            notes[variant] = note
    print(
        f"start-up to the first step, ZeRO-{args.stage}, {date.today().isoformat()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.rounds} interleaved rounds"
    )
    medians = {}
    for variant, rows in times.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        medians[variant] = (wall, cpu)
        print(f"{variant:7s} wall {wall:6.2f} s  CPU {cpu:6.2f} s  ({notes[variant]})")
    (wall_now, cpu_now), (wall_before, cpu_before) = medians["now"], medians["before"]
    print(f"before / now: wall {wall_before / wall_now:.2f}x, CPU {cpu_before / cpu_now:.2f}x")


if __name__ == "__main__":
    main()
