"""`cloud submit slurm` under a real Slurm: jobs run by slurmctld and slurmd, not fakes.

The ``slurm_cluster`` fixture (tests/cluster/conftest.py, tests/cluster/slurm_cluster.py) starts munged,
slurmctld and slurmd for the session: one node, two CPUs, on 127.0.0.1 only. Each test
submits with the real command line, ``cloud submit slurm ... -- <cloud command>``, which
writes the sbatch script and runs the real ``sbatch``; the job then runs the generated script
under slurmd, whose ``srun`` starts the Ray head or ``train.launcher``. The tests wait on
``scontrol show job`` (no accounting daemon, so no ``sacct``; ``MinJobAge`` keeps finished
jobs listed) and check what the jobs wrote:

* a corpus build of the shipped sample (2,986 structures, shards of 500) completes and its
  manifest balances;
* a short pretraining run (the ``debug`` flavour of tests/train/pretrain/test_pretrain.py) completes;
* the same run, requeued with ``scontrol requeue`` once its first checkpoint is published, is
  killed by Slurm, started again with ``SLURM_RESTART_COUNT=1``, resumes from that checkpoint
  (the script appends ``--resume``) and ends with the uninterrupted run's losses, bit for bit.

Network: ``ss -ltnp`` while the cluster runs shows slurmctld and slurmd on 127.0.0.1 only
(``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny``; without it both bind 0.0.0.0) and
munged on no TCP port (a Unix socket); ``test_daemons_listen_on_loopback_only`` checks it.

Where munge/slurmctld/slurmd are not installed (``make tools``) or cannot start (not root),
every test here skips and says why. About 2-3 minutes on two busy cores.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.manifest import check_balance, read_manifest
from train.checkpoint import read_latest
from train.metrics import read_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CLOUD = Path(sys.executable).parent / "cloud"
SAMPLE = REPO / "data" / "corpus" / "structures_sample.jsonl.gz"
DEBUG = REPO / "configs" / "pretrain" / "debug.yaml"
JOB_TIMEOUT_S = 300.0
PRETRAIN_STEPS = 200
CHECKPOINT_INTERVAL = 20


def submit(cluster, run_dir: Path, job: list[str], *options: str) -> tuple[str, Path]:
    """``cloud submit slurm [options] --run-dir RUN_DIR -- JOB``: the job id and its log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(CLOUD), "submit", "slurm", *options, "--run-dir", str(run_dir), "--", *job],
        env=cluster.env(),
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    job_id = re.search(r"submitted Slurm job (\d+)", result.stdout).group(1)
    log = Path(re.search(r"^log: (.+)$", result.stdout, re.MULTILINE).group(1))
    return job_id, log


def log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.is_file() else f"(no log at {log})"


def wait_completed(cluster, job_id: str, log: Path) -> dict[str, str]:
    record = cluster.wait_for_job(job_id, JOB_TIMEOUT_S)
    assert record["JobState"] == "COMPLETED", f"{record}\n{log_text(log)}"
    assert record["ExitCode"] == "0:0", record
    return record


def pretrain_job(corpus: Path, run_dir: Path) -> list[str]:
    # Small enough for two shared cores (about 50 ms a step), long enough that a requeue lands
    # between the first checkpoint (step 20) and the end (step 200): some 9 s of steps against
    # a requeue sent within 0.2 s of the checkpoint. One thread: one core for the job.
    return [
        "pretrain",
        "--config",
        str(DEBUG),
        f"data.corpus={corpus}",
        f"run_dir={run_dir}",
        f"train.max_steps={PRETRAIN_STEPS}",
        f"checkpoint.interval={CHECKPOINT_INTERVAL}",
        "checkpoint.keep_last=10",
        "train.eval_interval=40",
        "train.log_interval=1",
        "data.eval_batches=2",
        "system.cpu_threads=1",
        "logging.progress=off",
        "logging.tensorboard=false",
        "model.overrides.hidden_dropout=0.1",  # dropout: the RNG state must resume too
    ]


