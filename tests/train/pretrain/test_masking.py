"""MLM masking: rates, specials untouched, reproducibility, on real SCOPE token ids."""

from __future__ import annotations

import csv

import pytest
import torch

from cloud.model import IGNORE_INDEX
from tokenizer import ScopeTokenizer
from train.masking import MaskingConfig, MLMMasker, make_generator, mask_seed


@pytest.fixture(scope="module")
def tokenizer() -> ScopeTokenizer:
    return ScopeTokenizer()


@pytest.fixture(scope="module")
def real_batch(tokenizer: ScopeTokenizer, repo_data) -> torch.Tensor:
    """Padded token ids of the 10,000 released CLOUD pre-training strings shipped in data/."""
    with (repo_data / "cloud_reference" / "pretrain_cloud_10k.csv").open() as handle:
        texts = [row["cloud"] for row in csv.DictReader(handle)]
    encoded = tokenizer.batch_encode(texts, truncate=True)
    return torch.from_numpy(encoded.input_ids)


def test_rates_on_real_tokens(tokenizer: ScopeTokenizer, real_batch: torch.Tensor) -> None:
    masker = MLMMasker.from_tokenizer(tokenizer)
    masked, labels = masker(real_batch, make_generator(0, 1, 0, 0))
    real = ~torch.isin(real_batch, torch.tensor(sorted(tokenizer.special_ids)))
    selected = labels != IGNORE_INDEX
    n_real, n_selected = int(real.sum()), int(selected.sum())
    assert n_real > 50_000  # enough tokens for tight tolerances
    assert n_selected / n_real == pytest.approx(0.15, abs=0.005)
    # Labels are the original ids, exactly at the selected positions.
    assert torch.equal(labels[selected], real_batch[selected])
    replaced_by_mask = (masked == tokenizer.mask_id) & selected
    changed = (masked != real_batch) & selected & ~replaced_by_mask
    unchanged = (masked == real_batch) & selected
    assert int(replaced_by_mask.sum()) / n_selected == pytest.approx(0.8, abs=0.01)
    # A random replacement may draw the original token (1/438 of the time): it then counts
    # as unchanged, hence the wider tolerance on these two.
    assert int(changed.sum()) / n_selected == pytest.approx(0.1, abs=0.01)
    assert int(unchanged.sum()) / n_selected == pytest.approx(0.1, abs=0.01)
    # Nothing outside the selection changes.
    assert torch.equal(masked[~selected], real_batch[~selected])


def test_specials_never_masked_and_replacements_real(
    tokenizer: ScopeTokenizer, real_batch: torch.Tensor
) -> None:
    masker = MLMMasker.from_tokenizer(tokenizer, MaskingConfig(probability=1.0))
    specials = torch.tensor(sorted(tokenizer.special_ids))
    is_special = torch.isin(real_batch, specials)
    masked, labels = masker(real_batch, make_generator(3))
    # Every real token is selected at probability 1; no [CLS]/[SEP]/[PAD] ever is.
    assert torch.equal(labels != IGNORE_INDEX, ~is_special)
    assert torch.equal(masked[is_special], real_batch[is_special])
    # Random replacements are real tokens: the only special id that may appear at a selected
    # position is [MASK].
    at_selected = masked[~is_special]
    assert not torch.isin(at_selected, specials[specials != tokenizer.mask_id]).any()
    assert (real_batch == tokenizer.cls_id).any() and (real_batch == tokenizer.pad_id).any()


def test_reproducible_per_step_and_rank(
    tokenizer: ScopeTokenizer, real_batch: torch.Tensor
) -> None:
    masker = MLMMasker.from_tokenizer(tokenizer)
    batch = real_batch[:256]
    first = masker(batch, make_generator(7, 10, 1, 0))
    again = masker(batch, make_generator(7, 10, 1, 0))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # Other step, other rank, other micro-step: other masks.
    for keys in [(7, 11, 1, 0), (7, 10, 0, 0), (7, 10, 1, 1), (8, 10, 1, 0)]:
        other = masker(batch, make_generator(*keys))
        assert not torch.equal(first[1], other[1])
    # Global RNG state neither matters nor is consumed.
    state = torch.get_rng_state()
    torch.manual_seed(1234)
    assert torch.equal(masker(batch, make_generator(7, 10, 1, 0))[1], first[1])
    torch.set_rng_state(state)


def test_mask_seed_distinct_neighbours() -> None:
    seeds = {mask_seed(0, step, rank) for step in range(200) for rank in range(4)}
    assert len(seeds) == 800
    assert all(0 <= s < 2**63 for s in seeds)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="probability"):
        MaskingConfig(probability=0.0)
    with pytest.raises(ValueError, match="<= 1"):
        MaskingConfig(mask_fraction=0.9, random_fraction=0.2)
