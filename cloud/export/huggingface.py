"""The Hugging Face layout: ``save_hf_pretrained`` (a ``BertForMaskedLM`` directory with its
model card) and ``read_hf_bert`` (importing one, without unpickling)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cloud.export.card import model_card
from cloud.export.format import CARD_FILE, _check_dtype, _plain_name, tool_version
from cloud.export.save import dedupe_tensors, tokenizer_record, write_package
from cloud.model import CloudConfig, CloudForMaskedLM

HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_TORCH_FILE = "pytorch_model.bin"
PRENORM_NOT_BERT = (
    "the model is pre-LN (prenorm=True): its blocks compute x + f(LN(x)) and end on a final "
    "LayerNorm, which BERT's post-LN layout LN(x + f(x)) cannot express, so no "
    "BertForMaskedLM computes the same function. Export it with --format cloud "
    "(cloud.load_pretrained) instead; every shipped pre-training config trains pre-LN, so for "
    "a model transformers can load, pre-train a post-LN one without token features (BERT has "
    "neither), e.g. cloud pretrain --config configs/pretrain/tiny.yaml "
    "model.overrides.prenorm=false model.overrides.token_features=null, and export that"
)


def save_hf_pretrained(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face ``BertForMaskedLM`` directory (``from_pretrained``-loadable).

    config.json in BERT's schema, model.safetensors under BERT's names (tied tensors dropped,
    as ``transformers`` saves them), the tokenizer's Hugging Face files (``hf_files``: for the
    SCOPE tokenizer a tokenizer.json that ``AutoTokenizer`` loads and that gives
    ``ScopeTokenizer``'s ids), a model card (how to feed it, segments included) and
    SHA256SUMS. Only post-LN ``CloudForMaskedLM`` models have a BERT equivalent; anything
    else raises ``ValueError`` saying why and what to export instead.
    """
    from cloud.hf import hf_bert_config, state_dict_to_hf_bert

    if type(model) is not CloudForMaskedLM:
        raise ValueError(
            f"--format hf writes BertForMaskedLM; {type(model).__name__} has no BERT "
            "equivalent (export it with --format cloud)"
        )
    config: CloudConfig = model.config
    if config.prenorm:
        raise ValueError(PRENORM_NOT_BERT)
    target_dtype = _check_dtype(dtype)
    hf_state = state_dict_to_hf_bert(model.state_dict(), config)
    if config.tie_word_embeddings:
        # transformers re-ties these on load and leaves them out of its own files.
        del hf_state["cls.predictions.decoder.weight"]
        del hf_state["cls.predictions.decoder.bias"]
    tensors, aliases = dedupe_tensors(hf_state, target_dtype)
    for alias, target in aliases.items():
        # Names transformers does not re-tie (the untied decoder bias) need their own copy.
        tensors[alias] = tensors[target].clone()
    hf_config = {**hf_bert_config(config), "dtype": dtype}
    card_config = {
        "architecture": {"name": "CloudForMaskedLM", "config": {"cloud_config": config.to_dict()}},
        "tokenizer": tokenizer_record(
            tokenizer, (metadata or {}).get("training_data", {}).get("variant")
        ),
        "weights": {"dtype": dtype},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": {"name": "cloud-crystal", "version": tool_version()},
        "metadata": json.loads(json.dumps(dict(metadata or {}))),
    }
    files: dict[str, str | bytes] = {
        "config.json": json.dumps(hf_config, indent=2) + "\n",
        **tokenizer.hf_files(),
        CARD_FILE: model_card(card_config, usage=_hf_usage(tokenizer, config)),
    }
    return write_package(out_dir, tensors, files, weights_file=HF_SAFETENSORS, overwrite=overwrite)


def _hf_usage(tokenizer: Any, config: CloudConfig) -> list[str]:
    """The model card's "Loading" section of a Hugging Face directory."""
    from tokenizer.released import ReleasedWordPieceTokenizer

    header = [
        "A Hugging Face `BertForMaskedLM` directory (post-LN CLOUD models are exactly BERT).",
        "",
    ]
    if isinstance(tokenizer, ReleasedWordPieceTokenizer):
        # The released WordPiece vocabulary tokenizes released SCOPE strings as they are.
        return [
            *header,
            "```python",
            "from transformers import BertForMaskedLM, BertTokenizer",
            "",
            'model = BertForMaskedLM.from_pretrained("path/to/this/directory")',
            'hf_tokenizer = BertTokenizer.from_pretrained("path/to/this/directory")',
            'logits = model(**hf_tokenizer(scope_string, return_tensors="pt")).logits',
            "```",
        ]
    lines = [
        *header,
        "tokenizer.json gives the ids of CLOUD's `ScopeTokenizer` (namespaced tokens: the "
        "generator `O` and the element `O` are different tokens). Load it with "
        "`AutoTokenizer`, not `BertTokenizer`, whose BERT pre-tokenizer turns SCOPE words "
        "into [UNK].",
        "",
        "```python",
        "from transformers import AutoTokenizer, BertForMaskedLM",
        "",
        'model = BertForMaskedLM.from_pretrained("path/to/this/directory")',
        'hf_tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        'batch = hf_tokenizer(scope_strings, padding=True, return_tensors="pt")',
    ]
    if config.num_segments:
        lines += [
            "# The SCOPE segments (0 generators, 1 Wyckoff, 2 composition), which the model",
            "# reads as token types: each '|' opens the next. The tokenizer cannot count them.",
            'separator = hf_tokenizer.convert_tokens_to_ids("|")',
            'segments = (batch["input_ids"] == separator).cumsum(-1).clamp(max=2)',
            'batch["token_type_ids"] = segments * batch["attention_mask"]',
        ]
    return [*lines, "logits = model(**batch).logits", "```"]


def read_hf_bert(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, state dict) of a Hugging Face BERT directory, without unpickling.

    Reads model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin
    (``torch.load(weights_only=True)``: tensors only, no arbitrary objects).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; not a Hugging Face model directory")
    hf_config = json.loads(config_path.read_text())
    if (directory / HF_SAFETENSORS).is_file():
        return hf_config, load_file(str(directory / HF_SAFETENSORS))
    if (directory / HF_SAFETENSORS_INDEX).is_file():
        index = json.loads((directory / HF_SAFETENSORS_INDEX).read_text())
        state: dict[str, Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(directory / _plain_name(shard))))
        return hf_config, state
    if (directory / HF_TORCH_FILE).is_file():
        state = torch.load(directory / HF_TORCH_FILE, map_location="cpu", weights_only=True)
        return hf_config, dict(state)
    raise FileNotFoundError(
        f"{directory}: no {HF_SAFETENSORS}, {HF_SAFETENSORS_INDEX} or {HF_TORCH_FILE}"
    )
