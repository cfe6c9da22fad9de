"""The single-machine launcher (``train.launcher``, ``cloud pretrain --nproc-per-node N``).

What is listening is read from ``/proc/net/tcp`` and ``/proc/net/tcp6`` (state 0A, LISTEN),
matched to the run's processes by socket inode through ``/proc/<pid>/fd`` of the launcher
and all its descendants, polled while the run lasts. The fast tests drive the launcher with
small stand-in workers (``python -c``); the slow ones run real 2-process pre-training on the
session's corpus of real structures, through torchrun (the old path, whose store listens on
every interface) and through the launcher, and compare their losses.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.train.pretrain.test_pretrain import DEBUG, common_overrides, losses, optimizer_shard
from train.checkpoint import list_checkpoints, read_latest
from train.common.paths import env_with_repository
from train.distributed import free_port, interface_towards
from train.launcher import NodeLayout, WorkerFailed, launch_workers

REPO = Path(__file__).resolve().parents[2]
LISTEN = "0A"

# ------------------------------------------------------------------ reading /proc


def decode_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode → (address, port) of every TCP socket in LISTEN state on this machine."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == LISTEN:
                host, port = local.split(":")
                sockets[inode] = (str(decode_address(host)), int(port, 16))
    return sockets


def process_tree(root: int) -> set[int]:
    """``root`` and every process descended from it now."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            # The command name in parentheses may hold spaces: fields follow the last ')'.
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:[") : -1]))
    except OSError:  # exited meanwhile
        pass
    return inodes


def listeners_of(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets ``pids`` hold in LISTEN state."""
    table = listening_sockets()
    held = set().union(*(socket_inodes(pid) for pid in pids))
    return {table[inode] for inode in held if inode in table}


def poll_listeners(process: subprocess.Popen, timeout: float) -> set[tuple[str, int]]:
    """Every listening socket the process tree of ``process`` held until it exited."""
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"run still going after {timeout} s")
        seen |= listeners_of(process_tree(process.pid))
        time.sleep(0.1)
    return seen


def test_proc_net_addresses_decode() -> None:
    assert str(decode_address("0100007F")) == "127.0.0.1"
    assert str(decode_address("00000000")) == "0.0.0.0"
    assert str(decode_address("00000000000000000000000001000000")) == "::1"
    assert str(decode_address("00000000000000000000000000000000")) == "::"
    assert is_loopback(decode_address("0000000000000000FFFF00000100007F"))  # ::ffff:127.0.0.1
    assert not is_loopback(decode_address("00000000"))


def test_listeners_of_finds_a_socket_this_process_listens_on() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert ("127.0.0.1", port) in listeners_of({os.getpid()})
    assert ("127.0.0.1", port) not in listeners_of({os.getpid()})


# ------------------------------------------------------- supervision (stand-in workers)

# A stand-in worker: records its pid and environment, then does what its rank is told.
WORKER = """
import json, os, sys, time
rank = int(os.environ["RANK"])
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
    json.dump({"pid": os.getpid(), "env": dict(os.environ)}, handle)
action = sys.argv[2 + rank]
print(f"rank {rank} says hello", flush=True)
open(os.path.join(sys.argv[1], f"rank{rank}.hello"), "w").close()
if action == "fail":
    # Not before rank 0 has spoken: on a loaded machine it may not have started yet.
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(sys.argv[1], "rank0.hello")):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print("boom", file=sys.stderr, flush=True)
    sys.exit(3)
if action == "watch":
    from train.distributed import stop_with_launcher
    stop_with_launcher(interval_s=0.1)
if action in ("sleep", "watch"):
    time.sleep(120)
"""


def worker_command(directory: Path, *actions: str) -> list[str]:
    return [sys.executable, "-c", WORKER, str(directory), *actions]


def wait_for_files(paths: list[Path], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(path.is_file() for path in paths):
        assert time.monotonic() < deadline, f"workers did not start: {paths}"
        time.sleep(0.05)


def gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether process ``pid`` has exited (or is a zombie nobody reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_failed_worker_stops_the_others_and_is_named(tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    started = time.monotonic()
    with pytest.raises(WorkerFailed) as failure:
        launch_workers(worker_command(tmp_path, "sleep", "fail"), nproc=2, log_path=log)
    assert time.monotonic() - started < 20  # not the 120 s rank 0 would sleep
    assert failure.value.rank == 1 and failure.value.returncode == 3
    assert "rank 1 of 2 exited with code 3; any rank still running" in failure.value.line
    assert str(log) in failure.value.line
    assert "[rank 1] boom" in failure.value.tail
    assert "[rank 0] rank 0 says hello" in log.read_text()
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert gone(rank0["pid"])


def test_workers_get_ranks_a_file_rendezvous_and_loopback_collectives(tmp_path: Path) -> None:
    base = {**os.environ, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    launch_workers(
        worker_command(tmp_path, "exit", "exit", "exit"),
        nproc=3,
        log_path=tmp_path / "launch.log",
        env=base,
    )
    envs = [json.loads((tmp_path / f"rank{r}.json").read_text())["env"] for r in range(3)]
    for rank, env in enumerate(envs):
        assert (env["RANK"], env["LOCAL_RANK"]) == (str(rank), str(rank))
        assert env["WORLD_SIZE"] == env["LOCAL_WORLD_SIZE"] == "3"
        assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"
        assert "MASTER_ADDR" not in env and "MASTER_PORT" not in env
        assert env["CLOUD_LAUNCHER_PID"] == str(os.getpid())
    init_methods = {env["CLOUD_INIT_METHOD"] for env in envs}
    assert len(init_methods) == 1
    store = Path(init_methods.pop().removeprefix("file://"))
    assert not store.parent.exists()  # the rendezvous directory is removed afterwards


def test_a_node_of_a_multi_node_launch_numbers_its_ranks_and_keeps_the_users_interface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Node 1 of 2, two workers each: global ranks 2 and 3, the store URL of node 0's
    address, and a user's GLOO_SOCKET_IFNAME (an InfiniBand name, say) left as it was; node
    0's name is looked up once per launch (a slow name server is paid once)."""
    layout = NodeLayout.parse(f"localhost:{free_port()}", nnodes=2, node_rank=1)
    base = {**os.environ, "GLOO_SOCKET_IFNAME": "ib0", "NCCL_SOCKET_IFNAME": "ib0"}
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def counted_getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted_getaddrinfo)
    launch_workers(
        worker_command(tmp_path, *["exit"] * 4), nproc=2, log_path=None, env=base, layout=layout
    )
    assert lookups == ["localhost"]
    assert layout.resolved().host == "127.0.0.1"
    envs = [json.loads((tmp_path / f"rank{r}.json").read_text())["env"] for r in (2, 3)]
    for local, env in enumerate(envs):
        assert (env["RANK"], env["LOCAL_RANK"]) == (str(2 + local), str(local))
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_WORLD_SIZE"] == "2"
        assert env["CLOUD_INIT_METHOD"] == f"store://127.0.0.1:{layout.port}"
        assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "ib0"
    assert interface_towards("127.0.0.1") == "lo"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nnodes", "2", "--", "true"], "--rendezvous HOST:PORT is needed"),
        (["--nnodes", "2", "--rendezvous", "nohost", "--", "true"], "must be HOST:PORT"),
        (["--nnodes", "2", "--node-rank", "2", "--rendezvous", "h:1", "--", "true"], "0-1"),
        (["--nnodes", "2", "--rendezvous", "no.such.host.invalid:5", "--", "true"], "resolve"),
        (["--nproc-per-node", "0", "--", "true"], "at least 1"),
        ([], "no COMMAND given"),
    ],
)
def test_a_launcher_misuse_ends_in_one_line(args: list[str], message: str, capsys) -> None:
    from train.launcher import main

    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error, error


