"""A whole CLOUD-DEBYE run, unit by unit: the untrained baselines first, then AFLOW
pre-training, CLOUD-DEBYE, its single-temperature twin and the direct MLP, the outputs
written after each (partial until the last), finished units kept for a rerun to resume."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.debye_head import CloudDebye
from train.common.packages import checkpoint_variant
from train.debye.config import DebyeTrainConfig
from train.debye.context import DebyeRunResult, RunContext, prepare_run
from train.debye.data import ThermalData
from train.debye.evaluation import MethodCurves
from train.debye.methods import (
    fit_constant_theta,
    oracle_theta,
    predict_theta,
    pretrain_on_aflow,
    train_cloud_debye,
    train_direct_cv300,
)
from train.debye.options import SINGLE_TEMPERATURE
from train.debye.outputs import _protocol_label, run_metrics, save_debye_model, write_outputs
from train.debye.progress import RunProgress, UnitResult, run_fingerprint
from train.debye.state import load_state_tensors, state_tensors, unprefixed
from train.debye.training import THREE_R, FitHistory, normalised_targets

# The name of the module this was before it became a package: log configuration, filters
# and tests that name it keep working.
logger = logging.getLogger("train.debye")


def run_debye(
    config: DebyeTrainConfig,
    *,
    pretrained: Any = None,
    data: ThermalData | None = None,
    progress: bool = False,
) -> DebyeRunResult:
    """Train CLOUD-DEBYE per ``config``, evaluate it (and the ``compare`` methods) on the test
    materials, write results.json, report.md, predictions.csv, figures and the model.
    ``pretrained`` (a loaded package) and ``data`` skip loading them again.

    The outputs are written at once with the baselines that need no training, then again as
    each trained unit finishes (``trained_units``: AFLOW pre-training, CLOUD-DEBYE, which
    also writes the model package, its single-temperature twin, the direct MLP); until the
    last they are partial (results.json ``complete``: false and ``pending``; report.md says
    so). Finished units and the last epoch of the one in training are kept in
    <out>/progress/ (``RunProgress``): a rerun with the same out directory skips the finished
    units, resumes the interrupted one after its last saved epoch, and ends with the results
    of an uninterrupted run.
    """
    from train.threads import apply_threads

    logger.info(apply_threads(config.threads).describe())
    started = time.perf_counter()
    if pretrained is None:
        from cloud.export import load_pretrained

        pretrained = load_pretrained(config.checkpoint)
    variant = config.variant or checkpoint_variant(pretrained)
    context = prepare_run(config, pretrained, variant, data)
    out = output_directory(config)
    units = RunProgress(out, run_fingerprint(context))
    pending = trained_units(config)
    report_lines = list(context.data.report)
    histories: dict[str, FitHistory] = {}
    methods = baseline_methods(context)

    def publish() -> dict[str, Any]:
        ordered = sorted(methods.values(), key=lambda m: METHOD_ORDER.index(m.name))
        metrics = run_metrics(context, ordered, histories, pretrained, variant, report_lines)
        metrics["complete"], metrics["pending"] = not pending, list(pending)
        metrics["resumed_units"] = units.finished_before
        metrics["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_outputs(out, context, ordered, metrics)
        if pending:
            logger.info("partial results in %s; still to train: %s", out, ", ".join(pending))
        return metrics

    metrics = publish()  # an interrupted run leaves at least the baselines and a report
    model = context.new_model()
    if config.aflow_epochs:
        tensors, record = units.unit(
            "aflow", lambda path: aflow_unit(model, context, pretrained.tokenizer, variant, path)
        )
        load_state_tensors(model, unprefixed("model.", tensors), record["model_tied"], out)
        histories["aflow"] = FitHistory(**record["history"])
        report_lines += record["report"]
        pending.remove("aflow")
        metrics = publish()
        # Dropout masks from the same seed whether AFLOW was trained now or read back.
        torch.manual_seed(config.seed)
    tensors, record = units.unit("cloud_debye", lambda path: cloud_debye_unit(model, context, path))
    load_state_tensors(model, unprefixed("model.", tensors), record["model_tied"], out)
    histories["cloud_debye"] = FitHistory(**record["history"])
    label = f"CLOUD-DEBYE ({_protocol_label(config)})"
    methods["cloud_debye"] = context.debye_method("cloud_debye", label, tensors["theta"].numpy())
    pending.remove("cloud_debye")
    metrics = publish()
    if progress:
        best = histories["cloud_debye"]
        logger.info("CLOUD-DEBYE: best val %.4f at epoch %d", best.best_val, best.best_epoch + 1)
    if config.save_model:
        save_debye_model(model, pretrained.tokenizer, variant, out / "model", metrics)
    if "cloud_debye_single" in pending:
        tensors, record = units.unit(
            "cloud_debye_single", lambda path: single_protocol_unit(context, path)
        )
        histories["cloud_debye_single"] = FitHistory(**record["history"])
        label = "CLOUD-DEBYE (paper protocol: C_v at 300 K)"
        theta = tensors["theta"].numpy()
        methods["cloud_debye_single"] = context.debye_method("cloud_debye_single", label, theta)
        pending.remove("cloud_debye_single")
        metrics = publish()
    if "direct" in pending:
        tensors, record = units.unit("direct", lambda path: direct_unit(context, path))
        histories["direct"] = FitHistory(**record["history"])
        methods["direct"] = direct_method(context, tensors["c300_per_atom"].numpy())
        pending.remove("direct")
        metrics = publish()
    return DebyeRunResult(out, metrics, model, context.split, context.data)


def output_directory(config: DebyeTrainConfig) -> Path:
    """``config.out``, else runs/debye/<data>-<protocol>-<target>."""
    return Path(
        config.out or f"runs/debye/{config.data}-{config.protocol}-{config.resolved_target}"
    )


METHOD_ORDER = ("cloud_debye", "cloud_debye_single", "direct", "constant", "oracle", "oracle_300")
"""The order of the methods in results.json, report.md and predictions.csv."""


def trained_units(config: DebyeTrainConfig) -> list[str]:
    """The units of a run that train a model, in the order they run: aflow (θ pre-training,
    when aflow_epochs), cloud_debye, cloud_debye_single and direct (when compared)."""
    units = ["aflow"] if config.aflow_epochs else []
    units.append("cloud_debye")
    if "debye_single" in config.compare and config.protocol != "single":
        units.append("cloud_debye_single")
    if "direct" in config.compare:
        units.append("direct")
    return units


def baseline_methods(context: RunContext) -> dict[str, MethodCurves]:
    """The ``compare`` predictors that need no training (constant, oracle, oracle_300)."""
    config = context.config
    methods = {}
    if "constant" in config.compare:
        methods["constant"] = constant_theta_method(context)
    if "oracle" in config.compare:
        theta = oracle_theta(context.eval_grid, context.cv_test, context.n_atoms_test)
        grid = f"{min(context.eval_grid):g}–{max(context.eval_grid):g} K"
        label = f"oracle Debye fit (θ per test material minimising its C_v MAE over {grid})"
        note = "uses the test truth: the floor of the curve-mean C_v MAE for any Debye model"
        methods["oracle"] = context.debye_method("oracle", label, theta, note)
    if "oracle_300" in config.compare:
        methods["oracle_300"] = oracle_300_method(context)
    return methods


def oracle_300_method(context: RunContext) -> MethodCurves:
    """θ per test material that reproduces its true C_v(300 K) exactly (any 0 < C_v < 3nR is
    a Debye C_v at 300 K for one θ): the best case of the single-temperature protocol, and
    how that θ extrapolates to other temperatures."""
    at300 = context.eval_grid.index(SINGLE_TEMPERATURE)
    cv300 = context.cv_test[:, at300 : at300 + 1]
    theta = oracle_theta([SINGLE_TEMPERATURE], cv300, context.n_atoms_test, criterion="lsq")
    label = "oracle θ matching each test material's true C_v(300 K)"
    note = "uses the test truth: C_v error 0 at 300 K by construction"
    return context.debye_method("oracle_300", label, theta, note)


def aflow_unit(
    model: CloudDebye, context: RunContext, tokenizer: Any, variant: str, state_path: Path
) -> UnitResult:
    """θ pre-training on AFLOW (``pretrain_on_aflow``); keeps the weights it leaves."""
    test_scopes = {context.data.scopes[i] for i in context.split.test}
    history, report = pretrain_on_aflow(
        model, tokenizer, context.config, variant, test_scopes, state_path
    )
    tensors, tied = state_tensors("model.", model.state_dict())
    return tensors, {"history": dataclasses.asdict(history), "report": report, "model_tied": tied}


def cloud_debye_unit(model: CloudDebye, context: RunContext, state_path: Path) -> UnitResult:
    """CLOUD-DEBYE on the run's protocol; keeps its weights and θ of the test materials."""
    history = train_cloud_debye(
        model,
        context.encoded,
        context.c_train,
        context.u_train,
        context.split,
        context.train_grid,
        context.target,
        context.config,
        state_path=state_path,
    )
    theta = predict_theta(
        model, context.encoded, context.split.test, context.config.eval_batch_size
    )
    tensors, tied = state_tensors("model.", model.state_dict())
    tensors["theta"] = torch.from_numpy(theta)
    return tensors, {"history": dataclasses.asdict(history), "model_tied": tied}


