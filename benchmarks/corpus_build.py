"""Corpus building throughput end to end (read, encode, write), 1 → K Ray workers.

    python benchmarks/corpus_build.py [--data ../shared/data] [--limit N] [--workers 1,2]
                                      [--setups 0,1,2]

Builds a corpus from ``corpus/structures.jsonl.gz`` in ``--data`` (the 104,494-structure
stand-in, all of it unless ``--limit``; the shipped 2,986-structure sample when ../shared/data
is absent) with a local Ray on 127.0.0.1, in three setups: the released ``cloud`` variant
with the symmetry memo (the default build), the same without the memo (the baseline, one
worker), and a canonical-only corpus with the moyo engine. It reports:

- a one-core profile of the stages (reader: JSON + Structure; spglib; SCOPE formatting and
  token ids; reduced formula; the sample JSON; the driver's tar append), CPU ms per structure;
- wall time, structures/s and structures/s per worker of each build, the parallel efficiency
  against one worker, the CPU seconds the Ray workers and the driver used (on a shared machine
  wall time also measures the neighbours' load; structures per worker-CPU second do not), and
  the driver's CPU per structure (the serial part: dedup, tar writes, result transfer);
- a projection of the wall time for 6 million structures on 64, 256 and 1,024 cores: each core
  runs a worker at the measured one-worker rate times the measured efficiency, bounded by the
  driver's serial rate; once from the wall-clock figures, once from the CPU figures (a
  dedicated core per worker).

Every ``cloud`` build writes byte-identical shards, whatever the worker count and with or
without the memo (checked), so the runs differ only in speed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cluster.corpus import DEFAULT_MEMO_ENTRIES
from cluster.ray_env import setdefault_loopback

REPO = Path(__file__).resolve().parents[1]
TARGET_PER_CORE = 250.0
TARGET_EFFICIENCY = 0.85
PROJECTED_STRUCTURES = 6_000_000
PROJECTED_CORES = (64, 256, 1024)


def prefix_file(source: Path, limit: int, scratch: Path, stride: int = 1) -> tuple[Path, int]:
    """Every ``stride``-th of the first ``limit`` lines of a JSON Lines file, gzipped fast."""
    target = scratch / f"prefix-{limit}-{stride}.jsonl.gz"
    count = 0
    with gzip.open(source, "rb") as src, gzip.open(target, "wb", compresslevel=1) as dst:
        for index, line in enumerate(src):
            if limit and index >= limit:
                break
            if index % stride == 0:
                dst.write(line)
                count += 1
    return target, count


def profile_stages(path: Path, n: int, scratch: Path) -> dict[str, float]:
    """CPU ms per structure of each stage, on one core, without Ray."""
    import itertools

    from cluster.corpus import (
        EncodeOptions,
        _sample_json,
        _TarAppender,
        encode_record,
        member_payload,
        tar_member,
    )
    from cluster.readers import discover, plan_units, read_unit
    from tokenizer.scope import analyze, format_variant
    from tokenizer.vocab import ScopeTokenizer

    clock = time.process_time
    units = plan_units(discover([path]), unit_size=1000)
    started = clock()
    records = list(itertools.islice((r for u in units for r in read_unit(u)), n))
    read = clock() - started
    ok = [r for r in records if r.structure is not None]

    started = clock()
    symmetries = [analyze(r.structure) for r in ok]
    symmetry = clock() - started
    tokenizer = ScopeTokenizer()
    started = clock()
    for s in symmetries:
        for variant in ("cloud", "canonical"):
            tokenizer.encode(format_variant(s, variant))
    formatting = clock() - started
    started = clock()
    formulas = [r.structure.composition.reduced_formula for r in ok]
    formula = clock() - started
    started = clock()
    for r, f in zip(ok, formulas, strict=True):
        _sample_json({"source": r.source, "formula": f, "properties": r.properties})
    sample_json = clock() - started

    options = EncodeOptions(("cloud",), True, False, True)
    started = clock()
    encoded = [encode_record(r, options) for r in records]
    encode_total = clock() - started
    payloads = [member_payload(e.member) for e in encoded if hasattr(e, "member")]
    started = clock()
    members = [tar_member(f"{i:016x}", payload) for i, payload in enumerate(payloads)]
    tar_header = clock() - started
    shard = _TarAppender(scratch / "profile.tar", 0, 0)
    started = clock()
    for member in members:
        shard.add(member)
    shard.finish()
    tar_write = clock() - started
    per = 1e3 / max(1, len(records))
    return {
        "structures": len(records),
        "reader (JSON + Structure)": read * per,
        "spglib (tokenizer.analyze)": symmetry * per,
        "SCOPE text + token ids (2 variants)": formatting * per,
        "reduced formula": formula * per,
        "sample JSON": sample_json * per,
        "tar member header (worker)": tar_header * per,
        "tar append + fsync (driver)": tar_write * per,
        "worker total (read + encode_record, cloud + dedup key)": (read + encode_total) * per,
    }


def ray_worker_cpu() -> float:
    """CPU seconds used so far by this driver's Ray worker processes (``ray::`` children)."""
    import psutil

    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name().startswith("ray::") and "Agent" not in process.name():
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


