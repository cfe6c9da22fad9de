"""cloud/dropout.py: inverted dropout with a quarter of the random draws, same statistics."""

from __future__ import annotations

import pytest
import torch

from cloud.dropout import Dropout, dropout, keep_mask


def test_each_element_is_kept_with_probability_one_minus_p() -> None:
    torch.manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        kept = keep_mask(torch.Size([500, 800]), p, torch.device("cpu")).double().mean()
        # 400,000 draws: the standard error of the rate is below 0.001.
        assert float(kept) == pytest.approx(1 - p, abs=0.004)


def test_kept_values_are_scaled_so_the_mean_is_unchanged_and_gradients_follow_the_mask() -> None:
    torch.manual_seed(1)
    x = torch.full((300, 700), 2.0, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / 0.8))
    assert float(y.detach().mean()) == pytest.approx(2.0, rel=0.01)
    y.sum().backward()
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.8))
    assert (x.grad[~kept] == 0).all()


def test_masks_come_from_the_seeded_generator_and_evaluation_is_the_identity() -> None:
    x = torch.randn(64, 33)
    torch.manual_seed(7)
    first = dropout(x, 0.1, training=True)
    torch.manual_seed(7)
    torch.testing.assert_close(dropout(x, 0.1, training=True), first)
    assert dropout(x, 0.1, training=False) is x
    module = Dropout(0.3).eval()
    assert module(x) is x and "p=0.3" in repr(module)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Dropout(1.5)
