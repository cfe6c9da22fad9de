"""Property-prediction heads on the CLOUD encoder: [CLS] embedding → MLP → targets or logits.

``CloudForPropertyPrediction`` is the fine-tuning model. It keeps the target standardisation
(mean and scale of the training fold) as buffers, so an exported fine-tuned model predicts in
physical units with no side file: ``forward`` works in standardised units (what the loss
sees), ``predict`` returns targets in the units of the data (regression) or class
probabilities (classification).

The class is registered with ``cloud.export``, so a fine-tuned model is saved and loaded as a
normal export package (``save_pretrained`` / ``load_pretrained``). Pure PyTorch.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from cloud.model import (
    POOLINGS,
    CloudConfig,
    CloudForMaskedLM,
    CloudModel,
    dataclass_from_dict,
    init_weights_of,
)

M = TypeVar("M", bound="EncoderWithHead")

TASK_TYPES = ("regression", "classification")
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


@dataclass
class HeadConfig:
    """Shape of the prediction head; JSON-safe through ``to_dict``/``from_dict``."""

    task_type: str = "regression"
    """``regression`` (``num_outputs`` real targets) or ``classification`` (``num_outputs``
    classes, cross-entropy on logits)."""
    num_outputs: int = 1
    """Regression targets, or number of classes (>= 2) for classification."""
    hidden_sizes: list[int] = field(default_factory=lambda: [256])
    """Widths of the hidden layers of the MLP; [] gives a single linear layer."""
    dropout: float = 0.1
    """Dropout before every linear layer of the head (training mode only)."""
    activation: str = "gelu"
    """Non-linearity between hidden layers: gelu, relu, silu or tanh."""
    pooling: str = "cls"
    """What the head reads (``cloud.model.pool``): the [CLS] embedding (cls), the mean over
    real tokens (mean) or both concatenated (cls+mean)."""
    composition_descriptor: bool = False
    """Also feed the head the fraction-weighted statistics of the element properties of the
    composition (``cloud.token_features.composition_descriptor``); needs an encoder with
    token features and segment ids in every batch."""

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"HeadConfig.task_type must be one of {TASK_TYPES}: {self.task_type}")
        if self.num_outputs < 1:
            raise ValueError(f"HeadConfig.num_outputs must be >= 1, got {self.num_outputs}")
        if self.task_type == "classification" and self.num_outputs < 2:
            raise ValueError("a classification head needs num_outputs >= 2 classes")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"HeadConfig.activation must be one of {sorted(ACTIVATIONS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"HeadConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"HeadConfig.dropout must be in [0, 1), got {self.dropout}")
        self.hidden_sizes = [int(size) for size in self.hidden_sizes]
        if any(size < 1 for size in self.hidden_sizes):
            raise ValueError(f"HeadConfig.hidden_sizes must be positive: {self.hidden_sizes}")

    @property
    def is_regression(self) -> bool:
        return self.task_type == "regression"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> HeadConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        return dataclass_from_dict(cls, values)


def mlp_head(
    input_size: int,
    hidden_sizes: Sequence[int],
    num_outputs: int,
    dropout: float,
    activation: str,
) -> nn.Sequential:
    """[dropout → linear → activation] per hidden layer, then dropout → linear to
    ``num_outputs``: the MLP every head puts on the pooled embedding."""
    layers: list[nn.Module] = []
    width = input_size
    for size in hidden_sizes:
        layers += [nn.Dropout(dropout), nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    layers += [nn.Dropout(dropout), nn.Linear(width, num_outputs)]
    return nn.Sequential(*layers)


class PredictionHead(nn.Module):
    """``mlp_head`` on the pooled embedding, shaped by a ``HeadConfig``."""

    def __init__(self, input_size: int, head: HeadConfig) -> None:
        super().__init__()
        self.mlp = mlp_head(
            input_size, head.hidden_sizes, head.num_outputs, head.dropout, head.activation
        )

    def forward(self, pooled: Tensor) -> Tensor:
        return self.mlp(pooled)


class EncoderWithHead(nn.Module):
    """A CLOUD encoder (``self.encoder``) with a head on its [CLS] embedding.

    Holds what every such model shares: building one from a pretrained encoder, and the
    ``cloud.export`` hooks that rebuild it from its configs. Subclasses set
    ``head_config_class`` and take ``(config, head_config)`` in ``__init__``.
    """

    head_config_class: ClassVar[type]
    config: CloudConfig
    head_config: Any
    encoder: CloudModel

    @classmethod
    def from_pretrained_encoder(
        cls: type[M],
        pretrained: CloudForMaskedLM | CloudModel | nn.Module,
        head: Any = None,
        *,
        dropout: float | None = None,
    ) -> M:
        """A new model whose encoder is a copy of ``pretrained``'s: a ``CloudModel``, or any
        model holding one as ``.encoder`` (the MLM head, or an earlier head, is dropped).

        ``dropout`` sets the encoder's hidden and attention dropout for fine-tuning (the
        pretrained config's values otherwise); it changes no parameter.
        """
        encoder = getattr(pretrained, "encoder", pretrained)
        if not isinstance(encoder, CloudModel):
            raise TypeError(f"expected a CLOUD encoder or a model holding one, got {pretrained!r}")
        config = copy.deepcopy(encoder.config)
        if dropout is not None:
            config = dataclasses.replace(config, hidden_dropout=dropout, attention_dropout=dropout)
        model = cls(config, head)  # type: ignore[call-arg]
        model.encoder.load_state_dict(encoder.state_dict())
        return model.to(next(encoder.parameters()).device)

    def export_config(self) -> dict[str, Any]:
        """Everything ``from_export_config`` needs to rebuild this architecture (no weights)."""
        return {"cloud_config": self.config.to_dict(), "head": self.head_config.to_dict()}

    @classmethod
    def from_export_config(cls: type[M], values: Mapping[str, Any]) -> M:
        head = cls.head_config_class.from_dict(values["head"])  # type: ignore[attr-defined]
        return cls(CloudConfig.from_dict(values["cloud_config"]), head)  # type: ignore[call-arg]


class CloudForPropertyPrediction(EncoderWithHead):
    """CLOUD encoder + [CLS]-pooled MLP head, for regression or classification."""

    head_config_class = HeadConfig

    def __init__(self, config: CloudConfig, head: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.head_config = head
        self.encoder = CloudModel(config)
        width = config.hidden_size * (2 if head.pooling == "cls+mean" else 1)
        if head.composition_descriptor:
            from cloud.token_features import descriptor_width

            if config.token_features is None:
                raise ValueError(
                    "HeadConfig.composition_descriptor needs an encoder with token features "
                    "(CloudConfig.token_features)"
                )
            width += descriptor_width(config.token_features)
        self.head = PredictionHead(width, head)
        init_weights_of(self.head, config)
        # Standardisation of regression targets (identity until the trainer sets it from the
        # training fold); persistent, so exported models predict in physical units.
        self.register_buffer("target_mean", torch.zeros(head.num_outputs))
        self.register_buffer("target_scale", torch.ones(head.num_outputs))

    # ------------------------------------------------------------------ standardisation

    def set_target_scaling(self, mean: Tensor | float, scale: Tensor | float) -> None:
        """Targets are learnt as (y - mean) / scale; a zero or non-finite scale becomes 1."""
        mean_t = (
            torch.as_tensor(mean, dtype=torch.float32).reshape(-1).expand(self.target_mean.shape)
        )
        scale_t = (
            torch.as_tensor(scale, dtype=torch.float32).reshape(-1).expand(self.target_mean.shape)
        )
        # A constant target (scale 0) would divide by zero; scale 1 leaves it centred only.
        scale_t = torch.where(
            torch.isfinite(scale_t) & (scale_t > 0), scale_t, torch.ones_like(scale_t)
        )
        with torch.no_grad():
            self.target_mean.copy_(mean_t)
            self.target_scale.copy_(scale_t)

    def standardise(self, targets: Tensor) -> Tensor:
        """Targets [B, n] (or [B] when n = 1) in the units the head is trained in."""
        return (targets - self._stat(self.target_mean, targets)) / self._stat(
            self.target_scale, targets
        )

    def destandardise(self, outputs: Tensor) -> Tensor:
        """Head outputs back in the units of the data."""
        return outputs * self._stat(self.target_scale, outputs) + self._stat(
            self.target_mean, outputs
        )

    @staticmethod
    def _stat(stat: Tensor, like: Tensor) -> Tensor:
        return stat.to(like.dtype).reshape(-1) if like.dim() == 1 else stat.to(like.dtype)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Standardised regression outputs [B, n] or classification logits [B, classes]."""
        pooled = self.encoder.encode(
            input_ids, attention_mask, segment_ids, self.head_config.pooling
        )
        if self.head_config.composition_descriptor:
            from cloud.token_features import composition_descriptor

            if segment_ids is None:
                raise ValueError("the composition descriptor needs segment_ids")
            table = self.encoder.embeddings.feature_table
            pooled = torch.cat([pooled, composition_descriptor(input_ids, segment_ids, table)], -1)
        return self.head(pooled)

    @torch.no_grad()
    def predict(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """Regression: targets in data units [B, n]; classification: probabilities [B, C]."""
        outputs = self.forward(input_ids, attention_mask, segment_ids).float()
        if self.head_config.is_regression:
            return self.destandardise(outputs)
        return outputs.softmax(dim=-1)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return self.encoder.embedding_parameters()


def _register() -> None:
    from cloud.export import register_architecture

    register_architecture(CloudForPropertyPrediction)


_register()
