"""The AdamW parameter groups of the fine-tuning jobs (``cloud finetune``, ``cloud debye``)."""

from __future__ import annotations

from typing import Any

import torch


def parameter_groups(
    model: torch.nn.Module,
    lr: float,
    head_lr: float,
    weight_decay: float,
    *,
    layer_decay: float = 1.0,
    trainable_only: bool = True,
) -> list[dict[str, Any]]:
    """AdamW groups of ``model``'s parameters, one per (learning rate, decayed) pair.

    Parameters named ``head.*`` get ``head_lr``; the others ``lr``, times
    ``layer_decay ** k`` for an encoder parameter ``k`` blocks below the top: the embeddings
    (``encoder.embeddings.*``) are ``num_layers`` below, ``encoder.layers.<i>.*`` are
    ``num_layers - 1 - i`` below (``model.config.num_layers``, read only when ``layer_decay``
    is not 1), anything else (the final LayerNorm) is at the top. Matrices (``ndim >= 2``) get
    ``weight_decay``, biases and LayerNorm weights 0. Each group also records its rate as
    ``initial_lr``, which the schedule multiplies.

    ``trainable_only``: leave out parameters that do not require a gradient. A caller that
    freezes some parameters for a while (and unfreezes them later) passes False so that they
    are in the optimizer all along.
    """
    n_layers = model.config.num_layers if layer_decay != 1.0 else 0
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        if name.startswith("head."):
            rate = head_lr
        elif layer_decay != 1.0:
            rate = lr * _depth_scale(name, n_layers, layer_decay)
        else:
            rate = lr
        groups.setdefault((rate, param.ndim >= 2), []).append(param)
    return [
        {
            "params": params,
            "lr": rate,
            "initial_lr": rate,
            "weight_decay": weight_decay if decayed else 0.0,
        }
        for (rate, decayed), params in groups.items()
    ]


def _depth_scale(name: str, n_layers: int, decay: float) -> float:
    """LR multiplier of an encoder parameter: 1 at the top, ``decay`` per block below."""
    if name.startswith("encoder.embeddings."):
        return decay**n_layers
    if name.startswith("encoder.layers."):
        index = int(name.split(".")[2])
        return decay ** (n_layers - 1 - index)
    return 1.0  # the final LayerNorm sits on top of the last block