@dataclass(frozen=True)
class Setup:
    """One way to build the corpus; each is timed with every worker count asked for."""

    label: str
    variants: tuple[str, ...] = ("cloud",)
    engine: str = "spglib"
    memo_entries: int = DEFAULT_MEMO_ENTRIES


SETUPS = (
    Setup("cloud (spglib), symmetry memo"),
    Setup("cloud (spglib), no memo — the baseline", memo_entries=0),
    Setup("canonical only (moyo), symmetry memo", ("canonical",), "moyo"),
)


def timed_build(
    source: Path, out: Path, workers: int, unit_size: int, shard_size: int, setup: Setup = SETUPS[0]
) -> dict:
    from cluster.corpus import build_corpus

    shutil.rmtree(out, ignore_errors=True)
    worker0 = ray_worker_cpu()
    wall0, cpu0, thread0 = time.perf_counter(), time.process_time(), time.thread_time()
    manifest = build_corpus(
        [source],
        out,
        workers=workers,
        unit_size=unit_size,
        shard_size=shard_size,
        progress=False,
        variants=setup.variants,
        engine=setup.engine,
        memo_entries=setup.memo_entries,
    )
    return {
        "setup": setup,
        "workers": workers,
        "wall": time.perf_counter() - wall0,
        "driver_cpu": time.process_time() - cpu0,
        # The main thread is the serial part; Ray's own driver threads overlap with it.
        "driver_thread_cpu": time.thread_time() - thread0,
        "worker_cpu": ray_worker_cpu() - worker0,
        "read": manifest["totals"]["read"],
        "shards": [s["sha256"] for s in manifest["shards"]],
        "totals": manifest["totals"],
    }


