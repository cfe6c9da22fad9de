"""Process-group setup and DeepSpeed wrapping: every distributed concern of pre-training.

``cloud/`` builds plain ``nn.Module``s; this module turns one into a DeepSpeed engine
(ZeRO stage 0-3, bf16 on GPUs, fp32 on CPU over gloo, gradient accumulation and clipping)
and brings up the process group, with or without a launcher.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import types
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn

# What torchrun / the deepspeed launcher export; without them we are a single process.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# What train.launcher gives each of its workers: ranks and a file rendezvous, no address.
INIT_METHOD_ENV = "CLOUD_INIT_METHOD"
"""Set by ``train.launcher``: where its workers rendezvous, a ``file://`` URL (one machine)
or ``store://HOST:PORT`` (several nodes: the TCPStore node 0's launcher hosts there)."""
STORE_SCHEME = "store://"
LAUNCHER_PID_ENV = "CLOUD_LAUNCHER_PID"
"""Set by ``train.launcher``: its process id, so a worker stops when the launcher is gone."""
WORKER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", INIT_METHOD_ENV)
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    """Global rank."""
    world_size: int
    """Number of data-parallel processes."""
    local_rank: int
    """Rank on this node (the GPU index)."""
    device: torch.device
    """Device this rank computes on."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def loopback_interface() -> str:
    """The name of this machine's loopback interface: ``lo`` on Linux, ``lo0`` on macOS."""
    names = {name for _, name in socket.if_nameindex()}
    return next((name for name in ("lo", "lo0") if name in names), "lo")


def interface_towards(address: str) -> str:
    """The name of the network interface this machine reaches ``address`` (an IP) through.

    Asks the kernel's routing table (a UDP socket connected to the address sends nothing),
    then finds the interface holding the local address it chose: on a cluster node, the one
    the other nodes are reached by, whatever the machine's other interfaces are.
    """
    import psutil

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
        except OSError as exc:
            raise RuntimeError(f"no route from this machine to {address}: {exc}") from exc
        local = probe.getsockname()[0]
    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address.split("%")[0] == local for entry in addresses):
            return name
    raise RuntimeError(f"no network interface holds {local}, the address towards {address}")


def bind_interface(env: MutableMapping[str, str], interface: str, *, force: bool) -> None:
    """Make gloo and NCCL bind their sockets to ``interface``.

    gloo listens on the address the host name resolves to, which is a public one on most
    machines, even for a 1-process group; NCCL's bootstrap takes the first non-loopback
    interface. ``force`` overrides what ``env`` already says; otherwise a user's choice
    (e.g. ``NCCL_SOCKET_IFNAME=ib0`` on an InfiniBand cluster) stands.
    """
    for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if force:
            env[name] = interface
        else:
            env.setdefault(name, interface)


def bind_loopback(env: MutableMapping[str, str], *, force: bool) -> None:
    """:func:`bind_interface` to the loopback interface: a launch on one machine needs
    nothing else."""
    bind_interface(env, loopback_interface(), force=force)


_SINGLE_PROCESS_ADDED: set[str] = set()
"""Names :func:`_set_single_process_env` added to ``os.environ`` (for :func:`forget_single_process_env`)."""


def _set_single_process_env() -> None:
    """Environment of a 1-process group, so DeepSpeed runs without any launcher."""
    before = set(os.environ)
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    bind_loopback(os.environ, force=False)
    _SINGLE_PROCESS_ADDED.update(set(os.environ) - before)


def forget_single_process_env() -> None:
    """Take back what a 1-process run added to ``os.environ`` (the group itself is kept).

    Left behind, ``RANK=0`` and ``LOCAL_WORLD_SIZE=1`` would make every process this one
    starts afterwards (a ``cloud pretrain --nproc-per-node 2``, a torchrun) look like a
    worker of a launch that already chose its processes. A later in-process run sets them
    again.
    """
    for name in _SINGLE_PROCESS_ADDED:
        os.environ.pop(name, None)
    _SINGLE_PROCESS_ADDED.clear()


