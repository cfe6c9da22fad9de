"""Streaming batches of SCOPE token ids from corpus shards, for pretraining.

``CorpusStream`` reads the WebDataset shards of ``cloud corpus build`` and yields batches:
padded ones of ``batch_size`` sequences, or, with ``tokens_per_batch``, packed ones filled to
that many tokens (the strings one after the other, no padding: ``cloud.packed``). Everything about the order is a function of ``seed``, the epoch, the rank and the
reader (dataloader worker): each epoch shuffles the shard list with ``seed + epoch``, deals it
to ranks and then to workers (each shard goes to exactly one reader), and each reader shuffles
its samples with a seeded buffer and cuts batches. The main process takes the readers' batches
in a fixed round-robin, so the stream is reproducible and ``state_dict()`` can say exactly
where it is: a restored stream makes each reader skip the batches it had already delivered
(without decoding them) and yields exactly the batches an uninterrupted stream would have.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import random
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cluster.manifest import MANIFEST_NAME, shard_paths
from cluster.manifest import read_manifest as _read_manifest
from train.common.batching import packed_tensors, padded_tensors

if TYPE_CHECKING:
    from tokenizer.vocab import ScopeTokenizer

Batch = dict[str, torch.Tensor]
STATE_VERSION = 1
_IDS_KEY = "__cloud_ids__"
LAYOUT_KEYS = ("rank", "world_size", "readers")
"""Stream settings that may change on an elastic resume (``load_resharded_states``)."""


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``manifest.json`` of a corpus directory."""
    return _read_manifest(directory)


def split_train_val(
    manifest_dir: str | os.PathLike[str], val_shards: int = 1
) -> tuple[list[Path], list[Path]]:
    """Shard paths for training and validation: the last ``val_shards`` shards are held out."""
    paths = shard_paths(manifest_dir, read_manifest(manifest_dir))
    if not 0 <= val_shards < len(paths):
        raise ValueError(
            f"cannot hold out {val_shards} validation shard(s) of the {len(paths)} in "
            f"{manifest_dir}: at least one must remain for training"
        )
    cut = len(paths) - val_shards
    return paths[:cut], paths[cut:]


