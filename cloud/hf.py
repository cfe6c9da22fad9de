"""Conversion between Hugging Face ``BertForMaskedLM`` and ``CloudForMaskedLM`` (post-LN).

Works on plain dicts (``config.json`` contents and state dicts of tensors), so it needs neither
``transformers`` nor network access: load the released checkpoint's files with ``json`` and
``safetensors``/``torch.load``, convert, then ``model.load_state_dict(...)``.

Only ``prenorm=False`` configs map onto BERT; ``prenorm=True`` has a different computation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from cloud.model import CloudConfig, CloudForMaskedLM

# HF keys that are not part of BertForMaskedLM's computation: the NSP pooler and classifier
# (BertForPreTraining checkpoints) and buffers older versions saved.
_IGNORED_HF_PREFIXES = ("bert.pooler.", "cls.seq_relationship.")
_IGNORED_HF_KEYS = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")

# BertConfig defaults for optional config.json keys.
_HF_DEFAULTS: dict[str, Any] = {
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "tie_word_embeddings": True,
    "is_decoder": False,
    "add_cross_attention": False,
}
_HF_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)


def config_from_hf_bert(hf_config: Mapping[str, Any]) -> CloudConfig:
    """CloudConfig (post-LN) equivalent to a BERT ``config.json`` dict."""
    missing = [key for key in _HF_REQUIRED if key not in hf_config]
    if missing:
        raise ValueError(f"BERT config lacks required key(s) {missing}")
    values = {**_HF_DEFAULTS, **hf_config}
    _check_supported_bert(values)
    return CloudConfig(
        vocab_size=values["vocab_size"],
        max_position_embeddings=values["max_position_embeddings"],
        hidden_size=values["hidden_size"],
        num_layers=values["num_hidden_layers"],
        num_heads=values["num_attention_heads"],
        intermediate_size=values["intermediate_size"],
        hidden_dropout=values["hidden_dropout_prob"],
        attention_dropout=values["attention_probs_dropout_prob"],
        layer_norm_eps=values["layer_norm_eps"],
        prenorm=False,
        num_segments=values["type_vocab_size"],
        pad_token_id=values["pad_token_id"] if values["pad_token_id"] is not None else 0,
        tie_word_embeddings=values["tie_word_embeddings"],
        initializer_range=values["initializer_range"],
    )


def _check_supported_bert(values: Mapping[str, Any]) -> None:
    model_type = values.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"expected a BERT config, got model_type={model_type!r}")
    # CloudModel uses the exact (erf) GELU and absolute positions, as BERT's defaults do.
    if values["hidden_act"] != "gelu":
        raise ValueError(f"unsupported hidden_act {values['hidden_act']!r}; only 'gelu'")
    if values["position_embedding_type"] != "absolute":
        raise ValueError(
            f"unsupported position_embedding_type {values['position_embedding_type']!r}"
        )
    if values["is_decoder"] or values["add_cross_attention"]:
        raise ValueError("decoder / cross-attention BERT configs are not supported")


def hf_bert_config(config: CloudConfig) -> dict[str, Any]:
    """A ``BertConfig`` dict (for ``BertConfig(**d)`` or ``config.json``) matching ``config``."""
    _require_post_ln(config)
    return {
        "model_type": "bert",
        "architectures": ["BertForMaskedLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "gelu",
        "hidden_dropout_prob": config.hidden_dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "max_position_embeddings": config.max_position_embeddings,
        # BERT always adds a token-type embedding; with no segments it gets one zero row.
        "type_vocab_size": max(config.num_segments, 1),
        "initializer_range": config.initializer_range,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": config.tie_word_embeddings,
    }


def _require_post_ln(config: CloudConfig) -> None:
    if config.prenorm:
        raise ValueError("only prenorm=False (post-LN) CLOUD configs correspond to BERT")
    if config.token_features is not None:
        raise ValueError(
            f"token_features={config.token_features!r} has no BERT counterpart; only models "
            "without token features export to the Hugging Face layout"
        )


def _one_to_one_names(config: CloudConfig) -> list[tuple[str, str]]:
    """(our key, HF key) pairs of the tensors copied unchanged."""
    pairs = [
        ("encoder.embeddings.word.weight", "bert.embeddings.word_embeddings.weight"),
        ("encoder.embeddings.position.weight", "bert.embeddings.position_embeddings.weight"),
        ("encoder.embeddings.norm.weight", "bert.embeddings.LayerNorm.weight"),
        ("encoder.embeddings.norm.bias", "bert.embeddings.LayerNorm.bias"),
        ("head.dense.weight", "cls.predictions.transform.dense.weight"),
        ("head.dense.bias", "cls.predictions.transform.dense.bias"),
        ("head.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
        ("head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ]
    layer_modules = [
        ("attention.out", "attention.output.dense"),
        ("attention_norm", "attention.output.LayerNorm"),
        ("mlp.up", "intermediate.dense"),
        ("mlp.down", "output.dense"),
        ("mlp_norm", "output.LayerNorm"),
    ]
    for index in range(config.num_layers):
        for ours, theirs in layer_modules:
            for param in ("weight", "bias"):
                pairs.append(
                    (
                        f"encoder.layers.{index}.{ours}.{param}",
                        f"bert.encoder.layer.{index}.{theirs}.{param}",
                    )
                )
    return pairs


def _hf_qkv_names(index: int, param: str) -> list[str]:
    prefix = f"bert.encoder.layer.{index}.attention.self"
    return [f"{prefix}.{part}.{param}" for part in ("query", "key", "value")]


def _normalise_hf_keys(hf_state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
    renamed = {}
    for key, tensor in hf_state_dict.items():
        if ".LayerNorm." in key:
            key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        renamed[key] = tensor
    return renamed


class _Consumer:
    """Takes tensors out of a state dict by name and reports what was never used."""

    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state = state
        self.used: set[str] = set()

    def take(self, key: str) -> Tensor:
        if key not in self.state:
            raise ValueError(f"Hugging Face BERT state dict lacks {key!r}")
        self.used.add(key)
        return self.state[key]

    def take_optional(self, key: str) -> Tensor | None:
        return self.take(key) if key in self.state else None

    def unused(self) -> list[str]:
        return sorted(
            key
            for key in self.state
            if key not in self.used
            and key not in _IGNORED_HF_KEYS
            and not key.startswith(_IGNORED_HF_PREFIXES)
        )


def state_dict_from_hf_bert(
    hf_state_dict: Mapping[str, Tensor], config: CloudConfig
) -> dict[str, Tensor]:
    """``BertForMaskedLM`` state dict → ``CloudForMaskedLM(config)`` state dict (strict-loadable).

    NSP pooler/classifier weights are dropped; any other unexpected key is an error.
    """
    _require_post_ln(config)
    hf = _Consumer(_normalise_hf_keys(hf_state_dict))
    ours = {mine: hf.take(theirs) for mine, theirs in _one_to_one_names(config)}
    for index in range(config.num_layers):
        for param in ("weight", "bias"):
            parts = [hf.take(name) for name in _hf_qkv_names(index, param)]
            ours[f"encoder.layers.{index}.attention.qkv.{param}"] = torch.cat(parts, dim=0)
    _import_segments(hf, ours, config)
    _import_decoder(hf, ours, config)
    unused = hf.unused()
    if unused:
        raise ValueError(f"unexpected key(s) in the Hugging Face BERT state dict: {unused}")
    return ours


def _import_segments(hf: _Consumer, ours: dict[str, Tensor], config: CloudConfig) -> None:
    token_types = hf.take("bert.embeddings.token_type_embeddings.weight")
    if config.num_segments:
        ours["encoder.embeddings.segment.weight"] = token_types
        return
    # Without segments BERT still adds token type 0 everywhere: fold it into the positions.
    position_key = "encoder.embeddings.position.weight"
    ours[position_key] = ours[position_key] + token_types[0]


def _import_decoder(hf: _Consumer, ours: dict[str, Tensor], config: CloudConfig) -> None:
    # cls.predictions.bias and cls.predictions.decoder.bias are the same tied Parameter in HF;
    # safetensors files may keep only one of them.
    bias = hf.take_optional("cls.predictions.bias")
    decoder_bias = hf.take_optional("cls.predictions.decoder.bias")
    if bias is None and decoder_bias is None:
        raise ValueError("Hugging Face BERT state dict lacks 'cls.predictions.bias'")
    ours["head.decoder.bias"] = bias if bias is not None else decoder_bias
    decoder_weight = hf.take_optional("cls.predictions.decoder.weight")
    if config.tie_word_embeddings:
        # HF re-ties on load, so a stored decoder weight is ignored there too.
        ours["head.decoder.weight"] = ours["encoder.embeddings.word.weight"]
    elif decoder_weight is None:
        raise ValueError("untied config but no 'cls.predictions.decoder.weight' in the state dict")
    else:
        ours["head.decoder.weight"] = decoder_weight


def state_dict_to_hf_bert(
    state_dict: Mapping[str, Tensor], config: CloudConfig
) -> dict[str, Tensor]:
    """``CloudForMaskedLM(config)`` state dict → ``BertForMaskedLM`` state dict (strict)."""
    _require_post_ln(config)
    hf = {theirs: state_dict[mine] for mine, theirs in _one_to_one_names(config)}
    for index in range(config.num_layers):
        for param in ("weight", "bias"):
            fused = state_dict[f"encoder.layers.{index}.attention.qkv.{param}"]
            for name, part in zip(_hf_qkv_names(index, param), fused.chunk(3, dim=0), strict=True):
                hf[name] = part.clone()  # own storage, so the dict can be saved as is
    word = state_dict["encoder.embeddings.word.weight"]
    hf["bert.embeddings.token_type_embeddings.weight"] = (
        state_dict["encoder.embeddings.segment.weight"]
        if config.num_segments
        else word.new_zeros(1, config.hidden_size)
    )
    decoder_key = "encoder.embeddings.word.weight" if config.tie_word_embeddings else None
    hf["cls.predictions.decoder.weight"] = state_dict[decoder_key or "head.decoder.weight"]
    hf["cls.predictions.decoder.bias"] = state_dict["head.decoder.bias"]
    hf["cls.predictions.bias"] = state_dict["head.decoder.bias"]
    return hf


def model_from_hf_bert(
    hf_config: Mapping[str, Any], hf_state_dict: Mapping[str, Tensor]
) -> CloudForMaskedLM:
    """A ``CloudForMaskedLM`` holding the weights of a Hugging Face ``BertForMaskedLM``."""
    config = config_from_hf_bert(hf_config)
    model = CloudForMaskedLM(config)
    model.load_state_dict(state_dict_from_hf_bert(hf_state_dict, config))
    return model