def projection(rate_one: float, efficiency: float, driver_rate: float) -> list[tuple]:
    rows = []
    for cores in PROJECTED_CORES:
        workers_rate = cores * rate_one * min(1.0, efficiency)
        rate = min(workers_rate, driver_rate)
        rows.append(
            (
                cores,
                workers_rate,
                rate,
                PROJECTED_STRUCTURES / rate,
                "driver" if driver_rate < workers_rate else "workers",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--limit", type=int, default=0, help="structures (a prefix; 0: the whole file)"
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument(
        "--setups",
        default="0,1,2",
        help="which of: 0 cloud with the memo, 1 cloud without (1 worker only), 2 moyo canonical",
    )
    parser.add_argument("--unit-size", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--profile", type=int, default=1500, help="structures in the profile")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    source = args.data / "corpus" / "structures.jsonl.gz"
    if not source.is_file():
        source = REPO / "data" / "corpus" / "structures_sample.jsonl.gz"
    setdefault_loopback(os.environ)
    os.environ.setdefault("SPGLIB_WARNING", "OFF")

    import ray

    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as tmp:
        scratch = Path(tmp)
        prefix, n = prefix_file(source, args.limit, scratch)
        print(f"input: first {n:,} structures of {source}")
        print(
            f"machine: {platform.node()}, {os.cpu_count()} CPUs, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f}"
        )

        # The profile takes every k-th structure, so that it has the prefix's mix of sources.
        strided, _ = prefix_file(prefix, n, scratch, stride=max(1, n // args.profile))
        stages = profile_stages(strided, args.profile, scratch)
        print(f"\none-core stage profile ({stages.pop('structures')} structures, CPU ms each)")
        for stage, ms in stages.items():
            print(f"  {stage:<56} {ms:7.3f}")
        worker_ms = stages["worker total (read + encode_record, cloud + dedup key)"]
        print(f"  => worker CPU ceiling {1e3 / worker_ms:.0f} structures/s per core")

        started = time.perf_counter()
        ray.init(
            num_cpus=max(worker_counts),
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
        print(f"Ray start {time.perf_counter() - started:.1f} s (not in the times below)")
        (scratch / "warm").mkdir()
        warm, _ = prefix_file(prefix, 40, scratch / "warm")
        timed_build(warm, scratch / "warmup", max(worker_counts), 10, 100)  # start workers

        setups = [SETUPS[int(i)] for i in args.setups.split(",")]
        runs = []
        for number, setup in enumerate(setups):
            counts = worker_counts if setup.memo_entries else worker_counts[:1]
            for w in counts:
                out = scratch / f"s{number}-w{w}"
                runs.append(timed_build(prefix, out, w, args.unit_size, args.shard_size, setup))
                print(f"  {setup.label}, {w} worker(s): {runs[-1]['wall']:.1f} s", flush=True)
        ray.shutdown()

    for setup in setups:
        report(setup, [r for r in runs if r["setup"] == setup], worker_ms)
    cloud = [r for r in runs if r["setup"].variants == ("cloud",)]
    print(f"\ncloud shards identical across worker counts and memo on/off: {same_shards(cloud)}")


def same_shards(runs: list[dict]) -> bool:
    return all(run["shards"] == runs[0]["shards"] for run in runs)


def report(setup: Setup, runs: list[dict], worker_ms: float) -> None:
    """The table, the targets and the projection for one setup's runs."""
    print(f"\n== {setup.label}")
    base = runs[0]
    base_rate = base["read"] / base["wall"] / base["workers"]
    print(f"shards identical across worker counts: {same_shards(runs)}")
    print(f"totals: {base['totals']}")
    base_cpu_rate = base["read"] / base["worker_cpu"]
    header = (
        "workers",
        "wall s",
        "structures/s",
        "per worker/s",
        "efficiency",
        "per worker-CPU s",
        "CPU efficiency",
        "cores obtained",
        "driver µs/struct",
        "main thread µs/s.",
    )
    print("  ".join(f"{h:>16}" for h in header))
    for run in runs:
        rate = run["read"] / run["wall"]
        per_worker = rate / run["workers"]
        run["efficiency"] = per_worker / base_rate
        cpu_rate = run["read"] / run["worker_cpu"]
        cells = (
            run["workers"],
            f"{run['wall']:.1f}",
            f"{rate:.1f}",
            f"{per_worker:.1f}",
            f"{100 * run['efficiency']:.0f} %",
            f"{cpu_rate:.1f}",
            f"{100 * cpu_rate / base_cpu_rate:.0f} %",
            f"{(run['worker_cpu'] + run['driver_cpu']) / run['wall']:.2f}",
            f"{1e6 * run['driver_cpu'] / run['read']:.0f}",
            f"{1e6 * run['driver_thread_cpu'] / run['read']:.0f}",
        )
        print("  ".join(f"{c:>16}" for c in cells))
    print(
        "(per worker-CPU s and CPU efficiency count the CPU time the Ray workers got; on a "
        "shared machine they show the cost per structure that wall time hides; cores obtained "
        "= (workers' + driver's CPU s) / wall s; the driver's main thread, the serial part, "
        "sets the driver limit below)"
    )

    if len(runs) < 2:
        return
    last = runs[-1]
    driver_rate = last["read"] / last["driver_thread_cpu"]
    cpu_efficiency = (last["read"] / last["worker_cpu"]) / base_cpu_rate
    print(
        f"\ntargets: ≥ {TARGET_PER_CORE:.0f} structures/s per core end to end: measured "
        f"{base_rate:.0f} (wall, 1 worker), {base_cpu_rate:.0f} per worker-CPU second, one-core "
        f"profile ceiling {1e3 / worker_ms:.0f}; ≥ {100 * TARGET_EFFICIENCY:.0f} % efficiency "
        f"1 → {last['workers']} workers: measured {100 * last['efficiency']:.0f} % (wall), "
        f"{100 * cpu_efficiency:.0f} % (CPU)"
    )
    scenarios = (
        ("wall clock here", base_rate, last["efficiency"]),
        ("a dedicated core per worker", base_cpu_rate, cpu_efficiency),
    )
    for label, per_core, efficiency in scenarios:
        print(
            f"\nprojection for {PROJECTED_STRUCTURES:,} structures, {label}: {per_core:.0f}/s per "
            f"core × efficiency {100 * min(1.0, efficiency):.0f} %, driver limit "
            f"{driver_rate:,.0f}/s (inputs split into many files; Ray start and planning not "
            "counted)"
        )
        print(f"{'cores':>8}{'workers/s':>14}{'corpus/s':>14}{'wall':>12}  bound by")
        for cores, workers_rate, rate, seconds, bound in projection(
            per_core, efficiency, driver_rate
        ):
            wall = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
            print(f"{cores:>8}{workers_rate:>14,.0f}{rate:>14,.0f}{wall:>12}  {bound}")


if __name__ == "__main__":
    main()
