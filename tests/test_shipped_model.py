"""The checkpoint shipped in models/: intact, self-describing, and usable on a fresh clone."""

from __future__ import annotations

import csv
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
