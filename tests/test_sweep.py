"""A real scaling sweep on CPU: 3 model sizes × 3 step counts, skip, resume, fit, report."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from train.scaling import write_report
from train.scaling.sweep import finished_cells, load_sweep_config, run_sweep

REPO = Path(__file__).resolve().parents[1]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path):
    out = tmp_path_factory.mktemp("sweep")
    config = load_sweep_config(
        REPO / "configs/scaling/cpu-tiny.yaml", [f"data.corpus={sample_corpus}"]
    )
    config = dataclasses.replace(config, out_dir=str(out), steps=(20, 40, 80))
    events: list[str] = []
    run_sweep(config, on_event=events.append)
    return config, events


@pytest.mark.slow
def test_sweep_appends_one_row_per_finished_run(sweep) -> None:
    config, events = sweep
    rows = read_rows(config.results_csv)
    assert len(rows) == 9
    assert {(r["flavour"], int(r["steps"])) for r in rows} == set(
        (m.name, s) for m, s in config.cells()
    )
    for row in rows:
        assert float(row["val_loss"]) > 0
        assert int(row["tokens"]) > 0 and int(row["n_params_non_embedding"]) > 0
        assert row["device"] == "cpu"
    # More parameters and more tokens both lower the loss on this grid.
    loss = {(r["flavour"], int(r["steps"])): float(r["val_loss"]) for r in rows}
    assert loss[("debug-w64", 80)] < loss[("debug-w16", 80)]
    assert loss[("debug-w32", 80)] < loss[("debug-w32", 20)]
    assert sum("running" in e for e in events) == 9


@pytest.mark.slow
def test_rerun_skips_finished_and_resumes_an_interrupted_run(sweep) -> None:
    config, _ = sweep
    rows = read_rows(config.results_csv)
    interrupted = rows[-1]
    # The sweep died after the last run's final checkpoint, before its summary and its row.
    with config.results_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:-1])
    (Path(interrupted["run_dir"]) / "summary.json").unlink()
    events: list[str] = []
    run_sweep(config, on_event=events.append)
    assert sum("skipped" in e for e in events) == 8
    assert sum("resuming" in e for e in events) == 1
    again = read_rows(config.results_csv)
    assert len(again) == 9
    assert finished_cells(config.results_csv) == set((m.name, s) for m, s in config.cells())
    assert float(again[-1]["val_loss"]) == pytest.approx(float(interrupted["val_loss"]), rel=1e-6)


@pytest.mark.slow
def test_fit_report_from_the_sweep(sweep, tmp_path: Path) -> None:
    config, _ = sweep
    fit = write_report(config.results_csv, tmp_path / "report", bootstrap=20)
    for key in ("E", "A", "B", "alpha", "beta"):
        assert key in fit
    report = (tmp_path / "report" / "report.md").read_text()
    assert "**9 runs**" in report
    assert "3 model sizes" in report and "3 token counts" in report
    assert f"{fit['a']:.3g}" in report
    for png in ("loss_vs_n.png", "loss_vs_d.png", "residuals.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000
    assert json.loads((tmp_path / "report" / "fit.json").read_text())["n_runs"] == 9


def test_sweep_config_refuses_unknown_keys_and_empty_axes(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base_config": "x.yaml", "models": [], "steps": [1], "lr": 1}))
    with pytest.raises(ValueError, match=r"unknown sweep keys \['lr'\]"):
        load_sweep_config(path)
    path.write_text(yaml.safe_dump({"base_config": "x.yaml", "models": [], "steps": [1]}))
    with pytest.raises(ValueError, match="at least one model"):
        load_sweep_config(path)
