"""Token features: fixed element physics, fraction values and multiplicities in the embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cloud import CloudForMaskedLM, count_parameters, family
from cloud.export import load_pretrained, save_hf_pretrained, save_pretrained
from cloud.heads import CloudForPropertyPrediction, HeadConfig
from cloud.model import pool
from cloud.token_features import FEATURE_SETS, feature_names, token_feature_table
from tokenizer import ScopeTokenizer

ROCK_SALT = "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a Na 4b Cl | Na 0.5 Cl 0.5"


@pytest.fixture(scope="module")
def tokenizer() -> ScopeTokenizer:
    return ScopeTokenizer()


@pytest.fixture(scope="module")
def table(tokenizer: ScopeTokenizer) -> torch.Tensor:
    return token_feature_table(tokenizer.tokens)


def _row(table: torch.Tensor, tokenizer: ScopeTokenizer, token: str) -> dict[str, float]:
    values = table[tokenizer.token_to_id[token]].tolist()
    return dict(zip(feature_names("elements-v1"), values, strict=True))


def test_element_rows_carry_their_physics(table, tokenizer) -> None:
    hydrogen, lead = _row(table, tokenizer, "E:H"), _row(table, tokenizer, "E:Pb")
    fluorine, caesium = _row(table, tokenizer, "E:F"), _row(table, tokenizer, "E:Cs")
    assert hydrogen["is_element"] == lead["is_element"] == 1.0
    assert hydrogen["atomic_mass"] < lead["atomic_mass"]
    assert hydrogen["inv_sqrt_mass"] > lead["inv_sqrt_mass"]  # what sets phonon frequencies
    assert fluorine["electronegativity"] > caesium["electronegativity"]
    assert lead["row"] > hydrogen["row"]
    elements = table[[tokenizer.token_to_id[f"E:{e}"] for e in ("H", "C", "O", "Fe", "Pb")]]
    assert len({tuple(row.tolist()) for row in elements}) == 5  # no two elements alike


def test_fractions_and_multiplicities_are_values(table, tokenizer) -> None:
    assert _row(table, tokenizer, "F:0.33")["fraction"] == pytest.approx(0.33)
    assert _row(table, tokenizer, "F:0.34")["fraction"] == pytest.approx(0.34)
    assert _row(table, tokenizer, "W:48h")["log2_multiplicity"] == pytest.approx(
        torch.log2(torch.tensor(48.0)).item()
    )
    assert _row(table, tokenizer, "W:1a")["is_wyckoff"] == 1.0


@pytest.mark.parametrize("token", ["[MASK]", "[PAD]", "[CLS]", "[SEP]", "|", "G:O"])
def test_a_masked_or_grammar_token_carries_no_features(table, tokenizer, token: str) -> None:
    # A masked element must not leak its properties to the masked-LM objective.
    assert not table[tokenizer.token_to_id[token]].any()


def test_unknown_feature_set_is_refused_by_name(tokenizer) -> None:
    with pytest.raises(ValueError, match="token_features 'magpie'"):
        family("debug", vocab_size=tokenizer.vocab_size, token_features="magpie")
    assert FEATURE_SETS == ("elements-v1",)


@pytest.fixture(scope="module")
def featured(tokenizer) -> CloudForMaskedLM:
    torch.manual_seed(0)
    config = family("debug", vocab_size=tokenizer.vocab_size, token_features="elements-v1")
    model = CloudForMaskedLM(config)
    model.set_token_features(tokenizer.tokens)
    return model.eval()


def test_features_change_the_embedding_and_are_counted(featured, tokenizer) -> None:
    ids = torch.tensor([tokenizer.encode(ROCK_SALT)])
    plain = CloudForMaskedLM(featured.config)
    plain.load_state_dict(featured.state_dict())
    plain.encoder.embeddings.feature_table.zero_()
    assert not torch.allclose(featured(ids).logits, plain.eval()(ids).logits)
    assert count_parameters(featured.config) == count_parameters(featured)
    assert count_parameters(featured.config, embedding=False) == count_parameters(
        featured, embedding=False
    )


def test_the_table_travels_inside_the_package(featured, tokenizer, tmp_path: Path) -> None:
    save_pretrained(featured, tokenizer, tmp_path / "pkg")
    loaded = load_pretrained(tmp_path / "pkg").model
    torch.testing.assert_close(
        loaded.encoder.embeddings.feature_table, featured.encoder.embeddings.feature_table
    )
    ids = torch.tensor([tokenizer.encode(ROCK_SALT)])
    torch.testing.assert_close(loaded.eval()(ids).logits, featured(ids).logits)


def test_hf_export_refuses_token_features(featured, tokenizer, tmp_path: Path) -> None:
    post_ln = CloudForMaskedLM(
        family(
            "debug", vocab_size=tokenizer.vocab_size, token_features="elements-v1", prenorm=False
        )
    )
    with pytest.raises(ValueError, match="token_features"):
        save_hf_pretrained(post_ln, tokenizer, tmp_path / "hf")


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls+mean"])
def test_mean_pooling_ignores_padding(featured, tokenizer, pooling: str) -> None:
    head = HeadConfig(hidden_sizes=[8], pooling=pooling)
    model = CloudForPropertyPrediction.from_pretrained_encoder(featured, head).eval()
    ids = tokenizer.encode(ROCK_SALT)
    alone = model(torch.tensor([ids]))
    padded = torch.tensor([ids + [tokenizer.pad_id] * 5])
    mask = torch.tensor([[1] * len(ids) + [0] * 5])
    torch.testing.assert_close(model(padded, mask), alone, atol=1e-5, rtol=1e-5)
    hidden = torch.randn(2, 4, 3)
    assert pool(hidden, None, pooling).shape == (2, 6 if pooling == "cls+mean" else 3)