def select_accelerator() -> None:
    """Point DeepSpeed at the CPU accelerator (gloo) when there is no GPU.

    Must run before ``import deepspeed``: its accelerator is chosen once, at import.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_distributed(backend: str = "auto", log_level: str = "warning") -> DistInfo:
    """Bring up (or reuse) the process group, and DeepSpeed's communication layer over it.

    Three ways in:

    * a worker of ``train.launcher`` (``CLOUD_INIT_METHOD`` with ``RANK``, ``WORLD_SIZE``,
      ``LOCAL_RANK``): the group spans the launched processes. On one machine it rendezvouses
      through the launcher's file (a FileStore, no socket) and gloo/NCCL bind loopback as the
      launcher set them, so nothing listens beyond 127.0.0.1; across nodes, through the
      TCPStore node 0's launcher hosts on one address (``store://HOST:PORT``), with gloo/NCCL
      on the interface towards it. The worker stops if its launcher dies.
    * under torchrun or the deepspeed launcher (``RANK`` ... ``MASTER_PORT``): ``env://``
      through the launcher's TCPStore, which listens on every interface of the master node.
    * neither: a 1-process group over an in-memory store, gloo bound to loopback unless
      ``GLOO_SOCKET_IFNAME`` says otherwise.

    A group that already exists is reused (DeepSpeed wraps it rather than creating one), so
    ``run_pretraining`` can be called repeatedly in one process. ``backend="auto"`` means
    nccl on CUDA and gloo on CPU (DeepSpeed's CPU accelerator).
    """
    launched = INIT_METHOD_ENV in os.environ
    torchrun = not launched and all(name in os.environ for name in LAUNCHER_ENV)
    if launched:
        missing = [name for name in WORKER_ENV if name not in os.environ]
        if missing:
            raise RuntimeError(f"incomplete train.launcher environment: {missing} unset")
    elif not torchrun:
        if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            missing = [name for name in LAUNCHER_ENV if name not in os.environ]
            raise RuntimeError(f"incomplete launcher environment: {missing} unset")
        _set_single_process_env()
    select_accelerator()
    import deepspeed

    set_deepspeed_log_level(log_level)
    if not torch.cuda.is_available():
        skip_cpu_shm_comm_build()
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist_backend = None if backend == "auto" else backend
    if not torch.distributed.is_initialized():
        if launched and os.environ[INIT_METHOD_ENV].startswith(STORE_SCHEME):
            _init_group_through_hosted_store(os.environ[INIT_METHOD_ENV], dist_backend)
            stop_with_launcher()
        elif launched:
            # DeepSpeed's own init (same timeout and CUDA device binding as under torchrun),
            # given the file rendezvous instead of env://.
            deepspeed.init_distributed(
                dist_backend=dist_backend,
                auto_mpi_discovery=False,
                init_method=os.environ[INIT_METHOD_ENV],
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
            )
            stop_with_launcher()
        elif torchrun:
            deepspeed.init_distributed(dist_backend=dist_backend, auto_mpi_discovery=False)
        else:
            _init_single_process_group(dist_backend)
    # Wraps the group made above (or by an earlier call) when DeepSpeed has not yet.
    deepspeed.init_distributed(dist_backend=dist_backend, auto_mpi_discovery=False)
    return DistInfo(
        rank=torch.distributed.get_rank(),
        world_size=torch.distributed.get_world_size(),
        local_rank=local_rank,
        device=device,
    )


def _init_group_over(store: Any, rank: int, world_size: int, backend: str | None) -> None:
    """The process group over ``store``, with DeepSpeed's backend and timeout."""
    from deepspeed.accelerator import get_accelerator
    from deepspeed.constants import default_pg_timeout

    torch.distributed.init_process_group(
        backend or get_accelerator().communication_backend_name(),
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=default_pg_timeout,
    )


def _init_single_process_group(backend: str | None) -> None:
    """A 1-process group over a HashStore: env:// would start a TCPStore on every interface."""
    _init_group_over(torch.distributed.HashStore(), 0, 1, backend)


def _init_group_through_hosted_store(url: str, backend: str | None) -> None:
    """Join the group through the TCPStore a multi-node ``train.launcher`` hosts at ``url``
    (``store://HOST:PORT``), as a client: no worker listens for the rendezvous (``tcp://``
    and ``env://`` would make rank 0 host a store on every interface)."""
    from deepspeed.constants import default_pg_timeout

    host, _, port = url.removeprefix(STORE_SCHEME).rpartition(":")
    store = torch.distributed.TCPStore(host.strip("[]"), int(port), None, False, default_pg_timeout)
    _init_group_over(store, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), backend)


