"""Valid ranges of numeric configuration values, checked the same way by every job's config.

A check is ``(key, value, predicate, rule)``; :func:`out_of_range` turns the failed ones into
"KEY must be RULE, got VALUE" lines, skipping values that are None (an optional setting left
unset). The predicates name the ranges settings share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Check = tuple[str, Any, Callable[[Any], bool], str]


def positive(value: float) -> bool:
    return value > 0


def non_negative(value: float) -> bool:
    return value >= 0


def fraction(value: float) -> bool:
    """In [0, 1]."""
    return 0 <= value <= 1


def below_one(value: float) -> bool:
    """In [0, 1): a decay rate, a dropout probability, a warm-up share."""
    return 0 <= value < 1


def out_of_range(checks: Iterable[Check]) -> list[str]:
    """One line per check whose (non-None) value fails its predicate."""
    return [
        f"{key} must be {rule}, got {value}"
        for key, value, valid, rule in checks
        if value is not None and not valid(value)
    ]


def optimiser_checks(config: Any) -> list[Check]:
    """The supervised recipes' shared settings (``FinetuneConfig``, ``DebyeTrainConfig``)."""
    return [
        ("lr", config.lr, positive, "> 0"),
        ("head_lr", config.head_lr, positive, "> 0"),
        ("weight_decay", config.weight_decay, non_negative, ">= 0"),
        ("min_lr_ratio", config.min_lr_ratio, fraction, "in [0, 1]"),
        ("warmup_ratio", config.warmup_ratio, below_one, "in [0, 1)"),
        ("grad_clip", config.grad_clip, non_negative, ">= 0 (0: no clipping)"),
        ("encoder_dropout", config.encoder_dropout, below_one, "in [0, 1) or null"),
        ("threads", config.threads, non_negative, ">= 0 (0: automatic)"),
    ]
