"""What every stage of a run shares (``RunContext``: data, split, tokens, target tables) and
how a run's context is prepared; the result of a whole run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.debye_head import CloudDebye
from train.common.devices import resolve_device
from train.debye.config import DebyeTrainConfig
from train.debye.data import (
    MaterialSplit,
    ThermalData,
    _drop_rows,
    load_thermal_data,
    split_materials,
)
from train.debye.evaluation import MethodCurves, debye_curves
from train.debye.methods import Encoded
from train.debye.training import encode_scopes, normalised_targets

# The name of the module this was before it became a package: log configuration, filters
# and tests that name it keep working.
logger = logging.getLogger("train.debye")


@dataclass
class DebyeRunResult:
    """A whole run: where the outputs are, the metrics, the trained model."""

    out: Path
    metrics: dict[str, Any]
    model: CloudDebye
    split: MaterialSplit
    data: ThermalData


@dataclass
class RunContext:
    """What every stage of a run shares: the data, split, tokens and target tables."""

    config: DebyeTrainConfig
    data: ThermalData
    split: MaterialSplit
    encoded: Encoded
    encoder_owner: Any
    """The pretrained package's model (its ``.encoder`` is copied into each new model)."""
    target: str
    train_grid: list[float]
    eval_grid: list[float]
    c_train: np.ndarray
    """Normalised C_v, c = C_v / (3 n R), of every material on the training grid."""
    u_train: np.ndarray
    """Normalised U, u = U / (3 n R T_ref), of every material on the training grid."""
    cv_test: np.ndarray
    """True C_v per mole of cells of the test materials on the evaluation grid."""
    u_test: np.ndarray
    """True U per mole of cells of the test materials on the evaluation grid."""

    @property
    def n_atoms_test(self) -> np.ndarray:
        return self.data.n_atoms[self.split.test]

    @property
    def train_range(self) -> tuple[float, float]:
        return min(self.train_grid), max(self.train_grid)

    def new_model(self) -> CloudDebye:
        """A fresh CLOUD-DEBYE on a copy of the pretrained encoder, seeded."""
        torch.manual_seed(self.config.seed)
        model = CloudDebye.from_pretrained_encoder(
            self.encoder_owner, self.config.head, dropout=self.config.encoder_dropout
        )
        return model.to(self.encoded.device)

    def debye_method(
        self, name: str, label: str, theta: np.ndarray, note: str = ""
    ) -> MethodCurves:
        """Test-set curves of a Debye predictor from its θ per test material."""
        cv, u = debye_curves(theta, self.eval_grid, self.n_atoms_test)
        return MethodCurves(name, label, theta, cv, u, "all", note)


def prepare_run(
    config: DebyeTrainConfig, pretrained: Any, variant: str, data: ThermalData | None
) -> RunContext:
    """Load and tokenise the data, split it by material, tabulate the targets."""
    tokenizer = pretrained.tokenizer
    max_length = pretrained.model.encoder.config.max_position_embeddings
    if data is None:
        data = load_thermal_data(
            config.data,
            config.data_root,
            variant=variant,
            allow_sample=config.allow_sample,
            max_materials=config.max_materials,
            seed=config.seed,
            stability_threshold_thz=config.stability_threshold_thz,
        )
    sequences, too_long = encode_scopes(data.scopes, tokenizer, max_length)
    keep = np.array([i for i in range(len(data)) if i not in set(too_long)], dtype=int)
    data = _drop_rows(data, keep, f"more than the model's {max_length} positions", len(too_long))
    for line in data.report:
        logger.info(line)
    split = split_materials(
        data.ids,
        seed=config.seed,
        fold=config.fold,
        n_folds=config.n_folds,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
    )
    train_grid, eval_grid = config.train_temperatures(), config.evaluation_temperatures()
    c_train, u_train = normalised_targets(
        *data.curves(train_grid), data.n_atoms, config.u_reference_k
    )
    cv_eval, u_eval = data.curves(eval_grid)
    return RunContext(
        config=config,
        data=data,
        split=split,
        encoded=Encoded(tokenizer, [sequences[i] for i in keep], resolve_device(config.device)),
        encoder_owner=pretrained.model,
        target=config.resolved_target,
        train_grid=train_grid,
        eval_grid=eval_grid,
        c_train=c_train,
        u_train=u_train,
        cv_test=cv_eval[split.test],
        u_test=u_eval[split.test],
    )
