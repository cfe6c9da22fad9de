"""CLOUD model family: the BERT-style encoder, named flavours, parameter and FLOP counts.

Pure PyTorch (no distributed imports); Hugging Face conversion lives in ``cloud.hf``.
"""

from __future__ import annotations

from cloud.flavours import count_parameters, family, flavours, flops_per_token
from cloud.model import CloudConfig, CloudForMaskedLM, CloudModel, MaskedLMOutput

__all__ = [
    "CloudConfig",
    "CloudForMaskedLM",
    "CloudModel",
    "MaskedLMOutput",
    "count_parameters",
    "family",
    "flavours",
    "flops_per_token",
]
