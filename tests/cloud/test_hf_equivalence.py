"""CloudForMaskedLM(prenorm=False) reproduces Hugging Face BertForMaskedLM, both directions."""

from __future__ import annotations

import pytest
import torch

from cloud import CloudConfig, CloudForMaskedLM
from cloud.hf import (
    config_from_hf_bert,
    hf_bert_config,
    model_from_hf_bert,
    state_dict_from_hf_bert,
    state_dict_to_hf_bert,
)

transformers = pytest.importorskip("transformers")

VOCAB = 100
SEQ_LEN = 16


def bert_config(**overrides: object) -> transformers.BertConfig:
    values = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 32,
        "type_vocab_size": 2,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "attn_implementation": "eager",
    }
    return transformers.BertConfig(**(values | overrides))


def randomised_bert(config: transformers.BertConfig) -> transformers.BertForMaskedLM:
    """A BertForMaskedLM whose every parameter (LN and biases included) is random."""
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.2)
            if "LayerNorm.weight" in name:
                param.add_(1.0)
    return model.eval()


@pytest.fixture(scope="module")
def hf_model() -> transformers.BertForMaskedLM:
    return randomised_bert(bert_config())


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, VOCAB, (3, SEQ_LEN), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    attention_mask[2, 4:] = 0
    token_type_ids = torch.randint(0, 2, (3, SEQ_LEN), generator=generator)
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, 0),
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def hf_logits(model: transformers.BertForMaskedLM, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def cloud_logits(model: CloudForMaskedLM, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(
            inputs["input_ids"], inputs["attention_mask"], segment_ids=inputs["token_type_ids"]
        ).logits


def real_positions(logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return logits[inputs["attention_mask"].bool()]


def test_config_conversion(hf_model: transformers.BertForMaskedLM) -> None:
    config = config_from_hf_bert(hf_model.config.to_dict())
    assert not config.prenorm
    assert (config.num_layers, config.num_heads, config.hidden_size) == (2, 4, 64)
    assert config.num_segments == 2
    assert config.max_position_embeddings == 32
    assert config_from_hf_bert(hf_bert_config(config)) == config
    transformers.BertConfig(**hf_bert_config(config))  # accepted as is


def test_hf_to_cloud_logits_match(hf_model: transformers.BertForMaskedLM) -> None:
    model = model_from_hf_bert(hf_model.config.to_dict(), hf_model.state_dict()).eval()
    inputs = batch()
    expected, actual = hf_logits(hf_model, inputs), cloud_logits(model, inputs)
    torch.testing.assert_close(
        real_positions(actual, inputs), real_positions(expected, inputs), atol=1e-5, rtol=1e-5
    )


def test_hf_to_cloud_without_token_types(hf_model: transformers.BertForMaskedLM) -> None:
    model = model_from_hf_bert(hf_model.config.to_dict(), hf_model.state_dict()).eval()
    inputs = batch()
    with torch.no_grad():
        expected = hf_model(inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        actual = model(inputs["input_ids"], inputs["attention_mask"]).logits
    torch.testing.assert_close(
        real_positions(actual, inputs), real_positions(expected, inputs), atol=1e-5, rtol=1e-5
    )


def test_cloud_to_hf_round_trip() -> None:
    torch.manual_seed(2)
    config = CloudConfig(
        vocab_size=VOCAB,
        max_position_embeddings=SEQ_LEN,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        prenorm=False,
        num_segments=2,
    )
    model = CloudForMaskedLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.eval()

    hf_state = state_dict_to_hf_bert(model.state_dict(), config)
    hf_model = transformers.BertForMaskedLM(
        transformers.BertConfig(**hf_bert_config(config), attn_implementation="eager")
    ).eval()
    hf_model.load_state_dict(hf_state, strict=True)
    assert set(hf_state) == set(hf_model.state_dict())

    inputs = batch()
    torch.testing.assert_close(
        real_positions(hf_logits(hf_model, inputs), inputs),
        real_positions(cloud_logits(model, inputs), inputs),
        atol=1e-5,
        rtol=1e-5,
    )
    back = state_dict_from_hf_bert(hf_state, config)
    assert set(back) == set(model.state_dict())
    for key, tensor in model.state_dict().items():
        assert torch.equal(back[key], tensor), key


def test_no_segments_folds_token_type_zero_into_positions(
    hf_model: transformers.BertForMaskedLM,
) -> None:
    config = CloudConfig.from_dict(
        config_from_hf_bert(hf_model.config.to_dict()).to_dict() | {"num_segments": 0}
    )
    model = CloudForMaskedLM(config).eval()
    model.load_state_dict(state_dict_from_hf_bert(hf_model.state_dict(), config))
    inputs = batch()
    with torch.no_grad():
        expected = hf_model(inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        actual = model(inputs["input_ids"], inputs["attention_mask"]).logits
    torch.testing.assert_close(
        real_positions(actual, inputs), real_positions(expected, inputs), atol=1e-5, rtol=1e-5
    )
    exported = state_dict_to_hf_bert(model.state_dict(), config)
    assert exported["bert.embeddings.token_type_embeddings.weight"].shape == (1, 64)


def test_pretraining_extras_are_dropped_and_unknown_keys_rejected(
    hf_model: transformers.BertForMaskedLM,
) -> None:
    config = config_from_hf_bert(hf_model.config.to_dict())
    state = dict(hf_model.state_dict())
    state["bert.pooler.dense.weight"] = torch.zeros(64, 64)
    state["cls.seq_relationship.bias"] = torch.zeros(2)
    CloudForMaskedLM(config).load_state_dict(state_dict_from_hf_bert(state, config))
    state["bert.encoder.layer.5.output.dense.weight"] = torch.zeros(64, 128)
    with pytest.raises(ValueError, match=r"layer\.5"):
        state_dict_from_hf_bert(state, config)


def test_prenorm_configs_are_refused() -> None:
    config = CloudConfig(vocab_size=VOCAB, hidden_size=64, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match="prenorm"):
        hf_bert_config(config)
