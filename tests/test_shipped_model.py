"""The checkpoint shipped in models/: intact, self-describing, and usable on a fresh clone."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from cloud.export import load_pretrained
from train.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "cloud-tiny-canonical-el"
WEIGHTS_SHA256 = "6b969c0b4294d3cb06158de5c9c185fd23b80cbf14940ac6822fdb59676bd295"
NO_ROOT = "/nonexistent/cloud-data-root"  # what a user's clone without ../shared sees
MAX_PACKAGE_BYTES = 25 * 1024 * 1024


def _weights_digest(package: Path) -> str:
    return hashlib.sha256((package / "model.safetensors").read_bytes()).hexdigest()


def _package_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in package.iterdir())


def _predictions(checkpoint: Path, sample: Path, tmp_path: Path) -> list[float]:
    """``cloud predict`` with ``checkpoint`` on ``sample``: one value per structure, in order."""
    out = tmp_path / "predictions.csv"
    assert main(f"predict --checkpoint {checkpoint} --input {sample} --out {out}".split()) == 0
    with out.open() as handle:
        return [float(row["prediction"]) for row in csv.DictReader(handle)]


def _stage_run(package: Any, stage_task: str, unit: str, benchmark: str) -> dict[str, Any]:
    """Checks that ``package`` went through ``stage_task`` with ``benchmark`` kept out, and
    returns the one fine-tuning run its provenance records (on the full ``benchmark``)."""
    stage = package.metadata["finetune"]
    assert stage["task"] == stage_task and stage["unit"] == unit
    assert stage["config"]["exclude_tasks"] == [benchmark]
    (run,) = package.metadata["provenance"]["finetune"]
    assert run["task"] == benchmark and not run["is_sample"]
    return run


def _fine_tunes_on_the_shipped_sample(checkpoint: Path, task: str, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    command = (
        f"finetune --checkpoint {checkpoint} --task {task} --folds 0 --out {out} "
        f"data_root={NO_ROOT} epochs=1 baselines=[] threads=1"
    )
    assert main(command.split()) == 0
    assert json.loads((out / "summary.json").read_text())["is_sample"] is True


def test_shipped_weights_are_the_recorded_ones() -> None:
    assert _weights_digest(SHIPPED) == WEIGHTS_SHA256


def test_shipped_package_loads_verified_and_says_where_it_came_from() -> None:
    package = load_pretrained(SHIPPED)  # verifies every file against SHA256SUMS
    config = package.model.config
    assert config.token_features == "elements-v1"
    assert package.model.encoder.embeddings.feature_table.any()  # the physics travelled
    metadata = package.metadata
    assert metadata["training_data"]["variant"] == "canonical"
    assert metadata["training_data"]["excluded"]["files"] == [
        "matbench_dielectric.json.gz",
        "matbench_phonons.json.gz",
    ]
    assert not {"matbench_dielectric", "matbench_phonons"} & set(
        metadata["training_data"]["sources"]
    )
    tasks = {run["task"] for run in metadata["provenance"]["finetune"]}
    assert tasks == {"matbench_dielectric", "matbench_phonons"}
    assert "cloud pretrain" in metadata["provenance"]["commands"]
    provenance = (SHIPPED / "PROVENANCE.md").read_text()
    assert "random forest" in provenance and "## Commands" in provenance
    assert _package_bytes(SHIPPED) < MAX_PACKAGE_BYTES


def test_fine_tune_and_predict_with_the_shipped_model_without_shared_data(
    tmp_path: Path,
) -> None:
    out = tmp_path / "ft"
    command = (
        f"finetune --checkpoint {SHIPPED} --task matbench_phonons --folds 0 --out {out} "
        f"data_root={NO_ROOT} epochs=2 baselines=[classical] threads=1"
    )
    code = main(command.split())
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["is_sample"] is True  # said plainly: the shipped sample, not Matbench
    assert "not comparable" in (out / "report.md").read_text()
    sample = REPO / "data/matbench/matbench_phonons_sample.json.gz"
    values = _predictions(out, sample, tmp_path)
    assert len(values) == 300
    assert all(v == pytest.approx(v) for v in values)  # finite numbers, not NaN


STAGED = REPO / "models" / "cloud-tiny-canonical-el-phonondb"
STAGED_WEIGHTS_SHA256 = "70f2ffbb1134ad5f5448b77b8b5d41a0ad0ba9dff3ba1bbc5236a3f6bb30ba30"


def test_the_staged_package_is_intact_and_says_what_it_was_trained_on() -> None:
    assert _weights_digest(STAGED) == STAGED_WEIGHTS_SHA256
    package = load_pretrained(STAGED)
    run = _stage_run(package, "phonondb_max_frequency", "cm⁻¹", "matbench_phonons")
    assert package.metadata["training_data"]["variant"] == "canonical"
    assert set(run["baselines"]) == {"random_init", "classical"}
    provenance = (STAGED / "PROVENANCE.md").read_text()
    assert "then fine-tuned on `phonondb_max_frequency`" in provenance
    assert _package_bytes(STAGED) < MAX_PACKAGE_BYTES


def test_the_staged_package_predicts_the_highest_phonon_frequency_and_fine_tunes(
    tmp_path: Path,
) -> None:
    sample = REPO / "data/matbench/matbench_phonons_sample.json.gz"
    values = _predictions(STAGED, sample, tmp_path)
    with gzip.open(sample, "rt") as handle:
        truth = [record["last phdos peak"] for record in json.load(handle)]
    # The head of the stage predicts phonondb's highest frequency, which the last DOS peak
    # sits just below: the two agree to a few tens of cm⁻¹ on the sample.
    errors = sorted(abs(v - t) for v, t in zip(values, truth, strict=True))
    assert errors[len(errors) // 2] < 100
    _fine_tunes_on_the_shipped_sample(STAGED, "matbench_phonons", tmp_path)


BANDGAP = REPO / "models" / "cloud-tiny-canonical-el-bandgap"
BANDGAP_WEIGHTS_SHA256 = "a46c2a4a52622c0c9845372bf45e5f47edf7ca4a3a71c1d50971dcd1c08716d9"


def test_the_band_gap_package_is_intact_and_carries_its_dielectric_figures() -> None:
    assert _weights_digest(BANDGAP) == BANDGAP_WEIGHTS_SHA256
    package = load_pretrained(BANDGAP)
    run = _stage_run(package, "mp20_band_gap", "eV", "matbench_dielectric")
    assert len(run["folds"]) == 5
    # Both baselines are there, lent by runs of the same rows (the staged run fitted neither).
    assert set(run["baselines"]) == {"random_init", "classical"}
    assert run["baselines_from_other_runs"] == ["random_init", "classical"]
    assert run["model"]["mean"] < run["baselines"]["random_init"]["mean"]
    assert run["model"]["mean"] < run["baselines"]["classical"]["mean"]
    assert _package_bytes(BANDGAP) < MAX_PACKAGE_BYTES


def test_the_band_gap_package_predicts_gaps_that_fall_as_the_refractive_index_rises(
    tmp_path: Path,
) -> None:
    import numpy as np
    from scipy.stats import spearmanr

    sample = REPO / "data/matbench/matbench_dielectric_sample.json.gz"
    gaps = np.array(_predictions(BANDGAP, sample, tmp_path))
    with gzip.open(sample, "rt") as handle:
        n = np.array(list(json.load(handle)["n"].values()))  # pandas "columns" JSON, in order
    assert len(gaps) == len(n)
    # Wide-gap materials have low refractive indices (Moss's rule): the stage's gaps, in eV,
    # must rank the sample's materials against n.
    assert spearmanr(gaps, n).statistic < -0.5
    assert np.median(gaps) > 0.5
    _fine_tunes_on_the_shipped_sample(BANDGAP, "matbench_dielectric", tmp_path)
