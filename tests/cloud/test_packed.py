"""Unpadded compute (cloud/packed.py): packed and padded layouts give the same model."""

from __future__ import annotations

import itertools

import pytest
import torch

from cloud import CloudForMaskedLM, family
from cloud.model import IGNORE_INDEX, pool, pool_packed
from cloud.packed import ATTENTION_IMPLS, cu_seqlens_of, pack_layout, resolve_attention_impl
from tokenizer import ScopeTokenizer

VOCAB = 60


def padded_batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded random ids, segments and MLM labels (every third real token)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, VOCAB, (len(lengths), width), generator=generator) * mask
    segments = torch.randint(0, 3, ids.shape, generator=generator) * mask
    chosen = (torch.arange(width) % 3 == 1) & mask.bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    return {"input_ids": ids, "attention_mask": mask, "segment_ids": segments, "labels": labels}


def packed_from(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same sequences packed one after the other."""
    mask = batch["attention_mask"].bool()
    return {
        "input_ids": batch["input_ids"][mask],
        "segment_ids": batch["segment_ids"][mask],
        "labels": batch["labels"][mask],
        "cu_seqlens": cu_seqlens_of(mask.sum(dim=1)),
    }


def model_with(seed: int = 0, **overrides: object) -> CloudForMaskedLM:
    torch.manual_seed(seed)
    config = family("debug", vocab_size=VOCAB, hidden_dropout=0.0, attention_dropout=0.0)
    for key, value in overrides.items():
        setattr(config, key, value)
    return CloudForMaskedLM(config)


def loss_and_grads(model: CloudForMaskedLM, **inputs: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    output = model(**inputs)
    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.loss.detach(), grads


LENGTHS = [17, 9, 30, 4, 30, 12]


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_unpadded_and_padded_compute_agree_in_loss_and_every_gradient(
    prenorm: bool, impl: str
) -> None:
    model = model_with(prenorm=prenorm)
    model.encoder.attention_impl = impl
    batch = padded_batch(LENGTHS)
    model.encoder.compute_padded = True
    reference_loss, reference_grads = loss_and_grads(model, **batch)
    model.encoder.compute_padded = False
    loss, grads = loss_and_grads(model, **batch)
    packed_loss, packed_grads = loss_and_grads(model, **packed_from(batch))
    torch.testing.assert_close(loss, reference_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(packed_loss, reference_loss, atol=1e-6, rtol=1e-5)
    assert grads.keys() == reference_grads.keys() == packed_grads.keys()
    for name, expected in reference_grads.items():
        torch.testing.assert_close(grads[name], expected, atol=1e-6, rtol=1e-4, msg=name)
        torch.testing.assert_close(packed_grads[name], expected, atol=1e-6, rtol=1e-4, msg=name)


def test_hidden_states_agree_on_real_tokens_and_are_zero_on_padding() -> None:
    model = model_with().eval()
    batch = padded_batch(LENGTHS, seed=3)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "segment_ids")}
    with torch.no_grad():
        model.encoder.compute_padded = True
        reference = model.encoder(**inputs)
        model.encoder.compute_padded = False
        unpadded = model.encoder(**inputs)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(unpadded[real], reference[real], atol=1e-5, rtol=1e-5)
    assert (unpadded[~real] == 0).all()


def test_each_packed_string_attends_only_to_itself() -> None:
    model = model_with().eval()
    batch = padded_batch(LENGTHS, seed=5)
    packed = packed_from(batch)
    with torch.no_grad():
        together = model.encoder(
            packed["input_ids"], segment_ids=packed["segment_ids"], cu_seqlens=packed["cu_seqlens"]
        )
        cu = packed["cu_seqlens"].tolist()
        for index, (start, end) in enumerate(itertools.pairwise(cu)):
            alone = model.encoder(
                batch["input_ids"][index : index + 1, : end - start],
                segment_ids=batch["segment_ids"][index : index + 1, : end - start],
            )[0]
            torch.testing.assert_close(together[start:end], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls+mean"])
def test_packed_pooling_equals_padded_pooling(pooling: str) -> None:
    model = model_with().eval()
    batch = padded_batch(LENGTHS, seed=9)
    packed = packed_from(batch)
    with torch.no_grad():
        padded = pool(
            model.encoder(batch["input_ids"], batch["attention_mask"]),
            batch["attention_mask"],
            pooling,
        )
        hidden = model.encoder(packed["input_ids"], cu_seqlens=packed["cu_seqlens"])
        torch.testing.assert_close(
            pool_packed(hidden, packed["cu_seqlens"], pooling), padded, atol=1e-5, rtol=1e-5
        )


def test_token_features_and_positions_from_a_real_tokenizer_pack_exactly() -> None:
    tokenizer = ScopeTokenizer()
    strings = [
        "1 6 a O D D a D O D b O O O 0 | 4a 4b | Na 0.5 Cl 0.5",
        "1 0 | 1a | Cu 1",
    ]
    ids = [tokenizer.encode(s) for s in strings]
    packed = tokenizer.pack(ids)
    assert packed.cu_seqlens.tolist() == [0, len(ids[0]), len(ids[0]) + len(ids[1])]
    assert packed.position_ids.tolist() == [*range(len(ids[0])), *range(len(ids[1]))]
    torch.manual_seed(0)
    config = family("debug", vocab_size=tokenizer.vocab_size, token_features="elements-v1")
    model = CloudForMaskedLM(config).eval()
    model.set_token_features(tokenizer.tokens)
    padded = tokenizer.pad(ids)
    with torch.no_grad():
        reference = model.encoder(
            torch.from_numpy(padded.input_ids),
            torch.from_numpy(padded.attention_mask),
            torch.from_numpy(padded.segment_ids),
        )
        together = model.encoder(
            torch.from_numpy(packed.input_ids),
            segment_ids=torch.from_numpy(packed.segment_ids),
            position_ids=torch.from_numpy(packed.position_ids),
            cu_seqlens=torch.from_numpy(packed.cu_seqlens),
        )
    mask = torch.from_numpy(padded.attention_mask).bool()
    torch.testing.assert_close(together, reference[mask], atol=1e-5, rtol=1e-5)


def test_layouts_refuse_empty_sequences_and_unknown_kernels() -> None:
    with pytest.raises(ValueError, match="length >= 1"):
        pack_layout(torch.tensor([0, 3, 3]), device_type="cpu")
    with pytest.raises(ValueError, match="unknown attention implementation"):
        resolve_attention_impl("flash3", "cpu")
    assert resolve_attention_impl("auto", "cpu") == "math"
    assert set(ATTENTION_IMPLS) >= {"auto", "varlen", "sdpa", "math"}
    model = model_with()
    with pytest.raises(ValueError, match=r"packed input_ids must be \[N\]"):
        model.encoder(torch.ones(2, 3, dtype=torch.long), cu_seqlens=torch.tensor([0, 3, 6]))
