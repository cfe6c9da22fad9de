"""The checkpoint shipped in models/: intact, self-describing, and usable on a fresh clone."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from cloud.export import load_pretrained
from train.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "cloud-tiny-canonical-el"
WEIGHTS_SHA256 = "6b969c0b4294d3cb06158de5c9c185fd23b80cbf14940ac6822fdb59676bd295"
NO_ROOT = "/nonexistent/cloud-data-root"  # what a user's clone without ../shared sees


def test_shipped_weights_are_the_recorded_ones() -> None:
    digest = hashlib.sha256((SHIPPED / "model.safetensors").read_bytes()).hexdigest()
    assert digest == WEIGHTS_SHA256


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
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size < 25 * 1024 * 1024


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
    predictions = tmp_path / "predictions.csv"
    sample = REPO / "data/matbench/matbench_phonons_sample.json.gz"
    code = main(f"predict --checkpoint {out} --input {sample} --out {predictions}".split())
    assert code == 0
    with predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 300
    values = [float(r["prediction"]) for r in rows]
    assert all(v == pytest.approx(v) for v in values)  # finite numbers, not NaN


STAGED = REPO / "models" / "cloud-tiny-canonical-el-phonondb"
STAGED_WEIGHTS_SHA256 = "70f2ffbb1134ad5f5448b77b8b5d41a0ad0ba9dff3ba1bbc5236a3f6bb30ba30"


def test_the_staged_package_is_intact_and_says_what_it_was_trained_on() -> None:
    digest = hashlib.sha256((STAGED / "model.safetensors").read_bytes()).hexdigest()
    assert digest == STAGED_WEIGHTS_SHA256
    package = load_pretrained(STAGED)
    stage = package.metadata["finetune"]
    assert stage["task"] == "phonondb_max_frequency" and stage["unit"] == "cm⁻¹"
    assert stage["config"]["exclude_tasks"] == ["matbench_phonons"]
    assert package.metadata["training_data"]["variant"] == "canonical"
    (run,) = package.metadata["provenance"]["finetune"]
    assert run["task"] == "matbench_phonons" and not run["is_sample"]
    assert set(run["baselines"]) == {"random_init", "classical"}
    provenance = (STAGED / "PROVENANCE.md").read_text()
    assert "then fine-tuned on `phonondb_max_frequency`" in provenance
    assert sum(p.stat().st_size for p in STAGED.iterdir()) < 25 * 1024 * 1024


def test_the_staged_package_predicts_the_highest_phonon_frequency_and_fine_tunes(
    tmp_path: Path,
) -> None:
    predictions = tmp_path / "predictions.csv"
    sample = REPO / "data/matbench/matbench_phonons_sample.json.gz"
    assert main(f"predict --checkpoint {STAGED} --input {sample} --out {predictions}".split()) == 0
    with predictions.open() as handle:
        values = [float(row["prediction"]) for row in csv.DictReader(handle)]
    with gzip.open(sample, "rt") as handle:
        truth = [record["last phdos peak"] for record in json.load(handle)]
    # The head of the stage predicts phonondb's highest frequency, which the last DOS peak
    # sits just below: the two agree to a few tens of cm⁻¹ on the sample.
    errors = sorted(abs(v - t) for v, t in zip(values, truth, strict=True))
    assert errors[len(errors) // 2] < 100
    out = tmp_path / "ft"
    command = (
        f"finetune --checkpoint {STAGED} --task matbench_phonons --folds 0 --out {out} "
        f"data_root={NO_ROOT} epochs=1 baselines=[] threads=1"
    )
    assert main(command.split()) == 0
    assert json.loads((out / "summary.json").read_text())["is_sample"] is True


BANDGAP = REPO / "models" / "cloud-tiny-canonical-el-bandgap"
BANDGAP_WEIGHTS_SHA256 = "a46c2a4a52622c0c9845372bf45e5f47edf7ca4a3a71c1d50971dcd1c08716d9"


def test_the_band_gap_package_is_intact_and_carries_its_dielectric_figures() -> None:
    digest = hashlib.sha256((BANDGAP / "model.safetensors").read_bytes()).hexdigest()
    assert digest == BANDGAP_WEIGHTS_SHA256
    package = load_pretrained(BANDGAP)
    stage = package.metadata["finetune"]
    assert stage["task"] == "mp20_band_gap" and stage["unit"] == "eV"
    assert stage["config"]["exclude_tasks"] == ["matbench_dielectric"]
    (run,) = package.metadata["provenance"]["finetune"]
    assert run["task"] == "matbench_dielectric" and not run["is_sample"]
    assert len(run["folds"]) == 5
    # Both baselines are there, lent by runs of the same rows (the staged run fitted neither).
    assert set(run["baselines"]) == {"random_init", "classical"}
    assert run["baselines_from_other_runs"] == ["random_init", "classical"]
    assert run["model"]["mean"] < run["baselines"]["random_init"]["mean"]
    assert run["model"]["mean"] < run["baselines"]["classical"]["mean"]
    assert sum(p.stat().st_size for p in BANDGAP.iterdir()) < 25 * 1024 * 1024


def test_the_band_gap_package_predicts_gaps_that_fall_as_the_refractive_index_rises(
    tmp_path: Path,
) -> None:
    import numpy as np
    from scipy.stats import spearmanr

    predictions = tmp_path / "predictions.csv"
    sample = REPO / "data/matbench/matbench_dielectric_sample.json.gz"
    assert main(f"predict --checkpoint {BANDGAP} --input {sample} --out {predictions}".split()) == 0
    with predictions.open() as handle:
        gaps = np.array([float(row["prediction"]) for row in csv.DictReader(handle)])
    with gzip.open(sample, "rt") as handle:
        n = np.array(list(json.load(handle)["n"].values()))  # pandas "columns" JSON, in order
    assert len(gaps) == len(n)
    # Wide-gap materials have low refractive indices (Moss's rule): the stage's gaps, in eV,
    # must rank the sample's materials against n.
    assert spearmanr(gaps, n).statistic < -0.5
    assert np.median(gaps) > 0.5
    out = tmp_path / "ft"
    command = (
        f"finetune --checkpoint {BANDGAP} --task matbench_dielectric --folds 0 --out {out} "
        f"data_root={NO_ROOT} epochs=1 baselines=[] threads=1"
    )
    assert main(command.split()) == 0
    assert json.loads((out / "summary.json").read_text())["is_sample"] is True
