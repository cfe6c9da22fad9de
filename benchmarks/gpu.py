"""The GPU path: tokens/s, MFU and peak memory of pretraining, with each fused kernel on and off.

    python benchmarks/gpu.py [--steps 30] [--batch-size 256] [--flavours base,auto]

On a CUDA machine (no network needed: everything comes from the repository and the wheels
installed beside it) it trains the ``base`` flavour and the largest flavour that fits, in
bf16, on real SCOPE batches from the shipped corpus sample, first with every fused kernel on
(SDPA flash/memory-efficient attention, fused AdamW, ``torch.compile``), then with each one
switched off in turn, and prints tokens/s, MFU against the device's peak and peak memory.
The issue's target is MFU ≥ 50 % for ``base`` on one H100.

Without a GPU it runs its CPU self-check: the same code path on the ``debug`` flavour in
fp32 for a few steps per variant, checking that every variant trains (finite, falling loss)
and that the MFU it computes lies in (0, 1].
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import load_scope_strings, mask_ours, model_inputs, our_batches, sync

from cloud import CloudForMaskedLM, family, flavours, flops_per_token
from tokenizer import ScopeTokenizer
from train.masking import MLMMasker
from train.metrics import device_peak_flops, peak_memory_bytes
from train.pretrain import sdpa_context

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """Which fused kernels a run uses."""

    name: str
    attention: str  # "auto" lets SDPA pick flash / memory-efficient; "math" is the unfused kernel
    fused_adamw: bool
    compile: bool


ALL_ON = Variant("all fused kernels on", "auto", True, True)
VARIANTS = (
    ALL_ON,
    Variant("attention: math (no flash/efficient SDPA)", "math", True, True),
    Variant("AdamW: foreach (not fused)", "auto", False, True),
    Variant("no torch.compile", "auto", True, False),
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


def batches_for(texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    tokenizer = ScopeTokenizer()
    ids = [tokenizer.encode(t)[:128] for t in texts]
    # Sorting by length keeps padding low, as the loader's shuffle buffer cannot.
    ids.sort(key=len)
    batches = our_batches(ids, tokenizer, batch_size)
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
    config = family(flavour, vocab_size=ScopeTokenizer().vocab_size)
    model = CloudForMaskedLM(config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=3e-4, fused=variant.fused_adamw, foreach=not variant.fused_adamw
    )
    forward = torch.compile(model) if variant.compile else model
    bf16 = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    stream = cycle(batches)
    losses: list[float] = []
    tokens = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with sdpa_context(variant.attention):
        for step in range(warmup + steps):
            if step == warmup:
                sync(device)
                start = time.perf_counter()
            batch = next(stream)
            with autocast:
                loss = forward(**model_inputs(batch, device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if step >= warmup:
                tokens += int(batch["attention_mask"].sum())
    sync(device)
    seconds = time.perf_counter() - start
    mean_length = tokens / (steps * len(batches[0]["input_ids"]))
    tokens_per_s = tokens / seconds
    peak, _ = device_peak_flops(device)
    mfu = tokens_per_s * flops_per_token(config, round(mean_length)) / peak
    return Measurement(
        flavour,
        variant.name,
        tokens_per_s,
        mfu,
        peak_memory_bytes(device) / 2**30,
        losses[0],
        losses[-1],
    )


def largest_flavour_that_fits(batches: list, device: torch.device, steps: int) -> str | None:
    names = flavours()
    for flavour in reversed(names[names.index("base") + 1 :]):
        try:
            measure(flavour, ALL_ON, batches, device, 1, 1)
            return flavour
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    return None


def print_table(results: list[Measurement], device_name: str, peak: str) -> None:
    print(f"# GPU path, {date.today()}, {device_name}; peak: {peak}")
    print(f"{'flavour':<8}{'variant':<46}{'tokens/s':>12}{'MFU':>8}{'peak GB':>9}{'loss':>16}")
    for r in results:
        print(
            f"{r.flavour:<8}{r.variant:<46}{r.tokens_per_s:>12.0f}{r.mfu:>8.1%}"
            f"{r.peak_memory_gb:>9.2f}{r.first_loss:>8.3f}→{r.last_loss:<7.3f}"
        )


def cpu_self_check(texts: list[str], steps: int) -> int:
    """The same code path on CPU (debug flavour, fp32, no compile): every variant trains."""
    device = torch.device("cpu")
    batches = batches_for(texts, 32)
    results = [
        measure("debug", v, batches, device, steps, 2)
        for v in VARIANTS
        if not v.compile  # compiling on a 2-core CPU takes minutes and measures nothing useful
    ]
    results.append(
        measure(
            "debug",
            Variant("math attention, foreach AdamW", "math", False, False),
            batches,
            device,
            steps,
            2,
        )
    )
    print_table(results, "CPU self-check (no CUDA device)", device_peak_flops(device)[1])
    problems = [
        r.variant
        for r in results
        if not (math.isfinite(r.last_loss) and r.last_loss < r.first_loss and 0 < r.mfu <= 1)
    ]
    if problems:
        print(f"self-check FAILED for: {problems}")
        return 1
    print("self-check passed: every variant trains and the MFU is in (0, 1]")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile)")
    parser.add_argument("--batch-size", type=int, default=256, help="sequences per step")
    parser.add_argument("--flavours", default="base,auto", help="'auto' adds the largest that fits")
    parser.add_argument("--limit", type=int, default=0, help="structures to encode (0: all)")
    args = parser.parse_args()
    texts, _ = load_scope_strings(None, args.limit or None)
    if not torch.cuda.is_available():
        return cpu_self_check(texts, steps=min(args.steps, 10))
    device = torch.device("cuda")
    batches = batches_for(texts, args.batch_size)
    wanted = [f for f in args.flavours.split(",") if f != "auto"]
    if "auto" in args.flavours.split(","):
        largest = largest_flavour_that_fits(batches, device, args.steps)
        if largest:
            wanted.append(largest)
    results = []
    for flavour in wanted:
        for variant in VARIANTS:
            results.append(measure(flavour, variant, batches, device, args.steps, args.warmup))
            torch.cuda.empty_cache()
    print_table(results, torch.cuda.get_device_name(device), device_peak_flops(device)[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
