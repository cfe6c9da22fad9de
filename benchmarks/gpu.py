"""The GPU path: tokens/s, MFU and peak memory of packed pretraining, each fused kernel on and off.

    python benchmarks/gpu.py [--steps 30] [--tokens-per-batch 65536] [--flavours base,auto]
        [--budget-s 420] [--json FILE]

On a CUDA machine (no network needed: everything comes from the repository and the wheels
installed beside it) it trains the ``base`` flavour, and with ``auto`` the largest flavour
that fits, in bf16 on packed batches of real SCOPE strings (the shipped corpus sample, packed
one string after the other to ``--tokens-per-batch`` tokens as ``data.tokens_per_batch`` does
in ``cloud pretrain``), first with every fused kernel on (the FlashAttention varlen kernel of
``cloud.packed``, fused AdamW, ``torch.compile``), then with each one switched off in turn
(varlen → the padded attention core through SDPA; fused → foreach AdamW; compile → eager;
attention dropout 0 throughout, as the varlen kernel has none),
and prints tokens/s of real tokens, MFU against the device's peak and peak memory. The
issue's target is MFU ≥ 50 % for ``base`` on one H100/H200. It stops starting new runs once
``--budget-s`` seconds have passed (so that one short lease of a GPU machine is enough) and
always ends with one JSON line, ``{"summary": ...}``, which ``--json`` also writes.

Without a GPU it runs its CPU self-check: the same code path on the ``debug`` flavour in
fp32 for a few steps per variant (no compile), checking that every variant trains (finite,
falling loss) and that the MFU it computes lies in (0, 1].
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import load_scope_strings, mask_ours, sync

from cloud import CloudForMaskedLM, family, flavours, flops_per_token
from tokenizer import ScopeTokenizer
from train.common.batching import packed_tensors, sequence_lengths
from train.masking import MLMMasker
from train.metrics import device_peak_flops, peak_memory_bytes
from train.pretrain import model_inputs

REPO = Path(__file__).resolve().parents[1]
MAX_LENGTH = 128


@dataclass(frozen=True)
class Variant:
    """Which fused kernels a run uses."""

    name: str
    attention: str
    """``cloud.packed`` implementation: varlen (fused, CUDA) or sdpa (padded core)."""
    fused_adamw: bool
    compile: bool


ALL_ON = Variant("all fused kernels on", "varlen", True, True)
VARIANTS = (
    ALL_ON,
    Variant("attention: padded core via SDPA (no varlen kernel)", "sdpa", True, True),
    Variant("AdamW: foreach (not fused)", "varlen", False, True),
    Variant("no torch.compile", "varlen", True, False),
)


@dataclass
class Measurement:
    flavour: str
    variant: str
    tokens_per_s: float
    mfu: float
    peak_memory_gb: float
    first_loss: float
    last_loss: float
    seconds: float


def packed_batches(texts: list[str], tokens_per_batch: int) -> list[dict[str, torch.Tensor]]:
    """The strings packed in order into batches of at most ``tokens_per_batch`` tokens."""
    tokenizer = ScopeTokenizer()
    groups: list[list[list[int]]] = [[]]
    used = 0
    for text in texts:
        ids = tokenizer.encode(text)[:MAX_LENGTH]
        if groups[-1] and used + len(ids) > tokens_per_batch:
            groups.append([])
            used = 0
        groups[-1].append(ids)
        used += len(ids)
    batches = []
    for group in groups[:-1] or groups:  # the last, partial batch only if it is the only one
        batches.append(packed_tensors(tokenizer.pack(group)))
    return mask_ours(batches, MLMMasker.from_tokenizer(tokenizer), seed=1)


def cycle(batches: list[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from batches


def measure(
    flavour: str,
    variant: Variant,
    batches: list[dict[str, torch.Tensor]],
    device: torch.device,
    steps: int,
    warmup: int,
) -> Measurement:
    torch.manual_seed(0)
    # The varlen kernel has no dropout (cloud.packed falls back to the padded core when
    # attention dropout is on): attention dropout 0, hidden dropout as configs/pretrain.
    config = family(
        flavour,
        vocab_size=ScopeTokenizer().vocab_size,
        max_position_embeddings=MAX_LENGTH,
        attention_dropout=0.0,
    )
    model = CloudForMaskedLM(config).to(device)
    model.encoder.attention_impl = variant.attention
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=3e-4, fused=variant.fused_adamw, foreach=not variant.fused_adamw
    )
    forward = torch.compile(model, dynamic=True) if variant.compile else model
    cuda = device.type == "cuda"
    stream = cycle(batches)
    losses: list[float] = []
    tokens = 0
    flops = 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        batch = next(stream)
        inputs = model_inputs(batch, device)
        if cuda:
            # One value for every batch: the kernel needs only a bound, and a compiled
            # graph is then not specialised on each batch's longest string.
            inputs["max_seqlen"] = MAX_LENGTH
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = forward(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step >= warmup:
            lengths = sequence_lengths(batch).tolist()
            tokens += sum(lengths)
            flops += sum(n * flops_per_token(config, n) for n in lengths)
    sync(device)
    seconds = time.perf_counter() - start
    peak, _ = device_peak_flops(device)
    return Measurement(
        flavour,
        variant.name,
        tokens / seconds,
        flops / seconds / peak,
        peak_memory_bytes(device) / 2**30,
        losses[0],
        losses[-1],
        seconds,
    )


def largest_flavour_that_fits(batches: list, device: torch.device) -> str | None:
    names = flavours()
    for flavour in reversed(names[names.index("base") + 1 :]):
        try:
            measure(flavour, Variant("fit probe", "varlen", True, False), batches, device, 1, 1)
            return flavour
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    return None


def print_table(results: list[Measurement], device_name: str, peak: str) -> None:
    print(f"# GPU path (packed), {date.today()}, {device_name}; peak: {peak}")
    print(f"{'flavour':<8}{'variant':<52}{'tokens/s':>12}{'MFU':>8}{'peak GB':>9}{'loss':>16}")
    for r in results:
        print(
            f"{r.flavour:<8}{r.variant:<52}{r.tokens_per_s:>12.0f}{r.mfu:>8.1%}"
            f"{r.peak_memory_gb:>9.2f}{r.first_loss:>8.3f}→{r.last_loss:<7.3f}"
        )


def trains(result: Measurement) -> bool:
    return (
        math.isfinite(result.last_loss)
        and result.last_loss < result.first_loss
        and 0 < result.mfu <= 1
    )


def summary(results: list[Measurement], device_name: str, peak: str, skipped: list) -> dict:
    base = [r for r in results if r.flavour == "base" and r.variant == ALL_ON.name]
    return {
        "device": device_name,
        "peak": peak,
        "torch": torch.__version__,
        "base_mfu": base[0].mfu if base else None,
        "target_base_mfu": 0.5,
        "results": [asdict(r) for r in results],
        "skipped_for_time": skipped,
        "all_train": all(trains(r) for r in results),
    }


def cpu_self_check(texts: list[str], steps: int) -> tuple[list[Measurement], str, str]:
    """The same code path on CPU (debug flavour, fp32, no compile): every variant trains."""
    device = torch.device("cpu")
    batches = packed_batches(texts, 1024)
    results = [
        measure("debug", v, batches, device, steps, 2)
        for v in VARIANTS
        if not v.compile  # compiling on a 2-core CPU takes minutes and measures nothing useful
    ]
    results.append(
        measure(
            "debug",
            Variant("padded core via SDPA, foreach AdamW", "sdpa", False, False),
            batches,
            device,
            steps,
            2,
        )
    )
    return results, "CPU self-check (no CUDA device)", device_peak_flops(device)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile)")
    parser.add_argument("--tokens-per-batch", type=int, default=65536, help="packed batch size")
    parser.add_argument("--flavours", default="base,auto", help="'auto' adds the largest that fits")
    parser.add_argument("--limit", type=int, default=0, help="structures to encode (0: all)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no run after this")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    began = time.perf_counter()
    texts, _ = load_scope_strings(None, args.limit or None)
    skipped: list[str] = []
    if not torch.cuda.is_available():
        results, device_name, peak = cpu_self_check(texts, steps=min(args.steps, 10))
    else:
        device = torch.device("cuda")
        batches = packed_batches(texts, args.tokens_per_batch)
        wanted = [f for f in args.flavours.split(",") if f != "auto"]
        results = []
        for flavour in wanted:
            for variant in VARIANTS:
                if time.perf_counter() - began > args.budget_s:
                    skipped.append(f"{flavour}: {variant.name}")
                    continue
                results.append(measure(flavour, variant, batches, device, args.steps, args.warmup))
                torch.cuda.empty_cache()
        if "auto" in args.flavours.split(",") and time.perf_counter() - began < args.budget_s:
            largest = largest_flavour_that_fits(batches, device)
            if largest:
                results.append(measure(largest, ALL_ON, batches, device, args.steps, args.warmup))
        device_name, peak = torch.cuda.get_device_name(device), device_peak_flops(device)[1]
    print_table(results, device_name, peak)
    report = summary(results, device_name, peak, skipped)
    if not torch.cuda.is_available():
        failed = [r.variant for r in results if not trains(r)]
        print(
            f"self-check FAILED for: {failed}"
            if failed
            else "self-check passed: every variant trains and the MFU is in (0, 1]"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps({"summary": report}))
    return 0 if report["all_train"] else 1


if __name__ == "__main__":
    sys.exit(main())