def stop_with_launcher(interval_s: float = 1.0) -> None:
    """Terminate this worker when the ``train.launcher`` that started it is gone.

    The launcher puts its workers in their own session (so it alone forwards a Ctrl-C); if it
    is killed outright, nothing else would stop them training on unobserved.
    """
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher:
        return

    def watch() -> None:
        while os.getppid() == int(launcher):
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-launcher", daemon=True).start()


def skip_cpu_shm_comm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory all-reduce kernel.

    That kernel serves only ``inference_all_reduce``; training collectives go through
    torch.distributed (gloo) either way. Its C++ build takes minutes on a fresh machine (it
    is cached afterwards), time every CPU job and test would otherwise pay once. DeepSpeed
    caches its op-compatibility probe in ``deepspeed.ops.__compatible_ops__``, and a False
    entry makes ``build_shm_op`` return None.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def set_deepspeed_log_level(level: str) -> None:
    """DeepSpeed logs every config key at INFO on every rank; keep it to warnings by default."""
    from deepspeed.utils import logger

    logger.setLevel(getattr(logging, level.upper()))


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto" → bf16 on a GPU that supports it, else fp32 (CPU training is fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def deepspeed_config(
    *,
    micro_batch_size: int,
    grad_accum_steps: int,
    world_size: int,
    zero_stage: int,
    precision: str,
    grad_clip: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict; ``extra`` is merged last (recursively) as an escape hatch."""
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    zero: dict[str, Any] = {"stage": zero_stage}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # torch.optim.AdamW is on DeepSpeed's ZeRO list; fused=True variants are the same class.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    return _merge(config, extra or {})


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


DEEPSPEED_MUON = "deepspeed.runtime.zero.muon.original_muon"
"""DeepSpeed's Muon kernels, which its ZeRO optimizers import at start-up and at each step
whatever the optimizer, to ask whether it is Muon and to have ``muon_update`` at hand."""


def _stand_in_for_deepspeed_muon() -> None:
    """Give DeepSpeed a Muon module whose names no optimizer of ours uses.

    Importing the real one wraps its kernels in ``torch.compile``, which imports
    ``torch._inductor``: about 2 s of every ZeRO process's start on a CPU (a sixth of it)
    for an optimizer this project never builds (``optim`` is AdamW, so DeepSpeed's Muon
    branches are never taken). A process that has imported the real module keeps it.
    """
    if DEEPSPEED_MUON in sys.modules:
        return
    stand_in = types.ModuleType(DEEPSPEED_MUON, "Stand-in: CLOUD trains with AdamW, not Muon.")

    class MuonWithAuxAdam:  # never instantiated: isinstance() with it is always False
        pass

    def not_muon(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(f"{DEEPSPEED_MUON} is a stand-in here: this optimizer is not Muon")

    stand_in.MuonWithAuxAdam = MuonWithAuxAdam  # type: ignore[attr-defined]
    stand_in.muon_update = stand_in.adam_update = not_muon  # type: ignore[attr-defined]
    sys.modules[DEEPSPEED_MUON] = stand_in


def build_engine(
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
    compile_model: bool = False,
) -> Any:
    """Wrap ``model`` (and its optimizer and LR schedule) in a DeepSpeed engine.

    The engine steps the scheduler at each optimizer step and saves it in checkpoints. With
    ``compile_model`` the engine compiles its module in place (``engine.compile``), which
    keeps parameter names and so checkpoints identical to eager ones.
    """
    import deepspeed

    _stand_in_for_deepspeed_muon()
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        config=config,
        dist_init_required=False,
    )
    if compile_model:
        engine.compile(compile_kwargs={"dynamic": True})
    return engine


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a few scalars, in float64 (one collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor.tolist()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` of rank ``src`` on every rank."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return value
    holder = [value]
    torch.distributed.broadcast_object_list(holder, src=src)
    return holder[0]
