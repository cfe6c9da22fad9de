"""train/distributed.py: the DeepSpeed engine every pretraining run is built on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Three steps of the debug model through ZeRO 0-3 and through plain torch AdamW, in a fresh
# process (a 1-process group), with what the process had imported afterwards.
STEPS = """
import json, os, sys, torch
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from cloud import CloudForMaskedLM, family
from train.distributed import build_engine, deepspeed_config, init_distributed
from train.pretrain import OptimSection, build_optimizer

init_distributed()
ids = torch.randint(5, 50, (4, 10), generator=torch.Generator().manual_seed(0))

def parts():
    torch.manual_seed(0)
    model = CloudForMaskedLM(family("debug", vocab_size=50, hidden_dropout=0.0))
    optimizer = build_optimizer(model, OptimSection(lr=1e-2, warmup_steps=0), torch.device("cpu"))
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

model, optimizer, _ = parts()
plain = []
for _ in range(3):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
    plain.append(loss.item())
results = {"plain": plain}
for stage in (0, 1, 2, 3):
    model, optimizer, scheduler = parts()
    config = deepspeed_config(micro_batch_size=4, grad_accum_steps=1, world_size=1,
                              zero_stage=stage, precision="fp32", grad_clip=1.0)
    engine = build_engine(model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    losses = []
    for _ in range(3):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    results[str(stage)] = losses
results["inductor_imported"] = "torch._inductor.compile_fx" in sys.modules
print("RESULTS", json.dumps(results))
"""


def results_of_fresh_process(script: str) -> dict:
    """Run ``script`` in a fresh interpreter (one thread, CPU DeepSpeed, none of this
    process's environment) and return the JSON it printed after ``RESULTS``."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULTS"))
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.slow
def test_every_zero_stage_steps_as_plain_adamw_and_starts_without_inductor() -> None:
    """The engine of ZeRO 0-3 takes plain AdamW's steps (clipped at 1.0), and building it
    does not import torch._inductor (DeepSpeed's Muon kernels would: ~2 s a process)."""
    results = results_of_fresh_process(STEPS)
    assert results["plain"][-1] < results["plain"][0]  # it learns
    for stage in ("0", "1", "2", "3"):
        assert results[stage] == pytest.approx(results["plain"], rel=1e-5), stage
    assert results["inductor_imported"] is False


def test_a_process_that_imported_deepspeeds_muon_keeps_it(monkeypatch) -> None:
    import types

    from train import distributed

    real = types.ModuleType(distributed.DEEPSPEED_MUON)
    monkeypatch.setitem(sys.modules, distributed.DEEPSPEED_MUON, real)
    distributed._stand_in_for_deepspeed_muon()
    assert sys.modules[distributed.DEEPSPEED_MUON] is real
