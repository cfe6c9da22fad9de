"""Every numeric setting of the supervised jobs has its range checked, by key (train/common/ranges.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.debye.config import DebyeTrainConfig
from train.debye.config import load_config as load_debye_config
from train.finetune.config import FinetuneConfig
from train.finetune.config import load_config as load_finetune_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

BAD_VALUES = [
    ("lr", -1e-3, "lr must be > 0"),
    ("head_lr", 0.0, "head_lr must be > 0"),
    ("weight_decay", -0.1, "weight_decay must be >= 0"),
    ("min_lr_ratio", 1.5, r"min_lr_ratio must be in \[0, 1\]"),
    ("warmup_ratio", 1.0, r"warmup_ratio must be in \[0, 1\)"),
    ("grad_clip", -1.0, "grad_clip must be >= 0"),
    ("encoder_dropout", 1.0, r"encoder_dropout must be in \[0, 1\) or null"),
    ("threads", -2, "threads must be >= 0"),
]


@pytest.mark.parametrize("config_class", [FinetuneConfig, DebyeTrainConfig])
@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES)
def test_an_out_of_range_value_is_refused_naming_the_key(
    config_class: type, key: str, value: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        config_class(**{key: value})


def test_optional_limits_accept_null_and_refuse_zero() -> None:
    assert FinetuneConfig(max_train_rows=None, encoder_dropout=None).max_train_rows is None
    with pytest.raises(ValueError, match="max_train_rows must be >= 1 or null"):
        FinetuneConfig(max_train_rows=0)
    with pytest.raises(ValueError, match="aflow_max_rows must be >= 1 or null"):
        DebyeTrainConfig(aflow_max_rows=0)


@pytest.mark.parametrize("path", sorted((CONFIGS / "finetune").glob("*.yaml")), ids=str)
def test_the_shipped_finetune_configs_are_within_range(path: Path) -> None:
    load_finetune_config(path)


@pytest.mark.parametrize("path", sorted((CONFIGS / "debye").glob("*.yaml")), ids=str)
def test_the_shipped_debye_configs_are_within_range(path: Path) -> None:
    load_debye_config(path)
