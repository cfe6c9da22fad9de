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
usual course here (``KeyboardInterrupt`` for SIGINT).

Several nodes: one launcher per node (``python -m train.launcher --nnodes M --node-rank R
--nproc-per-node N --rendezvous HOST:PORT -- COMMAND...``, what ``cluster/slurm.py``'s
scripts run through ``srun``). Ranks are ``R * N + local rank``; node 0's launcher hosts a
TCPStore on ``HOST:PORT`` only, a socket it binds to that one address and hands to the store
(torchrun's store, which takes no bind address, listens on every interface), and every
worker joins it as a client (``CLOUD_INIT_METHOD=store://IP:PORT``). gloo and NCCL bind the
interface each node reaches ``HOST`` through, unless ``GLOO_SOCKET_IFNAME`` /
``NCCL_SOCKET_IFNAME`` already say otherwise.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from train.common.paths import env_with_repository
from train.distributed import (
    INIT_METHOD_ENV,
    LAUNCHER_PID_ENV,
    STORE_SCHEME,
    bind_interface,
    bind_loopback,
    interface_towards,
)

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

    ``str()`` is one line naming the job, the rank, its exit status and the log, then the
    log's tail.
    """

    def __init__(
        self,
        rank: int,
        nproc: int,
        returncode: int,
        log_path: Path | None,
        tail: str,
        job: str = "pretraining",
    ):
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
        where = log_path if log_path is not None else "the lines above"
        self.line = (
            f"{job} failed: rank {rank} of {nproc} {status}; any rank still running "
            f"was stopped (log: {where})"
        )
        super().__init__(f"{self.line}\n{tail}")


@dataclass(frozen=True)
class NodeLayout:
    """This node's place in a launch across several nodes, one launcher per node."""

    nnodes: int
    """Nodes of the job, each running one launcher with the same ``nproc``."""
    node_rank: int
    """This node's rank, 0 .. ``nnodes`` - 1; node 0's launcher hosts the store."""
    host: str
    """An address (or name) of node 0 that every node reaches; the store listens there only."""
    port: int
    """The store's TCP port on ``host``."""

    def __post_init__(self) -> None:
        if self.nnodes < 1:
            raise ValueError(f"--nnodes must be at least 1, got {self.nnodes}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"--node-rank must be 0-{self.nnodes - 1}, got {self.node_rank}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"the rendezvous port must be 1-65535, got {self.port}")

    @classmethod
    def parse(cls, rendezvous: str, *, nnodes: int, node_rank: int) -> NodeLayout:
        """From ``HOST:PORT`` (``[IPv6]:PORT`` for an IPv6 literal)."""
        host, sep, port = rendezvous.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--rendezvous must be HOST:PORT, got {rendezvous!r}")
        return cls(nnodes=nnodes, node_rank=node_rank, host=host.strip("[]"), port=int(port))

    def address(self) -> str:
        """``host`` as one IP, the same on every node (IPv4 preferred): what the store binds
        and the workers connect to."""
        try:
            found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"rendezvous host {self.host!r} does not resolve: {exc}") from exc
        found.sort(key=lambda entry: entry[0] != socket.AF_INET)
        return str(found[0][4][0])

    def resolved(self) -> NodeLayout:
        """This layout with ``host`` looked up once (:meth:`address`): later lookups of an IP
        literal ask no name server."""
        return replace(self, host=self.address())


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
    base: Mapping[str, str],
    *,
    rank: int,
    nproc: int,
    init_method: str,
    layout: NodeLayout | None = None,
    interface: str | None = None,
) -> dict[str, str]:
    """The environment of local rank ``rank`` of this node's ``nproc``: ``base`` with this
    launch's ranks, its rendezvous and none of another launcher's settings; collectives bound
    to loopback on one machine, to ``interface`` (this node's interface towards node 0, which
    a launch across the nodes of ``layout`` must name) across several (a user's
    ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` then stands)."""
    if layout is not None and not interface:
        raise ValueError("a launch across nodes needs the interface towards node 0")
    env = env_with_repository(base)
    for name in FOREIGN_ENV:
        env.pop(name, None)
    nnodes, node_rank = (layout.nnodes, layout.node_rank) if layout else (1, 0)
    env.update(
        RANK=str(node_rank * nproc + rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nnodes * nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        **{INIT_METHOD_ENV: init_method, LAUNCHER_PID_ENV: str(os.getpid())},
    )
    if layout is None:
        bind_loopback(env, force=True)
    else:
        bind_interface(env, interface, force=False)
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
    log_path: str | os.PathLike | None,
    env: Mapping[str, str] | None = None,
    echo: bool = False,
    timeout: float | None = None,
    layout: NodeLayout | None = None,
) -> None:
    """Run ``command`` as ranks 0 .. ``nproc``-1 of one job on this machine (this node's
    ``nproc`` ranks of a job across the nodes of ``layout``); return when all exited with
    status 0.

    ``env`` (default: this process's environment) is the workers' base environment (see
    :func:`worker_env`). Every rank's stdout and stderr go, line by line and prefixed
    ``[rank R]``, to ``log_path`` (overwritten; None: this process's stdout); with ``echo``
    rank 0's also go unchanged to this process's stdout and stderr. Raises
    :class:`WorkerFailed` when a worker fails (the others are stopped first) and
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds (all stopped). On SIGINT or
    SIGTERM (when called from the main thread) the workers get the same signal, are killed if
    they outlive ``STOP_GRACE_S``, and the signal then acts here as it would have without the
    launcher.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ if env is None else env)
    deadline = None if timeout is None else time.monotonic() + timeout
    # Looked up once: the store's address and the interface towards it must agree.
    address = layout.address() if layout is not None else None
    interface = None
    if address is not None:
        interface = base.get("GLOO_SOCKET_IFNAME") or interface_towards(address)
    # Off the main thread no handler can be installed: then the workers stay in our process
    # group, so a terminal's Ctrl-C still reaches them.
    supervise_signals = threading.current_thread() is threading.main_thread()
    with (
        _rendezvous(layout, address) as init_method,
        _log_stream(log_path) as log,
    ):
        writer = _LogWriter(log, first_rank=nproc * (layout.node_rank if layout else 0))
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
                        env=worker_env(
                            base,
                            rank=rank,
                            nproc=nproc,
                            init_method=init_method,
                            layout=layout,
                            interface=interface,
                        ),
                        start_new_session=supervise_signals,
                    )
                    workers.append(worker)
                    echo_rank = echo and rank == 0 and log_path is not None
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
        world = nproc * (layout.nnodes if layout else 1)
        first = nproc * (layout.node_rank if layout else 0)
        raise WorkerFailed(
            first + outcome, world, returncode, log_path, writer.tail(), _job_name(command)
        )


def _job_name(command: Sequence[str]) -> str:
    """What the workers run, for a failure's first line: the ``cloud`` command word."""
    words = [os.path.basename(word) for word in command]
    jobs = {"pretrain": "pretraining", "finetune": "fine-tuning", "debye": "CLOUD-DEBYE"}
    for word in words:
        if word in jobs:
            return jobs[word]
    if "scaling" in words:
        return "the scaling sweep"
    return words[0] if words else "the job"


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
    yielded (the first one is re-raised by the caller once the workers are down).

    A signal this process ignores stays ignored (a job started in the background by a
    non-interactive shell, or under ``nohup``, ignores SIGINT, and so do its workers): taking
    it would stop nothing and end the launch with status 0."""
    received: list[int] = []
    if not enabled:
        yield received
        return

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        for worker in workers:
            worker.send_signal(signum)  # does nothing to one that has exited

    previous = {
        sig: signal.signal(sig, forward)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _log_stream(log_path: Path | None) -> Iterator[IO[str]]:
    """The log file, overwritten, or this process's stdout (left open) for None."""
    if log_path is None:
        yield sys.stdout
        return
    with log_path.open("w", encoding="utf-8", errors="replace") as log:
        yield log