class _Reader:
    """What one reader (the main process or a dataloader worker) needs; cheap to pickle."""

    def __init__(self, stream: CorpusStream) -> None:
        self.shards = stream.shards
        self.tokenizer = stream.tokenizer
        self.batch_size = stream.batch_size
        self.variant = stream.variant
        self.rank = stream.rank
        self.world_size = stream.world_size
        self.readers = stream.readers
        self.seed = stream.seed
        self.shuffle_buffer = stream.shuffle_buffer
        self.max_length = stream.max_length
        self.drop_last = stream.drop_last
        self.tokens_per_batch = stream.tokens_per_batch
        self._stored_ids_usable: dict[str, bool] = {}

    def shards_for(self, epoch: int, reader: int) -> list[str]:
        order = list(self.shards)
        random.Random(self.seed + epoch).shuffle(order)
        return order[self.rank :: self.world_size][reader :: self.readers]

    def with_layout(self, rank: int, world_size: int, readers: int) -> _Reader:
        """This reader as it was (or will be) under another rank layout."""
        other = copy.copy(self)
        other.rank, other.world_size, other.readers = rank, world_size, readers
        return other

    def samples(self, epoch: int, reader: int) -> Iterator[dict[str, Any]]:
        """This reader's samples of one epoch, in order (undecoded)."""
        # str seeds are hashed with SHA-512: the same in every process, unlike hash().
        rng = random.Random(f"{self.seed}:{epoch}:{self.rank}:{reader}")
        stages: list[Any] = [
            wds.SimpleShardList(self.shards_for(epoch, reader)),
            wds.tarfile_to_samples(),
        ]
        if self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng))
        return iter(wds.DataPipeline(*stages))

    def chunks(
        self, samples: Iterator[dict[str, Any]], keep_partial: bool = False
    ) -> Iterator[list[dict[str, Any]]]:
        """The samples cut into batches: ``batch_size`` at a time, or with
        ``tokens_per_batch`` consecutive groups of at most that many tokens (a string that
        would overflow the budget opens the next group, so the order is kept and a batch
        wastes less than one string's worth of its budget). The last, partial batch comes
        too unless ``drop_last`` (``keep_partial`` keeps it regardless)."""
        budget = self.tokens_per_batch
        chunk: list[dict[str, Any]] = []
        used = 0
        for sample in samples:
            if budget:
                size = len(self.token_ids(sample))
                if chunk and used + size > budget:
                    yield chunk
                    chunk, used = [], 0
                used += size
            chunk.append(sample)
            if not budget and len(chunk) == self.batch_size:
                yield chunk
                chunk = []
        if chunk and (keep_partial or not self.drop_last):
            yield chunk

    def batches(self, epoch: int, reader: int, skip: int) -> Iterator[Batch]:
        """This reader's batches of one epoch, the first ``skip`` of them left out (not
        collated; padded batches not even decoded)."""
        yield from self.batches_of(self.samples(epoch, reader), skip)

    def batches_of(self, samples: Iterator[dict[str, Any]], skip: int) -> Iterator[Batch]:
        for index, chunk in enumerate(self.chunks(samples)):
            if index >= skip:
                yield self.collate_packed(chunk) if self.tokens_per_batch else self.collate(chunk)

    def rest_after(self, samples: Iterator[dict[str, Any]], consumed: int) -> Iterator[dict]:
        """The samples left after the first ``consumed`` batches (the partial one included)."""
        for index, chunk in enumerate(self.chunks(samples, keep_partial=True)):
            if index >= consumed:
                yield from chunk

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        return padded_tensors(self.tokenizer.pad([self.token_ids(s) for s in samples]))

    def collate_packed(self, samples: list[dict[str, Any]]) -> Batch:
        return packed_tensors(self.tokenizer.pack([self.token_ids(s) for s in samples]))

    def token_ids(self, sample: dict[str, Any]) -> list[int]:
        """Stored ids when the shard's tokenizer is ours, else the SCOPE string re-tokenised
        (kept on the sample: packing reads them once to cut and once to collate)."""
        cached = sample.get(_IDS_KEY)
        if cached is not None:
            return cached
        sample[_IDS_KEY] = ids = self._decode_ids(sample)
        return ids

    def _decode_ids(self, sample: dict[str, Any]) -> list[int]:
        data = json.loads(sample["json"])
        ids = None
        if self.stored_ids_usable(sample["__url__"]):
            ids = data.get("input_ids", {}).get(self.variant)
        if ids is None:
            scope = data.get("scope", {})
            if self.variant not in scope:
                raise ValueError(
                    f"{sample['__url__']}: sample {sample['__key__']} has no {self.variant!r} "
                    f"SCOPE string (it has {', '.join(scope) or 'none'}); build the corpus with "
                    f"--variants {self.variant} or pick another variant"
                )
            ids = self.tokenizer.encode(scope[self.variant])
        if len(ids) > self.max_length:  # keep [SEP] last, as the tokenizer truncates
            ids = [*ids[: self.max_length - 1], ids[-1]]
        return ids

    def stored_ids_usable(self, shard: str) -> bool:
        directory = os.path.dirname(os.path.abspath(shard))
        usable = self._stored_ids_usable.get(directory)
        if usable is None:
            usable = False
            if os.path.isfile(os.path.join(directory, MANIFEST_NAME)):
                manifest = read_manifest(directory)
                usable = manifest["tokenizer"]["vocab_hash"] == self.tokenizer.vocab_hash
            self._stored_ids_usable[directory] = usable
        return usable


