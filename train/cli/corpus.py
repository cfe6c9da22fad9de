"""`cloud corpus build SOURCE... --out DIR` and `cloud corpus stats DIR`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

DEDUP_CHOICES = ("none", "scope", "structure")
HISTOGRAM_BAR_WIDTH = 40


def register(subparsers: argparse._SubParsersAction) -> None:
    corpus = subparsers.add_parser(
        "corpus", help="build and inspect the sharded pretraining corpus"
    )
    actions = corpus.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    _register_build(actions)
    _register_stats(actions)


def _register_build(actions: argparse._SubParsersAction) -> None:
    build = actions.add_parser(
        "build",
        help="encode structures as SCOPE strings and token ids into WebDataset shards",
        description=(
            "Read structure files (JSON Lines, JSON, CSV with CIFs, CIF, tar, POSCAR …, "
            "directories recursively), encode them with Ray workers and write "
            "corpus-%06d.tar shards, quarantine.jsonl and manifest.json to --out. "
            "Killed builds resume when the same command is run again; --out holding a build "
            "with other inputs or settings is refused unless it wrote nothing or --force is "
            "given. Put SOURCE... before --exclude FILE..., which takes every file name after it."
        ),
    )
    build.add_argument("sources", nargs="+", metavar="SOURCE", help="structure files or folders")
    build.add_argument("--out", required=True, metavar="DIR", help="output directory")
    build.add_argument(
        "--shard-size", type=_positive_int, default=10_000, metavar="N", help="samples per shard"
    )
    build.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="K",
        help="tasks run at once (default: every CPU of the Ray cluster)",
    )
    build.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="join this Ray cluster ('auto': the running one); default: start Ray on 127.0.0.1",
    )
    build.add_argument(
        "--dedup",
        choices=DEDUP_CHOICES,
        default="scope",
        help="duplicates: same canonical SCOPE + reduced formula (scope, the default), "
        "confirmed by StructureMatcher (structure), or kept (none); the first one wins",
    )
    build.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="FILE",
        help="structures (e.g. fine-tuning test sets) that must not enter the corpus",
    )
    build.add_argument(
        "--variants",
        type=_variant_list,
        default=("cloud",),
        metavar="V[,V]",
        help="SCOPE variants to store: cloud, canonical, full (comma-separated)",
    )
    build.add_argument(
        "--unit-size", type=_positive_int, default=None, metavar="N", help="records per task"
    )
    build.add_argument("--symprec", type=float, default=0.01, help="spglib distance tolerance, Å")
    build.add_argument(
        "--engine",
        choices=("spglib", "moyo"),
        default="spglib",
        help="symmetry search; moyo (several times faster) only with --variants canonical",
    )
    build.add_argument(
        "--memo-size",
        type=int,
        default=None,
        metavar="N",
        help="symmetry analyses kept for byte-identical repeats of a cell (0: off; "
        "default 1,000,000); changes speed, never output",
    )
    build.add_argument(
        "--unit-timeout",
        type=_non_negative_float,
        default=None,
        metavar="S",
        help="watchdog: a task encoding for longer than max(S, 10x its expected time) is "
        "cancelled and bisected down to the structure whose symmetry search hangs, which is "
        "quarantined (default 60; 0: no watchdog)",
    )
    build.add_argument(
        "--force",
        action="store_true",
        help="start --out afresh: delete the shards, quarantine and manifest of an earlier build",
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar or summary")
    build.set_defaults(func=run_build)


def _register_stats(actions: argparse._SubParsersAction) -> None:
    stats = actions.add_parser(
        "stats",
        help="counts by source, space-group and token-length histograms of a built corpus",
    )
    stats.add_argument("directory", metavar="DIR", help="a corpus directory (with manifest.json)")
    stats.set_defaults(func=run_stats)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _variant_list(text: str) -> tuple[str, ...]:
    variants = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in variants if v not in ("cloud", "canonical", "full")]
    if not variants or unknown:
        raise argparse.ArgumentTypeError(
            f"variants are cloud, canonical, full (comma-separated), got {text!r}"
        )
    return variants


def run_build(args: argparse.Namespace) -> int:
    from cluster.corpus import CorpusOptions, build_corpus

    # Flags left unset (None) keep CorpusOptions' defaults, which live in one place.
    flags = {
        "unit_size": args.unit_size,
        "memo_entries": args.memo_size,
        "unit_timeout_s": args.unit_timeout,
    }
    given = {name: value for name, value in flags.items() if value is not None}
    if given.get("unit_timeout_s") == 0:
        given["unit_timeout_s"] = None  # --unit-timeout 0: no watchdog
    options = CorpusOptions(
        shard_size=args.shard_size,
        workers=args.workers,
        ray_address=args.ray_address,
        dedup=args.dedup,
        exclude=args.exclude,
        variants=args.variants,
        progress=not args.no_progress,
        symprec=args.symprec,
        engine=args.engine,
        force=args.force,
        **given,
    )
    manifest = build_corpus(args.sources, args.out, options)
    return 0 if manifest["num_samples"] > 0 else 1


def run_stats(args: argparse.Namespace) -> int:
    from cluster.manifest import read_manifest

    try:
        manifest = read_manifest(args.directory)
    except (FileNotFoundError, ValueError) as exc:
        print(f"cloud corpus stats: {exc}", file=sys.stderr)
        return 2
    print_stats(manifest, sys.stdout)
    return 0


def print_stats(manifest: Mapping[str, Any], out: TextIO) -> None:
    """Counts by source, then the space-group and token-length histograms, as text tables."""
    out.write(
        f"corpus: {manifest['num_samples']} samples in {len(manifest['shards'])} shards; "
        f"variants {', '.join(manifest['variants'])}; dedup {manifest['dedup']}; "
        f"tokenizer {manifest['tokenizer']['vocab_hash'][:12]}\n\n"
    )
    fields = ("read", "written", "quarantined", "duplicates", "excluded")
    rows = [[source, *(str(c[f]) for f in fields)] for source, c in manifest["counts"].items()]
    rows.append(["total", *(str(manifest["totals"][f]) for f in fields)])
    out.write(_table(["source", *fields], rows) + "\n\n")

    histograms = manifest["histograms"]
    space_groups = histograms["space_group"]
    out.write(f"space groups ({len(space_groups)} of 230 present)\n")
    out.write(_histogram_table("space group", space_groups) + "\n")
    max_length = manifest["tokenizer"]["max_length"]
    for variant, lengths in histograms["token_length"].items():
        longer = sum(count for length, count in lengths.items() if int(length) > max_length)
        out.write(
            f"\ntoken lengths, {variant} (with [CLS] and [SEP]; {longer} longer than "
            f"max_length {max_length})\n"
        )
        out.write(_histogram_table("tokens", _binned(lengths, width=8)) + "\n")


def _binned(hist: Mapping[str, int], width: int) -> dict[str, int]:
    binned: dict[int, int] = {}
    for length, count in hist.items():
        start = int(length) // width * width
        binned[start] = binned.get(start, 0) + count
    return {f"{s}-{s + width - 1}": binned[s] for s in sorted(binned)}


def _histogram_table(label: str, hist: Mapping[str, int]) -> str:
    total = sum(hist.values()) or 1
    peak = max(hist.values(), default=1)
    rows = [
        [
            key,
            str(count),
            f"{100 * count / total:.1f}",
            "#" * max(1, round(HISTOGRAM_BAR_WIDTH * count / peak)),
        ]
        for key, count in hist.items()
    ]
    return _table([label, "count", "%", ""], rows, left=(0, 3))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """Aligned text columns: names left, numbers right, a dashed rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            str(cell).ljust(w) if i in left else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
