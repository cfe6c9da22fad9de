"""Start the N processes of a pre-training run on this machine, listening on loopback only.

torchrun's agent hosts its rendezvous TCPStore on every interface (``*:PORT``, IPv4 and
IPv6) whatever ``--master-addr`` says, so a 2-process run on a laptop was reachable from the
network. Here rank ``r`` of ``N`` is a plain ``python -m train.cli pretrain ...`` process
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` set, and
``CLOUD_INIT_METHOD=file://...``: ``train.distributed.init_distributed`` rendezvouses
through that file (a FileStore in a private temporary directory, no socket), and gloo's and
NCCL's own sockets are bound to the loopback interface (``GLOO_SOCKET_IFNAME`` and
``NCCL_SOCKET_IFNAME``). ``MASTER_ADDR`` and ``MASTER_PORT`` are removed from the workers'
environment, so nothing can fall back to an ``env://`` store.

The launcher supervises like torchrun: output of every rank goes to one log (lines prefixed
``[rank R]``), rank 0's also to this process's stdout and stderr when asked; the first worker
to fail stops the others and the launch raises :class:`WorkerFailed` with the log's tail;
SIGINT and SIGTERM are forwarded to the workers, and once they are down the signal takes its
usual course here (``KeyboardInterrupt`` for SIGINT). Several nodes still go through torchrun
(README, ``cluster/slurm.py``), whose store must be reachable by the other nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from train.common.paths import env_with_repository
from train.distributed import INIT_METHOD_ENV, LAUNCHER_PID_ENV, bind_loopback

TAIL_LINES = 40
"""Lines of the log a failure shows."""
STOP_GRACE_S = 10.0
"""How long stopped workers get to exit before they are killed."""
POLL_S = 0.1
TIMEOUT = -1
"""What :func:`_wait` returns when the deadline passed."""

# A worker started by another launcher must not launch again; torchrun and ours set these.
LAUNCHED_ENV = ("RANK", "LOCAL_RANK")
# Rendezvous settings of other launchers that would mislead a worker of this one.
FOREIGN_ENV = ("MASTER_ADDR", "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "NODE_RANK")


class WorkerFailed(RuntimeError):
    """A worker exited with a non-zero status; the others were stopped.

    ``str()`` is one line naming the rank, its exit status and the log, then the log's tail.
    """

    def __init__(self, rank: int, nproc: int, returncode: int, log_path: Path, tail: str):
        self.rank = rank
        self.nproc = nproc
        self.returncode = returncode
        self.log_path = log_path
        self.tail = tail
        status = (
            f"killed by signal {-returncode}"
            if returncode < 0
            else f"exited with code {returncode}"
        )
        self.line = (
            f"pretraining failed: rank {rank} of {nproc} {status}; any rank still running "
            f"was stopped (log: {log_path})"
        )
        super().__init__(f"{self.line}\n{tail}")


def inside_launched_worker(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is already a worker of a launcher (torchrun, deepspeed, ours)."""
    env = os.environ if env is None else env
    return any(name in env for name in LAUNCHED_ENV)


def pretrain_command(
    config_path: str | os.PathLike, overrides: Sequence[str] = (), *, resume: bool = False
) -> list[str]:
    """The command line of one worker: ``python -m train.cli pretrain --config ...``."""
    return [
        sys.executable,
        "-m",
        "train.cli",
        "pretrain",
        "--config",
        str(config_path),
        *overrides,
        *(["--resume"] if resume else []),
    ]


def worker_env(
    base: Mapping[str, str], *, rank: int, nproc: int, init_method: str
) -> dict[str, str]:
    """The environment of rank ``rank`` of ``nproc``: ``base`` with this launch's ranks, its
    file rendezvous, loopback-bound collectives and none of another launcher's settings."""
    env = env_with_repository(base)
    for name in FOREIGN_ENV:
        env.pop(name, None)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        **{INIT_METHOD_ENV: init_method, LAUNCHER_PID_ENV: str(os.getpid())},
    )
    bind_loopback(env, force=True)
    if nproc > 1:
        env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does for several processes
    if "DS_ACCELERATOR" not in env and not _cuda_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _cuda_available() -> bool:
    """Whether torch sees a GPU, asked only when a caller already imported torch (a child
    process decides for itself otherwise, in ``train.distributed.select_accelerator``)."""
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_available())


