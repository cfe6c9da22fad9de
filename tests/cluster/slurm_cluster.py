"""A real one-node Slurm cluster on loopback, for tests: munged, slurmctld and slurmd.

``start_cluster(root)`` writes a ``slurm.conf`` and a fresh MUNGE key under ``root``, starts
``munged`` on its own socket, ``slurmctld`` and ``slurmd`` in the foreground (``-D``, as
children of this process), waits until ``sinfo`` reports the node idle and returns a
:class:`SlurmCluster`; ``cluster.stop()`` ends the three daemons. Nothing is read from or
written to ``/etc/slurm`` or ``/etc/munge``: the clients find the cluster through
``SLURM_CONF`` (:meth:`SlurmCluster.env`) and the configuration names the MUNGE socket
(``AuthInfo``), so this cluster cannot touch a real one on the same machine.

Network: every daemon stays on loopback. ``SlurmctldHost=<host>(127.0.0.1)`` with
``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny`` makes slurmctld bind its port on
127.0.0.1 instead of 0.0.0.0 (its default), and slurmd, slurmstepd and srun bind
``NodeAddr=127.0.0.1``; munged listens on a Unix socket only. The ports are free ports chosen
at start (``SlurmctldPort``, ``SlurmdPort``, ``SrunPortRange``).

Why each setting: ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` because
a container has no cgroups to give Slurm; no accounting daemon (``sacct`` has nothing), so
``MinJobAge`` keeps finished jobs in ``scontrol show job`` for ten minutes; ``JobRequeue=1``
and ``ReturnToService=2`` so a requeued job comes back and the node never stays down after a
restart; ``SlurmdParameters=config_overrides`` so a machine with fewer CPUs than configured
does not drain the node; ``KillWait=5`` so a requeue or cancel ends a job's steps in seconds.

Daemons run as root (``SlurmUser=root``): slurmd must, to start jobs as their submitter.
:func:`unavailable_reason` says why a cluster cannot start here (binaries missing, not root);
tests skip with that reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
START_TIMEOUT_S = 60.0
SLURM_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")


def unavailable_reason() -> str | None:
    """Why a real Slurm cannot start here, or None when it can."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if find_program(name) is None]
    if missing:
        return (
            f"Slurm/MUNGE programs not installed: {', '.join(missing)} "
            "(`make tools` installs Debian's munge, slurmctld, slurmd and slurm-client)"
        )
    if os.geteuid() != 0:
        return "a real Slurm needs root here: slurmd starts jobs as their user"
    return None


def find_program(name: str) -> str | None:
    """``name`` on PATH or in the sbin directories, where Debian puts the daemons."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def free_port() -> int:
    """A TCP port free on loopback now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_range(width: int) -> tuple[int, int]:
    """``width`` consecutive ports free on loopback now, below the ephemeral range."""
    for start in range(40000, 60000 - width, width + 1):
        try:
            for port in range(start, start + width):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return start, start + width - 1
    raise RuntimeError(f"no {width} consecutive free ports on loopback")


class SlurmStartError(RuntimeError):
    """A daemon did not start; the message carries the tail of its log."""


