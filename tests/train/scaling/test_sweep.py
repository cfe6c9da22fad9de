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

REPO = Path(__file__).resolve().parents[3]


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


@pytest.mark.slow
def test_downstream_fine_tunes_the_listed_checkpoints_once_each(sweep, tmp_path: Path) -> None:
    from train.scaling.downstream import DownstreamConfig, read_downstream
    from train.scaling.sweep import run_downstream_stage

    config, _ = sweep
    downstream = DownstreamConfig(
        task="matbench_phonons",
        runs=("debug-w16-s80", "debug-w64-s80", "not-a-run"),
        overrides=("epochs=2", "folds=[0]", "baselines=[]", "allow_sample=true", "threads=1"),
    )
    config = dataclasses.replace(config, downstream=downstream)
    events: list[str] = []
    run_downstream_stage(config, on_event=events.append)
    rows = read_downstream(Path(config.out_dir) / "downstream.csv")
    assert [r["run"] for r in rows] == ["debug-w16-s80", "debug-w64-s80"]  # by compute
    assert all(r["metric"] == "mae" and r["score_mean"] > 0 and r["folds"] == 1 for r in rows)
    assert any("not-a-run" in e and "left for later" in e for e in events)
    package = Path(config.out_dir) / "packages" / "debug-w64-s80"
    assert (package / "model.safetensors").is_file() and (package / "SHA256SUMS").is_file()
    run_downstream_stage(config, on_event=events.append)
    assert sum("finished earlier, skipped" in e for e in events) == 2

    fit = write_report(config.results_csv, tmp_path / "report", bootstrap=0)
    assert [r["run"] for r in fit["downstream"]["rows"]] == ["debug-w16-s80", "debug-w64-s80"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Downstream" in report and "debug-w64-s80" in report
    assert (tmp_path / "report" / "downstream.png").stat().st_size > 10_000


def test_a_downstream_claim_keeps_a_second_process_off_a_checkpoint(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    from train.scaling.downstream import _claim

    path = tmp_path / "downstream" / "tiny-s2000.claim"
    mine = _claim(path)
    assert mine == path and path.read_text() == f"{socket.gethostname()} {os.getpid()}"
    assert _claim(path) is None  # held by a live process (this one)
    # A claim left by a process that has exited is taken over.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path.write_text(f"{socket.gethostname()} {gone.stdout.strip()}")
    assert _claim(path) == path


def test_sweep_config_refuses_unknown_keys_and_empty_axes(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base_config": "x.yaml", "models": [], "steps": [1], "lr": 1}))
    with pytest.raises(ValueError, match=r"unknown sweep keys \['lr'\]"):
        load_sweep_config(path)
    path.write_text(yaml.safe_dump({"base_config": "x.yaml", "models": [], "steps": [1]}))
    with pytest.raises(ValueError, match="at least one model"):
        load_sweep_config(path)


GOOD_SWEEP = {"base_config": "x.yaml", "models": [{"name": "a", "flavour": "debug"}], "steps": [5]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_config": None}, "base_config .* is missing"),
        ({"steps": [5, "many"]}, r"steps must be whole numbers, got 'many'"),
        ({"steps": [2.5e3]}, "steps must be whole numbers, got 2500.0"),
        ({"steps": [0]}, "steps must be positive"),
        ({"nproc": 0}, "nproc must be >= 1, got 0"),
        ({"nproc": 2, "in_process": True}, "in_process runs one process, but nproc is 2"),
        ({"in_process": "yes"}, "in_process must be true or false"),
        ({"models": [{"name": "a", "flavour": "giant"}]}, "unknown flavour 'giant'"),
        ({"models": [{"name": "a", "flavour": "debug", "overrides": [1]}]}, "must be a mapping"),
        ({"warmup_fraction": 1.5}, r"warmup_fraction must lie in \(0, 1\)"),
    ],
)
def test_a_sweep_config_mistake_is_refused_naming_the_file_and_key(
    tmp_path: Path, change: dict, message: str
) -> None:
    values = {**GOOD_SWEEP, **change}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in values.items() if v is not None}))
    with pytest.raises(ValueError, match=message) as caught:
        load_sweep_config(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs/scaling").glob("*.yaml")), ids=str)
def test_the_shipped_sweep_configs_load(path: Path) -> None:
    assert load_sweep_config(path).models


# ------------------------------------------------------------------ held-out prediction

LAW = {"E": 0.5, "A": 40.0, "B": 900.0, "alpha": 0.35, "beta": 0.45}
TOKENS_PER_STEP = 1000


def law_launcher(calls: list[dict]) -> object:
    """A launcher whose runs land exactly on LAW (N from the flavour, D = steps × 1000)."""
    from cloud import count_parameters, family
    from train.scaling import predict_loss

    def launch(config_path: str, overrides: list[str], *, nproc: int, resume: bool) -> dict:
        values = dict(item.split("=", 1) for item in overrides)
        n_params = count_parameters(family(values["model.flavour"]), embedding=False)
        steps = int(values["train.max_steps"])
        tokens = steps * TOKENS_PER_STEP
        run_dir = Path(values["run_dir"])
        calls.append(
            {
                "run_dir": run_dir,
                "prediction_exists": (run_dir.parent / "prediction.json").is_file(),
            }
        )
        return {
            "flavour": values["model.flavour"],
            "n_params_non_embedding": n_params,
            "n_params_total": n_params,
            "tokens": tokens,
            "flops": 6.0 * n_params * tokens,
            "val_loss": float(predict_loss(LAW, n_params, tokens)),
            "val_loss_se": 0.001,
            "wall_time_s": 1.0 + n_params * tokens * 1e-12,
            "device": "cpu",
        }

    return launch


def prediction_sweep(tmp_path: Path, **prediction: object) -> Path:
    config = {
        "name": "law",
        "base_config": "configs/pretrain/debug.yaml",
        "out_dir": str(tmp_path / "sweep"),
        "models": [{"name": n, "flavour": n} for n in ("debug", "nano", "micro", "tiny")],
        "steps": [100, 300, 1000, 3000],
        "prediction": {"name": "milli", "flavour": "milli", "steps": 5000, **prediction},
    }
    path = tmp_path / "law.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_held_out_run_is_predicted_in_writing_before_it_runs(tmp_path: Path) -> None:
    from train.scaling.sweep import run_prediction

    config = load_sweep_config(prediction_sweep(tmp_path))
    calls: list[dict] = []
    launcher = law_launcher(calls)
    run_sweep(config, launcher=launcher, on_event=lambda _: None)
    assert len(calls) == 16 and not any(c["prediction_exists"] for c in calls)
    events: list[str] = []
    prediction = run_prediction(config, launcher=launcher, on_event=events.append, bootstrap=20)
    held_out = calls[-1]
    assert held_out["run_dir"].name == "milli-s5000"
    assert held_out["prediction_exists"], "the prediction must be on disk before the run starts"
    assert "before the run" in events[0]
    assert prediction["tokens"] == 5000 * TOKENS_PER_STEP
    rows = read_rows(config.results_csv)
    assert [r["role"] for r in rows] == ["fit"] * 16 + ["prediction"]

    fit = write_report(config.results_csv, tmp_path / "report", bootstrap=20)
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert fit["n_runs"] == 16  # the held-out run is not fitted
    scored = summary["prediction"]
    assert scored["flavour"] == "milli"
    assert scored["measured_loss"] == pytest.approx(float(rows[-1]["val_loss"]))
    # Noise-free runs on the law itself: the extrapolation is exact.
    assert abs(scored["relative_error"]) < 1e-3 and scored["within_target"] is True
    assert fit["prediction"]["grid_unchanged"] is True
    assert summary["alpha"] == pytest.approx(LAW["alpha"], rel=1e-2)
    report = (tmp_path / "report" / "report.md").read_text()
    assert "A prediction made before the run" in report and "target ±3 %: met" in report
    assert "still begins with exactly those bytes" in report
    assert (tmp_path / "report" / "loss_vs_compute.png").stat().st_size > 10_000

    # Rerunning finds the row: nothing is trained again and the prediction is not rewritten.
    before = (Path(config.out_dir) / "prediction.json").read_text()
    run_prediction(config, launcher=launcher, on_event=events.append, bootstrap=20)
    assert len(calls) == 17 and "skipped" in events[-1]
    assert (Path(config.out_dir) / "prediction.json").read_text() == before


def test_a_prediction_inside_the_grid_or_before_the_grid_is_complete_is_refused(
    tmp_path: Path,
) -> None:
    from train.scaling.sweep import run_prediction

    with pytest.raises(ValueError, match="must extrapolate"):
        load_sweep_config(prediction_sweep(tmp_path, steps=3000))
    config = load_sweep_config(prediction_sweep(tmp_path, flavour="tiny"))
    with pytest.raises(ValueError, match="grid lacks 16 run"):
        run_prediction(config, launcher=law_launcher([]), on_event=lambda _: None)
    run_sweep(config, launcher=law_launcher([]), on_event=lambda _: None)
    with pytest.raises(ValueError, match="not beyond the grid"):
        run_prediction(config, launcher=law_launcher([]), on_event=lambda _: None, bootstrap=0)


def test_parts_split_the_grid_into_equal_halves_that_cover_it_once(tmp_path: Path) -> None:
    from train.scaling.sweep import assign_parts, cell_cost

    config = load_sweep_config(prediction_sweep(tmp_path))
    parts = assign_parts(config, 2)
    assert set(parts) == {(m.name, s) for m, s in config.cells()}
    loads = [
        sum(cell_cost(m, s) for m, s in config.cells() if parts[(m.name, s)] == k) for k in (1, 2)
    ]
    assert max(loads) / min(loads) < 1.2
    calls: list[dict] = []
    for part in (1, 2):
        run_sweep(config, launcher=law_launcher(calls), on_event=lambda _: None, part=(part, 2))
    assert len(calls) == 16 and len(read_rows(config.results_csv)) == 16
    # Appending never rewrites earlier rows: one line ending throughout.
    data = config.results_csv.read_bytes()
    assert data.count(b"\r\n") == 17 and data.count(b"\n") == 17
