"""sbatch scripts for `cloud` jobs: a launcher per node, a Ray cluster per allocation, requeue.

``render_sbatch`` turns a ``cloud`` command line (``["pretrain", "--config", ...]``) into a
bash script for ``sbatch``, in one of three shapes chosen by the command:

* training (``pretrain``, ``scaling sweep``, ``finetune``, ``debye``): one
  ``python -m train.launcher`` per node through ``srun --ntasks-per-node=1``; the first host
  of ``SLURM_JOB_NODELIST`` hosts the rendezvous store, on its ``NodeAddr`` only (the
  address Slurm itself reaches it by) and a port derived from the job id
  (:func:`master_port`), so every node agrees without talking; ``SLURM_NODEID`` is the node
  rank and the launcher numbers the local ranks. A one-node job rendezvouses through a
  private file and listens on nothing beyond loopback. On a requeue
  (``SLURM_RESTART_COUNT`` > 0) ``--resume`` is appended, so the run continues from its
  latest checkpoint.
* corpus builds (``corpus build``): a Ray head on the first node and one Ray worker on each
  other node (srun), a wait until all have joined, then the build with ``--ray-address``.
  Ray's workers get ports 10002-14999, below every job's head port.
* anything else: the command once, on the first node.

Every script asks for ``--requeue`` and ``--signal=B:USR1@<seconds>``: Slurm sends USR1 to
the batch shell before the time limit and the trap requeues the job (``scontrol requeue``).
Jobs preempted by Slurm are requeued by Slurm itself (``--requeue``); the script forwards
SIGTERM to the launcher and lets Slurm decide, so ``scancel`` still cancels.

Quoting: every user-provided token reaches the script through ``shlex.quote`` (a bash array
of the command's arguments, paths as single-quoted words) and the per-node launcher is a
constant string that receives them as ``"$@"``: nothing the user typed is ever parsed as
shell. ``#SBATCH`` values are restricted to a safe character set instead, since sbatch (not
bash) reads those lines.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

TRAINING_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("pretrain",),
    ("scaling", "sweep"),
    ("finetune",),
    ("debye",),
)
RAY_COMMANDS: tuple[tuple[str, ...], ...] = (("corpus", "build"),)
RESUME_FLAG = "--resume"
RAY_ADDRESS_FLAG = "--ray-address"

# Rendezvous / Ray head port = PORT_BASE + job id % PORT_SPAN: 15000–29999, below Linux's
# ephemeral range (32768+), so outgoing connections never hold it.
PORT_BASE = 15000
PORT_SPAN = 15000
# Ray's workers bind ports from a range that defaults to 10002-19999, which holds a third of
# the head ports above: `ray start --head --port=15001` then refuses to start (a real Slurm
# job 1 did). The scripts give Ray workers 10002-14999, disjoint from every job's port.
RAY_MIN_WORKER_PORT = 10002
RAY_MAX_WORKER_PORT = PORT_BASE - 1
DEFAULT_SIGNAL_SECONDS = 120
RAY_JOIN_TIMEOUT_S = 600

_DIRECTIVE_VALUE = re.compile(r"^[A-Za-z0-9_.,:@%+=/-]+$")


@dataclass(frozen=True)
class SlurmResources:
    """What the job asks Slurm for (the ``#SBATCH`` lines)."""

    nodes: int = 1
    gpus_per_node: int = 0
    """GPUs per node; the launcher starts this many workers per node (one on CPU-only nodes)."""
    cpus_per_task: int | None = None
    """CPUs of the one task per node (a launcher or a Ray node); None = the partition default."""
    partition: str | None = None
    time: str | None = None
    """Time limit in any sbatch form (``24:00:00``, ``2-00:00:00``)."""
    account: str | None = None
    job_name: str | None = None
    signal_seconds: int = DEFAULT_SIGNAL_SECONDS
    """USR1 is sent this long before the time limit; the job requeues itself on it."""

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"--nodes must be at least 1, got {self.nodes}")
        if self.gpus_per_node < 0:
            raise ValueError(f"--gpus-per-node must be >= 0, got {self.gpus_per_node}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise ValueError(f"--cpus-per-task must be at least 1, got {self.cpus_per_task}")
        if self.signal_seconds < 1:
            raise ValueError(f"signal_seconds must be positive, got {self.signal_seconds}")
        for name in ("partition", "time", "account", "job_name"):
            value = getattr(self, name)
            if value is not None and not _DIRECTIVE_VALUE.match(value):
                raise ValueError(
                    f"{name} {value!r} may only contain letters, digits and _.,:@%+=/- "
                    "(sbatch reads it from an #SBATCH line)"
                )


@dataclass(frozen=True)
class Executables:
    """Programs the script runs; each can be overridden when the job starts (see the script)."""

    cloud: str = "cloud"
    ray: str = "ray"
    python: str = "python3"

    @classmethod
    def beside_interpreter(cls) -> Executables:
        """The ``cloud`` and ``ray`` of this environment (its bin directory) and its python,
        by absolute path, so the job runs the same installation on every node."""
        bin_dir = Path(sys.executable).parent

        def find(name: str) -> str:
            candidate = bin_dir / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
            return shutil.which(name) or name

        return cls(find("cloud"), find("ray"), sys.executable)


def launch_kind(job: Sequence[str]) -> str:
    """``"training"``, ``"ray"`` or ``"single"``: how ``cloud <job>`` is launched."""
    words = _command_words(job)
    if any(words[: len(c)] == list(c) for c in TRAINING_COMMANDS):
        return "training"
    if any(words[: len(c)] == list(c) for c in RAY_COMMANDS):
        return "ray"
    return "single"


def _command_words(job: Sequence[str]) -> list[str]:
    words = []
    for token in job:
        if token.startswith("-"):
            break
        words.append(token)
    return words


def master_port(job_id: int) -> int:
    """The rendezvous (or Ray head) port of job ``job_id``, as the script computes it."""
    return PORT_BASE + job_id % PORT_SPAN


def default_job_name(job: Sequence[str]) -> str:
    words = _command_words(job)[:2] or ["job"]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "cloud-" + "-".join(words))


