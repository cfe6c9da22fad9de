"""Pre-training: config, schedule, checkpoints, metrics, and real DeepSpeed runs on CPU.

The slow tests launch real ``torchrun`` jobs (2 processes over gloo, ``DS_ACCELERATOR=cpu``)
on the session's corpus of real structures (``sample_corpus``). Runs are module-scoped
fixtures shared by several assertions, so each scenario is trained once.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.checkpoint import (
    LATEST,
    STAGING,
    atomic_write_text,
    checkpoint_tag,
    list_checkpoints,
    prune_checkpoints,
    read_latest,
    tag_step,
)
from train.metrics import (
    MetricsWriter,
    cpu_peak_flops,
    device_peak_flops,
    gpu_peak_flops,
    mfu,
    read_jsonl,
)
from train.pretrain import (
    PretrainConfig,
    apply_overrides,
    config_from_dict,
    launch,
    load_config,
    lr_factor,
)

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "configs" / "pretrain"
DEBUG = CONFIGS / "debug.yaml"
TB_TAGS = {
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "val/loss",
    "val/accuracy",
    "perf/tokens_per_s",
    "perf/mfu",
    "perf/peak_memory_gb",
}


def common_overrides(corpus: Path, run_dir: Path) -> list[str]:
    # One intra-op thread per process: two processes share the CI machine's two cores.
    return [
        f"data.corpus={corpus}",
        f"run_dir={run_dir}",
        "system.cpu_threads=1",
        "logging.progress=off",
        "train.log_interval=1",
        "data.eval_batches=2",
    ]


def optimizer_shard(tag: Path, rank: int) -> Path:
    """Rank ``rank``'s ZeRO optimizer partition in checkpoint directory ``tag`` (stage >= 1)."""
    return tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


def losses(run_dir: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}


# ------------------------------------------------------------------------- config (fast)


def test_shipped_configs_load() -> None:
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"debug", "tiny", "base"} <= set(names)
    for path in CONFIGS.glob("*.yaml"):
        config = load_config(path)
        assert isinstance(config, PretrainConfig)
        from cloud import family

        family(config.model.flavour)  # a valid flavour


def test_overrides_and_errors(tmp_path: Path) -> None:
    config = load_config(
        DEBUG,
        [
            "optim.lr=1e-4",  # YAML would read this as a string: coerced to float
            "system.zero_stage=3",
            "model.overrides.hidden_dropout=0.0",
            "train.stop_at_step=5",
            "checkpoint.dir=null",
        ],
    )
    assert config.optim.lr == pytest.approx(1e-4)
    assert config.system.zero_stage == 3
    assert config.model.overrides["hidden_dropout"] == 0.0
    assert config.train.stop_at_step == 5
    assert config.checkpoint_dir == Path(config.run_dir) / "checkpoints"
    with pytest.raises(
        ValueError, match=r"unknown config key\(s\) \['lr_max'\] in section 'optim'"
    ):
        load_config(DEBUG, ["optim.lr_max=1"])
    with pytest.raises(ValueError, match="unknown config key"):
        config_from_dict({"modle": {}})
    with pytest.raises(ValueError, match=r"train\.max_steps must be an integer"):
        load_config(DEBUG, ["train.max_steps=ten"])
    with pytest.raises(ValueError, match="zero_stage must be 0-3"):
        load_config(DEBUG, ["system.zero_stage=4"])
    with pytest.raises(ValueError, match=r"dotted\.key=value"):
        apply_overrides({}, ["optim.lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1.0\n  warmup: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key\(s\) \['warmup'\]"):
        load_config(bad)


@pytest.mark.parametrize(
    "override",
    [
        "checkpoint.interval=-1",
        "checkpoint.keep_last=-1",
        "train.eval_interval=-2",
        "optim.warmup_steps=-3",
        "data.max_length=2",
        "optim.lr=0",
        "optim.beta2=1.0",
        "system.cpu_threads=-1",
    ],
)
def test_an_out_of_range_setting_is_refused_by_name(override: str, capsys) -> None:
    from train.cli import main

    key, _, value = override.partition("=")
    with pytest.raises(ValueError, match=rf"{re.escape(key)} must be .*, got {re.escape(value)}"):
        load_config(DEBUG, [override])
    # On the command line: one line naming the key, exit status 2, no training started.
    assert main(["pretrain", "--config", str(DEBUG), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0]


def test_lr_schedule() -> None:
    kwargs = {"warmup_steps": 10, "max_steps": 110, "min_ratio": 0.1}
    factors = [lr_factor(s, **kwargs) for s in range(110)]
    assert factors[0] == pytest.approx(0.1)  # never a wasted zero-LR step
    assert factors[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(factors[:10]))
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] == pytest.approx(0.1)
    assert factors[60] == pytest.approx(0.55, abs=0.01)  # cosine midpoint


def test_cli_registers_pretrain() -> None:
    from train.cli import COMMAND_MODULES

    assert "train.cli.pretrain" in COMMAND_MODULES
    import argparse

    from train.cli import pretrain as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["pretrain", "--config", str(DEBUG), "optim.lr=1e-3", "--resume", "--local_rank=1"]
    )
    assert args.overrides == ["optim.lr=1e-3"] and args.resume and callable(args.func)


