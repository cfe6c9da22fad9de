"""Exportable architectures: ``register_architecture`` and the lookups of a model's or a
package's registration. ``CloudForMaskedLM`` is registered here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from cloud.export.format import TRUSTED_MODULE_PREFIXES, PackageError
from cloud.model import CloudConfig, CloudForMaskedLM


@dataclass(frozen=True)
class Architecture:
    """How one exportable model class describes and rebuilds itself."""

    name: str
    cls: type[nn.Module]
    export_config: Callable[[nn.Module], dict[str, Any]]
    from_export_config: Callable[[dict[str, Any]], nn.Module]

    @property
    def module(self) -> str:
        return self.cls.__module__


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(
    cls: type[nn.Module] | None = None,
    *,
    name: str | None = None,
    export_config: Callable[[nn.Module], dict[str, Any]] | None = None,
    from_export_config: Callable[[dict[str, Any]], nn.Module] | None = None,
) -> Any:
    """Make ``cls`` exportable; usable as ``@register_architecture`` or called with adapters.

    Without adapters the class must define ``export_config(self) -> dict`` and the classmethod
    ``from_export_config(cls, d) -> instance``. ``name`` defaults to the class name and is what
    packages record, so it must stay stable once packages exist.
    """

    def register(target: type[nn.Module]) -> type[nn.Module]:
        describe = export_config or getattr(target, "export_config", None)
        rebuild = from_export_config or getattr(target, "from_export_config", None)
        if describe is None or rebuild is None:
            raise TypeError(
                f"{target.__name__} needs export_config() and a from_export_config classmethod "
                "(or pass export_config=/from_export_config= adapters) to be exportable"
            )
        key = name or target.__name__
        existing = _ARCHITECTURES.get(key)
        if existing is not None and existing.cls is not target:
            raise ValueError(f"architecture name {key!r} is already registered by {existing.cls}")
        _ARCHITECTURES[key] = Architecture(key, target, describe, rebuild)
        return target

    return register if cls is None else register(cls)


def registered_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def architecture_of(model: nn.Module) -> Architecture:
    """The registration of ``type(model)`` (exact class: a subclass may hold more weights)."""
    for architecture in _ARCHITECTURES.values():
        if type(model) is architecture.cls:
            return architecture
    raise ValueError(
        f"{type(model).__name__} is not an exportable architecture; register it with "
        f"cloud.export.register_architecture (registered: {registered_architectures()})"
    )


def get_architecture(name: str, module: str | None = None) -> Architecture:
    """The architecture called ``name``, importing its (trusted) ``module`` if needed."""
    if name not in _ARCHITECTURES and module:
        if not module.startswith(TRUSTED_MODULE_PREFIXES):
            raise PackageError(
                f"architecture {name!r} names module {module!r}, outside the trusted "
                f"packages {TRUSTED_MODULE_PREFIXES}; refusing to import it"
            )
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PackageError(f"architecture {name!r}: cannot import {module!r}: {exc}") from exc
    if name not in _ARCHITECTURES:
        raise PackageError(
            f"unknown architecture {name!r}; registered: {registered_architectures()}"
        )
    return _ARCHITECTURES[name]


def _masked_lm_export_config(model: nn.Module) -> dict[str, Any]:
    return {"cloud_config": model.config.to_dict()}


def _masked_lm_from_export_config(values: dict[str, Any]) -> nn.Module:
    return CloudForMaskedLM(CloudConfig.from_dict(values["cloud_config"]))


register_architecture(
    CloudForMaskedLM,
    export_config=_masked_lm_export_config,
    from_export_config=_masked_lm_from_export_config,
)
