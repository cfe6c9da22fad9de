"""CLOUD model family: the BERT-style encoder, named flavours, parameter and FLOP counts.

Pure PyTorch (no distributed imports); Hugging Face conversion lives in ``cloud.hf``,
packages (``save_pretrained`` / ``load_pretrained``) in ``cloud.export``, imported on first use.
"""

from __future__ import annotations

from cloud.flavours import count_parameters, family, flavours, flops_per_token
from cloud.model import CloudConfig, CloudForMaskedLM, CloudModel, MaskedLMOutput

# Names served lazily by __getattr__: cloud.export pulls in safetensors and the tokenizer
# registry, which plain model use does not need.
_LAZY_EXPORTS = {
    "Pretrained": "cloud.export",
    "load_pretrained": "cloud.export",
    "register_architecture": "cloud.export",
    "save_pretrained": "cloud.export",
}


def __getattr__(name: str) -> object:
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'cloud' has no attribute {name!r}")


__all__ = [
    "CloudConfig",
    "CloudForMaskedLM",
    "CloudModel",
    "MaskedLMOutput",
    "Pretrained",
    "count_parameters",
    "family",
    "flavours",
    "flops_per_token",
    "load_pretrained",
    "register_architecture",
    "save_pretrained",
]