# ----------------------------------------------------------------------------- rendering


def render_sbatch(
    job: Sequence[str],
    resources: SlurmResources,
    *,
    workdir: str | os.PathLike,
    executables: Executables | None = None,
) -> str:
    """The sbatch script running ``cloud <job>`` in ``workdir`` on ``resources``."""
    job = list(job)
    if not job:
        raise ValueError("no cloud command to submit")
    kind = launch_kind(job)
    if kind == "ray" and RAY_ADDRESS_FLAG in job:
        raise ValueError(
            f"drop {RAY_ADDRESS_FLAG}: the job starts its own Ray cluster in the allocation "
            "and passes its address"
        )
    executables = executables or Executables.beside_interpreter()
    body = {"training": _training_body, "ray": _ray_body, "single": _single_body}[kind]
    sections = [
        _directives(job, resources),
        _preamble(job, workdir, executables, kind),
        _signal_handling(),
        body(resources),
    ]
    return "\n".join(sections)


def _directives(job: list[str], resources: SlurmResources) -> str:
    name = resources.job_name or default_job_name(job)
    lines = [
        "#!/usr/bin/env bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={resources.nodes}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if resources.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={resources.gpus_per_node}")
    if resources.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={resources.cpus_per_task}")
    for option in ("partition", "account", "time"):
        value = getattr(resources, option)
        if value:
            lines.append(f"#SBATCH --{option}={value}")
    lines += [
        # Relative to the directory sbatch runs in: `cloud submit slurm` runs it in the run dir.
        "#SBATCH --output=slurm-%x-%j.out",
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
        f"#SBATCH --signal=B:USR1@{resources.signal_seconds}",
    ]
    return "\n".join(lines) + "\n"


def _comment_safe(text: str) -> str:
    # A newline inside an argument would end the comment line and start a command.
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _preamble(job: list[str], workdir: str | os.PathLike, exe: Executables, kind: str) -> str:
    from cluster.manifest import tool_version

    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = _comment_safe(shlex.join(["cloud", *job]))
    job_args = "\n".join(f"    {shlex.quote(token)}" for token in job)
    lines = [
        f"# Generated by `cloud submit slurm` (cloud-crystal {tool_version()}) on {stamp}:",
        f"#   {command}",
        f"# Launch: {kind}.",
        "set -euo pipefail",
        "",
        "# Programs, overridable when the job starts (CLOUD_EXECUTABLE, CLOUD_RAY, CLOUD_PYTHON):",
        "# defaults are the installation that generated this script.",
        f"DEFAULT_CLOUD={shlex.quote(exe.cloud)}",
        f"DEFAULT_RAY={shlex.quote(exe.ray)}",
        f"DEFAULT_PYTHON={shlex.quote(exe.python)}",
        'CLOUD=${CLOUD_EXECUTABLE:-"$DEFAULT_CLOUD"}',
        'RAY=${CLOUD_RAY:-"$DEFAULT_RAY"}',
        'PYTHON=${CLOUD_PYTHON:-"$DEFAULT_PYTHON"}',
        "export CLOUD RAY PYTHON",
        "",
        "# The command's arguments, each a single shell word: nothing in them is expanded.",
        "# shellcheck disable=SC2016  # literal on purpose, '$' included",
        "JOB_ARGS=(",
        job_args,
        ")",
        f"cd {shlex.quote(str(workdir))}",
        "",
    ]
    return "\n".join(lines)


