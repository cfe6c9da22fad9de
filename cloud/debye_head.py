"""CLOUD-DEBYE: the CLOUD encoder predicts a Debye temperature, the Debye model does the rest.

``CloudDebye`` pools the [CLS] embedding through an MLP to one number z per material and maps
it to θ_D (K) with

    log θ = log θ_min + (log θ_max − log θ_min) · σ(z + b),   b chosen so that z = 0 ↦ θ_init.

θ therefore lies in [θ_min, θ_max] for every z, ±inf included: positive by construction and
never too large for the Debye integrals. (The released CLOUD-DEBYE head is affine, with no
positivity: a negative output there is a NaN heat capacity.) The freshly initialised head
outputs z ≈ 0, i.e. θ ≈ θ_init (300 K by default) for every material, a sensible start.

C_v(T) and U(T) then come from ``cloud.debye`` for any temperature, differentiably in θ and
T, so a loss on the heat capacity trains the encoder through the physics. Units: θ and T in
K, C_v in J/(mol K) and U in J/mol per mole of cells of ``n_atoms`` atoms.

Registered with ``cloud.export``: a trained model is saved and loaded as a normal package.
Pure PyTorch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cloud import debye
from cloud.heads import ACTIVATIONS, EncoderWithHead, mlp_head
from cloud.model import CloudConfig, CloudModel, dataclass_from_dict, init_weights_of

__all__ = ["CloudDebye", "DebyeHeadConfig", "DebyeOutput", "theta_from_output"]


@dataclass
class DebyeHeadConfig:
    """Shape of the θ_D head and the range of θ it can express; JSON-safe."""

    hidden_sizes: list[int] = field(default_factory=lambda: [128])
    """Widths of the MLP's hidden layers on the [CLS] embedding; [] gives a linear head."""
    dropout: float = 0.1
    """Dropout before every linear layer of the head (training mode only)."""
    activation: str = "gelu"
    """Non-linearity between hidden layers: gelu, relu, silu or tanh."""
    theta_min: float = 1.0
    """Smallest θ_D the head can output, K (reached as z → −∞)."""
    theta_max: float = 1.0e4
    """Largest θ_D the head can output, K (reached as z → +∞); diamond is ≈ 2,200 K."""
    theta_init: float = 300.0
    """θ_D, K, at head output z = 0, which is where a freshly initialised head starts."""

    def __post_init__(self) -> None:
        self.hidden_sizes = [int(size) for size in self.hidden_sizes]
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"DebyeHeadConfig.hidden_sizes must be positive: {self.hidden_sizes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DebyeHeadConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"DebyeHeadConfig.activation must be one of {sorted(ACTIVATIONS)}")
        bounds = (self.theta_min, self.theta_init, self.theta_max)
        if not all(math.isfinite(b) for b in bounds) or not 0 < bounds[0] < bounds[1] < bounds[2]:
            raise ValueError(
                "DebyeHeadConfig needs finite 0 < theta_min < theta_init < theta_max (K), got "
                f"{self.theta_min}, {self.theta_init}, {self.theta_max}"
            )

    @property
    def output_offset(self) -> float:
        """b in σ(z + b): the logit of θ_init's position on the log θ scale."""
        span = math.log(self.theta_max) - math.log(self.theta_min)
        share = (math.log(self.theta_init) - math.log(self.theta_min)) / span
        return math.log(share / (1.0 - share))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DebyeHeadConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        return dataclass_from_dict(cls, values)


def theta_from_output(z: Tensor, head: DebyeHeadConfig) -> Tensor:
    """θ_D in K, within [theta_min, theta_max], of raw head outputs z (any real or ±inf).

    Computed in at least float32: half precision cannot resolve θ near θ_max.
    """
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    log_min, log_max = math.log(head.theta_min), math.log(head.theta_max)
    share = torch.sigmoid(z + head.output_offset)
    # exp of a log inside [log_min, log_max] cannot over- or underflow; the clamp only removes
    # the last-ulp excursions of exp(log(x)) so the bounds hold exactly.
    theta = torch.exp(log_min + (log_max - log_min) * share)
    return theta.clamp(head.theta_min, head.theta_max)


class DebyeThetaHead(nn.Module):
    """MLP on the pooled embedding → one raw output z per material (θ via theta_from_output)."""

    def __init__(self, input_size: int, head: DebyeHeadConfig) -> None:
        super().__init__()
        self.mlp = mlp_head(input_size, head.hidden_sizes, 1, head.dropout, head.activation)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled).squeeze(-1)


