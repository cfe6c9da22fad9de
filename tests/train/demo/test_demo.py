"""`cloud demo --quick`: every stage on the shipped data, a report that renders in Chromium."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
STAGES = ("corpus", "pretrain", "export", "scaling", "finetune", "debye", "report")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def run_demo(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=REPO,
        check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "run"
    result = run_demo(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (`make tools` installs it as root)")


@pytest.mark.slow
def test_every_stage_runs_and_says_so(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    for index, stage in enumerate(STAGES, start=1):
        assert f"[{index}/{len(STAGES)}] {stage}: done" in stdout
        assert (out / stage / "stage.json").is_file()
    assert f"report: {out / 'report.html'}" in stdout


@pytest.mark.slow
def test_report_shows_every_part_of_the_mission(demo: tuple[Path, str]) -> None:
    out, _ = demo
    report = (out / "report.md").read_text()
    for needle in (
        "Corpus",
        "Quarantined inputs",
        "excluded because they belong to the fine-tuning test fold",
        "DeepSpeed ZeRO-2, two processes",
        "Validation loss",
        "model.safetensors",
        "SHA256SUMS",
        "Scaling laws",
        "α = ",
        "mean predictor",
        "MODNet",
        "CLOUD-DEBYE",
        "oracle Debye fit",
        "Throughput",
    ):
        assert needle in report, needle
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / image).stat().st_size > 5_000, image
    assert (out / "export" / "package" / "model.safetensors").is_file()


@pytest.mark.slow
def test_rerun_reuses_finished_stages(demo: tuple[Path, str]) -> None:
    out, _ = demo
    before = (out / "report.html").stat().st_mtime_ns
    result = run_demo(out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("reused") == len(STAGES)
    assert (out / "report.html").stat().st_mtime_ns == before


@pytest.mark.slow
def test_report_renders_in_headless_chromium(demo: tuple[Path, str], tmp_path: Path) -> None:
    browser = chromium()
    out, _ = demo
    html = (out / "report.html").read_text()
    # Self-contained: no link or source leaves the page.
    external = [u for u in re.findall(r'(?:src|href)="([^"]+)"', html) if not u.startswith("data:")]
    assert external == []
    images = re.findall(r"<img ", html)
    assert len(images) >= 7
    # Count, inside Chromium, the images that failed to decode.
    probe = html.replace(
        "</body>",
        "<script>window.addEventListener('load',()=>{const bad=[...document.images]"
        ".filter(i=>!(i.complete&&i.naturalWidth>0)).length;"
        "document.body.setAttribute('data-images',document.images.length);"
        "document.body.setAttribute('data-broken',bad);});</script></body>",
    )
    page = tmp_path / "probe.html"
    page.write_text(probe)
    flags = [
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180
    ).stdout
    assert f'data-images="{len(images)}"' in dom
    assert 'data-broken="0"' in dom
    # A screenshot of the page is not blank.
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            *flags,
            "--window-size=1200,2400",
            f"--screenshot={shot}",
            (out / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=180,
        check=False,
    )
    import matplotlib.image as mpimg

    pixels = mpimg.imread(io.BytesIO(shot.read_bytes()), format="png")
    assert pixels.shape[0] > 1000
    assert float(np.std(pixels[..., :3])) > 0.05  # text, tables and plots, not an empty page
