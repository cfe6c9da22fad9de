"""models/make_package.py: the figures a shipped package's provenance carries."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _make_package() -> Any:
    spec = importlib.util.spec_from_file_location("make_package", REPO / "models/make_package.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _figures(task: str, model: float, baselines: dict[str, float]) -> dict[str, Any]:
    def stats(value: float) -> dict[str, float]:
        return {"mean": value, "std": 0.05}

    return {
        "task": task,
        "metric": "mae",
        "unit": "",
        "folds": ["fold_0", "fold_1"],
        "is_sample": False,
        "ensemble": 1,
        "model": stats(model),
        "baselines": {name: stats(v) for name, v in baselines.items()},
        "mean_predictor": stats(0.8),
        "cpu_time_s": 60.0,
    }


def test_baselines_run_apart_fill_the_columns_of_their_run() -> None:
    make = _make_package()
    runs = [_figures("matbench_dielectric", 0.33, {}), _figures("matbench_phonons", 59.0, {})]
    twin = _figures("matbench_dielectric", 0.348, {})
    forest = _figures("matbench_dielectric", 0.35, {"random_init": 0.36, "classical": 0.419})
    merged = make.with_baselines(runs, [twin], [forest])
    assert merged[0]["baselines"]["random_init"] == {"mean": 0.348, "std": 0.05}
    assert merged[0]["baselines"]["classical"] == {"mean": 0.419, "std": 0.05}
    assert merged[0]["baselines_from_other_runs"] == ["random_init", "classical"]
    assert "random_init" not in merged[1]["baselines"]
    metadata = {
        "provenance": {"finetune": merged},
        "training": {"flavour": "tiny", "steps": 10, "tokens": 640},
        "training_data": {"num_samples": 64, "variant": "canonical"},
    }
    table = make.provenance_markdown("x", metadata, "cloud finetune …")
    assert (
        "| matbench_dielectric | mae | 0.33 ± 0.05 | 0.348 ± 0.05 | 0.419 ± 0.05 | 0.8 ± 0.05 |"
        in table
    )


def test_baselines_of_other_rows_or_a_second_copy_are_refused() -> None:
    make = _make_package()
    other_folds = dict(_figures("matbench_dielectric", 0.35, {}), folds=["fold_0"])
    with pytest.raises(SystemExit, match="matches 0 runs"):
        make.with_baselines([_figures("matbench_dielectric", 0.33, {})], [other_folds], [])
    has_one = _figures("matbench_dielectric", 0.33, {"random_init": 0.34})
    with pytest.raises(SystemExit, match="already"):
        make.with_baselines([has_one], [_figures("matbench_dielectric", 0.35, {})], [])
    with pytest.raises(SystemExit, match="no classical baseline"):
        make.with_baselines([_figures("matbench_dielectric", 0.33, {})], [], [has_one])
