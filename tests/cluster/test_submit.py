"""`cloud submit`: sbatch scripts run under a simulated 2-node Slurm, and a real Ray cluster.

Slurm cannot run here, so its commands are small fakes on PATH that emulate an allocation:
``srun`` runs its command once per simulated node (concurrently, with SLURM_NODEID,
SLURM_PROCID, SLURM_LOCALID set), ``scontrol`` lists the hosts and records requeues,
``sbatch`` records the script. Everything else is real: the generated script runs under bash,
a real ``train.launcher`` per simulated node starts the workers (the first simulated host is
``localhost``, whose NodeAddr is 127.0.0.1: its launcher hosts the store there), and the
training command is a recorder (CLOUD_EXECUTABLE) that writes its argv and environment. The Ray test starts a real head node on loopback and runs a real job.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.ray_env import LOOPBACK_ENV
from cluster.slurm import (
    PORT_SPAN,
    Executables,
    SlurmResources,
    launch_kind,
    master_port,
    parse_job_id,
    render_sbatch,
)
from train.cli import main

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
NACL_SCOPE = "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5"
NACL_POSCAR = """NaCl
1.0
5.64 0 0
0 5.64 0
0 0 5.64
Na Cl
4 4
Direct
0 0 0
0 0.5 0.5
0.5 0 0.5
0.5 0.5 0
0.5 0.5 0.5
0.5 0 0
0 0.5 0
0 0 0.5
"""

# ----------------------------------------------------------------------------- fakes

FAKE_SRUN = r"""
import json, os, signal, subprocess, sys

args = sys.argv[1:]
options = {}
while args and args[0].startswith("-"):
    flag = args.pop(0)
    if "=" in flag:
        key, value = flag.split("=", 1)
    elif flag == "--overlap":
        key, value = flag, ""
    else:
        key, value = flag, args.pop(0)
    options[key] = value
hosts = os.environ["SLURM_JOB_NODELIST"].split(",")
chosen = hosts
if "--nodelist" in options:
    chosen = [h for h in hosts if h in options["--nodelist"].split(",")]
if "--exclude" in options:
    chosen = [h for h in chosen if h not in options["--exclude"].split(",")]
chosen = chosen[: int(options.get("--nodes", len(chosen)))]
record = os.environ["FAKE_SLURM_RECORD"]
with open(os.path.join(record, "srun.log"), "a") as log:
    log.write(json.dumps({"options": options, "command": args, "hosts": chosen}) + "\n")
children = []
for task, host in enumerate(chosen):
    env = dict(os.environ)
    env.update(
        SLURM_NODEID=str(hosts.index(host)),
        SLURM_PROCID=str(task),
        SLURM_LOCALID="0",
        SLURMD_NODENAME=host,
        SLURM_STEP_NUM_TASKS=str(len(chosen)),
    )
    children.append(subprocess.Popen(args, env=env))


def forward(signum, frame):
    for child in children:
        if child.poll() is None:
            child.send_signal(signum)


signal.signal(signal.SIGTERM, forward)
signal.signal(signal.SIGINT, forward)
codes = [child.wait() for child in children]
sys.exit(next((abs(code) for code in codes if code), 0))
"""

FAKE_SCONTROL = r"""
import os, sys

if sys.argv[1:3] == ["show", "hostnames"]:
    print("\n".join(sys.argv[3].split(",")))
elif sys.argv[1:3] == ["show", "node"] and sys.argv[3] == "localhost":
    print("NodeName=localhost Arch=x86_64 CoresPerSocket=1\n   NodeAddr=127.0.0.1 NodeHostName=localhost")
elif sys.argv[1] == "requeue":
    with open(os.path.join(os.environ["FAKE_SLURM_RECORD"], "scontrol.log"), "a") as log:
        log.write(" ".join(sys.argv[1:]) + "\n")
else:
    sys.exit(f"fake scontrol: unsupported {sys.argv[1:]}")
"""

FAKE_SBATCH = r"""
import json, os, shutil, sys