def losses(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def slurm_corpus(slurm_cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shipped sample built into shards by a Slurm job (Ray head started by the script)."""
    root = tmp_path_factory.mktemp("slurm_corpus")
    out = root / "corpus"
    started = time.monotonic()
    job_id, log = submit(
        slurm_cluster,
        root / "run",
        ["corpus", "build", str(SAMPLE), "--out", str(out), "--shard-size", "500"],
        "--cpus-per-task",
        "2",
    )
    record = wait_completed(slurm_cluster, job_id, log)
    return {
        "out": out,
        "record": record,
        "log": log,
        "seconds": time.monotonic() - started,
    }


def listeners_of_processes_naming(marker: str) -> set[str]:
    """The listening TCP addresses (``ss -ltnpH``) of processes whose command line holds
    ``marker``: a job's launcher and workers, found by its run directory."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        for pid in re.findall(r"pid=(\d+),", line):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in command:
                found.add(line.split()[3])
    return found


@pytest.fixture(scope="module")
def straight_run(slurm_cluster, slurm_corpus: dict, tmp_path_factory: pytest.TempPathFactory):
    """The pretraining job, uninterrupted, its processes' listening sockets watched."""
    run_dir = tmp_path_factory.mktemp("slurm_straight") / "run"
    job_id, log = submit(slurm_cluster, run_dir, pretrain_job(slurm_corpus["out"], run_dir))
    listeners: set[str] = set()
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while slurm_cluster.job(job_id)["JobState"] in {"PENDING", "RUNNING", "CONFIGURING"}:
        if shutil.which("ss") and time.monotonic() < deadline:
            listeners |= listeners_of_processes_naming(f"run_dir={run_dir}")
        time.sleep(0.1)
    record = wait_completed(slurm_cluster, job_id, log)
    return {"run_dir": run_dir, "record": record, "log": log, "listeners": listeners}


def test_daemons_listen_on_loopback_only(slurm_cluster) -> None:
    listening = slurm_cluster.listening()
    if not listening:
        pytest.skip("ss (iproute2) is not installed")
    assert listening["slurmctld"] == [f"127.0.0.1:{slurm_cluster.ctld_port}"], listening
    assert listening["slurmd"] == [f"127.0.0.1:{slurm_cluster.slurmd_port}"], listening
    assert listening["munged"] == [], listening  # a Unix socket only


def test_pretraining_job_listens_on_loopback_only(straight_run: dict) -> None:
    """A one-node job's workers meet through a private file (no store) and run gloo over
    loopback: every socket they listen on is on 127.0.0.1."""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    listeners = straight_run["listeners"]
    assert listeners, "no listening socket of the job was seen (gloo's, at least)"
    assert all(address.startswith("127.0.0.1:") for address in listeners), listeners


def test_corpus_build_job_completes_and_balances(slurm_corpus: dict) -> None:
    out = slurm_corpus["out"]
    manifest = read_manifest(out)
    check_balance(manifest["counts"])
    assert manifest["num_samples"] == sum(s["num_samples"] for s in manifest["shards"])
    assert manifest["num_samples"] > 2000 and len(manifest["shards"]) >= 2
    assert all((out / s["name"]).is_file() for s in manifest["shards"])
    text = log_text(slurm_corpus["log"])
    assert slurm_corpus["record"]["Restarts"] == "0", text


def test_pretraining_job_completes(straight_run: dict) -> None:
    run_dir = straight_run["run_dir"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == PRETRAIN_STEPS and summary["world_size"] == 1
    assert read_latest(run_dir / "checkpoints") == f"step_{PRETRAIN_STEPS:08d}"
    assert sorted(losses(run_dir)) == list(range(PRETRAIN_STEPS + 1))
    assert "resumed from" not in log_text(straight_run["log"])


def test_requeued_pretraining_job_resumes_with_the_same_losses(
    slurm_cluster, slurm_corpus: dict, straight_run: dict, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    job_id, log = submit(slurm_cluster, run_dir, pretrain_job(slurm_corpus["out"], run_dir))
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while read_latest(run_dir / "checkpoints") is None:
        state = slurm_cluster.job(job_id)["JobState"]
        assert state in {"PENDING", "RUNNING"}, f"{state} before a checkpoint\n{log_text(log)}"
        assert time.monotonic() < deadline, "no checkpoint was published"
        time.sleep(0.2)
    first_checkpoint = read_latest(run_dir / "checkpoints")
    slurm_cluster.command("scontrol", "requeue", job_id)
    record = wait_completed(slurm_cluster, job_id, log)

    text = log_text(log)
    assert record["Restarts"] == "1", text
    resumed_at = re.search(r"resumed from \S+ at step (\d+)", text)
    assert resumed_at, text
    # Killed mid-run: the restart resumed from a checkpoint short of the end.
    assert int(first_checkpoint.removeprefix("step_")) <= int(resumed_at.group(1)), text
    assert int(resumed_at.group(1)) < PRETRAIN_STEPS, text
    straight, requeued = losses(straight_run["run_dir"]), losses(run_dir)
    # One record per step: those the killed attempt logged after its checkpoint were dropped.
    steps = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == list(range(PRETRAIN_STEPS + 1)), (steps, text)
    for step in sorted(straight):
        for key in ("train/loss", "train/grad_norm", "train/lr", "val/loss"):
            assert requeued[step].get(key) == straight[step].get(key), (step, key, text)
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((straight_run["run_dir"] / "summary.json").read_text())
    for key in ("steps", "tokens", "train_loss", "val_loss", "val_accuracy"):
        assert summary[key] == expected[key], key
