"""Validation: the fixed masked batches, a batch's model inputs, the SDPA kernel choice, and
the masked-token loss, accuracy and the loss's standard error over every rank."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch

from cloud.model import IGNORE_INDEX
from train.common.batching import is_packed, sequence_lengths
from train.distributed import all_reduce_sum
from train.masking import VALIDATION_STREAM, MLMMasker, make_generator
from train.pretrain.config import PretrainConfig


def sdpa_context(backend: str):
    """Context preferring the configured SDPA kernels (falling back to the others)."""
    if backend == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION],
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
    }[backend]
    if SDPBackend.MATH not in order:
        order = [*order, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


# --------------------------------------------------------------------------- validation


def validation_batches(
    config: PretrainConfig, tokenizer: Any, val_paths: Sequence[str]
) -> list[dict[str, torch.Tensor]]:
    """The validation set: the first ``eval_batches`` batches of the held-out shards, each
    masked once with a generator keyed by its index, so every evaluation (and any process,
    e.g. an export check) sees the same inputs and targets."""
    from train.data import CorpusStream

    stream = CorpusStream(
        list(val_paths),
        tokenizer=tokenizer,
        batch_size=config.data.eval_batch_size,
        variant=config.data.variant,
        rank=0,
        world_size=1,
        num_workers=0,
        seed=config.train.seed,
        shuffle_buffer=0,
        max_length=config.data.max_length,
        epochs=1,
        drop_last=False,
    )
    masker = MLMMasker.from_tokenizer(tokenizer, config.masking)
    batches = []
    for index, batch in enumerate(stream):
        if config.data.eval_batches and index >= config.data.eval_batches:
            break
        generator = make_generator(config.train.seed, VALIDATION_STREAM, index)
        masked, labels = masker(batch["input_ids"], generator)
        batches.append(
            {
                "input_ids": masked,
                "attention_mask": batch["attention_mask"],
                "segment_ids": batch["segment_ids"],
                "labels": labels,
            }
        )
    if not batches:
        raise ValueError(f"the validation shards {list(val_paths)} yielded no batch")
    return batches


def model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """Keyword arguments of ``CloudForMaskedLM.forward`` on ``device``.

    A padded batch without padding passes no attention mask (the same result, and SDPA may
    use its flash kernels); a packed batch passes ``cu_seqlens``, ``position_ids`` and its
    longest sequence, read on the CPU batch so that the model never syncs to find it.
    """
    inputs: dict[str, Any] = {
        "input_ids": batch["input_ids"].to(device, non_blocking=True),
        "segment_ids": batch["segment_ids"].to(device, non_blocking=True),
    }
    if is_packed(batch):
        inputs["cu_seqlens"] = batch["cu_seqlens"].to(device, non_blocking=True)
        inputs["position_ids"] = batch["position_ids"].to(device, non_blocking=True)
        inputs["max_seqlen"] = int(sequence_lengths(batch).max())
    else:
        attention_mask = batch["attention_mask"]
        has_padding = not bool(attention_mask.all())
        inputs["attention_mask"] = (
            attention_mask.to(device, non_blocking=True) if has_padding else None
        )
    if "labels" in batch:
        inputs["labels"] = batch["labels"].to(device, non_blocking=True)
    return inputs


class Evaluation(NamedTuple):
    """Masked-LM validation result over every rank's batches."""

    loss: float
    """Mean loss per masked token."""
    accuracy: float
    """Fraction of masked tokens predicted exactly."""
    count: int
    """Masked tokens scored."""
    loss_se: float
    """Standard error of ``loss``: the ratio estimator's with each sequence as one cluster
    (the masked tokens of one structure are not independent draws); nan below 2 sequences."""


def _ratio_standard_error(sums: Sequence[float]) -> float:
    """SE of R = Σy/Σc from the cluster sums (Σy, Σc, Σy², Σyc, Σc², n)."""
    total_y, total_c, yy, yc, cc, n = sums
    if n < 2 or total_c <= 0:
        return math.nan
    ratio = total_y / total_c
    spread = max(yy - 2 * ratio * yc + ratio * ratio * cc, 0.0)
    return math.sqrt(n / (n - 1) * spread) / total_c


def _sequence_cluster_sums(
    logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """(Σy², Σy·c, Σc², n) over the sequences of a batch, y = a sequence's summed token loss
    and c = its masked tokens; ``targets`` are in the row-major order of ``labels``."""
    token_loss = torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none")
    rows = (labels != IGNORE_INDEX).nonzero()[:, 0].to(token_loss.device)
    per_sequence = torch.zeros(labels.shape[0], dtype=torch.float64, device=token_loss.device)
    y = per_sequence.index_add(0, rows, token_loss)
    c = per_sequence.index_add(0, rows, torch.ones_like(token_loss))
    return torch.stack([(y * y).sum(), (y * c).sum(), (c * c).sum(), (c > 0).sum().double()])


@torch.no_grad()
def evaluate_batches(
    forward: Any,
    batches: Sequence[Mapping[str, torch.Tensor]],
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Evaluation:
    """Mean masked-token loss, accuracy, masked tokens and the loss's standard error of
    ``forward`` on ``batches``.

    Rank r evaluates batches r, r + W, ...; every rank runs the same number of forwards (a
    rank short of batches repeats batch 0 with weight 0) because ZeRO-3 gathers parameters
    collectively in each forward. Sums are all-reduced, so every rank gets the totals. With
    ``forward`` a plain ``CloudForMaskedLM`` and world size 1 this is the same evaluation.
    """
    mine = list(batches[rank::world_size])
    rounds = math.ceil(len(batches) / world_size)
    # loss sum, correct, count, then the cluster sums of the standard error: y², y·c, c², n.
    totals = torch.zeros(7, dtype=torch.float64, device=device)
    for index in range(rounds):
        weight = 1.0 if index < len(mine) else 0.0
        batch = mine[index] if index < len(mine) else batches[0]
        output = forward(**model_inputs(batch, device))
        targets = output.masked_labels
        correct = (output.logits.argmax(-1) == targets).sum().double()
        count = torch.tensor(float(targets.numel()), dtype=torch.float64, device=device)
        totals[:3] += weight * torch.stack([output.loss.double() * count, correct, count])
        totals[3:] += weight * _sequence_cluster_sums(output.logits, targets, batch["labels"])
    loss_sum, correct, count, yy, yc, cc, n = all_reduce_sum(totals.tolist(), device)
    return Evaluation(
        loss=loss_sum / max(count, 1),
        accuracy=correct / max(count, 1),
        count=int(count),
        loss_se=_ratio_standard_error((loss_sum, count, yy, yc, cc, n)),
    )