def test_overrides_may_follow_resume_on_both_command_lines(monkeypatch) -> None:
    import train.cli
    import train.pretrain
    from train.cli import build_parser, parse_arguments

    line = ["--config", str(DEBUG), "optim.lr=1e-3", "--resume", "train.max_steps=5", "seed=3"]
    args = parse_arguments(build_parser(), ["pretrain", *line])
    assert args.resume and args.overrides == ["optim.lr=1e-3", "train.max_steps=5", "seed=3"]
    with pytest.raises(SystemExit):  # an unknown option is still an error
        parse_arguments(build_parser(), ["pretrain", *line, "--restart"])

    # As the deepspeed launcher starts it: python -m train.cli pretrain --local_rank=0 ...
    seen = []
    monkeypatch.setattr(train.pretrain, "main_from_args", lambda a: seen.append(a) or 0)
    assert train.cli.main(["pretrain", "--local_rank=0", *line]) == 0
    assert seen[0].resume and seen[0].overrides == args.overrides


# --------------------------------------------------------------------- checkpoint (fast)


def test_atomic_publication_helpers(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        (root / checkpoint_tag(step)).mkdir(parents=True)
    atomic_write_text(root / LATEST, checkpoint_tag(30))
    assert read_latest(root) == "step_00000030" and tag_step("step_00000030") == 30
    # A save killed half-way leaves only .staging behind: latest still names a complete tag.
    partial = root / STAGING / checkpoint_tag(40)
    partial.mkdir(parents=True)
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"\x80truncated")
    assert read_latest(root) == "step_00000030"
    assert list_checkpoints(root) == ["step_00000010", "step_00000020", "step_00000030"]
    prune_checkpoints(root, keep_last=2)
    assert list_checkpoints(root) == ["step_00000020", "step_00000030"]
    assert not list(root.glob(".latest.tmp*"))


# ------------------------------------------------------------------------ metrics (fast)


def test_peak_flops_and_mfu() -> None:
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("Some Future GPU") is None
    assert 1e9 < cpu_peak_flops() < 1e14
    peak, description = device_peak_flops(torch.device("cpu"))
    assert peak > 0 and "CPU estimate" in description
    assert mfu(1000.0, 1e6, 1e10) == pytest.approx(0.1)


def test_metrics_writer_tensorboard_and_jsonl(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.summary.writer import event_file_writer

    # The two writers' event files get the counters 9 and 10 (or 99 and 100 ...) of this
    # process: in one second "...10" sorts before "...9", which put the purge first (CI).
    while event_file_writer._global_uid.get() not in (8, 98, 998, 9998):
        pass
    writer = MetricsWriter(tmp_path)
    for step in (1, 2, 3):
        writer.log(step, {"train/loss": 5.0 - step, "train/grad_norm": None})
    writer.close()
    # A resumed run restarting after step 1 drops what a killed run logged past it.
    writer = MetricsWriter(tmp_path, purge_step=2)
    writer.log(2, {"train/loss": 9.0})
    writer.close()
    assert [(r["step"], r["train/loss"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 4.0),
        (2, 9.0),
    ]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 4.0), (2, 9.0)]


# ------------------------------------------------------------------ DeepSpeed runs (slow)


