"""``build_corpus``: inputs → a finished corpus directory (or a resumed, or a confirmed one)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.corpus.encode import EncodeOptions, Faults
from cluster.corpus.files import STATE_DIR
from cluster.corpus.memo import start_memo, stop_memo
from cluster.corpus.options import CorpusOptions
from cluster.corpus.tasks import encode_exclusion, ordered_results, plan_work, ray_runtime
from cluster.corpus.watchdog import Watchdog
from cluster.corpus.writer import CorpusWriter, differences
from cluster.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    QUARANTINE_NAME,
    read_manifest,
    sha256_file,
    tool_version,
)

if TYPE_CHECKING:
    from cluster.readers import InputFile
    from tokenizer.vocab import ScopeTokenizer

QUARANTINE_SHOWN = 5
"""Quarantine lines a build prints at its end; the rest are counted."""


def build_corpus(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    options: CorpusOptions | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Build (or resume, or confirm) a sharded corpus in ``out_dir``; returns the manifest.

    ``sources`` are files or directories in any format ``cluster.readers`` reads. How it
    builds is ``options`` (``CorpusOptions``, every field documented there), with any of its
    fields also accepted as a keyword (``shard_size=100``), which replaces that field of
    ``options``; an unknown keyword is a ``TypeError``, an invalid value a ``ValueError``,
    before anything is read.

    ``out_dir`` holding a build with other inputs or settings is refused, unless that build
    wrote no sample (then it starts afresh) or ``force`` is set. A complete build with the
    same settings is verified by hash and returned as it is; an unfinished one is resumed.
    Structures matching an ``exclude`` structure never enter the corpus.
    """
    from cluster.readers import discover
    from tokenizer.vocab import ScopeTokenizer

    options = CorpusOptions.of(options, **fields)
    out = Path(out_dir)
    started = time.perf_counter()
    files = discover([os.path.abspath(p) for p in sources])
    exclude_files = discover([os.path.abspath(p) for p in options.exclude])
    settings = _settings(files, exclude_files, options, ScopeTokenizer())
    finished = None if options.force else _finished_manifest(out, settings)
    if finished is not None:
        if options.progress:
            print(f"corpus: {out} is already complete ({_summary(finished)})", file=sys.stderr)
            _print_quarantine(out, finished)
        return finished
    # Past the check, a manifest left there is one to replace (--force, or nothing written).
    fresh = options.force or (out / MANIFEST_NAME).is_file()
    out.mkdir(parents=True, exist_ok=True)
    with ray_runtime(options.ray_address, options.workers) as concurrency:
        memo = start_memo(options.memo_entries)
        watchdog = Watchdog(options.unit_timeout_s) if options.unit_timeout_s else None
        exclusion = None
        if exclude_files:
            exclusion_options = EncodeOptions(
                (),
                True,
                options.dedup == "structure",
                False,
                options.symprec,
                options.angle_tolerance,
                options.engine,
            )
            exclusion = encode_exclusion(
                exclude_files, exclusion_options, concurrency, options.unit_size, memo, watchdog
            )
        units = plan_work(files, options.unit_size)
        plan = {"units": len(units), "items": sum(u.n_items for u in units)}
        writer = CorpusWriter(out, settings, plan, exclusion, fresh=fresh)
        encode_options = EncodeOptions(
            variants=tuple(options.variants),
            dedup_key=options.dedup != "none" or exclusion is not None,
            keep_structure=options.dedup == "structure",
            payload=True,
            symprec=options.symprec,
            angle_tolerance=options.angle_tolerance,
            engine=options.engine,
        )
        done_items = sum(u.n_items for u in units[: writer.next_unit])
        bar = _progress_bar(options.progress, plan["items"], done_items)
        faults = Faults.from_environ()  # None but in tests
        try:
            for index, entries in ordered_results(
                units, writer.next_unit, encode_options, concurrency, faults, memo, watchdog
            ):
                writer.consume(index, entries)
                bar.update(units[index].n_items)
        finally:
            bar.close()
        exclusion_summary = None
        if exclusion is not None:
            exclusion_summary = {
                "files": settings["exclude"],
                "structures": exclusion.encoded,
                "unreadable": exclusion.unreadable,
                "keys": len(exclusion.keys),
            }
        manifest = writer.finish(settings["sources"], exclusion_summary)
        saved = stop_memo(memo)
        if watchdog is not None:
            watchdog.close()
    if options.progress:
        elapsed = time.perf_counter() - started
        rate = (plan["items"] - done_items) / elapsed if elapsed > 0 else 0.0
        print(
            f"corpus: {_summary(manifest)} in {elapsed:.1f} s ({rate:.0f} structures/s; "
            f"{saved} repeated cells took their symmetry from the memo) → {out}",
            file=sys.stderr,
        )
        _print_quarantine(out, manifest)
    return manifest


