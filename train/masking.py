"""BERT masked-language-model corruption, reproducible from (seed, step, rank, micro-step).

Of the real tokens (every id that is not a special token: never [CLS], [SEP], [PAD], [MASK]
or [UNK]), each is selected for prediction with probability ``probability`` (15 %). A
selected token is replaced by [MASK] 80 % of the time, by a uniformly drawn real token 10 %
of the time and left unchanged otherwise (Devlin et al. 2019). Labels are the original ids at
selected positions and ``IGNORE_INDEX`` elsewhere, which is what ``CloudForMaskedLM`` expects.

Randomness comes only from an explicit ``torch.Generator`` seeded by :func:`mask_seed`, never
from the global RNG: the corruption of a batch depends on where it sits in training, not on
what ran before, so a resumed run masks exactly as an uninterrupted one and validation masks
identically at every evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cloud.model import IGNORE_INDEX

# Mixed into validation seeds so that no training step can ever share a validation mask.
VALIDATION_STREAM = 0x7A1


@dataclass(frozen=True)
class MaskingConfig:
    """How tokens are corrupted for MLM."""

    probability: float = 0.15
    """Fraction of real tokens selected for prediction."""
    mask_fraction: float = 0.8
    """Of the selected tokens, the fraction replaced by [MASK]."""
    random_fraction: float = 0.1
    """Of the selected tokens, the fraction replaced by a random real token (the rest stay)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"masking.probability must be in (0, 1], got {self.probability}")
        if self.mask_fraction < 0 or self.random_fraction < 0:
            raise ValueError("masking.mask_fraction and random_fraction must be >= 0")
        if self.mask_fraction + self.random_fraction > 1.0 + 1e-9:
            raise ValueError(
                "masking.mask_fraction + masking.random_fraction must be <= 1, got "
                f"{self.mask_fraction} + {self.random_fraction}"
            )


def mask_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (seed, step, rank, micro-step...).

    SeedSequence hashes the keys, so neighbouring steps or ranks get unrelated streams (a
    plain ``seed + step`` would make rank 1 at step s replay rank 0 at step s + 1).
    """
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def make_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded with ``mask_seed(*keys)``."""
    generator = torch.Generator()
    generator.manual_seed(mask_seed(*keys))
    return generator


class MLMMasker:
    """Applies BERT's 80/10/10 corruption to a batch of token ids."""

    def __init__(
        self,
        *,
        vocab_size: int,
        mask_id: int,
        special_ids: Iterable[int],
        config: MaskingConfig | None = None,
    ) -> None:
        self.config = config or MaskingConfig()
        self.mask_id = int(mask_id)
        self.vocab_size = int(vocab_size)
        self.special_ids = torch.tensor(sorted(int(i) for i in special_ids), dtype=torch.long)
        is_special = torch.zeros(self.vocab_size, dtype=torch.bool)
        is_special[self.special_ids] = True
        # Random replacements are drawn from real tokens only: a random [PAD] or [CLS] in the
        # middle of a sequence is not a plausible corruption and would leak structure.
        self.replacement_ids = torch.nonzero(~is_special).flatten()
        if self.replacement_ids.numel() == 0:
            raise ValueError("the vocabulary has no non-special token to mask")
        self._is_special = is_special

    @classmethod
    def from_tokenizer(cls, tokenizer, config: MaskingConfig | None = None) -> MLMMasker:
        """A masker for a ``ScopeTokenizer`` (its [MASK] id, special ids and vocabulary)."""
        return cls(
            vocab_size=tokenizer.vocab_size,
            mask_id=tokenizer.mask_id,
            special_ids=tokenizer.special_ids,
            config=config,
        )

    def maskable(self, input_ids: Tensor) -> Tensor:
        """Boolean [B, T]: the positions that may be selected (real, non-special tokens)."""
        return ~self._is_special.to(input_ids.device)[input_ids]

    def __call__(self, input_ids: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(corrupted input ids, labels) for a CPU LongTensor ``input_ids`` [B, T].

        The input is not modified. Padding needs no attention mask: [PAD] is a special id.
        """
        if input_ids.device.type != "cpu":
            raise ValueError("MLMMasker works on CPU batches (mask before moving to the device)")
        shape = input_ids.shape
        # All draws happen unconditionally and in a fixed order, so the result depends only on
        # the generator's seed and the batch shape.
        select_draw = torch.rand(shape, generator=generator)
        action_draw = torch.rand(shape, generator=generator)
        random_index = torch.randint(
            len(self.replacement_ids), shape, generator=generator, dtype=torch.long
        )
        selected = (select_draw < self.config.probability) & self.maskable(input_ids)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        to_mask = selected & (action_draw < self.config.mask_fraction)
        to_random = (
            selected
            & ~to_mask
            & (action_draw < self.config.mask_fraction + self.config.random_fraction)
        )
        corrupted = input_ids.clone()
        corrupted[to_mask] = self.mask_id
        corrupted[to_random] = self.replacement_ids[random_index[to_random]]
        return corrupted, labels
