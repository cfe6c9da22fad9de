"""CloudModel / CloudForMaskedLM behaviour, flavours, parameter and FLOP counts (CPU, tiny)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from cloud import (
    CloudConfig,
    CloudForMaskedLM,
    CloudModel,
    count_parameters,
    family,
    flavours,
    flops_per_token,
)
from cloud.model import IGNORE_INDEX

VOCAB = 50


def tiny_config(**overrides: object) -> CloudConfig:
    return family("debug", vocab_size=VOCAB, **overrides)


def make_batch(batch: int = 3, seq_len: int = 12, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random ids with right padding: row i has seq_len - 2 * i real tokens."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (batch, seq_len), generator=generator)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
    for row in range(batch):
        attention_mask[row, seq_len - 2 * row :] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)
    segment_ids = torch.randint(0, 3, (batch, seq_len), generator=generator)
    return input_ids, attention_mask, segment_ids


def mlm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Predict every third real token, -100 elsewhere."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    chosen = (torch.arange(input_ids.shape[1]) % 3 == 1) & attention_mask.bool()
    labels[chosen] = input_ids[chosen]
    return labels


@pytest.fixture
def model() -> CloudForMaskedLM:
    torch.manual_seed(0)
    return CloudForMaskedLM(tiny_config()).eval()


# --- config ---------------------------------------------------------------------------------


def test_config_round_trips_through_json() -> None:
    config = tiny_config(prenorm=False, num_segments=0)
    restored = CloudConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config


def test_config_from_dict_rejects_unknown_keys() -> None:
    values = tiny_config().to_dict() | {"num_hidden_layers": 3}
    with pytest.raises(ValueError, match="num_hidden_layers"):
        CloudConfig.from_dict(values)


def test_config_rejects_heads_not_dividing_width() -> None:
    with pytest.raises(ValueError, match="divisible"):
        CloudConfig(vocab_size=VOCAB, hidden_size=30, num_heads=4)


# --- shapes and outputs ---------------------------------------------------------------------


def test_output_shapes(model: CloudForMaskedLM) -> None:
    input_ids, attention_mask, segment_ids = make_batch()
    config = model.config
    hidden = model.encoder(input_ids, attention_mask, segment_ids)
    assert hidden.shape == (3, 12, config.hidden_size)
    assert model.encode(input_ids, attention_mask).shape == (3, config.hidden_size)
    out = model(input_ids, attention_mask, segment_ids=segment_ids)
    assert out.logits.shape == (3, 12, VOCAB)
    assert out.loss is None
    assert out.hidden_states.shape == (3, 12, config.hidden_size)

    labels = mlm_labels(input_ids, attention_mask)
    masked = model(input_ids, attention_mask, labels=labels, segment_ids=segment_ids)
    num_predicted = int((labels != IGNORE_INDEX).sum())
    assert masked.logits.shape == (num_predicted, VOCAB)
    assert torch.equal(masked.masked_labels, labels[labels != IGNORE_INDEX])


def test_encode_is_the_cls_hidden_state(model: CloudForMaskedLM) -> None:
    input_ids, attention_mask, _ = make_batch()
    hidden = model.encoder(input_ids, attention_mask)
    torch.testing.assert_close(model.encode(input_ids, attention_mask), hidden[:, 0])


def test_masked_logits_loss_matches_full_logits_cross_entropy(model: CloudForMaskedLM) -> None:
    input_ids, attention_mask, segment_ids = make_batch()
    labels = mlm_labels(input_ids, attention_mask)
    full = model(input_ids, attention_mask, segment_ids=segment_ids).logits
    expected = F.cross_entropy(full.reshape(-1, VOCAB), labels.reshape(-1))
    masked = model(input_ids, attention_mask, labels=labels, segment_ids=segment_ids)
    torch.testing.assert_close(masked.loss, expected)
    torch.testing.assert_close(masked.logits, full[labels != IGNORE_INDEX])


def test_loss_is_zero_not_nan_when_nothing_is_masked(model: CloudForMaskedLM) -> None:
    input_ids, attention_mask, _ = make_batch()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    out = model(input_ids, attention_mask, labels=labels)
    assert out.logits.shape == (0, VOCAB)
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("prenorm", [True, False])
def test_padding_invariance(prenorm: bool) -> None:
    torch.manual_seed(0)
    model = CloudForMaskedLM(tiny_config(prenorm=prenorm)).eval()
    input_ids, attention_mask, segment_ids = make_batch(seq_len=10)
    extra = 5
    padded_ids = F.pad(input_ids, (0, extra), value=model.config.pad_token_id)
    padded_mask = F.pad(attention_mask, (0, extra), value=0)
    padded_segments = F.pad(segment_ids, (0, extra), value=0)
    with torch.no_grad():
        short = model(input_ids, attention_mask, segment_ids=segment_ids).logits
        long = model(padded_ids, padded_mask, segment_ids=padded_segments).logits
    real = attention_mask.bool()
    torch.testing.assert_close(long[:, :10][real], short[real], atol=1e-5, rtol=1e-5)


def test_no_mask_equals_all_ones_mask(model: CloudForMaskedLM) -> None:
    input_ids = torch.randint(1, VOCAB, (2, 9))
    with torch.no_grad():
        unmasked = model.encoder(input_ids)
        masked = model.encoder(input_ids, torch.ones_like(input_ids))
    torch.testing.assert_close(unmasked, masked)


def test_missing_segment_ids_mean_segment_zero(model: CloudForMaskedLM) -> None:
    input_ids, attention_mask, _ = make_batch()
    with torch.no_grad():
        implicit = model.encoder(input_ids, attention_mask)
        explicit = model.encoder(input_ids, attention_mask, torch.zeros_like(input_ids))
    torch.testing.assert_close(implicit, explicit)


def test_segment_ids_without_segment_embeddings_is_an_error() -> None:
    model = CloudModel(tiny_config(num_segments=0))
    input_ids, attention_mask, segment_ids = make_batch()
    assert model(input_ids, attention_mask).shape == (3, 12, 32)
    with pytest.raises(ValueError, match="num_segments=0"):
        model(input_ids, attention_mask, segment_ids)


def test_too_long_sequence_is_a_clear_error() -> None:
    model = CloudModel(tiny_config(max_position_embeddings=8))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 9, dtype=torch.long))


# --- weights --------------------------------------------------------------------------------


def test_tied_embeddings_share_storage(model: CloudForMaskedLM) -> None:
    word = model.encoder.embeddings.word.weight
    decoder = model.head.decoder.weight
    assert decoder is word
    assert decoder.data_ptr() == word.data_ptr()
    untied = CloudForMaskedLM(tiny_config(tie_word_embeddings=False))
    assert untied.head.decoder.weight.data_ptr() != untied.encoder.embeddings.word.weight.data_ptr()


def test_init_weights_follows_bert() -> None:
    torch.manual_seed(0)
    config = family("mini", vocab_size=VOCAB, initializer_range=0.05)
    model = CloudForMaskedLM(config)
    block = model.encoder.layers[0]
    assert torch.all(block.attention.qkv.bias == 0)
    assert torch.all(block.mlp_norm.weight == 1) and torch.all(block.mlp_norm.bias == 0)
    assert abs(block.mlp.up.weight.std().item() - 0.05) < 0.002
    assert torch.all(model.encoder.embeddings.word.weight[config.pad_token_id] == 0)
    with torch.no_grad():
        block.attention.qkv.bias.fill_(1.0)
    model.init_weights()
    assert torch.all(block.attention.qkv.bias == 0)
    assert model.head.decoder.weight is model.encoder.embeddings.word.weight


def test_dropout_only_in_training_mode() -> None:
    torch.manual_seed(0)
    model = CloudForMaskedLM(tiny_config(hidden_dropout=0.5, attention_dropout=0.5))
    input_ids, attention_mask, _ = make_batch()
    model.train()
    first, second = (model.encoder(input_ids, attention_mask) for _ in range(2))
    assert not torch.allclose(first, second)
    model.eval()
    first, second = (model.encoder(input_ids, attention_mask) for _ in range(2))
    torch.testing.assert_close(first, second)


def test_loss_decreases_when_overfitting_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = CloudForMaskedLM(tiny_config(hidden_dropout=0.0, attention_dropout=0.0))
    input_ids, attention_mask, segment_ids = make_batch()
    labels = mlm_labels(input_ids, attention_mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(input_ids, attention_mask, labels=labels, segment_ids=segment_ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


# --- flavours and counts --------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        family("debug", vocab_size=VOCAB),
        family("tiny", vocab_size=VOCAB),
        family("debug", vocab_size=VOCAB, prenorm=False, num_segments=0),
        family("debug", vocab_size=VOCAB, tie_word_embeddings=False, num_segments=2),
    ],
    ids=["debug", "tiny", "debug-postln-noseg", "debug-untied"],
)
def test_parameter_counts_equal_numel(config: CloudConfig) -> None:
    model = CloudForMaskedLM(config)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == count_parameters(config)
    embedding = sum(p.numel() for p in model.embedding_parameters())
    assert count_parameters(config, embedding=False) == count_parameters(config) - embedding
    assert count_parameters(model, embedding=False) == count_parameters(config, embedding=False)


@pytest.mark.parametrize("name", ["base", "large", "xl"])
def test_parameter_counts_of_big_flavours_on_meta_device(name: str) -> None:
    config = family(name, vocab_size=VOCAB)
    with torch.device("meta"):
        model = CloudForMaskedLM(config)
    assert count_parameters(config) == sum(p.numel() for p in model.parameters())
    assert count_parameters(config, embedding=False) == count_parameters(model, embedding=False)


def test_flavours_span_three_orders_of_magnitude() -> None:
    configs = [family(name, vocab_size=VOCAB) for name in flavours()]
    non_embedding = [count_parameters(c, embedding=False) for c in configs]
    assert non_embedding == sorted(non_embedding)
    assert non_embedding[-1] / non_embedding[0] >= 1000
    assert any(count_parameters(c) > 1e9 for c in configs)
    assert flavours()[0] == "debug"


def test_base_flavour_has_the_released_dims() -> None:
    config = family("base", vocab_size=VOCAB)
    assert (config.num_layers, config.num_heads, config.hidden_size) == (12, 12, 768)
    assert config.intermediate_size == 3072


def test_family_errors_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="debug"):
        family("gigantic", vocab_size=VOCAB)
    with pytest.raises(ValueError, match="num_layers"):
        family("debug", vocab_size=VOCAB, n_layers=3)


def test_family_overrides_apply() -> None:
    config = family("debug", vocab_size=VOCAB, num_layers=5, prenorm=False)
    assert dataclasses.replace(tiny_config(), num_layers=5, prenorm=False) == config


def test_family_takes_vocab_size_from_the_scope_tokenizer() -> None:
    tokenizer = pytest.importorskip("tokenizer")
    if not hasattr(tokenizer, "ScopeTokenizer"):
        pytest.skip("tokenizer.ScopeTokenizer not available yet")
    assert family("debug").vocab_size == tokenizer.ScopeTokenizer().vocab_size


def test_flops_per_token_formula() -> None:
    config = family("base", vocab_size=VOCAB)
    seq_len = 128
    expected = 6 * count_parameters(config, embedding=False) + 12 * 12 * seq_len * 768
    assert flops_per_token(config, seq_len) == expected
    assert flops_per_token(config, 2 * seq_len) > flops_per_token(config, seq_len)