def _settings(
    files: list[InputFile],
    exclude_files: list[InputFile],
    options: CorpusOptions,
    tokenizer: ScopeTokenizer,
) -> dict[str, Any]:
    """What the output is a function of, as the manifest and the resume state record it."""
    return {
        "format_version": FORMAT_VERSION,
        "tool_version": tool_version(),
        "sources": _describe_files(files),
        "exclude": _describe_files(exclude_files),
        "variants": list(options.variants),
        "dedup": options.dedup,
        "shard_size": options.shard_size,
        "unit_size": options.unit_size,
        "symprec": options.symprec,
        "angle_tolerance": options.angle_tolerance,
        "engine": options.engine,
        "tokenizer": {
            "vocab_hash": tokenizer.vocab_hash,
            "vocab_size": tokenizer.vocab_size,
            "max_length": tokenizer.max_length,
        },
    }


def _describe_files(files: list[InputFile]) -> list[dict[str, Any]]:
    described = []
    for file in files:
        try:
            size = os.path.getsize(file.path)
        except OSError:
            size = None
        described.append({"path": file.path, "size": size, "format": file.format})
    return described


def _finished_manifest(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete build with the same settings, its shards verified."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    manifest = read_manifest(out)
    if (out / STATE_DIR).exists() and manifest.get("settings") == settings:
        shutil.rmtree(out / STATE_DIR, ignore_errors=True)  # killed just after the manifest
    if manifest.get("settings") != settings:
        if manifest["num_samples"] == 0:
            return None  # nothing to keep (say, its only input was missing): build afresh
        raise ValueError(
            f"{out} already holds a corpus built with other inputs or settings "
            f"({differences(manifest.get('settings', {}), settings)}); use another --out, "
            "or --force to replace it"
        )
    for shard in manifest["shards"]:
        if sha256_file(out / shard["name"]) != shard["sha256"]:
            raise RuntimeError(f"{out / shard['name']}: sha256 differs from the manifest")
    return manifest


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit=" structures",
        unit_scale=True,
        smoothing=0.1,
        disable=not (enabled and sys.stderr.isatty()),
        desc="corpus",
    )


def _print_quarantine(out: Path, manifest: dict[str, Any], shown: int = QUARANTINE_SHOWN) -> None:
    """The first ``shown`` quarantine lines on stderr (position, id, reason) and how many
    more quarantine.jsonl holds: the reasons belong where the user is looking."""
    total = manifest["quarantine"]["lines"]
    if not total:
        return
    path = out / QUARANTINE_NAME
    print(f"corpus: quarantined ({path}):", file=sys.stderr)
    with open(path, encoding="utf-8") as handle:
        for line in itertools.islice(handle, shown):
            entry = json.loads(line)
            where = entry["position"]
            if entry["source_id"] and entry["source_id"] not in where:
                where += f" ({entry['source_id']})"
            print(f"  {where}: {entry['reason']}", file=sys.stderr)
    if total > shown:
        print(f"  … and {total - shown} more in {path}", file=sys.stderr)


def _summary(manifest: dict[str, Any]) -> str:
    t = manifest["totals"]
    return (
        f"{t['read']} read, {t['written']} written, {t['quarantined']} quarantined, "
        f"{t['duplicates']} duplicates, {t['excluded']} excluded; "
        f"{len(manifest['shards'])} shards"
    )
