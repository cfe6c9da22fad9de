"""Where the repository is, and the environment a child process of it needs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root (configs/, data/, models/ live here in a checkout)."""


def env_with_repository(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the repository first on PYTHONPATH, so a child
    process imports these packages whatever its working directory."""
    child = dict(os.environ if env is None else env)
    child["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child.get("PYTHONPATH", "")) if p)
    return child