def _allocation() -> list[str]:
    """The allocation's hosts and the job's port (training and Ray launches)."""
    return [
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        "if (( ${#NODES[@]} == 0 )); then",
        '    echo "cloud job: no hosts in SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST:-}" >&2',
        "    exit 1",
        "fi",
        "NNODES=${#NODES[@]}",
        "# Same on every node without any exchange; distinct for jobs sharing a first node.",
        f"PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN} ))",
        "",
    ]


def _signal_handling() -> str:
    return "\n".join(
        [
            "# USR1 arrives --signal seconds before the time limit: requeue the job, which",
            "# restarts this script with SLURM_RESTART_COUNT set (training then resumes from its",
            "# latest checkpoint). TERM (scancel, or preemption, which Slurm requeues itself",
            "# thanks to --requeue) is passed on to the launcher and ends the script.",
            "LAUNCH_PID=",
            "stop_launcher() {",
            '    if [[ -n "$LAUNCH_PID" ]]; then',
            '        kill -TERM "$LAUNCH_PID" 2>/dev/null || true',
            '        wait "$LAUNCH_PID" || true',
            "    fi",
            "}",
            "requeue_job() {",
            '    echo "cloud job: time limit near, requeueing job $SLURM_JOB_ID" >&2',
            '    scontrol requeue "$SLURM_JOB_ID"',
            "    stop_launcher",
            "    exit 0",
            "}",
            "forward_term() {",
            '    echo "cloud job: SIGTERM, stopping" >&2',
            "    stop_launcher",
            "    exit 143",
            "}",
            "trap requeue_job USR1",
            "trap forward_term TERM",
            "",
        ]
    )


def _wait_for_launcher() -> list[str]:
    # In the background + wait, so the traps run as soon as a signal arrives (bash defers
    # traps until a foreground command returns).
    return [
        "LAUNCH_PID=$!",
        'wait "$LAUNCH_PID"',
        "",
    ]


def _training_body(resources: SlurmResources) -> str:
    nproc = max(resources.gpus_per_node, 1)
    lines = [
        *_allocation(),
        "RESUME_ARGS=()",
        "if (( ${SLURM_RESTART_COUNT:-0} > 0 )); then",
        f"    RESUME_ARGS=({RESUME_FLAG})",
        "fi",
        "",
        "# The rendezvous: node 0's launcher hosts the store on the address Slurm reaches that",
        "# node by (its NodeAddr, the cluster's network) and on no other interface.",
        'STORE_HOST=$(scontrol show node "${NODES[0]}" 2>/dev/null \\',
        "    | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p' | head -n 1 || true)",
        "STORE_HOST=${STORE_HOST:-${NODES[0]}}",
        f"NPROC_PER_NODE={nproc}",
        "export STORE_HOST PORT NNODES NPROC_PER_NODE",
        "",
        "# NCCL: abort a collective whose peer died instead of hanging until the time limit.",
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}",
        "export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}  # before torch 2.2",
        "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}",
        "# InfiniBand / network: adapt to the cluster's fabric. gloo and NCCL bind the interface",
        "# each node reaches STORE_HOST through unless these name another.",
        "# export NCCL_IB_DISABLE=0",
        "# export NCCL_IB_HCA=mlx5",
        "# export NCCL_IB_GID_INDEX=3",
        "# export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0",
        "",
        "# Runs on each node (srun, one task per node): SLURM_NODEID is the node rank; with one",
        "# task per node SLURM_PROCID equals it and SLURM_LOCALID is 0. train.launcher starts",
        "# NPROC_PER_NODE workers and gives them RANK, LOCAL_RANK and WORLD_SIZE; on one node",
        "# they meet through a private file and nothing listens beyond loopback.",
        "# shellcheck disable=SC2016  # expanded on each node, by the bash that srun starts",
        "NODE_LAUNCHER='",
        'if [[ "${SLURM_LOCALID:-0}" != 0 || "${SLURM_PROCID:?}" != "${SLURM_NODEID:?}" ]]; then',
        '    echo "cloud job: expected one task per node, got SLURM_PROCID=$SLURM_PROCID" \\',
        '        "SLURM_NODEID=$SLURM_NODEID SLURM_LOCALID=${SLURM_LOCALID:-}" >&2',
        "    exit 1",
        "fi",
        "export NODE_RANK=$SLURM_NODEID",
        'echo "cloud job: node $NODE_RANK of $NNODES ($(hostname)), rendezvous'
        + ' $STORE_HOST:$PORT" >&2',
        'exec "$PYTHON" -m train.launcher --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE" \\',
        '    --node-rank="$NODE_RANK" --rendezvous="$STORE_HOST:$PORT" -- "$@"',
        "'",
        'srun --nodes="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \\',
        '    bash -c "$NODE_LAUNCHER" cloud-node "$CLOUD" "${JOB_ARGS[@]}" "${RESUME_ARGS[@]}" &',
        *_wait_for_launcher(),
    ]
    return "\n".join(lines)