@dataclass
class DebyeOutput:
    """θ_D and the Debye thermodynamics of one forward pass."""

    theta: Tensor
    """Debye temperature per material, K, [B]."""
    heat_capacity: Tensor
    """C_v in J/(mol K) per mole of cells, [B] for a scalar T, else [B, n_T]."""
    internal_energy: Tensor
    """U (zero-point energy included) in J/mol per mole of cells, shaped as heat_capacity."""


class CloudDebye(EncoderWithHead):
    """CLOUD encoder + [CLS]-pooled θ_D head; C_v(T) and U(T) from the Debye model."""

    head_config_class = DebyeHeadConfig

    def __init__(self, config: CloudConfig, head: DebyeHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.head_config = head if head is not None else DebyeHeadConfig()
        self.encoder = CloudModel(config)
        self.head = DebyeThetaHead(config.hidden_size, self.head_config)
        init_weights_of(self.head, config)

    # ------------------------------------------------------------------ θ_D

    def head_output(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Raw head output z per material, [B] (θ = theta_from_output(z))."""
        return self.head(self.encoder.encode(input_ids, attention_mask, segment_ids))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """θ_D in K per material, [B], inside [theta_min, theta_max]."""
        return theta_from_output(
            self.head_output(input_ids, attention_mask, segment_ids), self.head_config
        )

    def theta(self, batch: Mapping[str, Tensor | None]) -> Tensor:
        """θ_D (K) of a batch dict with input_ids and optional attention_mask, segment_ids."""
        return self.forward(
            batch["input_ids"], batch.get("attention_mask"), batch.get("segment_ids")
        )

    # ------------------------------------------------------------------ thermodynamics

    def thermodynamics(
        self, batch: Mapping[str, Tensor | None], T: Any, n_atoms: Any
    ) -> DebyeOutput:
        """θ, C_v and U of a batch from one encoder pass (see ``heat_capacity``)."""
        theta = self.theta(batch)
        theta_b, temperature, atoms = _broadcast_per_material(theta, T, n_atoms)
        return DebyeOutput(
            theta=theta,
            heat_capacity=debye.heat_capacity(theta_b, temperature, atoms),
            internal_energy=debye.internal_energy(theta_b, temperature, atoms),
        )

    def heat_capacity(self, batch: Mapping[str, Tensor | None], T: Any, n_atoms: Any) -> Tensor:
        """Debye C_v in J/(mol K) per mole of cells.

        T (K): a scalar gives [B]; a 1-D grid [n_T] or a per-material table [B, n_T] gives
        [B, n_T]. n_atoms: atoms per cell, a scalar or one per material [B].
        """
        theta_b, temperature, atoms = _broadcast_per_material(self.theta(batch), T, n_atoms)
        return debye.heat_capacity(theta_b, temperature, atoms)

    def internal_energy(self, batch: Mapping[str, Tensor | None], T: Any, n_atoms: Any) -> Tensor:
        """Debye U in J/mol per mole of cells, zero-point (9/8) n R θ included; shapes as
        ``heat_capacity``."""
        theta_b, temperature, atoms = _broadcast_per_material(self.theta(batch), T, n_atoms)
        return debye.internal_energy(theta_b, temperature, atoms)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


def _broadcast_per_material(theta: Tensor, T: Any, n_atoms: Any) -> tuple[Tensor, Tensor, Tensor]:
    """θ [B], T and n_atoms laid out so materials run along the first axis of the result."""
    temperature = torch.as_tensor(T, device=theta.device)
    if not temperature.is_floating_point():
        temperature = temperature.to(theta.dtype)
    atoms = torch.as_tensor(n_atoms, device=theta.device)
    if temperature.dim() == 0:
        return theta, temperature, atoms
    if temperature.dim() > 2 or (temperature.dim() == 2 and temperature.shape[0] != len(theta)):
        raise ValueError(
            f"T must be a scalar, a grid [n_T] or a table [B={len(theta)}, n_T]; "
            f"got shape {tuple(temperature.shape)}"
        )
    atoms = atoms.unsqueeze(-1) if atoms.dim() == 1 else atoms
    return theta.unsqueeze(-1), temperature, atoms


def _register() -> None:
    from cloud.export import register_architecture

    register_architecture(CloudDebye)


_register()