@pytest.fixture(scope="module")
def resume_runs(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ZeRO-3, 2 processes, dropout on: 20 steps straight; 10 steps, a save killed half-way,
    then --resume to 20 in the same run directory."""
    base = tmp_path_factory.mktemp("resume")
    scenario = [
        "system.zero_stage=3",
        "train.max_steps=20",
        "train.eval_interval=10",
        "checkpoint.interval=10",
        "optim.warmup_steps=5",
        "model.overrides.hidden_dropout=0.1",
        "model.overrides.attention_dropout=0.1",
    ]
    straight_dir, resumed_dir = base / "straight", base / "resumed"
    straight = launch(DEBUG, [*common_overrides(sample_corpus, straight_dir), *scenario], nproc=2)
    halted = launch(
        DEBUG,
        [*common_overrides(sample_corpus, resumed_dir), *scenario, "train.stop_at_step=10"],
        nproc=2,
    )
    # What a kill during the next save leaves: a partial tag in .staging, latest untouched.
    partial = resumed_dir / "checkpoints" / STAGING / checkpoint_tag(20)
    partial.mkdir(parents=True)
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"\x80 truncated by SIGKILL")
    latest_before_resume = read_latest(resumed_dir / "checkpoints")
    resumed = launch(
        DEBUG, [*common_overrides(sample_corpus, resumed_dir), *scenario], nproc=2, resume=True
    )
    return {
        "straight": straight,
        "halted": halted,
        "resumed": resumed,
        "straight_dir": straight_dir,
        "resumed_dir": resumed_dir,
        "latest_before_resume": latest_before_resume,
    }


@pytest.mark.slow
def test_zero3_two_processes_train_and_checkpoint(resume_runs: dict) -> None:
    summary = resume_runs["straight"]
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3 and summary["steps"] == 20
    assert math.isfinite(summary["train_loss"]) and math.isfinite(summary["val_loss"])
    root = resume_runs["straight_dir"] / "checkpoints"
    assert read_latest(root) == "step_00000020"
    assert list_checkpoints(root) == ["step_00000010", "step_00000020"]
    tag = root / "step_00000020"
    for rank in (0, 1):
        assert (tag / f"rank_state_{rank:05d}.pt").is_file()
        assert optimizer_shard(tag, rank).is_file()
    assert (root / "zero_to_fp32.py").is_file()
    assert not (root / STAGING).exists()


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_losses(resume_runs: dict) -> None:
    assert resume_runs["halted"]["steps"] == 10
    assert resume_runs["latest_before_resume"] == "step_00000010"
    assert resume_runs["resumed"]["steps"] == 20
    straight = losses(resume_runs["straight_dir"])
    resumed = losses(resume_runs["resumed_dir"])
    # The resumed run's history is one consistent record of steps 0-20.
    assert sorted(resumed) == list(range(21))
    for step in range(11, 21):
        # Bit-for-bit: same data, masks, dropout, optimizer state and reduction order.
        for key in ("train/loss", "train/grad_norm", "train/lr"):
            assert resumed[step][key] == straight[step][key], (step, key)
    assert resumed[20]["val/loss"] == straight[20]["val/loss"]
    assert resume_runs["resumed"]["tokens"] == resume_runs["straight"]["tokens"]
    # The half-written save was cleaned away, and the resumed run published its own step 20.
    root = resume_runs["resumed_dir"] / "checkpoints"
    assert not (root / STAGING).exists()
    assert read_latest(root) == "step_00000020"


@pytest.mark.slow
def test_zero_to_fp32_consolidation_matches_training_model(resume_runs: dict) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from cloud import CloudConfig, CloudForMaskedLM
    from tokenizer import ScopeTokenizer
    from train.data import split_train_val
    from train.pretrain import evaluate_batches, validation_batches

    root = resume_runs["straight_dir"] / "checkpoints"
    state = get_fp32_state_dict_from_zero_checkpoint(str(root))
    model = CloudForMaskedLM(CloudConfig.from_dict(json.loads((root / "config.json").read_text())))
    model.load_state_dict(state, strict=True)
    model.eval()
    tokenizer = ScopeTokenizer.load(root / "tokenizer.json")
    config = config_from_dict(json.loads((root / "pretrain_config.json").read_text()))
    _, val_paths = split_train_val(config.data.corpus, config.data.val_shards)
    batches = validation_batches(config, tokenizer, val_paths)
    loss, accuracy, count, loss_se = evaluate_batches(model, batches, torch.device("cpu"))
    summary = resume_runs["straight"]
    assert count > 0
    assert loss == pytest.approx(summary["val_loss"], rel=1e-5)
    assert accuracy == pytest.approx(summary["val_accuracy"], abs=1e-9)
    assert loss_se == pytest.approx(summary["val_loss_se"], rel=1e-4)
    assert 0 < loss_se < 0.1 * loss


@pytest.mark.slow
def test_tensorboard_events(resume_runs: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resume_runs["straight_dir"] / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) >= TB_TAGS
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 21))
    assert [e.step for e in events.Scalars("val/loss")] == [0, 10, 20]
    assert all(e.value > 0 for e in events.Scalars("perf/tokens_per_s"))
    assert all(0 < e.value < 1 for e in events.Scalars("perf/mfu"))
    # After the resume, TensorBoard shows each step once.
    resumed = EventAccumulator(str(resume_runs["resumed_dir"] / "tensorboard"))
    resumed.Reload()
    assert sorted(e.step for e in resumed.Scalars("train/loss")) == list(range(1, 21))


@pytest.mark.slow
# ZeRO-2's two-process checkpoints: tests/train/test_launcher.py (its runs are ZeRO-2);
# ZeRO-3's: test_zero3_two_processes_train_and_checkpoint above.
@pytest.mark.parametrize("stage", [1])
def test_zero_stage_two_processes(stage: int, sample_corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / f"zero{stage}"
    summary = launch(
        DEBUG,
        [
            *common_overrides(sample_corpus, run_dir),
            f"system.zero_stage={stage}",
            "train.max_steps=4",
            "train.eval_interval=0",
            "train.eval_at_start=false",
            "checkpoint.interval=2",
        ],
        nproc=2,
    )
    assert summary["world_size"] == 2 and summary["zero_stage"] == stage
    records = losses(run_dir)
    assert [s for s in records if "train/loss" in records[s]] == [1, 2, 3, 4]
    assert all(math.isfinite(records[s]["train/loss"]) for s in (1, 2, 3, 4))
    assert all(records[s]["train/grad_norm"] > 0 for s in (1, 2, 3, 4))
    root = run_dir / "checkpoints"
    assert list_checkpoints(root) == ["step_00000002", "step_00000004"]
    assert read_latest(root) == "step_00000004"
    assert all(optimizer_shard(root / "step_00000004", rank).is_file() for rank in (0, 1))


SWEEP_SCRIPT = """
import json, os, sys
from train.pretrain import load_config, run_pretraining
LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GLOO_SOCKET_IFNAME")
config_path, out, *common = sys.argv[1:]
first = run_pretraining(load_config(config_path, [*common, "train.max_steps=300"]))
left = [name for name in LAUNCHER if name in os.environ]
second = run_pretraining(load_config(config_path, [
    *common, "run_dir=" + out + "/second", "model.flavour=tiny", "system.zero_stage=0",
    "train.max_steps=3", "train.eval_interval=0", "checkpoint.save_final=false",
]))
left += [name for name in LAUNCHER if name in os.environ]
with open(out + "/summaries.json", "w") as handle:
    json.dump([first, second, left], handle)
"""


@pytest.mark.slow
def test_single_process_function_api_learns(sample_corpus: Path, tmp_path: Path) -> None:
    """run_pretraining without a launcher, twice in one process (as the scaling sweep may),
    on real SCOPE data: the validation loss falls far below its ln(vocab) start; neither run
    leaves launcher variables behind (a later child would take itself for a launched worker)."""
    run_dir = tmp_path / "first"
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GLOO_SOCKET_IFNAME")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    subprocess.run(
        [
            sys.executable,
            "-c",
            SWEEP_SCRIPT,
            str(DEBUG),
            str(tmp_path),
            *common_overrides(sample_corpus, run_dir),
            "train.log_interval=10",
            "train.eval_interval=100",
            "data.eval_batches=4",
        ],
        check=True,
        env={**env, "DS_ACCELERATOR": "cpu"},
        timeout=600,
    )
    first, second, left_behind = json.loads((tmp_path / "summaries.json").read_text())
    assert left_behind == []
    from tokenizer import ScopeTokenizer

    ln_vocab = math.log(ScopeTokenizer().vocab_size)
    assert first["world_size"] == 1 and first["steps"] == 300
    assert first["initial_val_loss"] == pytest.approx(ln_vocab, abs=0.25)
    assert first["val_loss"] < ln_vocab - 2.5, first
    assert first["val_accuracy"] > 0.3
    val = [r["val/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in r]
    assert len(val) == 4 and all(a > b for a, b in itertools.pairwise(val))
    assert first["tokens"] > 0 and first["flops"] > 6 * first["n_params_non_embedding"]
    assert second["flavour"] == "tiny" and second["steps"] == 3 and second["zero_stage"] == 0
    assert math.isfinite(second["train_loss"])
