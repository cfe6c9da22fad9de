"""Values as JSON can hold them, for the results and metadata the jobs write."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays turned into lists, tuples into lists, mapping keys into
    strings and numpy scalars into Python ones (``.item()``), recursively. A Python float that
    is NaN or ±inf becomes ``None`` (JSON has no such numbers; ``json.dumps`` would write an
    invalid ``NaN``); a numpy scalar's ``.item()`` is kept as it is, NaN included (results
    written so far show those as ``NaN``). Anything else is returned unchanged."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