def single_protocol_unit(context: RunContext, state_path: Path) -> UnitResult:
    """CLOUD-DEBYE trained the paper's way (C_v at 300 K only) on the same split; keeps θ of
    the test materials."""
    config = context.config
    single_config = dataclasses.replace(config, protocol="single", target="cv", temperatures=None)
    cv300, u300 = context.data.curves([SINGLE_TEMPERATURE])
    c300, _ = normalised_targets(cv300, u300, context.data.n_atoms, config.u_reference_k)
    model = context.new_model()
    history = train_cloud_debye(
        model,
        context.encoded,
        c300,
        np.zeros_like(c300),
        context.split,
        [SINGLE_TEMPERATURE],
        "cv",
        single_config,
        label="cloud-debye-single",
        state_path=state_path,
    )
    theta = predict_theta(model, context.encoded, context.split.test, config.eval_batch_size)
    return {"theta": torch.from_numpy(theta)}, {"history": dataclasses.asdict(history)}


def direct_unit(context: RunContext, state_path: Path) -> UnitResult:
    """The direct MLP on C_v at 300 K; keeps its C_v(300 K) / (3 n R) of the test materials."""
    cv300, _ = context.data.curves([SINGLE_TEMPERATURE])
    c300_atom = cv300[:, 0] / (THREE_R * context.data.n_atoms)
    predicted, history = train_direct_cv300(
        context.encoder_owner,
        context.encoded,
        c300_atom,
        context.split,
        context.config,
        state_path=state_path,
    )
    tensors = {"c300_per_atom": torch.from_numpy(predicted[context.split.test])}
    return tensors, {"history": dataclasses.asdict(history)}


def direct_method(context: RunContext, c300_per_atom: np.ndarray) -> MethodCurves:
    """The direct MLP's test predictions (C_v / (3 n R) at 300 K) as curves: a C_v column at
    300 K, NaN elsewhere, no U."""
    cv = np.full((len(context.split.test), len(context.eval_grid)), np.nan)
    cv[:, context.eval_grid.index(SINGLE_TEMPERATURE)] = (
        c300_per_atom * THREE_R * context.n_atoms_test
    )
    note = "predicts C_v per atom at 300 K (× n_atoms); N/A at other temperatures and for U"
    return MethodCurves("direct", "direct MLP on C_v(300 K)", None, cv, None, "300 K only", note)


def constant_theta_method(context: RunContext) -> MethodCurves:
    """The best single θ of the training materials under the run's own loss."""
    config = context.config
    train = context.split.train
    constant = fit_constant_theta(
        context.train_grid,
        context.c_train[train],
        context.u_train[train],
        context.target,
        kind=config.loss,
        u_weight=config.u_weight,
        u_reference_k=config.u_reference_k,
    )
    theta = np.full(len(context.split.test), constant)
    label = f"constant θ = {constant:.0f} K (best on training set)"
    return context.debye_method("constant", label, theta)
