"""Dropout whose random draws cost a quarter of torch's on CPU.

On CPU, ``torch.nn.functional.dropout`` draws one random number per element (``bernoulli_``),
and at SCOPE sizes those draws were a fifth of a training step of the ``tiny`` model
(``benchmarks/train_throughput.py``). Here one 64-bit draw (``random_``, uniform on
[0, 2⁶³)) gives four 15-bit lanes, each compared with ``round((1 - p) · 2¹⁵)``: the same
inverted dropout (kept values scaled by 1 / (1 - p)) with p quantised to 1/32,768, from the
same seeded global generator, so runs stay reproducible and resumable. The mask is kept as
bytes for the backward pass. On other devices torch's own (Philox, fused) dropout runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LANE_BITS = 15
LANE_VALUES = 1 << LANE_BITS


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """Boolean mask of ``shape``: each element True with probability 1 - p (to 1/32,768)."""
    count = 1
    for size in shape:
        count *= size
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = words.view(torch.int16)[:count] & (LANE_VALUES - 1)
    return (lanes < round((1.0 - p) * LANE_VALUES)).view(shape)


class _MaskedScale(torch.autograd.Function):
    """x · mask · scale, the mask saved as bytes rather than as a float tensor."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x * mask * scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None, None


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout of ``x`` with probability ``p`` (identity when not training)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training=True)
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``nn.Dropout`` through :func:`dropout` (no parameters, so state dicts are unchanged)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
