"""Elastic resume (train/elastic.py): a run saved on N processes resumes on M."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.train.pretrain.test_pretrain import DEBUG, common_overrides, losses
from tests.train.test_distributed import results_of_fresh_process
from train.common.schedule import lr_factor
from train.elastic import ELASTIC_FILE
from train.pretrain import launch, load_config

pytestmark = pytest.mark.slow

SCENARIO = [
    "train.max_steps=8",
    "train.eval_interval=4",
    "checkpoint.interval=4",
    "optim.warmup_steps=2",
    "model.overrides.hidden_dropout=0.0",
    "model.overrides.attention_dropout=0.0",
]


def run(corpus: Path, run_dir: Path, nproc: int, *extra: str, resume: bool = False) -> dict:
    overrides = [*common_overrides(corpus, run_dir), *SCENARIO, *extra]
    return launch(DEBUG, overrides, nproc=nproc, resume=resume)


@pytest.mark.parametrize(("stage", "before", "after"), [(1, 2, 1), (3, 1, 2)])
def test_a_run_resumes_on_another_number_of_processes_with_its_exact_model(
    sample_corpus: Path, tmp_path: Path, stage: int, before: int, after: int
) -> None:
    run_dir = tmp_path / "run"
    zero = f"system.zero_stage={stage}"
    halted = run(sample_corpus, run_dir, before, zero, "train.stop_at_step=4")
    assert (run_dir / "checkpoints" / "step_00000004" / ELASTIC_FILE).is_file()
    # Resumed on the other width with nothing left to train: the restored model is
    # evaluated on the same validation batches and must score what it scored when saved.
    again = run(sample_corpus, run_dir, after, zero, "train.stop_at_step=4", resume=True)
    assert again["world_size"] == after and again["steps"] == 4
    assert again["val_loss"] == pytest.approx(halted["val_loss"], rel=1e-9, abs=1e-12)
    assert again["tokens"] == halted["tokens"]
    finished = run(sample_corpus, run_dir, after, zero, resume=True)
    assert finished["steps"] == 8 and finished["world_size"] == after
    history = losses(run_dir)
    assert all(math.isfinite(history[step]["train/loss"]) for step in range(5, 9))
    # The learning-rate schedule carried on from step 4, not from the start.
    config = load_config(DEBUG, SCENARIO)
    expected = config.optim.lr * lr_factor(
        4, warmup_steps=2, max_steps=8, min_ratio=config.optim.min_lr_ratio
    )
    assert history[5]["train/lr"] == pytest.approx(expected, rel=1e-6)
    assert finished["tokens"] > halted["tokens"]


ROUND_TRIP = """
import json, os, sys, torch
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from cloud import CloudForMaskedLM, family
from train.distributed import build_engine, deepspeed_config, init_distributed
from train.elastic import gather_elastic_state, restore_elastic_state
from train.pretrain import OptimSection, build_optimizer
from train.common.schedule import lr_factor

init_distributed()
ids = torch.randint(5, 50, (4, 10), generator=torch.Generator().manual_seed(0))

def engine(stage):
    torch.manual_seed(0)
    config = family("debug", vocab_size=50, hidden_dropout=0.0, attention_dropout=0.0)
    model = CloudForMaskedLM(config)
    optimizer = build_optimizer(model, OptimSection(lr=1e-2, warmup_steps=2), torch.device("cpu"))
    schedule = lambda s: lr_factor(s, warmup_steps=2, max_steps=20, min_ratio=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    ds = deepspeed_config(micro_batch_size=4, grad_accum_steps=1, world_size=1,
                          zero_stage=stage, precision="fp32", grad_clip=1.0)
    return build_engine(model, optimizer=optimizer, lr_scheduler=scheduler, config=ds)

def step(e, scale=1.0):
    loss = e(input_ids=ids, labels=ids).loss
    e.backward(loss * scale)
    e.step()
    return loss.item()

results = {}
for stage in (1, 2, 3):
    original = engine(stage)
    for _ in range(3):
        step(original)
    state = gather_elastic_state(original)
    restored = engine(stage)
    restore_elastic_state(restored, state, step=3, zero_lr_step=lambda: step(restored, 0.0))
    results[stage] = [(step(original), step(restored)) for _ in range(3)]
print("RESULTS", json.dumps({str(k): v for k, v in results.items()}))
"""


def test_gathered_state_restores_an_engine_that_trains_on_identically() -> None:
    """ZeRO 1, 2 and 3: an engine given another's gathered state takes the same next steps."""
    pairs = results_of_fresh_process(ROUND_TRIP)
    for stage, steps in pairs.items():
        for original, restored in steps:
            assert restored == original, (stage, steps)
