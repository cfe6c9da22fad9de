"""The stages of `cloud demo`: each a normal `cloud` command in a subprocess (its log kept
under the run folder), its result in ``<out>/<stage>/stage.json``; ``run_demo`` runs them in
order and reuses the stages a previous run finished."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.ray_env import setdefault_loopback
from train.common.files import atomic_write_text
from train.common.paths import REPO, env_with_repository

DATA = REPO / "data"
STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class DemoSizes:
    """How big each stage is; ``QUICK`` for the test suite, ``FULL`` for ``make demo``."""

    shard_size: int
    """Samples per corpus shard (the last shard is held out for validation)."""
    pretrain_flavour: str
    """Model flavour pretrained and exported."""
    pretrain_steps: int
    """Pretraining steps (two processes, micro-batch 16 each)."""
    sweep_steps: tuple[int, ...]
    """Step counts of the scaling sweep (three tiny widths each)."""
    finetune_epochs: int
    """Fine-tuning epochs on matbench_dielectric fold 0."""
    debye_epochs: int
    """CLOUD-DEBYE epochs on the Petretto sample."""


QUICK = DemoSizes(500, "debug", 60, (20, 40, 80), 3, 3)
FULL = DemoSizes(500, "tiny", 400, (40, 80, 160), 15, 12)


@dataclass
class StageResult:
    """What a finished stage reports: its outputs and its wall time."""

    name: str
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


def cloud_command(*args: str) -> list[str]:
    """``cloud ARGS`` with this interpreter, so the demo uses the environment it runs in."""
    return [sys.executable, "-m", "train.cli", *args]


def child_env() -> dict[str, str]:
    env = env_with_repository()
    env.setdefault("DS_ACCELERATOR", "cpu")
    setdefault_loopback(env)  # the corpus stage's Ray listens on loopback only
    return env


def run_logged(command: Sequence[str], log: Path) -> None:
    """Run one command, its output to ``log``; a failure raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        result = subprocess.run(
            list(command), stdout=handle, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); {log}:\n{tail}")