# The launcher in a process of its own, so a test can signal or kill it.
LAUNCHER = """
import sys
from train.launcher import launch_workers
command = [sys.executable, "-c", sys.argv[1], *sys.argv[2:]]
try:
    launch_workers(command, nproc=2, log_path=sys.argv[2] + "/launch.log")
except KeyboardInterrupt:
    sys.exit(130)
"""


def as_in_a_terminal() -> None:
    """SIGINT as a foreground job of a terminal has it, whatever this test run inherited (a
    suite started in the background by a non-interactive shell ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)]
)
def test_sigint_and_sigterm_reach_the_workers(sig: int, status: int, tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WORKER, str(tmp_path), "sleep", "sleep"],
        env=env_with_repository(),
        preexec_fn=as_in_a_terminal,
    )
    wait_for_files([tmp_path / "rank0.json", tmp_path / "rank1.json"])
    pids = [json.loads((tmp_path / f"rank{r}.json").read_text())["pid"] for r in (0, 1)]
    launcher.send_signal(sig)
    assert launcher.wait(timeout=30) == status
    assert all(gone(pid) for pid in pids)


def test_a_launcher_started_deaf_to_sigint_stays_so(tmp_path: Path) -> None:
    """Started with SIGINT ignored (``nohup``, a background job of a script), the launch
    goes on through a SIGINT instead of ending with status 0; SIGTERM still stops it."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WORKER, str(tmp_path), "sleep", "sleep"],
        env=env_with_repository(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    wait_for_files([tmp_path / "rank0.json", tmp_path / "rank1.json"])
    pids = [json.loads((tmp_path / f"rank{r}.json").read_text())["pid"] for r in (0, 1)]
    launcher.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert launcher.poll() is None and not any(gone(pid, timeout=0.1) for pid in pids)
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == -signal.SIGTERM
    assert all(gone(pid) for pid in pids)


def test_workers_stop_when_the_launcher_is_killed(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, WORKER, str(tmp_path), "watch", "watch"],
        env=env_with_repository(),
    )
    wait_for_files([tmp_path / "rank0.json", tmp_path / "rank1.json"])
    pids = [json.loads((tmp_path / f"rank{r}.json").read_text())["pid"] for r in (0, 1)]
    time.sleep(3.0)  # the workers import train.distributed (torch) before they watch
    launcher.kill()
    launcher.wait()
    assert all(gone(pid, timeout=60) for pid in pids)