def launch_workers(
    command: Sequence[str],
    *,
    nproc: int,
    log_path: str | os.PathLike,
    env: Mapping[str, str] | None = None,
    echo: bool = False,
    timeout: float | None = None,
) -> None:
    """Run ``command`` as ranks 0 .. ``nproc``-1 of one job on this machine; return when all
    exited with status 0.

    ``env`` (default: this process's environment) is the workers' base environment (see
    :func:`worker_env`). Every rank's stdout and stderr go, line by line and prefixed
    ``[rank R]``, to ``log_path`` (overwritten); with ``echo`` rank 0's also go unchanged to
    this process's stdout and stderr. Raises :class:`WorkerFailed` when a worker fails (the
    others are stopped first) and ``subprocess.TimeoutExpired`` after ``timeout`` seconds (all
    stopped). On SIGINT or SIGTERM (when called from the main thread) the workers get the same
    signal, are killed if they outlive ``STOP_GRACE_S``, and the signal then acts here as it
    would have without the launcher.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ if env is None else env)
    deadline = None if timeout is None else time.monotonic() + timeout
    # Off the main thread no handler can be installed: then the workers stay in our process
    # group, so a terminal's Ctrl-C still reaches them.
    supervise_signals = threading.current_thread() is threading.main_thread()
    with (
        _rendezvous_file() as init_method,
        log_path.open("w", encoding="utf-8", errors="replace") as log,
    ):
        writer = _LogWriter(log)
        workers: list[subprocess.Popen[bytes]] = []
        readers: list[threading.Thread] = []
        with _forward_signals(workers, enabled=supervise_signals) as received:
            try:
                for rank in range(nproc):
                    worker = subprocess.Popen(
                        list(command),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env=worker_env(base, rank=rank, nproc=nproc, init_method=init_method),
                        start_new_session=supervise_signals,
                    )
                    workers.append(worker)
                    echo_rank = echo and rank == 0
                    for stream, echo_to in (
                        (worker.stdout, sys.stdout),
                        (worker.stderr, sys.stderr),
                    ):
                        readers.append(
                            _start_reader(stream, writer, rank, echo_to if echo_rank else None)
                        )
                outcome = _wait(workers, received, deadline)
            finally:
                # After a forwarded signal the workers are already stopping: only wait.
                _stop(workers, signal_first=not received)
                for reader in readers:
                    reader.join(timeout=STOP_GRACE_S)
    # Outside the block, so the rendezvous directory is gone even if the signal ends us.
    if received:
        signal.raise_signal(received[0])
    if outcome == TIMEOUT:
        raise subprocess.TimeoutExpired(list(command), timeout or 0.0)
    if outcome is not None:
        returncode = workers[outcome].returncode
        raise WorkerFailed(outcome, nproc, returncode, log_path, log_tail(log_path))


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait(
    workers: Sequence[subprocess.Popen[bytes]], received: list[int], deadline: float | None
) -> int | None:
    """Poll until every worker exited 0 or a signal arrived (None), one failed (its rank) or
    the deadline passed (``TIMEOUT``)."""
    while not received:
        for rank, worker in enumerate(workers):
            if worker.poll() not in (None, 0):
                return rank
        if all(worker.returncode == 0 for worker in workers):
            return None
        if deadline is not None and time.monotonic() > deadline:
            return TIMEOUT
        time.sleep(POLL_S)
    return None


def _stop(workers: Sequence[subprocess.Popen[bytes]], *, signal_first: bool) -> None:
    """SIGTERM every worker still running (with ``signal_first``), then kill those alive after
    ``STOP_GRACE_S``."""
    if signal_first:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        try:
            worker.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@contextmanager
def _forward_signals(
    workers: Sequence[subprocess.Popen[bytes]], *, enabled: bool
) -> Iterator[list[int]]:
    """While inside, SIGINT and SIGTERM are passed on to ``workers`` and recorded in the list
    yielded (the first one is re-raised by the caller once the workers are down)."""
    received: list[int] = []
    if not enabled:
        yield received
        return

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        for worker in workers:
            worker.send_signal(signum)  # does nothing to one that has exited

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _rendezvous_file() -> Iterator[str]:
    """A ``file://`` URL in a fresh private directory (mode 0700), removed afterwards.

    A FileStore left over from an earlier launch would join the next one to it, hence a new
    directory each time; a local temporary directory, because a FileStore needs working file
    locks, which a network file system holding the run directory may not give.
    """
    directory = tempfile.mkdtemp(prefix="cloud-rendezvous-")
    try:
        yield f"file://{Path(directory, 'store')}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _LogWriter:
    """Whole lines from several ranks into one log, each prefixed ``[rank R]``."""

    def __init__(self, log: IO[str]) -> None:
        self.log = log
        self.lock = threading.Lock()

    def write_line(self, rank: int, line: bytes) -> None:
        # A progress bar redraws its line after each \r: the log keeps the last drawing.
        text = line.decode("utf-8", errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1]
        with self.lock:
            self.log.write(f"[rank {rank}] {text}\n")
            self.log.flush()


def _echo(stream: IO[str], chunk: bytes) -> None:
    """``chunk`` to a text stream as it came (bytes where the stream has a buffer)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
        buffer.flush()
    else:
        stream.write(chunk.decode("utf-8", errors="replace"))
        stream.flush()


def _start_reader(
    stream: IO[bytes] | None, writer: _LogWriter, rank: int, echo_to: IO[str] | None
) -> threading.Thread:
    """A thread copying ``stream`` into the log by lines and, raw, into ``echo_to``."""
    assert stream is not None

    def copy() -> None:
        pending = b""
        fd = stream.fileno()
        while chunk := os.read(fd, 1 << 16):
            if echo_to is not None:
                _echo(echo_to, chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                writer.write_line(rank, line)
        if pending:
            writer.write_line(rank, pending)
        stream.close()

    thread = threading.Thread(target=copy, name=f"rank-{rank}-output", daemon=True)
    thread.start()
    return thread
