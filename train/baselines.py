"""The classical baseline, under the name every fine-tuning report gives it.

``report.md`` of ``cloud finetune`` names ``train.baselines.ClassicalBaseline``; the code is
in ``train.finetune.baselines`` and these are its very objects.
"""

from __future__ import annotations

from train.finetune.baselines import (
    ClassicalBaseline,
    feature_matrix,
    feature_names,
    scope_features,
)

__all__ = ["ClassicalBaseline", "feature_matrix", "feature_names", "scope_features"]
