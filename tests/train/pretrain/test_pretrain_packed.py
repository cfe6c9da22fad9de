"""Pretraining on packed batches (``data.tokens_per_batch``) and on real tokens only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.train.pretrain.test_pretrain import DEBUG, common_overrides, losses
from train.pretrain import launch

pytestmark = pytest.mark.slow

SCENARIO = [
    "train.max_steps=12",
    "train.eval_interval=6",
    "checkpoint.interval=6",
    "optim.warmup_steps=2",
    "model.overrides.hidden_dropout=0.1",
]
PACKED = "data.tokens_per_batch=600"


@pytest.fixture(scope="module")
def packed_runs(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Packed batches: 12 steps straight; 6 steps, then --resume to 12."""
    base = tmp_path_factory.mktemp("packed")
    straight_dir, resumed_dir = base / "straight", base / "resumed"
    options = [*SCENARIO, PACKED]
    straight = launch(DEBUG, [*common_overrides(sample_corpus, straight_dir), *options])
    halted = launch(
        DEBUG, [*common_overrides(sample_corpus, resumed_dir), *options, "train.stop_at_step=6"]
    )
    resumed = launch(DEBUG, [*common_overrides(sample_corpus, resumed_dir), *options], resume=True)
    return {
        "straight": straight,
        "halted": halted,
        "resumed": resumed,
        "straight_dir": straight_dir,
        "resumed_dir": resumed_dir,
    }


def test_packed_pretraining_trains_on_real_tokens_only(packed_runs: dict) -> None:
    summary = packed_runs["straight"]
    assert summary["steps"] == 12 and math.isfinite(summary["val_loss"])
    assert summary["padding_fraction"] == 0.0
    # Every step holds up to 600 tokens of whole strings (30 on average in this corpus).
    assert 12 * (600 - 128) < summary["tokens"] <= 12 * 600
    assert summary["val_loss"] < summary["initial_val_loss"]


def test_packed_pretraining_resumes_with_the_same_batches_and_losses(packed_runs: dict) -> None:
    assert packed_runs["halted"]["steps"] == 6 and packed_runs["resumed"]["steps"] == 12
    straight = losses(packed_runs["straight_dir"])
    resumed = losses(packed_runs["resumed_dir"])
    for step in range(7, 13):
        for key in ("train/loss", "train/grad_norm", "train/lr"):
            assert resumed[step][key] == straight[step][key], (step, key)
    assert packed_runs["resumed"]["tokens"] == packed_runs["straight"]["tokens"]
    assert resumed[12]["val/loss"] == straight[12]["val/loss"]


def test_unpadded_compute_gives_the_padded_losses_without_computing_padding(
    sample_corpus: Path, tmp_path: Path
) -> None:
    """The same padded batches, computed padded (as before) and on real tokens only."""
    steps = ["train.max_steps=4", "train.eval_interval=4", "model.overrides.hidden_dropout=0.0"]
    steps.append("model.overrides.attention_dropout=0.0")
    padded = launch(
        DEBUG,
        [
            *common_overrides(sample_corpus, tmp_path / "padded"),
            *steps,
            "system.padded_compute=true",
        ],
    )
    unpadded = launch(DEBUG, [*common_overrides(sample_corpus, tmp_path / "unpadded"), *steps])
    assert padded["padding_fraction"] > 0.2  # SCOPE strings padded to each batch's longest
    assert unpadded["padding_fraction"] == 0.0
    assert unpadded["tokens"] == padded["tokens"]
    assert unpadded["val_loss"] == pytest.approx(padded["val_loss"], rel=1e-4)
    first, second = losses(tmp_path / "padded"), losses(tmp_path / "unpadded")
    for step in range(1, 5):
        assert second[step]["train/loss"] == pytest.approx(first[step]["train/loss"], rel=1e-4)