@contextmanager
def _rendezvous(layout: NodeLayout | None, address: str | None) -> Iterator[str]:
    """Where this launch's workers meet: a private file on one machine, else the store of
    :func:`_hosted_store` on ``address`` (node 0's IP: hosted here on node 0, joined over the
    network elsewhere)."""
    if layout is None or address is None:
        with _rendezvous_file() as url:
            yield url
        return
    url = f"{STORE_SCHEME}{f'[{address}]' if ':' in address else address}:{layout.port}"
    if layout.node_rank != 0:
        yield url
        return
    with _hosted_store(address, layout.port):
        yield url


@contextmanager
def _hosted_store(address: str, port: int) -> Iterator[None]:
    """A TCPStore server on ``address:port`` and nowhere else, while inside.

    The socket is bound here and handed to the store (``master_listen_fd``): a TCPStore
    binds every interface when it opens its own.
    """
    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            raise OSError(f"cannot host the rendezvous store on {address}:{port}: {exc}") from exc
        sock.listen(socket.SOMAXCONN)
        # The store owns the descriptor from here on (it closes it).
        store = dist.TCPStore(
            address, port, None, True, wait_for_workers=False, master_listen_fd=sock.detach()
        )
    try:
        yield
    finally:
        del store


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
    """Whole lines from several ranks into one log, each prefixed ``[rank R]``; the last
    ``TAIL_LINES`` are kept for a failure's message."""

    def __init__(self, log: IO[str], first_rank: int = 0) -> None:
        self.log = log
        self.first_rank = first_rank
        self.lock = threading.Lock()
        self.last: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def write_line(self, rank: int, line: bytes) -> None:
        # A progress bar redraws its line after each \r: the log keeps the last drawing.
        text = line.decode("utf-8", errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1]
        entry = f"[rank {self.first_rank + rank}] {text}"
        with self.lock:
            self.log.write(entry + "\n")
            self.log.flush()
            self.last.append(entry)

    def tail(self) -> str:
        with self.lock:
            return "\n".join(self.last)


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


# --------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.launcher [--nnodes M --node-rank R --rendezvous HOST:PORT]
    --nproc-per-node N -- COMMAND...``: this node's ``N`` workers of ``COMMAND``."""
    parser = argparse.ArgumentParser(
        prog="python -m train.launcher",
        description="Start this node's workers of a distributed job (one launcher per node); "
        "nothing listens beyond loopback on one node, and only node 0's store on HOST "
        "across several.",
    )
    parser.add_argument("--nnodes", type=int, default=1, help="nodes of the job (default 1)")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (default 0)")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="workers on each node")
    parser.add_argument(
        "--rendezvous",
        metavar="HOST:PORT",
        help="node 0's address and a free port, reached by every node (needed with --nnodes > 1)",
    )
    parser.add_argument("--log", help="file for every rank's lines (default: stdout)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given (after --)")
    if args.nproc_per_node < 1:
        parser.error(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    layout = None
    if args.nnodes != 1 or args.node_rank != 0:
        if not args.rendezvous:
            parser.error("--rendezvous HOST:PORT is needed with --nnodes > 1")
        try:
            layout = NodeLayout.parse(
                args.rendezvous, nnodes=args.nnodes, node_rank=args.node_rank
            ).resolved()
        except ValueError as exc:
            parser.error(str(exc))
    try:
        launch_workers(command, nproc=args.nproc_per_node, log_path=args.log, layout=layout)
    except WorkerFailed as failure:
        print(f"train.launcher: {failure.line}\n{failure.tail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