class Demo:
    """The stages, each a small method writing into ``out/<stage>``."""

    def __init__(self, out: Path, sizes: DemoSizes, say: Callable[[str], None] = print) -> None:
        self.out = out
        self.sizes = sizes
        self.say = say
        self.results: dict[str, StageResult] = {}

    # ------------------------------------------------------------------ plumbing

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def run_stage(self, index: int, name: str, body: Callable[[Path], dict[str, Any]]) -> None:
        directory = self.stage_dir(name)
        marker = directory / STAGE_FILE
        total = len(STAGES)
        if marker.is_file():
            self.results[name] = StageResult(**json.loads(marker.read_text()))
            self.say(f"[{index}/{total}] {name}: reused (finished earlier; --fresh to redo)")
            return
        if directory.exists():
            shutil.rmtree(directory)  # an interrupted stage starts over
        directory.mkdir(parents=True)
        self.say(f"[{index}/{total}] {name}: running …")
        start = time.perf_counter()
        outputs = body(directory)
        result = StageResult(name, time.perf_counter() - start, outputs)
        atomic_write_text(marker, json.dumps(result.__dict__, indent=1))
        self.results[name] = result
        self.say(f"[{index}/{total}] {name}: done in {result.seconds:.0f} s")

    # ------------------------------------------------------------------ stages

    def corpus(self, directory: Path) -> dict[str, Any]:
        exclude = directory / "finetune_test_fold0.json"
        write_test_fold(exclude)
        run_logged(
            cloud_command(
                "corpus", "build", str(DATA / "corpus/structures_sample.jsonl.gz"),
                "--out", str(directory / "shards"), "--shard-size", str(self.sizes.shard_size),
                "--workers", "2", "--dedup", "scope", "--exclude", str(exclude),
                "--variants", "cloud,canonical",
            ),
            directory / "build.log",
        )  # fmt: skip
        return {"corpus": str(directory / "shards"), "excluded_from": str(exclude)}

    def pretrain(self, directory: Path) -> dict[str, Any]:
        from train.pretrain import launch

        corpus = self.results["corpus"].outputs["corpus"]
        summary = launch(
            REPO / "configs/pretrain/debug.yaml",
            [
                f"run_dir={directory / 'run'}",
                f"data.corpus={corpus}",
                f"model.flavour={self.sizes.pretrain_flavour}",
                f"train.max_steps={self.sizes.pretrain_steps}",
                f"train.eval_interval={max(self.sizes.pretrain_steps // 6, 10)}",
                f"checkpoint.interval={self.sizes.pretrain_steps}",
                "system.zero_stage=2",
                "system.cpu_threads=1",
                "logging.progress=false",
            ],
            nproc=2,
            log_path=directory / "pretrain.log",
        )
        return {"summary": summary, "run_dir": str(directory / "run")}

    def export(self, directory: Path) -> dict[str, Any]:
        run_dir = self.results["pretrain"].outputs["run_dir"]
        package = directory / "package"
        run_logged(
            cloud_command("export", run_dir, "--out", str(package)), directory / "export.log"
        )
        files = {p.name: p.stat().st_size for p in sorted(package.iterdir())}
        return {"package": str(package), "files": files}

    def scaling(self, directory: Path) -> dict[str, Any]:
        import dataclasses

        from train.scaling import write_report
        from train.scaling.sweep import load_sweep_config, run_sweep

        corpus = self.results["corpus"].outputs["corpus"]
        sweep = load_sweep_config(REPO / "configs/scaling/cpu-tiny.yaml", [f"data.corpus={corpus}"])
        sweep = dataclasses.replace(sweep, out_dir=str(directory), steps=self.sizes.sweep_steps)
        results = run_sweep(sweep, on_event=lambda line: self.say(f"      {line}"))
        fit = write_report(results, directory / "report", bootstrap=50)
        return {
            "results": str(results),
            "report": str(directory / "report"),
            "fit": _fit_digest(fit),
        }

    def finetune(self, directory: Path) -> dict[str, Any]:
        package = self.results["export"].outputs["package"]
        run_logged(
            cloud_command(
                "finetune", "--checkpoint", package, "--task", "matbench_dielectric",
                "--folds", "0", "--data-root", str(DATA), "--out", str(directory / "run"),
                f"epochs={self.sizes.finetune_epochs}",
            ),
            directory / "finetune.log",
        )  # fmt: skip
        return {"run": str(directory / "run")}

    def debye(self, directory: Path) -> dict[str, Any]:
        package = self.results["export"].outputs["package"]
        run_logged(
            cloud_command(
                "debye", "--checkpoint", package, "--data", "petretto", "--target", "cv",
                "--temperatures", "50:800:50", "--data-root", str(DATA),
                "--out", str(directory / "run"), f"epochs={self.sizes.debye_epochs}",
                "compare=[direct,oracle]",
            ),
            directory / "debye.log",
        )  # fmt: skip
        return {"run": str(directory / "run")}

    def report(self, directory: Path) -> dict[str, Any]:
        from train.demo.report import write_demo_report

        paths = write_demo_report(self.out, {k: v.__dict__ for k, v in self.results.items()})
        return {k: str(v) for k, v in paths.items()}


def _fit_digest(fit: dict[str, Any]) -> dict[str, Any]:
    keys = ("E", "A", "B", "alpha", "beta", "a", "b", "converged", "n_runs")
    return {k: fit.get(k) for k in keys}


def write_test_fold(path: Path) -> None:
    """The shipped Matbench dielectric rows of the official fold-0 test split, as a pymatgen
    JSON list, for ``--exclude``: pretraining must not see what fine-tuning is tested on."""
    with gzip.open(DATA / "matbench/matbench_dielectric_sample.json.gz", "rb") as f:
        columns = json.loads(f.read())
    splits = json.loads(
        (DATA / "matbench/matbench_v0.1_validation_dielectric_phonons.json").read_text()
    )
    test_ids = set(splits["splits"]["matbench_dielectric"]["fold_0"]["test"])
    structures = [
        s
        for key, s in columns["structure"].items()
        if f"mb-dielectric-{int(key) + 1:04d}" in test_ids
    ]
    path.write_text(json.dumps(structures))


STAGES: tuple[str, ...] = ("corpus", "pretrain", "export", "scaling", "finetune", "debye", "report")


def run_demo(
    out: Path, *, quick: bool = False, fresh: bool = False, say: Callable[[str], None] = print
) -> Path:
    """Run every stage (reusing finished ones) and return the report's path."""
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, QUICK if quick else FULL, say)
    say(f"CLOUD demo ({'quick' if quick else 'full'}) in {out}")
    for index, name in enumerate(STAGES, start=1):
        demo.run_stage(index, name, getattr(demo, name))
    report = out / "report.html"
    say(f"report: {report} (and {out / 'report.md'})")
    return report