@dataclass
class SlurmCluster:
    """A running one-node cluster: its files, ports and daemon processes."""

    root: Path
    node: str
    ctld_port: int
    slurmd_port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with ``SLURM_CONF`` set, so that
        ``sbatch``, ``srun`` and ``scontrol``, in the test and inside the jobs, talk to this
        cluster. The Slurm clients' own directory is put on PATH, and the variables of any
        enclosing Slurm job (tests run inside an allocation) are dropped: sbatch and srun
        would read them as options or as the job to join."""
        source = os.environ if base is None else base
        env = {k: v for k, v in source.items() if not k.startswith(SLURM_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf)
        bin_dirs = {str(Path(find_program(name) or "/usr/bin").parent) for name in CLIENTS}
        env["PATH"] = os.pathsep.join([*sorted(bin_dirs), env.get("PATH", "")])
        return env

    def command(self, *args: str, timeout: float = 30) -> str:
        """Run a Slurm client (``scontrol``, ``sinfo`` ...) against this cluster; its stdout."""
        result = subprocess.run(
            list(args), env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (JobState, Restarts, ExitCode, ...)."""
        line = self.command("scontrol", "show", "job", "-o", job_id).strip()
        return dict(re.findall(r"(\S+?)=(\S*)", line))

    def wait_for_job(self, job_id: str, timeout: float, poll: float = 1.0) -> dict[str, str]:
        """Block until job ``job_id`` has ended (COMPLETED, FAILED, ...); its last record.

        Requeued jobs pass through REQUEUED and PENDING again: only a final state ends the
        wait. Raises TimeoutError with the job record when ``timeout`` passes first."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
        final |= {"BOOT_FAIL", "DEADLINE", "PREEMPTED"}
        deadline = time.monotonic() + timeout
        while True:
            record = self.job(job_id)
            if record.get("JobState") in final:
                return record
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not end in {timeout:.0f} s: {record}")
            time.sleep(poll)

    def listening(self) -> dict[str, list[str]]:
        """Each daemon's listening TCP addresses, from ``ss -ltnp`` (empty if ss is absent)."""
        if shutil.which("ss") is None:
            return {}
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        found: dict[str, list[str]] = {}
        for name, process in self.processes.items():
            pid = f"pid={process.pid},"
            found[name] = [line.split()[3] for line in out.splitlines() if pid in line]
        return found

    def stop(self) -> None:
        """Cancel every job, then end slurmd, slurmctld and munged (TERM, then KILL after
        15 s), in that order. Jobs go first: a job's slurmstepd and processes outlive slurmd,
        and only slurmd's cancel (TERM, KILL after ``KillWait``) ends them."""
        if self.processes.get("slurmctld") and self.processes["slurmctld"].poll() is None:
            self._cancel_jobs()
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()

    def _cancel_jobs(self, timeout: float = 30) -> None:
        """``scancel`` every job and wait until none is pending, running or completing."""
        try:
            self.command("scancel", "--full", f"--user={os.getuid()}")
            deadline = time.monotonic() + timeout
            # squeue's default listing: pending, running, suspended, completing, configuring.
            while self.command("squeue", "-h", "-o", "%i").strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the daemons are stopped next regardless

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / "log" / f"{name}.log"
        if not path.is_file():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def write_config(root: Path, node: str, ctld_port: int, slurmd_port: int) -> Path:
    """The cluster's ``slurm.conf`` under ``root``: one node ``node`` at 127.0.0.1 with
    this machine's CPUs (at most 2, so the tests behave alike everywhere), one default
    partition ``debug``."""
    cpus = max(1, min(2, os.cpu_count() or 1))
    srun_low, srun_high = free_port_range(32)
    lines = {
        "ClusterName": "cloudtest",
        "SlurmctldHost": f"{node}(127.0.0.1)",
        "SlurmctldPort": str(ctld_port),
        "SlurmdPort": str(slurmd_port),
        "SrunPortRange": f"{srun_low}-{srun_high}",
        # Bind 127.0.0.1, not 0.0.0.0: slurmctld (NoCtldInAddrAny), everything else (NoInAddrAny).
        "CommunicationParameters": "NoCtldInAddrAny,NoInAddrAny",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        # cred_expire is also how long a requeued job waits before it may start again
        # (default 120 s); 15 s keeps the requeue test short and still covers a busy launch.
        "AuthInfo": f"socket={root / 'munge' / 'munge.socket'},cred_expire=15",
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "StateSaveLocation": str(root / "state"),
        "SlurmdSpoolDir": str(root / "spool" / "%n"),
        "SlurmctldPidFile": str(root / "run" / "slurmctld.pid"),
        "SlurmdPidFile": str(root / "run" / "slurmd.pid"),
        "SlurmctldLogFile": str(root / "log" / "slurmctld.log"),
        "SlurmdLogFile": str(root / "log" / "slurmd.log"),
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "SwitchType": "switch/none",
        "MpiDefault": "none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "SchedulerType": "sched/backfill",
        # Scheduling passes every second: with the defaults a requeued job waited about 26 s
        # for the next pass (the main loop runs each 60 s, backfill each 30 s).
        "SchedulerParameters": "sched_interval=1,bf_interval=1",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",
        "SlurmdParameters": "config_overrides",
        "ReturnToService": "2",
        "JobRequeue": "1",
        "MinJobAge": "600",
        "KillWait": "5",
        "InactiveLimit": "0",
        "Waittime": "0",
        "SlurmctldTimeout": "30",
        "SlurmdTimeout": "60",
        "MailProg": "/bin/true",
        "PlugStackConfig": str(root / "plugstack.conf"),
    }
    text = "\n".join(f"{key}={value}" for key, value in lines.items())
    text += (
        f"\nNodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} "
        "RealMemory=1000 State=UNKNOWN\n"
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
    )
    for sub in ("state", "spool", "run", "log", "munge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # An empty SPANK stack: the system's /etc/slurm/plugstack.conf is not this cluster's.
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(text)
    return conf


def start_munged(root: Path) -> subprocess.Popen:
    """munged in the foreground on ``root/munge/munge.socket`` with a new random key."""
    munge = root / "munge"
    munge.mkdir(parents=True, exist_ok=True)
    munge.chmod(0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    log = root / "log" / "munged.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            find_program("munged") or "munged",
            "--foreground",
            "--force",  # the temp dir's ancestors are not munged's usual directories
            f"--socket={munge / 'munge.socket'}",
            f"--key-file={key}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={log}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def _wait(
    what: str,
    ready: Callable[[], bool],
    processes: dict[str, subprocess.Popen],
    cluster: SlurmCluster,
) -> None:
    """Poll ``ready`` until true; raise SlurmStartError if a daemon exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        for name, process in processes.items():
            if process.poll() is not None:
                raise SlurmStartError(
                    f"{name} exited with {process.returncode} while waiting for {what}:\n"
                    + cluster.log_tail(name)
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{cluster.log_tail(n)}" for n in processes)
            raise SlurmStartError(f"timed out waiting for {what}\n{logs}")
        time.sleep(0.3)


def start_cluster(root: Path) -> SlurmCluster:
    """Write the configuration under ``root``, start the daemons and wait for an idle node.

    Raises :class:`SlurmStartError` (after stopping whatever started) when a daemon exits or
    the node is not idle within ``START_TIMEOUT_S``."""
    root.mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(root, node, free_port(), free_port())
    write_config(root, node, cluster.ctld_port, cluster.slurmd_port)
    env = cluster.env()
    out = subprocess.DEVNULL
    try:
        cluster.processes["munged"] = start_munged(root)
        _wait("munged's socket", cluster.munge_socket.exists, cluster.processes, cluster)
        cluster.processes["slurmctld"] = subprocess.Popen(
            [find_program("slurmctld") or "slurmctld", "-D", "-i", "-f", str(cluster.conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _wait("slurmctld", lambda: _responds(cluster), cluster.processes, cluster)
        cluster.processes["slurmd"] = subprocess.Popen(
            [find_program("slurmd") or "slurmd", "-D", "-N", node, "-f", str(cluster.conf)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _wait(f"node {node} idle", lambda: _node_idle(cluster), cluster.processes, cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _responds(cluster: SlurmCluster) -> bool:
    try:
        cluster.command("scontrol", "ping", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def _node_idle(cluster: SlurmCluster) -> bool:
    try:
        states = cluster.command("sinfo", "-h", "-N", "-o", "%t", timeout=10).split()
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return states == ["idle"]