record = os.environ["FAKE_SLURM_RECORD"]
script = sys.argv[-1]
shutil.copy(script, os.path.join(record, "submitted.sbatch"))
with open(os.path.join(record, "sbatch.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, f)
print("4242" if "--parsable" in sys.argv else "Submitted batch job 4242")
"""

# The training command: records argv and the launch environment, optionally sleeps.
RECORDER = r"""
import json, os, sys, time

KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
        "MASTER_PORT", "NODE_RANK", "SLURM_NODEID", "SLURM_PROCID", "SLURM_LOCALID",
        "SLURMD_NODENAME", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "CLOUD_INIT_METHOD",
        "GLOO_SOCKET_IFNAME")
record = os.environ["FAKE_SLURM_RECORD"]
name = f"cloud-{os.environ.get('SLURMD_NODENAME', 'x')}-{os.environ.get('RANK', os.getpid())}"
data = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in KEYS}}
with open(os.path.join(record, name + ".json"), "w") as f:
    json.dump(data, f)
if os.environ.get("RECORDER_SLEEP"):
    open(os.path.join(record, name + ".started"), "w").close()
    time.sleep(float(os.environ["RECORDER_SLEEP"]))
    open(os.path.join(record, name + ".finished"), "w").close()
"""

# `ray start ... --block` blocks until SIGTERM, as the real one does.
FAKE_RAY = r"""
import json, os, signal, sys, time

record = os.environ["FAKE_SLURM_RECORD"]
name = f"ray-{os.environ.get('SLURMD_NODENAME', 'batch')}-{os.getpid()}"
path = os.path.join(record, name + ".json")
with open(path + ".tmp", "w") as f:
    json.dump({"argv": sys.argv[1:], "node": os.environ.get("SLURMD_NODENAME")}, f)
os.replace(path + ".tmp", path)  # whole, for the fake wait-for-nodes that counts these


def stopped(signum, frame):
    open(os.path.join(record, name + ".stopped"), "w").close()
    sys.exit(0)


signal.signal(signal.SIGTERM, stopped)
if "--block" in sys.argv:
    time.sleep(60)
"""

# `python -m cluster.ray_jobs wait-for-nodes HEAD N` returns once N Ray nodes have joined, as
# the real one does: here, once N fake `ray start` processes have recorded themselves.
FAKE_PYTHON = r"""
import glob, json, os, sys, time

record = os.environ["FAKE_SLURM_RECORD"]
args = sys.argv[1:]
with open(os.path.join(record, "python.log"), "a") as log:
    log.write(json.dumps(args) + "\n")
if "wait-for-nodes" in args:
    wanted = int(args[args.index("wait-for-nodes") + 2])
    deadline = time.monotonic() + 60
    while len(glob.glob(os.path.join(record, "ray-*.json"))) < wanted:
        if time.monotonic() > deadline:
            sys.exit(f"fake wait-for-nodes: fewer than {wanted} Ray nodes joined")
        time.sleep(0.05)
