"""Named model sizes (flavours), analytic parameter counts and training FLOPs per token.

The flavour names are the API (``family("base")``); their shapes follow the usual BERT ladder,
head dimension 64 from "tiny" up, MLP ratio 4 and depth growing with width. "base" is exactly
the released CLOUD shape. Non-embedding parameters span about five orders of magnitude, from
"debug" (CPU tests) to "xl" (> 1e9 parameters).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from cloud.model import CloudConfig

# Only the shape is fixed per flavour; dropout, layout, vocab... come from CloudConfig defaults
# or from family() overrides. Ordered by size: flavours() relies on insertion order.
_SHAPES: dict[str, dict[str, int]] = {
    "debug": {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 128},
    # nano, micro and milli fill the CPU scaling ladder (configs/scaling/cpu.yaml): about
    # 0.1 M, 0.35 M and 1.8 M non-embedding parameters around tiny's 0.8 M.
    "nano": {"num_layers": 2, "hidden_size": 64, "num_heads": 2, "intermediate_size": 256},
    "micro": {"num_layers": 3, "hidden_size": 96, "num_heads": 3, "intermediate_size": 384},
    "tiny": {"num_layers": 4, "hidden_size": 128, "num_heads": 2, "intermediate_size": 512},
    "milli": {"num_layers": 4, "hidden_size": 192, "num_heads": 3, "intermediate_size": 768},
    "mini": {"num_layers": 6, "hidden_size": 256, "num_heads": 4, "intermediate_size": 1024},
    "small": {"num_layers": 8, "hidden_size": 512, "num_heads": 8, "intermediate_size": 2048},
    "base": {"num_layers": 12, "hidden_size": 768, "num_heads": 12, "intermediate_size": 3072},
    "large": {"num_layers": 24, "hidden_size": 1024, "num_heads": 16, "intermediate_size": 4096},
    "xl": {"num_layers": 24, "hidden_size": 2048, "num_heads": 32, "intermediate_size": 8192},
}


def flavours() -> list[str]:
    """Flavour names from smallest to largest."""
    return list(_SHAPES)


def default_vocab_size() -> int:
    """Vocabulary size of the SCOPE tokenizer (imported lazily: it is not a model dependency)."""
    from tokenizer import ScopeTokenizer

    return ScopeTokenizer().vocab_size


def family(name: str, **overrides: Any) -> CloudConfig:
    """The CloudConfig of flavour ``name``, with any CloudConfig field overridden.

    ``vocab_size`` defaults to the SCOPE tokenizer's (``default_vocab_size``).
    """
    if name not in _SHAPES:
        raise ValueError(f"unknown CLOUD flavour {name!r}; valid flavours: {flavours()}")
    valid_fields = {field.name for field in dataclasses.fields(CloudConfig)}
    unknown = sorted(set(overrides) - valid_fields)
    if unknown:
        raise ValueError(f"unknown CloudConfig field(s) {unknown}; valid: {sorted(valid_fields)}")
    values: dict[str, Any] = {**_SHAPES[name], **overrides}
    if "vocab_size" not in values:
        values["vocab_size"] = default_vocab_size()
    return CloudConfig(**values)


def count_parameters(config_or_model: CloudConfig | nn.Module, embedding: bool = True) -> int:
    """Parameters of ``CloudForMaskedLM``: all of them, or without the embedding tables.

    A config is counted analytically (no allocation; equals ``sum(p.numel())`` of the built
    ``CloudForMaskedLM``). A module is counted from its actual parameters, shared ones once.
    Embedding parameters are the word, position and segment tables, plus the decoder weight
    when it is untied (then it is an output embedding table); the MLM head's dense layer,
    LayerNorms and decoder bias count as non-embedding, as in Kaplan et al. (2020).
    """
    if isinstance(config_or_model, CloudConfig):
        return _count_from_config(config_or_model, embedding)
    return _count_from_module(config_or_model, embedding)


def _count_from_config(config: CloudConfig, embedding: bool) -> int:
    d, ff, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    layer_norm = 2 * d
    block = (
        (3 * d * d + 3 * d)  # fused QKV
        + (d * d + d)  # attention output
        + (d * ff + ff)  # MLP up
        + (ff * d + d)  # MLP down
        + 2 * layer_norm
    )
    head = (d * d + d) + layer_norm + vocab  # dense, LayerNorm, decoder bias
    non_embedding = (
        layer_norm  # embedding LayerNorm
        + config.num_layers * block
        + (layer_norm if config.prenorm else 0)  # final LayerNorm
        + head
    )
    if not embedding:
        return non_embedding
    tables = (vocab + config.max_position_embeddings + config.num_segments) * d
    if not config.tie_word_embeddings:
        tables += vocab * d
    if config.token_features is not None:
        from cloud.token_features import num_token_features

        tables += (num_token_features(config.token_features) + 1) * d  # projection + bias
    return non_embedding + tables


def _count_from_module(model: nn.Module, embedding: bool) -> int:
    total = sum(p.numel() for p in model.parameters())  # parameters() yields shared ones once
    if embedding:
        return total
    tables = {id(p): p for p in _embedding_parameters(model)}
    return total - sum(p.numel() for p in tables.values())


def _embedding_parameters(model: nn.Module) -> list[nn.Parameter]:
    if hasattr(model, "embedding_parameters"):
        return list(model.embedding_parameters())
    # Any other module (e.g. a fine-tuning wrapper): every lookup table it contains.
    return [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]


def flops_per_token(config: CloudConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) at sequence length ``seq_len``.

    ``6 * N + 12 * L * T * d`` (Kaplan et al. 2020; PaLM appendix B): N is the non-embedding
    parameter count (2 FLOPs per weight per token forward, twice that backward), and the
    attention term counts the QKᵀ and attention-times-V matmuls, 2 * 2 * T * d per layer per
    token forward, times 3 for training. The encoder is bidirectional, so no causal halving.
    Embedding lookups and the vocabulary projection (done only at masked positions) are
    left out, as in Kaplan.
    """
    non_embedding = count_parameters(config, embedding=False)
    attention = 12 * config.num_layers * seq_len * config.hidden_size
    return float(6 * non_embedding + attention)
