"""Attention over packed strings on CPU: the ways to keep each string to itself, timed.

    python benchmarks/attention_core.py [--heads 12] [--head-dim 64] [--strings 16]
        [--threads 1] [--repeats 5]

Forward + backward of self-attention over S strings of real SCOPE-like lengths (12–63
tokens), packed one after the other as ``cloud.packed`` holds them ([N, 3, H, hd] q/k/v),
each string attending to itself only, by:

- ``cloud.packed`` (math): q, k, v scattered into their (string, head, position) slots of a
  [S, H, T_max, hd] buffer, explicit matmuls with a key mask, read back by the same index;
- ``cloud.packed`` (sdpa): the same buffer through ``scaled_dot_product_attention``;
- per-length grouping: one unmasked SDPA call per distinct length;
- a block-diagonal mask over all N tokens;
- nested (jagged) tensors through SDPA.

Every method is checked against the first one (max difference printed) and timed in
interleaved rounds (best round reported), so a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloud.packed import cu_seqlens_of, pack_layout, packed_attention  # noqa: E402


def methods(lengths: torch.Tensor, heads: int, head_dim: int) -> dict[str, Callable]:
    cu = cu_seqlens_of(lengths)
    tokens = int(cu[-1])
    sequence = torch.repeat_interleave(torch.arange(len(lengths)), lengths)

    def ours(impl: str) -> Callable:
        layout = pack_layout(cu, impl=impl, device_type="cpu")
        return lambda qkv: packed_attention(qkv, layout)

    def grouped(qkv: torch.Tensor) -> torch.Tensor:
        outs, order = [], []
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().flatten()
            index = (cu[rows].long()[:, None] + torch.arange(length)[None]).flatten()
            x = qkv.index_select(0, index).view(len(rows), length, 3, heads, head_dim)
            q, k, v = x.permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v)
            outs.append(out.transpose(1, 2).reshape(-1, heads, head_dim))
            order.append(index)
        return torch.cat(outs).index_select(0, torch.argsort(torch.cat(order)))

    def block_diagonal(qkv: torch.Tensor) -> torch.Tensor:
        mask = (sequence[:, None] == sequence[None, :])[None, None]
        q, k, v = qkv.permute(1, 2, 0, 3).unsqueeze(1).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[0].transpose(0, 1)

    def nested(qkv: torch.Tensor) -> torch.Tensor:
        def jagged(x: torch.Tensor) -> torch.Tensor:
            return torch.nested.nested_tensor_from_jagged(x, cu.long()).transpose(1, 2)

        q, k, v = qkv.unbind(1)
        return (
            F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v)).transpose(1, 2).values()
        )

    assert tokens == int(lengths.sum())
    return {
        "cloud.packed, math core (default on CPU)": ours("math"),
        "cloud.packed, SDPA core": ours("sdpa"),
        "per-length grouping": grouped,
        "block-diagonal mask over all tokens": block_diagonal,
        "nested (jagged) tensors": nested,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--strings", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lengths = torch.randint(12, 64, (args.strings,))
    qkv = torch.randn(int(lengths.sum()), 3, args.heads, args.head_dim, requires_grad=True)
    candidates = methods(lengths, args.heads, args.head_dim)
    reference = next(iter(candidates.values()))(qkv).detach()
    gradient = torch.randn_like(reference)
    best: dict[str, float] = {}
    for name, method in candidates.items():
        try:
            difference = (method(qkv) - reference).abs().max().item()
        except RuntimeError as exc:
            print(f"{name:44s} unavailable: {str(exc).splitlines()[0][:70]}")
            continue
        best[name] = float("inf")
        print(f"{name:44s} max |difference| {difference:.1e}")
    for _ in range(args.repeats):
        for name in best:
            start = time.perf_counter()
            for _ in range(10):
                candidates[name](qkv).backward(gradient)
            best[name] = min(best[name], (time.perf_counter() - start) / 10)
    first = next(iter(best.values()))
    print(
        f"\n{args.strings} strings, {int(lengths.sum())} tokens (longest {int(lengths.max())}), "
        f"{args.heads} heads × {args.head_dim}, {args.threads} thread(s); forward + backward:"
    )
    for name, seconds in best.items():
        print(f"{name:44s} {seconds * 1e3:8.2f} ms  ×{seconds / first:.2f}")


if __name__ == "__main__":
    main()
