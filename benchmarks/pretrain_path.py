"""The real pretraining path, padded against packed: ``cloud pretrain`` runs side by side.

    python benchmarks/pretrain_path.py --corpus runs/corpus-full [--config configs/pretrain/tiny.yaml]
        [--steps 60] [--rounds 2] [--tokens-per-batch 2240] [--json FILE] [KEY=VALUE ...]

Runs the same pretraining (one process, one thread, as the CPU sweep runs it) in three
layouts, interleaved for ``--rounds`` rounds so that a noisy machine slows them alike:

- ``padded, computed padded``: batches of ``micro_batch_size`` strings padded to their
  longest, every position computed (``system.padded_compute=true``, the path before
  unpadding);
- ``padded, computed unpadded``: the same batches, the model on their real tokens only;
- ``packed``: batches packed to ``--tokens-per-batch`` tokens (``data.tokens_per_batch``; the
  default is 64 strings of the full corpus's mean length, 35 tokens, so a step holds as many
  real tokens as the padded one).

Reported per layout (best round): real tokens/s from the run's own summary, the share of
positions that were padding (``padding_fraction``), and the speed-up over the padded path.
The corpus is any ``cloud corpus build`` output, e.g. the full one of the README built from
``../shared/data/corpus``; nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from train.pretrain import launch  # noqa: E402

LAYOUTS = {
    "padded, computed padded (before)": ["system.padded_compute=true"],
    "padded, computed unpadded": [],
    "packed": ["data.tokens_per_batch={tokens}"],
}


def run_layout(config: Path, corpus: Path, run_dir: Path, steps: int, extra: list[str]) -> dict:
    overrides = [
        f"data.corpus={corpus}",
        f"run_dir={run_dir}",
        f"train.max_steps={steps}",
        "train.eval_interval=0",
        "train.eval_at_start=false",
        "train.log_interval=10",
        "data.eval_batches=1",
        "checkpoint.save_final=false",
        "logging.tensorboard=false",
        "logging.progress=false",
        "system.cpu_threads=1",
        *extra,
    ]
    return launch(config, overrides, env={"OMP_NUM_THREADS": "1"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a cloud corpus build output")
    parser.add_argument("--config", type=Path, default=REPO / "configs/pretrain/tiny.yaml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens-per-batch", type=int, default=2240)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "overrides",
        nargs="*",
        help="KEY=VALUE config overrides for every run, e.g. data.shuffle_buffer=20000",
    )
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="pretrain-path-") as scratch:
        for round_index in range(args.rounds):
            for index, (name, extra) in enumerate(LAYOUTS.items()):
                extra = [e.format(tokens=args.tokens_per_batch) for e in extra]
                run_dir = Path(scratch) / f"r{round_index}-{index}"
                summary = run_layout(
                    args.config, args.corpus, run_dir, args.steps, [*args.overrides, *extra]
                )
                print(
                    f"round {round_index + 1} {name:34s} {summary['tokens_per_s']:9,.0f} tok/s"
                    f"  padding {summary['padding_fraction']:.1%}",
                    flush=True,
                )
                if name not in best or summary["tokens_per_s"] > best[name]["tokens_per_s"]:
                    best[name] = summary
    baseline = best[next(iter(LAYOUTS))]["tokens_per_s"]
    print(
        f"\npretraining path, {date.today()}, {platform.machine()}, {args.config.name}, "
        f"{args.steps} steps × {args.rounds} rounds, corpus {args.corpus}"
        + (f", {' '.join(args.overrides)}" if args.overrides else "")
    )
    rows = []
    for name, summary in best.items():
        row = {
            "layout": name,
            "tokens_per_s": summary["tokens_per_s"],
            "padding_fraction": summary["padding_fraction"],
            "speedup": summary["tokens_per_s"] / baseline,
            "tokens_per_step": summary["tokens"] / summary["steps"],
        }
        rows.append(row)
        print(
            f"{name:34s} {row['tokens_per_s']:9,.0f} real tok/s  padding "
            f"{row['padding_fraction']:6.1%}  ×{row['speedup']:.2f}  "
            f"{row['tokens_per_step']:,.0f} tokens/step"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
