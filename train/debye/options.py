"""CLOUD-DEBYE's options that the command line and the engine share: data sources, targets,
protocols, compared methods and the temperature grid syntax.

Standard library only, so that building the `cloud` parser does not import torch; the engine
(``train.debye``) and the CLI (``train.cli.debye``) both import from here, and the engine
never imports the command line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

SOURCES = ("petretto", "phonondb")
TARGETS = ("cv", "u", "both")
PROTOCOLS = ("curve", "single")
COMPARE_METHODS = ("debye_single", "direct", "constant", "oracle", "oracle_300")
SINGLE_TEMPERATURE = 300.0
"""K: the paper's protocol predicts C_v at 300 K only."""
MAX_TEMPERATURE_POINTS = 10_000


def parse_temperatures(text: str | Sequence[float] | float) -> list[float]:
    """``start:stop:step`` (stop included when on the grid), ``100,300,500`` or ``300`` → K.

    Raises ValueError saying what is wrong: not numbers, step <= 0, stop < start, T <= 0,
    non-finite values, or more than 10,000 points.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        values = [float(text)]
    elif isinstance(text, str):
        values = _parse_temperature_text(text.strip())
    else:
        values = [float(v) for v in text]
    if not values:
        raise ValueError("temperature list is empty")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"temperatures must be finite and > 0 K, got {values[:5]}")
    if len(values) > MAX_TEMPERATURE_POINTS:
        raise ValueError(f"{len(values)} temperatures; at most {MAX_TEMPERATURE_POINTS}")
    return sorted(set(values))


_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"


def _parse_temperature_text(text: str) -> list[float]:
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3 or not all(re.fullmatch(_NUMBER, p.strip()) for p in parts):
            raise ValueError(
                f"temperature range {text!r} must be start:stop:step in K, e.g. 50:800:50"
            )
        start, stop, step = (float(p) for p in parts)
        if step <= 0:
            raise ValueError(f"temperature range {text!r}: step must be > 0")
        if stop < start:
            raise ValueError(f"temperature range {text!r}: stop {stop:g} < start {start:g}")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_TEMPERATURE_POINTS:
            raise ValueError(f"temperature range {text!r} has {count} points; at most 10,000")
        return [round(start + i * step, 9) for i in range(count)]
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(re.fullmatch(_NUMBER, p) for p in parts):
        raise ValueError(
            f"temperatures {text!r} must be start:stop:step (e.g. 50:800:50), a comma list "
            "(100,300,500) or one value, in K"
        )
    return [float(p) for p in parts]