def _ray_body(resources: SlurmResources) -> str:
    start_flags = ""
    if resources.cpus_per_task:
        start_flags += f" --num-cpus={resources.cpus_per_task}"
    if resources.gpus_per_node:
        start_flags += f" --num-gpus={resources.gpus_per_node}"
    start_flags += (
        f" --min-worker-port={RAY_MIN_WORKER_PORT} --max-worker-port={RAY_MAX_WORKER_PORT}"
    )
    lines = [
        *_allocation(),
        "HEAD_NODE=${NODES[0]}",
        'HEAD_IP=$(srun --nodes=1 --ntasks=1 --nodelist="$HEAD_NODE" --overlap \\',
        "    hostname --ip-address | awk '{print $1}')",
        'RAY_HEAD="$HEAD_IP:$PORT"',
        "RAY_PIDS=()",
        "stop_ray() {",
        "    if (( ${#RAY_PIDS[@]} > 0 )); then",
        '        kill -TERM "${RAY_PIDS[@]}" 2>/dev/null || true',
        "    fi",
        "}",
        "trap stop_ray EXIT",
        "",
        "# Ray head on the first node, one Ray worker on each other node; --overlap lets the",
        "# later steps share the nodes these long-running steps hold.",
        'srun --nodes=1 --ntasks=1 --nodelist="$HEAD_NODE" --overlap \\',
        f'    "$RAY" start --head --node-ip-address="$HEAD_IP" --port="$PORT"{start_flags} --block &',
        "RAY_PIDS+=($!)",
        '"$PYTHON" -m cluster.ray_jobs wait-for-nodes "$RAY_HEAD" 1 '
        f'--timeout {RAY_JOIN_TIMEOUT_S} --watch-pid "${{RAY_PIDS[0]}}"',
        "if (( NNODES > 1 )); then",
        "    srun --nodes=$(( NNODES - 1 )) --ntasks=$(( NNODES - 1 )) --ntasks-per-node=1 \\",
        '        --exclude="$HEAD_NODE" --overlap \\',
        f'        "$RAY" start --address="$RAY_HEAD"{start_flags} --block &',
        "    RAY_PIDS+=($!)",
        "fi",
        "# Every `ray start` step is watched: one that ends stops the wait at once.",
        'WATCH=(); for pid in "${RAY_PIDS[@]}"; do WATCH+=(--watch-pid "$pid"); done',
        '"$PYTHON" -m cluster.ray_jobs wait-for-nodes "$RAY_HEAD" "$NNODES" '
        f'--timeout {RAY_JOIN_TIMEOUT_S} "${{WATCH[@]}}"',
        "",
        f'"$CLOUD" "${{JOB_ARGS[@]}}" {RAY_ADDRESS_FLAG} "$RAY_HEAD" &',
        *_wait_for_launcher(),
    ]
    return "\n".join(lines)


def _single_body(resources: SlurmResources) -> str:
    del resources  # one task on the first node, whatever was allocated
    lines = [
        'srun --nodes=1 --ntasks=1 "$CLOUD" "${JOB_ARGS[@]}" &',
        *_wait_for_launcher(),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- submitting


def write_sbatch(script: str, run_dir: str | os.PathLike, job_name: str) -> Path:
    """Save ``script`` as ``<run_dir>/<job_name>-<UTC time>.sbatch`` and return its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = run_dir / f"{job_name}-{stamp}.sbatch"
    counter = 1
    while path.exists():  # two submissions within a second
        path = run_dir / f"{job_name}-{stamp}-{counter}.sbatch"
        counter += 1
    path.write_text(script)
    path.chmod(0o755)
    return path


def submit_sbatch(script_path: str | os.PathLike, *, sbatch: str = "sbatch") -> str:
    """Run ``sbatch --parsable SCRIPT`` in the script's directory; returns the job id."""
    executable = shutil.which(sbatch)
    if executable is None:
        raise FileNotFoundError(
            f"{sbatch!r} not found on PATH: submit from a Slurm login node, or use --dry-run"
        )
    script_path = Path(script_path).resolve()
    result = subprocess.run(
        [executable, "--parsable", str(script_path)],
        cwd=script_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sbatch failed (exit {result.returncode}): {result.stderr.strip()}")
    return parse_job_id(result.stdout)


def parse_job_id(output: str) -> str:
    """The job id in sbatch's output (``--parsable``: ``id[;cluster]``; else the sentence)."""
    text = output.strip()
    match = re.search(r"Submitted batch job (\d+)", text) or re.match(r"^(\d+)(;\S+)?$", text)
    if not match:
        raise RuntimeError(f"cannot find a job id in sbatch's output: {text!r}")
    return match.group(1)
