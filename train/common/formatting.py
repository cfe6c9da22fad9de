"""Numbers as reports show them."""

from __future__ import annotations


def human_count(value: float) -> str:
    """1.2e9 → '1.2B' for counts of parameters and tokens."""
    rounded = float(f"{value:.3g}")  # 999_999_999 is shown as 1B, not 1e+03M
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(rounded) >= threshold:
            return f"{rounded / threshold:.3g}{suffix}"
    return f"{rounded:.3g}"
