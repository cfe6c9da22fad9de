"""Model inputs of token-id sequences, as every job that feeds a package's encoder builds them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def make_batch(
    tokenizer: Any, sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor | None]:
    """``input_ids``, ``attention_mask`` and ``segment_ids`` of ``sequences``, on ``device``.

    Each row is padded with ``tokenizer.pad_id`` to the longest sequence; ``segment_ids`` come
    from ``tokenizer.segment_ids`` (0 on the padding). Any package tokenizer works: the SCOPE
    one or the released WordPiece one. ``attention_mask`` is 1 on tokens, 0 on padding, and
    ``None`` when no row is padded.
    """
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    segments = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        attention[row, : len(ids)] = 1
        segments[row, : len(ids)] = torch.as_tensor(tokenizer.segment_ids(ids))
    has_padding = not bool(attention.all())
    return {
        "input_ids": input_ids.to(device),
        # No mask without padding: same result, and SDPA may use its fastest kernels.
        "attention_mask": attention.to(device) if has_padding else None,
        "segment_ids": segments.to(device),
    }


def padded_tensors(encoded: Any) -> dict[str, torch.Tensor]:
    """A tokenizer's padded ``BatchEncoding`` as the batch ``CorpusStream`` yields (views of
    its numpy arrays, no copy)."""
    return {
        "input_ids": torch.from_numpy(encoded.input_ids),
        "attention_mask": torch.from_numpy(encoded.attention_mask),
        "segment_ids": torch.from_numpy(encoded.segment_ids),
    }


def packed_tensors(packed: Any) -> dict[str, torch.Tensor]:
    """A tokenizer's ``PackedEncoding`` as the packed batch ``CorpusStream`` yields."""
    return {
        "input_ids": torch.from_numpy(packed.input_ids),
        "segment_ids": torch.from_numpy(packed.segment_ids),
        "position_ids": torch.from_numpy(packed.position_ids),
        "cu_seqlens": torch.from_numpy(packed.cu_seqlens),
    }


def is_packed(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` is packed (``cu_seqlens``, ``train.data``) rather than padded."""
    return "cu_seqlens" in batch


def sequence_lengths(batch: Mapping[str, Any]) -> torch.Tensor:
    """[S] real tokens of each sequence of a padded or packed batch."""
    if is_packed(batch):
        cu = batch["cu_seqlens"].long()
        return cu[1:] - cu[:-1]
    return batch["attention_mask"].sum(dim=1)