SINGLE_PROCESS = """
import json, os
from tests.train.test_launcher import listeners_of
from train.distributed import init_distributed
info = init_distributed()
print(json.dumps({"world_size": info.world_size, "listeners": sorted(listeners_of({os.getpid()}))}))
"""


def test_a_single_process_group_listens_on_loopback_only() -> None:
    """Without a launcher (``cloud pretrain`` alone, the in-process sweep): no TCPStore, whose
    env:// form listened on every interface, and gloo on loopback."""
    env = env_with_repository()
    env.pop("GLOO_SOCKET_IFNAME", None)  # the default a user has
    env.setdefault("DS_ACCELERATOR", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", SINGLE_PROCESS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["world_size"] == 1
    assert report["listeners"] and all(is_loopback(ip(host)) for host, _ in report["listeners"])


def test_nproc_per_node_inside_another_launchers_worker_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert main(["pretrain", "--config", str(DEBUG), "--nproc-per-node", "2"]) == 2
    assert "inside a launched worker" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", str(DEBUG), "--nproc-per-node", "0"])


def test_cli_names_the_failed_rank_and_shows_the_log_tail(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = env_with_repository()
    env.setdefault("DS_ACCELERATOR", "cpu")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "train.cli", "pretrain", "--nproc-per-node", "2"),
            *("--config", str(DEBUG), f"data.corpus={tmp_path / 'no-corpus'}"),
            *(f"run_dir={run_dir}", "system.cpu_threads=1"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    *_, tail_header, last = [
        line for line in result.stderr.splitlines() if line.startswith(("---", "cloud"))
    ]
    assert tail_header == f"--- last lines of {run_dir / 'launch.log'} ---"
    assert last.startswith("cloud pretrain: pretraining failed: rank ")
    assert "exited with code 2" in last and str(run_dir / "launch.log") in last
    assert "no corpus manifest" in result.stderr


# ------------------------------------------------------------ real runs (slow)

SCENARIO = [
    "system.zero_stage=2",
    "train.max_steps=6",
    "train.eval_interval=3",
    "checkpoint.interval=3",
]
# Fields of summary.json that are measurements of time, not results.
TIMINGS = {"wall_time_s", "train_time_s", "tokens_per_s", "run_dir", "checkpoint_dir"}


def run_and_watch(command: list[str], timeout: float = 300.0) -> dict:
    """Run ``command`` (stdout captured) and every listening socket its processes held."""
    env = env_with_repository()
    env.setdefault("DS_ACCELERATOR", "cpu")
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # The pipes are read after the run: small outputs, and polling must not wait on them.
    output: dict[str, str] = {}
    drain = threading.Thread(
        target=lambda: output.update(zip(("stdout", "stderr"), process.communicate(), strict=True))
    )
    drain.start()
    listeners = poll_listeners(process, timeout)
    drain.join()
    return {"returncode": process.returncode, "listeners": listeners, **output}


@pytest.fixture(scope="module")
def two_runs(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same 2-process run through torchrun and through ``cloud pretrain
    --nproc-per-node 2``, their listening sockets watched."""
    base = tmp_path_factory.mktemp("launcher")
    runs = {}
    for name, launcher in (
        (
            "torchrun",
            [
                *("-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2"),
                *("--master-addr=127.0.0.1", f"--master-port={free_port()}"),
                *("-m", "train.cli", "pretrain"),
            ],
        ),
        ("loopback", ["-m", "train.cli", "pretrain", "--nproc-per-node", "2"]),
    ):
        run_dir = base / name
        command = [
            sys.executable,
            *launcher,
            *("--config", str(DEBUG)),
            *common_overrides(sample_corpus, run_dir),
            *SCENARIO,
        ]
        runs[name] = {**run_and_watch(command), "run_dir": run_dir}
    return runs


@pytest.mark.slow
def test_two_process_pretraining_listens_on_loopback_only(two_runs: dict) -> None:
    run = two_runs["loopback"]
    assert run["returncode"] == 0, run["stderr"][-3000:]
    # gloo's listeners of both ranks were seen: the watch works, and they are on loopback.
    assert len(run["listeners"]) >= 2, run["listeners"]
    outside = {(host, port) for host, port in run["listeners"] if not is_loopback(ip(host))}
    assert not outside, f"listening beyond loopback: {outside}"
    # The check would have caught the old path: torchrun's store listens on every interface.
    old = two_runs["torchrun"]
    assert old["returncode"] == 0, old["stderr"][-3000:]
    assert any(not is_loopback(ip(host)) for host, _ in old["listeners"]), old["listeners"]


@pytest.mark.slow
def test_loopback_run_matches_the_torchrun_run(two_runs: dict) -> None:
    new, old = two_runs["loopback"], two_runs["torchrun"]
    # Bit for bit: the same ranks, data, masks and reduction order either way.
    assert losses(new["run_dir"]).keys() == losses(old["run_dir"]).keys()
    for step, record in losses(old["run_dir"]).items():
        for key in ("train/loss", "train/grad_norm", "val/loss"):
            assert losses(new["run_dir"])[step].get(key) == record.get(key), (step, key)
    summary = json.loads((new["run_dir"] / "summary.json").read_text())
    reference = json.loads((old["run_dir"] / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 6
    assert {k: v for k, v in summary.items() if k not in TIMINGS} == {
        k: v for k, v in reference.items() if k not in TIMINGS
    }
    # ZeRO-2 checkpoints of both ranks at steps 3 and 6, the last one published.
    root = new["run_dir"] / "checkpoints"
    assert list_checkpoints(root) == ["step_00000003", "step_00000006"]
    assert read_latest(root) == "step_00000006"
    assert all(optimizer_shard(root / "step_00000006", rank).is_file() for rank in (0, 1))
    # Rank 0 printed the summary to the terminal; every rank's lines are in launch.log.
    assert json.loads(new["stdout"]) == summary
    log = (new["run_dir"] / "launch.log").read_text()
    assert "[rank 0] " in log and "[rank 1] " in log


@pytest.fixture(scope="module")
def two_node_run(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The loopback run's scenario as two "nodes" of one process each: two launchers on this
    machine (what a 2-node Slurm job runs on each node), node 0's listeners watched."""
    run_dir = tmp_path_factory.mktemp("two_nodes") / "run"
    port = free_port()

    def node(rank: int) -> list[str]:
        return [
            *(sys.executable, "-m", "train.launcher", "--nnodes", "2", "--node-rank", str(rank)),
            *("--nproc-per-node", "1", "--rendezvous", f"127.0.0.1:{port}", "--"),
            *(sys.executable, "-m", "train.cli", "pretrain", "--config", str(DEBUG)),
            *common_overrides(sample_corpus, run_dir),
            *SCENARIO,
        ]

    env = env_with_repository()
    env.setdefault("DS_ACCELERATOR", "cpu")
    second = subprocess.Popen(node(1), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = run_and_watch(node(0))
    second_output = second.communicate(timeout=300)[0].decode(errors="replace")
    return {**first, "port": port, "run_dir": run_dir, "second": (second.returncode, second_output)}


@pytest.mark.slow
def test_two_nodes_train_as_one_machine_does_and_host_the_store_on_one_address(
    two_node_run: dict, two_runs: dict
) -> None:
    run = two_node_run
    assert run["returncode"] == 0, run["stdout"][-3000:] + run["stderr"][-3000:]
    assert run["second"][0] == 0, run["second"][1][-3000:]
    # Node 0's launcher hosted the store on the rendezvous address itself, not on *:PORT.
    assert ("127.0.0.1", run["port"]) in run["listeners"], run["listeners"]
    outside = {(host, port) for host, port in run["listeners"] if not is_loopback(ip(host))}
    assert not outside, f"listening beyond the rendezvous address: {outside}"
    # The same ranks, data and reductions as the one-machine 2-process run, bit for bit.
    reference = two_runs["loopback"]["run_dir"]
    assert losses(run["run_dir"]).keys() == losses(reference).keys()
    for step, record in losses(reference).items():
        for key in ("train/loss", "train/grad_norm", "val/loss"):
            assert losses(run["run_dir"])[step].get(key) == record.get(key), (step, key)
    # Every rank's lines reach the node's output (the Slurm log), prefixed by global rank.
    assert "[rank 0] " in run["stdout"] and "[rank 1] " in run["second"][1]


@pytest.mark.slow
def test_launch_runs_on_loopback_too(sample_corpus: Path, tmp_path: Path, two_runs: dict) -> None:
    """``train.pretrain.launch`` (the sweep, the demo, the tests) uses the same launcher."""
    from train.pretrain import launch

    run_dir = tmp_path / "launch"
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(
            summary=launch(DEBUG, [*common_overrides(sample_corpus, run_dir), *SCENARIO], nproc=2)
        )
    )
    thread.start()
    seen: set[tuple[str, int]] = set()
    while thread.is_alive():
        # Only this launch's workers: the session's Ray processes are children here too.
        workers = {pid for pid in process_tree(os.getpid()) if is_pretrain_worker(pid)}
        seen |= listeners_of(workers)
        time.sleep(0.1)
    thread.join()
    assert len(seen) >= 2 and all(is_loopback(ip(host)) for host, _ in seen), seen
    reference = json.loads((two_runs["loopback"]["run_dir"] / "summary.json").read_text())
    assert {k: v for k, v in result["summary"].items() if k not in TIMINGS} == {
        k: v for k, v in reference.items() if k not in TIMINGS
    }


@pytest.mark.slow
def test_ctrl_c_stops_a_two_process_run(sample_corpus: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    env = env_with_repository()
    env.setdefault("DS_ACCELERATOR", "cpu")
    command = [
        *(sys.executable, "-m", "train.cli", "pretrain", "--nproc-per-node", "2"),
        *("--config", str(DEBUG), *common_overrides(sample_corpus, run_dir)),
        *("train.max_steps=100000", "train.eval_interval=0", "checkpoint.interval=0"),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=as_in_a_terminal,
    )
    log = run_dir / "launch.log"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "[rank 1]" in log.read_text() and " step 2 " in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "run did not get going"
        time.sleep(0.2)
    workers = process_tree(process.pid) - {process.pid}
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert b"interrupted" in stderr and b"--resume" in stderr
    assert all(gone(pid) for pid in workers)


def ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(host)


def is_pretrain_worker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"train.cli" in argv and b"pretrain" in argv
