"""The learning-rate schedule every training loop of ``train`` uses."""

from __future__ import annotations

import math


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """LR multiplier of the ``step``-th optimizer step (0-based): linear warm-up, cosine decay.

    Warm-up starts at 1/warmup_steps (not 0: a zero-LR first step would be wasted) and reaches
    1 at step warmup_steps - 1; the cosine then falls to ``min_ratio`` at the last step
    (``max_steps - 1``) and stays there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(max_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