class _EpochDataset(IterableDataset):
    """One epoch for torch's DataLoader workers; each worker tags its batches with its id and
    ends with ``(id, None)`` so that the main process can merge them in a fixed order."""

    def __init__(self, reader: _Reader, epoch: int, skips: list[int], live: list[int]) -> None:
        super().__init__()
        self.reader = reader
        self.epoch = epoch
        self.skips = skips
        self.live = live

    def __iter__(self) -> Iterator[tuple[int, Batch | None]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if worker in self.live:
            for batch in self.reader.batches(self.epoch, worker, self.skips[worker]):
                yield worker, batch
        yield worker, None


class CorpusStream:
    """An iterable of padded batches ``{"input_ids", "attention_mask", "segment_ids"}``
    (LongTensor[B, T], T = the batch's longest sequence, at most ``max_length``), or with
    ``tokens_per_batch`` of packed batches ``{"input_ids", "segment_ids", "position_ids"}``
    (LongTensor[N], N ≤ tokens_per_batch) ``+ "cu_seqlens"`` (IntTensor[S + 1]).

    ``rank``/``world_size`` split the shards between data-parallel ranks (explicitly, without
    torch.distributed), ``num_workers`` between dataloader processes on each rank (0: read in
    this process). ``epochs=None`` streams forever. Iterating again continues where the last
    iteration stopped; ``state_dict()``/``load_state_dict()`` save and restore that position.

    Shards are dealt whole, so ranks can see different numbers of batches in an epoch when the
    shards differ in size or do not divide evenly: for data-parallel training stream forever
    (``epochs=None``) and stop after a number of steps.
    """

    def __init__(
        self,
        shards: Sequence[str | os.PathLike[str]],
        *,
        tokenizer: ScopeTokenizer,
        batch_size: int,
        variant: str = "cloud",
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        max_length: int = 128,
        epochs: int | None = None,
        drop_last: bool = True,
        tokens_per_batch: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        if epochs is not None and epochs < 0:
            raise ValueError(f"epochs must be None (forever) or >= 0, got {epochs}")
        if tokens_per_batch is not None and tokens_per_batch < max_length:
            raise ValueError(
                f"tokens_per_batch ({tokens_per_batch}) must hold the longest string, "
                f"max_length={max_length}"
            )
        self.shards = [str(p) for p in shards]
        self.readers = max(1, num_workers)
        needed = world_size * self.readers
        if len(self.shards) < needed:
            raise ValueError(
                f"{len(self.shards)} shard(s) cannot feed world_size={world_size} rank(s) × "
                f"max(1, num_workers={num_workers}) = {needed} readers: every reader needs at "
                "least one shard (rebuild with a smaller --shard-size, or use fewer ranks or "
                "workers)"
            )
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.variant = variant
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.max_length = max_length
        self.epochs = epochs
        self.drop_last = drop_last
        self.tokens_per_batch = tokens_per_batch
        self._reader = _Reader(self)
        self._remainder: dict[str, Any] | None = None
        self._start_epoch(0)

    # ------------------------------------------------------------------ position

    def _start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        self._reader_batches = [0] * self.readers
        self._live = list(range(self.readers))
        self._turn = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: the epoch and the batches consumed in it (per reader)."""
        return {
            "version": STATE_VERSION,
            "epoch": self._epoch,
            "batches": sum(self._reader_batches),
            "reader_batches": list(self._reader_batches),
            "live": list(self._live),
            "turn": self._turn,
            "config": self._config(),
            **({"remainder": copy.deepcopy(self._remainder)} if self._remainder else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; the stream must be configured as the one that saved it."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported CorpusStream state version {state.get('version')}")
        if state["config"] != self._config():
            mine, saved = self._config(), state["config"]
            different = sorted(k for k in {*mine, *saved} if saved.get(k) != mine.get(k))
            raise ValueError(
                "CorpusStream state was saved with another configuration "
                f"(differs in: {', '.join(different)}); the position would not mean the same"
            )
        self._epoch = int(state["epoch"])
        self._reader_batches = [int(n) for n in state["reader_batches"]]
        self._live = [int(r) for r in state["live"]]
        self._turn = int(state["turn"])
        self._remainder = copy.deepcopy(state.get("remainder"))

    def load_resharded_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Continue from the states of *every* rank of a stream saved with another layout
        (number of ranks or dataloader workers), as an elastic resume needs.

        The rest of each old rank's epoch (the samples its readers had not delivered) is
        dealt anew, sample by sample: taking the old ranks in order, this rank gets every
        ``world_size``-th remaining sample from its ``rank``-th on, batched as usual (in this
        process, whatever ``num_workers``). Then epochs go on with this layout. Over all new
        ranks, every sample of the interrupted epoch that no old rank had delivered is seen
        exactly once. A rank that was an epoch behind the others has the rest of that epoch
        and the whole of the next dealt too, so no epoch is cut short.
        """
        if not states:
            raise ValueError("load_resharded_states needs the state of every old rank")
        for state in states:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported CorpusStream state version {state.get('version')}")
            self._check_same_stream(state["config"])
        world = {int(state["config"]["world_size"]) for state in states}
        ranks = sorted(int(state["config"]["rank"]) for state in states)
        if len(world) != 1 or ranks != list(range(world.pop())):
            raise ValueError(f"the states of ranks {ranks} are not one whole run's ranks")
        ordered = sorted(states, key=lambda state: int(state["config"]["rank"]))
        target = max(_next_epoch(state) for state in ordered)
        sources: list[dict[str, Any]] = []
        for state in ordered:
            sources.append(copy.deepcopy(state))
            # Whole epochs a lagging rank has not started yet, so that none is cut short.
            for epoch in range(_next_epoch(state), target):
                sources.append(_fresh_epoch(state, epoch))
        self._start_epoch(target)
        self._remainder = {"sources": sources, "delivered": 0}

    def _check_same_stream(self, saved: dict[str, Any]) -> None:
        mine = self._config()
        different = sorted(
            k for k in {*mine, *saved} if k not in LAYOUT_KEYS and saved.get(k) != mine.get(k)
        )
        if different:
            raise ValueError(
                "CorpusStream state was saved with another configuration "
                f"(differs in: {', '.join(different)}); only the number of ranks and workers "
                "may change on resume"
            )

    def _rest(self, state: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The samples the stream that saved ``state`` had not yet delivered in its epoch
        (or in the remainder it was dealing)."""
        config = state["config"]
        reader = self._reader.with_layout(
            int(config["rank"]), int(config["world_size"]), int(config["readers"])
        )
        remainder = state.get("remainder")
        if remainder:
            pool = self._pool(remainder["sources"], reader.rank, reader.world_size)
            yield from reader.rest_after(pool, int(remainder["delivered"]))
            return
        for index, consumed in enumerate(state["reader_batches"]):
            yield from reader.rest_after(reader.samples(int(state["epoch"]), index), consumed)

    def _pool(
        self, sources: list[dict[str, Any]], rank: int, world_size: int
    ) -> Iterator[dict[str, Any]]:
        remaining = itertools.chain.from_iterable(self._rest(source) for source in sources)
        return itertools.islice(remaining, rank, None, world_size)

    def _config(self) -> dict[str, Any]:
        return {
            "shards": [os.path.basename(s) for s in self.shards],
            "batch_size": self.batch_size,
            "variant": self.variant,
            "rank": self.rank,
            "world_size": self.world_size,
            "readers": self.readers,
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
            "max_length": self.max_length,
            "drop_last": self.drop_last,
            "vocab_hash": self.tokenizer.vocab_hash,
            # Only when set, so that the state of a stream saved before packing existed
            # still matches the same (padded) stream.
            **({"tokens_per_batch": self.tokens_per_batch} if self.tokens_per_batch else {}),
        }

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Batch]:
        if self._remainder is not None:
            pool = self._pool(self._remainder["sources"], self.rank, self.world_size)
            for batch in self._reader.batches_of(pool, skip=self._remainder["delivered"]):
                self._remainder["delivered"] += 1
                yield batch
            self._remainder = None
        while self.epochs is None or self._epoch < self.epochs:
            yielded = False
            for batch in self._epoch_batches():
                yielded = True
                yield batch
            if not yielded and sum(self._reader_batches) == 0:
                size = (
                    f"{self.tokens_per_batch} tokens"
                    if self.tokens_per_batch
                    else f"{self.batch_size} samples"
                )
                raise ValueError(
                    f"rank {self.rank}: epoch {self._epoch} has no batch of {size} "
                    "(too few samples for this batch size with drop_last=True)"
                )
            self._start_epoch(self._epoch + 1)

    def _epoch_batches(self) -> Iterator[Batch]:
        """Merge the readers' batches round-robin; a reader leaves the round when it ends."""
        tagged = self._tagged_batches()
        pending: dict[int, deque[Batch | None]] = {r: deque() for r in self._live}
        while self._live:
            reader = self._live[self._turn]
            while not pending[reader]:
                source, batch = next(tagged)
                if source in pending:
                    pending[source].append(batch)
            batch = pending[reader].popleft()
            if batch is None:
                self._live.pop(self._turn)
                self._turn = self._turn % len(self._live) if self._live else 0
                continue
            self._reader_batches[reader] += 1
            self._turn = (self._turn + 1) % len(self._live)
            yield batch

    def _tagged_batches(self) -> Iterator[tuple[int, Batch | None]]:
        dataset = _EpochDataset(
            self._reader, self._epoch, list(self._reader_batches), list(self._live)
        )
        if self.num_workers == 0:
            return iter(dataset)
        return iter(DataLoader(dataset, batch_size=None, num_workers=self.num_workers))


def _next_epoch(state: dict[str, Any]) -> int:
    """The first epoch the stream that saved ``state`` had not started."""
    return int(state["epoch"]) if state.get("remainder") else int(state["epoch"]) + 1


def _fresh_epoch(state: dict[str, Any], epoch: int) -> dict[str, Any]:
    """``state``'s stream at the start of ``epoch`` (nothing delivered)."""
    fresh = {k: copy.deepcopy(v) for k, v in state.items() if k != "remainder"}
    readers = int(state["config"]["readers"])
    fresh.update(epoch=epoch, batches=0, reader_batches=[0] * readers, live=list(range(readers)))
    fresh["turn"] = 0
    return fresh
