"""The environment that keeps a local Ray on loopback, for every process that starts one.

Nothing here imports ray: the demo, the tests and the corpus builder read it before Ray is
imported or in the parent of the process that starts it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TypeVar

Env = TypeVar("Env", bound=MutableMapping[str, str])

LOOPBACK_ENV: Mapping[str, str] = {
    # Without these a local Ray listens on every interface.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
"""Variables a local Ray reads at start; the values keep it on loopback and quiet."""


def setdefault_loopback(env: Env) -> Env:
    """Set each ``LOOPBACK_ENV`` variable in ``env`` that is not set there already (a value the
    user chose wins); returns ``env``."""
    for name, value in LOOPBACK_ENV.items():
        env.setdefault(name, value)
    return env
