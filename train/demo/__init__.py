"""`cloud demo`: the whole system on the real data shipped in data/, one stage after another.

Stages (each a normal `cloud` command in a subprocess, its log kept under the run folder):

1. corpus    — Ray shards the shipped corpus sample into WebDataset tars, excluding the
               fine-tuning test fold so pretraining never sees it;
2. pretrain  — DeepSpeed ZeRO-2 masked-LM pretraining, two processes over gloo;
3. export    — the checkpoint consolidated into a self-describing package;
4. scaling   — a 3 × 3 sweep of tiny models and data sizes, the scaling-law fit;
5. finetune  — Matbench dielectric, fold 0, from the exported package;
6. debye     — CLOUD-DEBYE heat capacities on the Petretto phonon sample;
7. report    — report.md and a self-contained report.html.

A stage that finished writes ``<out>/<stage>/stage.json``; re-running the demo reuses it.
``--fresh`` starts over. ``--quick`` runs the same stages at the smallest sizes (for tests).

The package's rooms: ``stages`` (the sizes, each stage and ``run_demo``) and ``report``
(report.md and report.html from the stages' results). The names below are its API, each
imported from its room when first used.
"""

from __future__ import annotations

from train.common.exports import lazy_exports

ROOMS: dict[str, tuple[str, ...]] = {
    "stages": (
        "DATA",
        "FULL",
        "QUICK",
        "STAGES",
        "STAGE_FILE",
        "Demo",
        "DemoSizes",
        "StageResult",
        "child_env",
        "cloud_command",
        "run_demo",
        "run_logged",
        "write_test_fold",
    ),
    "report": (
        "SECTIONS",
        "Block",
        "build_blocks",
        "code",
        "heading",
        "image",
        "paragraph",
        "render_html",
        "render_markdown",
        "table",
        "write_demo_report",
    ),
}
"""Each public name of the package, by the room that holds it."""

__all__ = sorted(name for names in ROOMS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, ROOMS)
