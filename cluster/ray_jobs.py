"""`cloud` jobs on a running Ray cluster, through Ray's job submission API.

``submit_job`` sends ``cloud <job...>`` (one shell-quoted entrypoint) with a runtime
environment: the working directory, uploaded by Ray, and environment variables. The job runs
on the cluster's own Python environment, so ``cloud`` must be installed there.

``python -m cluster.ray_jobs wait-for-nodes ADDRESS COUNT`` blocks until a Ray cluster has
COUNT live nodes; the Slurm corpus-build script uses it between starting the Ray nodes and
starting the build.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Never worth uploading with a working directory: environments, caches, run outputs.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".venv",
    "runs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
)
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def build_entrypoint(job: Sequence[str], executable: str = "cloud") -> str:
    """``cloud <job...>`` as one shell command line, every token quoted."""
    if not job:
        raise ValueError("no cloud command to submit")
    return shlex.join([executable, *job])


def parse_env(assignments: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` → dict; names must be valid environment variable names."""
    env: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise ValueError(f"--env {item!r} is not NAME=VALUE with a valid variable name")
        env[name] = value
    return env


def build_runtime_env(
    working_dir: str | os.PathLike | None = None,
    env_vars: Mapping[str, str] | None = None,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
) -> dict[str, Any]:
    """Ray runtime environment: the working directory (uploaded) and environment variables."""
    runtime_env: dict[str, Any] = {}
    if working_dir is not None:
        path = Path(working_dir).resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"--working-dir {path}: no such directory")
        runtime_env["working_dir"] = str(path)
        runtime_env["excludes"] = list(excludes)
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def client(address: str) -> Any:
    """A ``JobSubmissionClient`` for the dashboard at ``address`` (``http://host:8265``)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit_job(
    address: str,
    job: Sequence[str],
    *,
    working_dir: str | os.PathLike | None = None,
    env_vars: Mapping[str, str] | None = None,
    executable: str = "cloud",
    submission_id: str | None = None,
) -> str:
    """Submit ``cloud <job...>`` to the Ray cluster at ``address``; returns the job id."""
    return client(address).submit_job(
        entrypoint=build_entrypoint(job, executable),
        runtime_env=build_runtime_env(working_dir, env_vars) or None,
        submission_id=submission_id,
        metadata={"submitted_by": "cloud submit ray", "command": " ".join(job[:2])},
    )


def wait_for_job(
    address: str, job_id: str, *, timeout: float = 600.0, poll_interval: float = 1.0
) -> str:
    """Poll until job ``job_id`` ends; returns its status (SUCCEEDED, FAILED or STOPPED)."""
    jobs = client(address)
    deadline = time.monotonic() + timeout
    while True:
        status = str(jobs.get_job_status(job_id).value)
        if status in TERMINAL_STATUSES:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(poll_interval)


def job_logs(address: str, job_id: str) -> str:
    return client(address).get_job_logs(job_id)


def follow_command(address: str, job_id: str) -> str:
    """The shell command that streams the job's logs."""
    return shlex.join(["ray", "job", "logs", "--follow", job_id, "--address", address])


def wait_for_nodes(
    address: str,
    count: int,
    *,
    timeout: float = 600.0,
    poll_interval: float = 2.0,
    watch_pids: Sequence[int] = (),
) -> int:
    """Block until the Ray cluster at ``address`` (GCS ``host:port``) has ``count`` live
    nodes; returns how many it has. Raises ``TimeoutError`` naming the shortfall, and
    ``ChildProcessError`` as soon as one of ``watch_pids`` (the steps running ``ray start``)
    has ended: a head that failed to start is reported at once, not after ``timeout``."""
    import ray

    deadline = time.monotonic() + timeout

    def check_steps() -> None:
        ended = [pid for pid in watch_pids if process_ended(pid)]
        if ended:
            raise ChildProcessError(
                f"the Ray step (pid {', '.join(map(str, ended))}) ended before the cluster at "
                f"{address} had {count} nodes; its error is in the job's output above"
            )

    while True:
        check_steps()
        try:
            # A plain connect first: ray.init blocks ~35 s in C++ on a port nobody answers,
            # deaf to SIGTERM (scancel) and to the watched steps meanwhile.
            if not gcs_port_open(address):
                raise ConnectionError(address)
            ray.init(address=address, log_to_driver=False, logging_level="warning")
            break
        except ConnectionError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no Ray head answering at {address} after {timeout:.0f} s"
                ) from None
            time.sleep(poll_interval)
    try:
        while True:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            if alive >= count:
                return alive
            check_steps()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Ray cluster at {address} has {alive} of {count} nodes after {timeout:.0f} s"
                )
            time.sleep(poll_interval)
    finally:
        ray.shutdown()


def gcs_port_open(address: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def process_ended(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie (ended, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # someone else's process: alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.ray_jobs")
    actions = parser.add_subparsers(dest="action", required=True)
    wait = actions.add_parser("wait-for-nodes", help="wait until a Ray cluster has N nodes")
    wait.add_argument("address", help="GCS address host:port")
    wait.add_argument("count", type=int)
    wait.add_argument("--timeout", type=float, default=600.0)
    wait.add_argument(
        "--watch-pid",
        type=int,
        action="append",
        default=[],
        help="stop waiting as soon as this process (a `ray start` step) has ended",
    )
    args = parser.parse_args(argv)
    try:
        alive = wait_for_nodes(
            args.address, args.count, timeout=args.timeout, watch_pids=args.watch_pid
        )
    except (TimeoutError, ChildProcessError) as exc:
        print(f"cluster.ray_jobs: {exc}", file=sys.stderr)
        return 1
    print(f"Ray cluster at {args.address}: {alive} nodes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