"""

# Ray's workers keep below every job's head port (15000-29999): the default range
# 10002-19999 holds the head port of a third of all jobs and `ray start --head` refuses it.
RAY_WORKER_PORTS = ["--min-worker-port=10002", "--max-worker-port=14999"]

# Arguments a shell would mangle or execute if they were ever parsed: the recorder must see
# them byte for byte and no marker file may appear.
NASTY = [
    "path with spaces/config.yaml",
    "optim.lr=$(touch {marker}.dollar)",
    "`touch {marker}.backtick`",
    "x; touch {marker}.semicolon",
    "a && touch {marker}.and",
    'it\'s "quoted"',
    "line1\nline2",
    "*.yaml",
    "$HOME",
]


@dataclass
class FakeCluster:
    root: Path
    bin: Path
    record: Path
    recorder: Path
    marker: Path

    def env(self, nodes: str, job_id: int, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{VENV_BIN}:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8",
            "SLURM_JOB_ID": str(job_id),
            "SLURM_JOB_NODELIST": nodes,
            "SLURM_JOB_NUM_NODES": str(len(nodes.split(","))),
            "CLOUD_EXECUTABLE": str(self.recorder),
            "FAKE_SLURM_RECORD": str(self.record),
            **extra,
        }

    def records(self, prefix: str) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.record.glob(f"{prefix}*.json"))]

    def nasty_args(self) -> list[str]:
        return [arg.format(marker=self.marker) for arg in NASTY]

    def no_marker_created(self) -> bool:
        return not list(self.marker.parent.glob(self.marker.name + "*"))


def write_executable(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
def fake_cluster(tmp_path: Path) -> FakeCluster:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    record.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH)):
        write_executable(bin_dir / name, body)
    recorder = write_executable(tmp_path / "cloud-recorder", RECORDER)
    write_executable(tmp_path / "fake-ray", FAKE_RAY)
    write_executable(tmp_path / "fake-python", FAKE_PYTHON)
    return FakeCluster(tmp_path, bin_dir, record, recorder, tmp_path / "pwned")


def job_id_with_free_port() -> int:
    """A job id whose derived rendezvous port is free on loopback right now."""
    for job_id in range(4242, 4242 + PORT_SPAN, 7):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", master_port(job_id)))
            except OSError:
                continue
        return job_id
    raise RuntimeError("no free port in the rendezvous range")


def run_script(
    script: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=timeout
    )


def workdir_with_spaces(root: Path) -> Path:
    workdir = root / "work dir $(touch pwned-cd)"
    workdir.mkdir()
    return workdir


# ----------------------------------------------------------------------------- rendering


def test_launch_kinds() -> None:
    assert launch_kind(["pretrain", "--config", "x.yaml"]) == "training"
    assert launch_kind(["scaling", "sweep", "--config", "s.yaml"]) == "training"
    assert launch_kind(["scaling", "fit", "results.csv"]) == "single"
    assert launch_kind(["finetune", "x"]) == "training"
    assert launch_kind(["debye", "train"]) == "training"
    assert launch_kind(["corpus", "build", "src", "--out", "o"]) == "ray"
    assert launch_kind(["corpus", "stats", "o"]) == "single"
    assert master_port(0) == master_port(PORT_SPAN) == 15000
    assert parse_job_id("Submitted batch job 77\n") == "77"
    assert parse_job_id("78;cluster\n") == "78"


def test_training_script_content(tmp_path: Path) -> None:
    job = ["pretrain", "--config", "configs/my run.yaml", "optim.lr=$(id)", "train.seed=1"]
    resources = SlurmResources(
        nodes=4,
        gpus_per_node=8,
        cpus_per_task=32,
        partition="gpu",
        time="1-00:00:00",
        account="proj_x",
        job_name="big-run",
    )
    script = render_sbatch(job, resources, workdir=tmp_path / "w d")
    for line in (
        "#SBATCH --job-name=big-run",
        "#SBATCH --nodes=4",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --cpus-per-task=32",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj_x",
        "#SBATCH --time=1-00:00:00",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "set -euo pipefail",
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        "STORE_HOST=${STORE_HOST:-${NODES[0]}}",
        "PORT=$(( 15000 + SLURM_JOB_ID % 15000 ))",
        "NPROC_PER_NODE=8",
        '    scontrol requeue "$SLURM_JOB_ID"',
        "trap requeue_job USR1",
        "    RESUME_ARGS=(--resume)",
        "export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}  # before torch 2.2",
        "# export NCCL_IB_HCA=mlx5",
        'srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \\',
        f"cd {shlex.quote(str(tmp_path / 'w d'))}",
    ):
        assert line in script.splitlines(), line
    assert '--node-rank="$NODE_RANK"' in script and "export NODE_RANK=$SLURM_NODEID" in script
    assert '"$PYTHON" -m train.launcher' in script and '--rendezvous="$STORE_HOST:$PORT"' in script
    assert "torchrun" not in script
    job_block = script.split("JOB_ARGS=(\n", 1)[1].split("\n)\n", 1)[0]
    assert job_block.splitlines() == [f"    {shlex.quote(token)}" for token in job]


def test_other_commands_run_once_and_corpus_builds_get_ray(tmp_path: Path) -> None:
    single = render_sbatch(["scope", "encode", "a.cif"], SlurmResources(), workdir=tmp_path)
    assert "# Launch: single." in single
    assert "bash -c" not in single and "--no-python" not in single
    assert 'srun --nodes=1 --ntasks=1 "$CLOUD" "${JOB_ARGS[@]}" &' in single
    assert "--resume" not in single
    ray = render_sbatch(
        ["corpus", "build", "src", "--out", "o"],
        SlurmResources(nodes=3, cpus_per_task=16),
        workdir=tmp_path,
    )
    assert '"$RAY" start --head --node-ip-address="$HEAD_IP" --port="$PORT" --num-cpus=16' in ray
    assert '--exclude="$HEAD_NODE" --overlap' in ray
    assert '"$CLOUD" "${JOB_ARGS[@]}" --ray-address "$RAY_HEAD" &' in ray
    with pytest.raises(ValueError, match="--ray-address"):
        render_sbatch(
            ["corpus", "build", "s", "--ray-address", "auto"], SlurmResources(), workdir="."
        )


@pytest.mark.parametrize(
    "field, value",
    [("partition", "gpu\n#SBATCH --x"), ("account", "a b"), ("time", "$(id)"), ("job_name", "x;y")],
)
def test_unsafe_directive_values_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        SlurmResources(**{field: value})


def test_bad_jobs_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "slurm", "--dry-run"]) == 2
    assert "no JOB" in capsys.readouterr().err
    assert main(["submit", "slurm", "--dry-run", "--", "rm", "-rf", "/"]) == 2
    assert "'rm' is not a cloud command" in capsys.readouterr().err
    assert main(["submit", "ray", "--address", "http://x", "--dry-run", "submit", "ray"]) == 2
    assert main(["submit", "slurm", "--nodes", "0", "--dry-run", "pretrain"]) == 2
    assert "--nodes" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck is not installed (`make tools` installs it where apt-get can run)",
)
@pytest.mark.parametrize(
    "job",
    [
        ["pretrain", "--config", "my configs/x.yaml", "optim.lr=$(id)"],
        ["corpus", "build", "in dir", "--out", "out `id`"],
        ["scope", "encode", "it's.cif"],
    ],
)
def test_scripts_pass_shellcheck(job: list[str], tmp_path: Path) -> None:
    resources = SlurmResources(
        nodes=2, gpus_per_node=4, cpus_per_task=8, partition="p", time="1:00:00"
    )
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(job, resources, workdir=tmp_path / "a b"))
    result = subprocess.run(
        ["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- submitting


def test_cli_writes_script_and_submits_with_sbatch(
    fake_cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = fake_cluster.root / "runs dir" / "slurm"
    monkeypatch.setenv("PATH", f"{fake_cluster.bin}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_RECORD", str(fake_cluster.record))
    monkeypatch.chdir(fake_cluster.root)
    job = ["pretrain", "--config", "configs/pretrain/debug.yaml", "train.max_steps=10"]
    code = main(
        [
            "submit",
            "slurm",
            "--nodes",
            "2",
            "--gpus-per-node",
            "4",
            "--partition",
            "gpu",
            "--time",
            "02:00:00",
            "--run-dir",
            str(run_dir),
            "--",
            *job,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "submitted Slurm job 4242" in out
    scripts = list(run_dir.glob("cloud-pretrain-*.sbatch"))
    assert len(scripts) == 1
    recorded = json.loads((fake_cluster.record / "sbatch.json").read_text())
    assert recorded["argv"] == ["--parsable", str(scripts[0])]
    assert Path(recorded["cwd"]) == run_dir  # so slurm-%x-%j.out lands in the run dir
    submitted = (fake_cluster.record / "submitted.sbatch").read_text()
    assert submitted == scripts[0].read_text()
    assert "#SBATCH --nodes=2" in submitted and "#SBATCH --gpus-per-node=4" in submitted
    assert str(run_dir / "slurm-cloud-pretrain-4242.out") in out


def test_dry_run_prints_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert (
        main(["submit", "slurm", "--run-dir", "r", "--dry-run", "pretrain", "--config", "x"]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/bin/env bash\n#SBATCH --job-name=cloud-pretrain")
    assert not (tmp_path / "r").exists()
    assert main(["submit", "slurm", "--dry-run", "scope", "encode", "x.cif"]) == 0


# ----------------------------------------------------------------------------- simulated runs


def training_script(cluster: FakeCluster, gpus_per_node: int) -> tuple[Path, list[str], Path]:
    workdir = workdir_with_spaces(cluster.root)
    job = ["pretrain", "--config", *cluster.nasty_args()]
    script = cluster.root / "train.sbatch"
    script.write_text(
        render_sbatch(
            job,
            SlurmResources(nodes=2, gpus_per_node=gpus_per_node),
            workdir=workdir,
            executables=Executables.beside_interpreter(),
        )
    )
    return script, job, workdir


def test_two_node_training_script_runs_a_launcher_per_node(fake_cluster: FakeCluster) -> None:
    script, job, workdir = training_script(fake_cluster, gpus_per_node=2)
    job_id = job_id_with_free_port()
    result = run_script(script, fake_cluster.env("localhost,node-b", job_id))
    assert result.returncode == 0, result.stdout + result.stderr
    records = fake_cluster.records("cloud-")
    assert len(records) == 4  # 2 nodes x 2 workers, started by a real launcher on each
    assert sorted(int(r["env"]["RANK"]) for r in records) == [0, 1, 2, 3]
    for record in records:
        env = record["env"]
        node = 0 if env["SLURMD_NODENAME"] == "localhost" else 1
        assert record["argv"] == job  # unmangled, no --resume on a first start
        assert Path(record["cwd"]) == workdir
        assert env["WORLD_SIZE"] == "4"
        # The first host's NodeAddr, on both nodes; no env:// rendezvous to fall back to.
        assert env["CLOUD_INIT_METHOD"] == f"store://127.0.0.1:{master_port(job_id)}"
        assert env["MASTER_ADDR"] is None and env["MASTER_PORT"] is None
        assert env["GLOO_SOCKET_IFNAME"] == "lo"  # the interface towards 127.0.0.1
        assert env["SLURM_NODEID"] == str(node)
        assert env["SLURM_PROCID"] == str(node) and env["SLURM_LOCALID"] == "0"
        assert int(env["RANK"]) == 2 * node + int(env["LOCAL_RANK"])
        assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert fake_cluster.no_marker_created()
    assert not list(fake_cluster.root.glob("**/pwned-cd"))


@pytest.mark.slow  # three launches of two nodes: about 25-35 s on two busy cores
def test_usr1_requeues_and_the_restart_resumes(fake_cluster: FakeCluster) -> None:
    script, job, _ = training_script(fake_cluster, gpus_per_node=1)
    job_id = job_id_with_free_port()
    env = fake_cluster.env("localhost,node-b", job_id, RECORDER_SLEEP="120")
    started = time.monotonic()
    process = subprocess.Popen(
        ["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        while len(list(fake_cluster.record.glob("*.started"))) < 2:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the training workers never started"
            time.sleep(0.2)
        process.send_signal(signal.SIGUSR1)  # what Slurm sends 120 s before the time limit
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert (fake_cluster.record / "scontrol.log").read_text() == f"requeue {job_id}\n"
    assert not list(fake_cluster.record.glob("*.finished"))  # workers were stopped
    assert time.monotonic() - started < 110

    for path in fake_cluster.record.glob("cloud-*"):
        path.unlink()
    restart = fake_cluster.env("localhost,node-b", job_id_with_free_port(), SLURM_RESTART_COUNT="1")
    result = run_script(script, restart)
    assert result.returncode == 0, result.stdout + result.stderr
    records = fake_cluster.records("cloud-")
    assert len(records) == 2
    assert all(r["argv"] == [*job, "--resume"] for r in records)


def test_corpus_build_script_starts_ray_across_nodes(fake_cluster: FakeCluster) -> None:
    workdir = workdir_with_spaces(fake_cluster.root)
    job = ["corpus", "build", "in dir/a.jsonl", "--out", f"out $(touch {fake_cluster.marker})"]
    script = fake_cluster.root / "corpus.sbatch"
    script.write_text(render_sbatch(job, SlurmResources(nodes=2, cpus_per_task=4), workdir=workdir))
    job_id = 777
    env = fake_cluster.env(
        "localhost,node-b",
        job_id,
        CLOUD_RAY=str(fake_cluster.root / "fake-ray"),
        CLOUD_PYTHON=str(fake_cluster.root / "fake-python"),
    )
    result = run_script(script, env)
    assert result.returncode == 0, result.stdout + result.stderr
    head_ip = subprocess.run(
        ["hostname", "--ip-address"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    head = f"{head_ip}:{master_port(job_id)}"
    (build,) = fake_cluster.records("cloud-")
    assert build["argv"] == [*job, "--ray-address", head]
    rays = {r["node"]: r["argv"] for r in fake_cluster.records("ray-")}
    assert rays["localhost"] == [
        "start",
        "--head",
        f"--node-ip-address={head_ip}",
        f"--port={master_port(job_id)}",
        "--num-cpus=4",
        *RAY_WORKER_PORTS,
        "--block",
    ]
    assert rays["node-b"] == [
        "start",
        f"--address={head}",
        "--num-cpus=4",
        *RAY_WORKER_PORTS,
        "--block",
    ]
    waits = [
        json.loads(line) for line in (fake_cluster.record / "python.log").read_text().splitlines()
    ]
    wait = ["-m", "cluster.ray_jobs", "wait-for-nodes", head]
    assert [w[:7] for w in waits] == [
        [*wait, "1", "--timeout", "600"],
        [*wait, "2", "--timeout", "600"],
    ]
    # The first wait watches the head's step, the second both steps (their pids).
    assert [w[7::2] for w in waits] == [["--watch-pid"], ["--watch-pid", "--watch-pid"]]
    head_pid = waits[0][8]
    assert head_pid.isdigit() and waits[1][8] == head_pid and waits[1][10].isdigit()
    deadline = time.monotonic() + 20  # the EXIT trap stops both Ray nodes
    while len(list(fake_cluster.record.glob("ray-*.stopped"))) < 2:
        assert time.monotonic() < deadline, "Ray nodes were not stopped at the end"
        time.sleep(0.2)
    assert fake_cluster.no_marker_created()


# ----------------------------------------------------------------------------- Ray


def test_ray_dry_run_quotes_the_entrypoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "submit",
            "ray",
            "--address",
            "http://127.0.0.1:1",
            "--working-dir",
            str(tmp_path),
            "--env",
            "A=1 2",
            "--dry-run",
            "--",
            "scope",
            "encode",
            "my dir/x.cif",
            "$(id)",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "entrypoint: cloud scope encode 'my dir/x.cif' '$(id)'" in out
    runtime_env = json.loads(out.split("runtime_env: ", 1)[1])
    assert runtime_env["working_dir"] == str(tmp_path.resolve())
    assert runtime_env["env_vars"] == {"A": "1 2"}
    assert ".venv" in runtime_env["excludes"]
    assert main(["submit", "ray", "--address", "x", "--env", "1A=x", "--dry-run", "scope"]) == 2


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class LocalRay:
    dashboard: str
    gcs: str
    process: subprocess.Popen
    temp_dir: Path


@pytest.fixture(scope="module")
def local_ray_head() -> Iterator[LocalRay]:
    """A real Ray head (`ray start --head --block`) on loopback, with its own ports and temp
    dir, in its own session; stopped by its pid, stragglers by its process group."""
    pytest.importorskip("ray.job_submission")
    # Short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rayt", dir="/tmp"))
    ports = free_ports(10)
    env = {
        **os.environ,
        **LOOPBACK_ENV,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={ports[0]}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={ports[1]}",
        f"--node-manager-port={ports[2]}",
        f"--object-manager-port={ports[3]}",
        f"--ray-client-server-port={ports[4]}",
        f"--dashboard-agent-listen-port={ports[5]}",
        f"--dashboard-agent-grpc-port={ports[6]}",
        f"--metrics-export-port={ports[7]}",
        f"--runtime-env-agent-port={ports[8]}",
        f"--min-worker-port={ports[9]}",
        f"--max-worker-port={ports[9] + 30}",
        "--num-cpus=1",
        "--include-dashboard=true",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = open(temp_dir / "ray-start.log", "w")  # noqa: SIM115 (closed in teardown)
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    dashboard = f"http://127.0.0.1:{ports[1]}"
    try:
        wait_for_dashboard(dashboard, process, temp_dir)
        yield LocalRay(dashboard, f"127.0.0.1:{ports[0]}", process, temp_dir)
    finally:
        stop_ray_head(process)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_dashboard(dashboard: str, process: subprocess.Popen, temp_dir: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"ray start exited: {(temp_dir / 'ray-start.log').read_text()[-2000:]}")
        try:
            JobSubmissionClient(dashboard)
            return
        except (ConnectionError, RuntimeError, ValueError):
            if time.monotonic() > deadline:
                pytest.fail("the Ray dashboard never answered")
            time.sleep(1)


def stop_ray_head(process: subprocess.Popen) -> None:
    # SIGTERM to `ray start --block` makes it stop the processes it started; whatever is left
    # in its session (only processes started from it) is then killed by process group.
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_ray_head_listens_on_loopback_only(local_ray_head: LocalRay) -> None:
    psutil = pytest.importorskip("psutil")
    root = psutil.Process(local_ray_head.process.pid)
    processes = [root, *root.children(recursive=True)]
    listening = []
    for proc in processes:
        try:
            connections = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        listening += [c.laddr for c in connections if c.status == psutil.CONN_LISTEN]
    assert listening, "no listening socket found"
    assert {addr.ip for addr in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


@pytest.mark.slow
def test_ray_job_runs_cloud_command_and_succeeds(
    local_ray_head: LocalRay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cluster.ray_jobs import job_logs, wait_for_job

    working_dir = tmp_path / "job files"
    (working_dir / "my structures").mkdir(parents=True)
    (working_dir / "my structures" / "POSCAR").write_text(NACL_POSCAR)
    code = main(
        [
            "submit",
            "ray",
            "--address",
            local_ray_head.dashboard,
            "--working-dir",
            str(working_dir),
            # The editable install may predate cloud/; the job imports this checkout.
            "--env",
            f"PYTHONPATH={REPO}",
            "--",
            "scope",
            "encode",
            "my structures/POSCAR",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = out.split("submitted Ray job ", 1)[1].split()[0]
    follow = f"ray job logs --follow {job_id} --address {local_ray_head.dashboard}"
    assert follow in out
    status = wait_for_job(local_ray_head.dashboard, job_id, timeout=240)
    logs = job_logs(local_ray_head.dashboard, job_id)
    assert status == "SUCCEEDED", logs
    assert NACL_SCOPE in logs.splitlines()


def test_waiting_for_ray_nodes_stops_as_soon_as_a_ray_step_has_ended(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cluster.ray_jobs import main as ray_jobs_main
    from cluster.ray_jobs import process_ended

    reaped = subprocess.Popen(["true"])
    reaped.wait()
    zombie = subprocess.Popen(["true"])  # ended, not yet reaped
    deadline = time.monotonic() + 10
    while not process_ended(zombie.pid):
        assert time.monotonic() < deadline, "the child never ended"
        time.sleep(0.05)
    assert not process_ended(os.getpid())
    started = time.monotonic()
    # Nothing listens on port 9: without the watch this would retry for the whole timeout.
    for pid in (reaped.pid, zombie.pid):
        argv = ["wait-for-nodes", "127.0.0.1:9", "1", "--timeout", "600", "--watch-pid", str(pid)]
        assert ray_jobs_main(argv) == 1
        assert f"the Ray step (pid {pid}) ended before the cluster" in capsys.readouterr().err
    assert time.monotonic() - started < 5
    zombie.wait()
    # And scancel's SIGTERM ends the wait at once (ray.init, deaf to it, is not reached).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "cluster.ray_jobs", "wait-for-nodes", "127.0.0.1:9", "1"],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    waiting.terminate()
    assert waiting.wait(timeout=5) == -15


@pytest.mark.slow
def test_wait_for_nodes_sees_the_head(local_ray_head: LocalRay) -> None:
    # A subprocess: ray.init in this process would collide with the session's Ray.
    wait = [sys.executable, "-m", "cluster.ray_jobs", "wait-for-nodes", local_ray_head.gcs]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([*wait, "1", "--timeout", "120"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert f"Ray cluster at {local_ray_head.gcs}: 1 nodes" in ok.stderr
    short = subprocess.run([*wait, "2", "--timeout", "3"], env=env, capture_output=True, text=True)
    assert short.returncode == 1 and "has 1 of 2 nodes" in short.stderr
