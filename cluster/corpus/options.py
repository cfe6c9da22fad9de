"""``CorpusOptions``: every setting of ``build_corpus`` but its inputs and output, checked once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cluster.corpus.memo import DEFAULT_MEMO_ENTRIES
from cluster.corpus.watchdog import DEFAULT_UNIT_TIMEOUT_S
from cluster.manifest import DEDUP_MODES
from tokenizer.scope import (
    DEFAULT_ANGLE_TOLERANCE,
    DEFAULT_SYMPREC,
    ENGINES,
    SPGLIB_ONLY_VARIANTS,
    VARIANTS,
)

DEFAULT_SHARD_SIZE = 10_000
# Big enough that scheduling and per-unit reader start-up are noise, small enough that a dead
# worker or a resumed build redoes only seconds of work and that work spreads over many cores.
DEFAULT_UNIT_SIZE = 1_000


@dataclass(frozen=True)
class CorpusOptions:
    """How ``build_corpus`` builds: a valid value or a ``ValueError`` on construction.

    The fields that shape the output (``shard_size``, ``dedup``, ``exclude``, ``variants``,
    ``unit_size``, ``symprec``, ``angle_tolerance``, ``engine``) are recorded in the manifest's
    settings, and a resumed or repeated build must give the same ones; the others (``workers``,
    ``ray_address``, ``progress``, ``memo_entries``, ``force``, ``unit_timeout_s``) change how it runs, not what
    it writes (``unit_timeout_s`` only for searches that hang). ``variants`` is kept as a tuple without repeats, ``exclude`` as a tuple.
    """

    shard_size: int = DEFAULT_SHARD_SIZE
    """Samples per shard (the last shard holds the rest); at least 1."""
    workers: int | None = None
    """Tasks kept running at once, and the CPUs of a Ray started here; None: every CPU of the
    Ray cluster (of this machine when Ray is started here)."""
    ray_address: str | None = None
    """A Ray cluster to join (``"auto"``: the running one); None: the Ray already initialised
    in this process, else a new local Ray on 127.0.0.1."""
    dedup: str = "scope"
    """``"none"``; ``"scope"``: the same canonical SCOPE and reduced formula is a duplicate, the
    first in input order wins; ``"structure"``: those, confirmed by pymatgen's
    StructureMatcher."""
    exclude: Sequence[str | os.PathLike[str]] = ()
    """Files or directories of structures (fine-tuning test sets) that must not enter the
    corpus, matched as ``dedup`` matches duplicates (by the canonical key without dedup)."""
    variants: Sequence[str] = ("cloud",)
    """SCOPE variants each sample stores, a non-empty subset of ``tokenizer.scope.VARIANTS``."""
    unit_size: int = DEFAULT_UNIT_SIZE
    """Items per work unit (one Ray task); the units, and so the output, never depend on the
    number of workers. At least 1."""
    progress: bool = True
    """A progress bar on a terminal's stderr, and at the end a summary and the first lines of
    quarantine.jsonl."""
    symprec: float = DEFAULT_SYMPREC
    """The symmetry search's distance tolerance, Å."""
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE
    """The symmetry search's angle tolerance, degrees (spglib only)."""
    engine: str = "spglib"
    """The symmetry search: ``"spglib"``, or ``"moyo"`` (moyopy, faster) for corpora of the
    canonical variant only: the released variants need spglib's Wyckoff settings."""
    memo_entries: int = DEFAULT_MEMO_ENTRIES
    """Bound of the ``SymmetryMemo`` that lets byte-identical cells share one symmetry search
    (0 or less: no memo); it changes the speed, never the output."""
    force: bool = False
    """Replace a build with other inputs or settings found in the output directory: the files
    a build writes there (shards, quarantine, manifest, resume state) are removed first; other
    files stay."""
    unit_timeout_s: float | None = DEFAULT_UNIT_TIMEOUT_S
    """The watchdog's floor: a piece of a work unit encoding for longer than
    max(``unit_timeout_s``, ``TIMEOUT_FACTOR`` × its expected time at the rate measured so far)
    is cancelled and bisected, and a single structure past it is quarantined as "symmetry
    search timed out after N s" (``cluster.corpus.watchdog``). None: no watchdog. Like
    ``workers``, not a recorded setting: it only decides what happens to searches that hang."""

    def __post_init__(self) -> None:
        for name in ("shard_size", "unit_size", "workers"):  # workers may be None
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.dedup not in DEDUP_MODES:
            raise ValueError(f"dedup must be one of {', '.join(DEDUP_MODES)}, got {self.dedup!r}")
        variants = tuple(dict.fromkeys(self.variants))
        unknown = [v for v in variants if v not in VARIANTS]
        if not variants or unknown:
            raise ValueError(
                f"variants must be a non-empty subset of {', '.join(VARIANTS)}, "
                f"got {list(variants)}"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        bound = sorted(SPGLIB_ONLY_VARIANTS.intersection(variants))
        if self.engine != "spglib" and bound:
            raise ValueError(
                f"engine {self.engine!r} cannot write the {', '.join(bound)} variant(s): they "
                "reproduce the released strings, which need spglib; use --variants canonical "
                "or --engine spglib"
            )
        if self.unit_timeout_s is not None and not self.unit_timeout_s > 0:
            raise ValueError(
                f"unit_timeout_s must be positive (or None: no watchdog), got {self.unit_timeout_s}"
            )
        # Frozen: the normalised values go in as the constructor would have set them.
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @classmethod
    def of(cls, options: CorpusOptions | None = None, **fields: Any) -> CorpusOptions:
        """``options`` (default: all defaults) with the named ``fields`` replaced: the one way
        keyword arguments of ``build_corpus`` become options. An unknown name is a
        ``TypeError`` naming it."""
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown corpus option(s): {', '.join(unknown)}")
        return dataclasses.replace(options or cls(), **fields)
