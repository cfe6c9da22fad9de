"""Corpus building: structures → SCOPE strings and token ids → WebDataset shards, with Ray.

Ray tasks read and encode deterministic work units (``cluster.readers.plan_units``); the driver
takes the results in unit order, drops duplicates and excluded structures, and appends the
samples to the one open shard. So the shards and the manifest are a function of the inputs and
the settings only, never of the number of workers or of which worker finished first.

The package, in the order data goes through it:

- ``options``: ``CorpusOptions``, every setting of a build, checked on construction;
- ``encode`` (worker side): a unit's records → samples as tar members, or quarantine reasons;
- ``memo``: the ``SymmetryMemo`` actor that lets repeated cells share one symmetry search;
- ``tasks`` (Ray plumbing): the runtime, the work plan, tasks whose results come in unit order;
- ``watchdog``: deadlines for running tasks; one past its deadline is cancelled and bisected
  down to the structure whose symmetry search hangs, which is quarantined;
- ``writer`` (driver side): dedup, exclusion, shards, quarantine, counts, the resume state;
- ``files``: append-only files resumable at a committed length, the directory lock;
- ``build``: ``build_corpus``, which puts them together.

Directory layout (see ``cluster.manifest``)::

    DIR/corpus-000000.tar …        finished shards (``corpus-%06d.tar.partial`` while open)
    DIR/quarantine.jsonl           {"source", "position", "source_id", "reason"} per bad input
    DIR/manifest.json              written last: its presence means the build is complete
    DIR/.build/state.json, index.jsonl   resume state, removed once the manifest is written
"""

from __future__ import annotations

from cluster.corpus.build import QUARANTINE_SHOWN, build_corpus
from cluster.corpus.encode import (
    KILL_ONCE_ENV,
    STALL_ENV,
    Encoded,
    EncodeOptions,
    Failed,
    Faults,
    dedup_key,
    encode_record,
    encode_unit,
    member_payload,
    sample_json,
    sample_key,
    tar_member,
)
from cluster.corpus.files import INDEX_NAME, PARTIAL_SUFFIX, STATE_DIR, STATE_NAME, TarAppender
from cluster.corpus.memo import DEFAULT_MEMO_ENTRIES, SymmetryMemo
from cluster.corpus.options import DEFAULT_SHARD_SIZE, DEFAULT_UNIT_SIZE, CorpusOptions
from cluster.corpus.tasks import MAX_RETRIES, ray_runtime
from cluster.corpus.watchdog import DEFAULT_UNIT_TIMEOUT_S, TIMEOUT_FACTOR
from cluster.corpus.writer import CHECKPOINT_SECONDS, CorpusWriter
from cluster.ray_env import LOOPBACK_ENV  # re-exported: its old home

# The private names benchmarks/corpus_build.py imported from the single module this was.
_sample_json = sample_json
_TarAppender = TarAppender

__all__ = [
    "CHECKPOINT_SECONDS",
    "DEFAULT_MEMO_ENTRIES",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_UNIT_SIZE",
    "DEFAULT_UNIT_TIMEOUT_S",
    "INDEX_NAME",
    "KILL_ONCE_ENV",
    "LOOPBACK_ENV",
    "MAX_RETRIES",
    "PARTIAL_SUFFIX",
    "QUARANTINE_SHOWN",
    "STALL_ENV",
    "STATE_DIR",
    "STATE_NAME",
    "TIMEOUT_FACTOR",
    "CorpusOptions",
    "CorpusWriter",
    "EncodeOptions",
    "Encoded",
    "Failed",
    "Faults",
    "SymmetryMemo",
    "TarAppender",
    "build_corpus",
    "dedup_key",
    "encode_record",
    "encode_unit",
    "member_payload",
    "ray_runtime",
    "sample_json",
    "sample_key",
    "tar_member",
]
