"""The training-side streaming loader on the real sample corpus (6 WebDataset shards)."""

from __future__ import annotations

import itertools
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from tokenizer import ScopeTokenizer
from train.data import CorpusStream, read_manifest, split_train_val


@pytest.fixture(scope="module")
def tokenizer() -> ScopeTokenizer:
    return ScopeTokenizer()


@pytest.fixture(scope="module")
def shards(sample_corpus: Path) -> list[Path]:
    manifest = read_manifest(sample_corpus)
    return [sample_corpus / s["name"] for s in manifest["shards"]]


def stream(shards, tokenizer, **overrides) -> CorpusStream:
    options = {"batch_size": 32, "epochs": 1, "shuffle_buffer": 200, "seed": 7}
    options.update(overrides)
    return CorpusStream(shards, tokenizer=tokenizer, **options)


def sequences(batches) -> list[tuple[int, ...]]:
    """The unpadded id sequences of a list of padded or packed batches, in order."""
    rows = []
    for batch in batches:
        if "cu_seqlens" in batch:
            cu = batch["cu_seqlens"].tolist()
            ids = batch["input_ids"].tolist()
            rows += [tuple(ids[a:b]) for a, b in itertools.pairwise(cu)]
            continue
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            rows.append(tuple(ids[mask.bool()].tolist()))
    return rows


def stored_sequences(shards, variant: str = "cloud") -> Counter:
    found: Counter = Counter()
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                found[tuple(json.loads(tar.extractfile(member).read())["input_ids"][variant])] += 1
    return found


def assert_same_batches(left, right) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_batches_are_padded_long_tensors(shards, tokenizer) -> None:
    batch = next(iter(stream(shards, tokenizer)))
    assert set(batch) == {"input_ids", "attention_mask", "segment_ids"}
    for tensor in batch.values():
        assert tensor.dtype == torch.long and tensor.shape == batch["input_ids"].shape
    assert batch["input_ids"].shape[0] == 32
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.max() == batch["input_ids"].shape[1]  # padded to the batch's longest
    first = batch["input_ids"][0, : lengths[0]].tolist()
    assert first[0] == tokenizer.cls_id and first[-1] == tokenizer.sep_id
    assert batch["segment_ids"][0, : lengths[0]].tolist() == tokenizer.segment_ids(first)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_id).all()


def test_order_is_a_function_of_the_seed(shards, tokenizer) -> None:
    first = list(stream(shards, tokenizer, drop_last=False))
    again = list(stream(shards, tokenizer, drop_last=False))
    other = list(stream(shards, tokenizer, drop_last=False, seed=8))
    assert_same_batches(first, again)
    assert sequences(first) != sequences(other)
    assert Counter(sequences(first)) == Counter(sequences(other))
    epochs = list(stream(shards, tokenizer, drop_last=False, epochs=2))
    assert sequences(epochs[: len(first)]) == sequences(first)
    assert sequences(epochs[len(first) :]) != sequences(first)  # epoch 1 reshuffles


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 0), (2, 0), (2, 2), (3, 2)])
def test_ranks_and_workers_cover_every_sample_once_per_epoch(
    shards, tokenizer, world_size: int, num_workers: int
) -> None:
    seen: Counter = Counter()
    for rank in range(world_size):
        rank_stream = stream(
            shards,
            tokenizer,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            drop_last=False,
        )
        seen.update(sequences(rank_stream))
    assert seen == stored_sequences(shards)


def test_worker_processes_give_the_same_stream_every_time(shards, tokenizer) -> None:
    two = list(stream(shards, tokenizer, num_workers=2))
    assert_same_batches(two, list(stream(shards, tokenizer, num_workers=2)))
    assert Counter(sequences(two)) <= stored_sequences(shards)


@pytest.mark.parametrize(("num_workers", "consumed"), [(0, 13), (2, 13), (2, 60), (0, 89)])
def test_restored_state_yields_exactly_the_remaining_batches(
    shards, tokenizer, num_workers: int, consumed: int
) -> None:
    # 2,844 samples / 32 ≈ 88 batches an epoch: 60 and 89 cross or end the first epoch.
    options = {"num_workers": num_workers, "epochs": 2}
    uninterrupted = list(stream(shards, tokenizer, **options))
    interrupted = stream(shards, tokenizer, **options)
    head = list(itertools.islice(iter(interrupted), consumed))
    state = json.loads(json.dumps(interrupted.state_dict()))  # as a checkpoint stores it
    if state["epoch"] == 0:
        assert state["batches"] == consumed

    restored = stream(shards, tokenizer, **options)
    restored.load_state_dict(state)
    assert_same_batches(head + list(restored), uninterrupted)
    # The interrupted stream itself also carries on where it stopped.
    assert_same_batches(head + list(interrupted), uninterrupted)


def test_state_from_another_configuration_is_refused(shards, tokenizer) -> None:
    state = stream(shards, tokenizer).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        stream(shards, tokenizer, batch_size=16).load_state_dict(state)


def test_too_few_shards_raise_naming_the_numbers(shards, tokenizer) -> None:
    with pytest.raises(ValueError, match=r"6 shard\(s\).*world_size=4.*num_workers=2.*= 8 readers"):
        stream(shards, tokenizer, world_size=4, num_workers=2, rank=1)
    with pytest.raises(ValueError, match=r"0 shard\(s\)"):
        stream([], tokenizer)


def test_ids_are_retokenised_without_a_matching_manifest(shards, tokenizer, tmp_path) -> None:
    copies = [Path(shutil.copy(shard, tmp_path)) for shard in shards[:2]]  # no manifest.json
    from_ids = list(stream(shards[:2], tokenizer))
    from_text = list(stream(copies, tokenizer))
    assert_same_batches(from_ids, from_text)
    canonical = list(
        stream(shards[:2], tokenizer, variant="canonical", drop_last=False, max_length=1024)
    )
    assert Counter(sequences(canonical)) == stored_sequences(shards[:2], "canonical")
    with pytest.raises(ValueError, match="no 'full' SCOPE string"):
        next(iter(stream(shards[:2], tokenizer, variant="full")))


def test_long_sequences_are_truncated_keeping_sep(shards, tokenizer) -> None:
    for batch in stream(shards, tokenizer, max_length=12, drop_last=False):
        assert batch["input_ids"].shape[1] <= 12
        last = batch["attention_mask"].sum(dim=1) - 1
        assert (batch["input_ids"][torch.arange(len(last)), last] == tokenizer.sep_id).all()


def test_split_train_val_holds_out_the_last_shards(sample_corpus: Path, shards) -> None:
    train, val = split_train_val(sample_corpus)
    assert train == shards[:-1] and val == shards[-1:]
    train, val = split_train_val(sample_corpus, val_shards=2)
    assert val == shards[-2:]
    with pytest.raises(ValueError, match="at least one must remain"):
        split_train_val(sample_corpus, val_shards=len(shards))
    with pytest.raises(FileNotFoundError):
        read_manifest(sample_corpus / "missing")


PACKED = {"tokens_per_batch": 512}


def test_packed_batches_fill_the_token_budget_without_padding(shards, tokenizer) -> None:
    batches = list(stream(shards, tokenizer, **PACKED))
    assert len(batches) > 10
    for batch in batches:
        assert set(batch) == {"input_ids", "segment_ids", "position_ids", "cu_seqlens"}
        tokens = batch["input_ids"].numel()
        cu = batch["cu_seqlens"]
        assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == tokens
        assert tokens <= 512
        assert tokens > 512 - 64  # the next string did not fit: less than one string short
        assert (batch["input_ids"] != tokenizer.pad_id).all()
        for start, end in itertools.pairwise(cu.tolist()):
            ids = batch["input_ids"][start:end].tolist()
            assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
            assert batch["position_ids"][start:end].tolist() == list(range(end - start))
            assert batch["segment_ids"][start:end].tolist() == tokenizer.segment_ids(ids)


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 0), (2, 2)])
def test_packed_batches_cover_every_sample_once_per_epoch(
    shards, tokenizer, world_size: int, num_workers: int
) -> None:
    seen: Counter = Counter()
    for rank in range(world_size):
        seen.update(
            sequences(
                stream(
                    shards,
                    tokenizer,
                    rank=rank,
                    world_size=world_size,
                    num_workers=num_workers,
                    drop_last=False,
                    **PACKED,
                )
            )
        )
    assert seen == stored_sequences(shards)
    # The same samples, in the same order, as the padded stream of the same seed.
    padded = sequences(stream(shards, tokenizer, drop_last=False))
    assert sequences(stream(shards, tokenizer, drop_last=False, **PACKED)) == padded


@pytest.mark.parametrize(("num_workers", "consumed"), [(0, 7), (2, 25)])
def test_restored_packed_stream_yields_exactly_the_remaining_batches(
    shards, tokenizer, num_workers: int, consumed: int
) -> None:
    options = {"num_workers": num_workers, "epochs": 2, **PACKED}
    uninterrupted = list(stream(shards, tokenizer, **options))
    interrupted = stream(shards, tokenizer, **options)
    head = list(itertools.islice(iter(interrupted), consumed))
    state = json.loads(json.dumps(interrupted.state_dict()))
    restored = stream(shards, tokenizer, **options)
    restored.load_state_dict(state)
    assert_same_batches(head + list(restored), uninterrupted)


def test_packed_and_padded_stream_states_do_not_mix(shards, tokenizer) -> None:
    with pytest.raises(ValueError, match="tokens_per_batch"):
        stream(shards, tokenizer).load_state_dict(stream(shards, tokenizer, **PACKED).state_dict())
    with pytest.raises(ValueError, match="must hold the longest string"):
        stream(shards, tokenizer, tokens_per_batch=64, max_length=128)


def take(stream_: CorpusStream, count: int) -> tuple[list, dict]:
    """The first ``count`` batches of a stream and its state after them (as a checkpoint
    stores it)."""
    head = list(itertools.islice(iter(stream_), count))
    return head, json.loads(json.dumps(stream_.state_dict()))


def layout(shards, tokenizer, world_size: int, **options) -> list[CorpusStream]:
    return [
        stream(shards, tokenizer, rank=rank, world_size=world_size, drop_last=False, **options)
        for rank in range(world_size)
    ]


@pytest.mark.parametrize(
    ("old", "new", "options"),
    [
        ((2, 0), (1, 0), {}),
        ((1, 2), (2, 0), {}),
        ((2, 0), (3, 2), PACKED),
    ],
)
def test_an_elastic_resume_sees_every_sample_of_the_epoch_exactly_once(
    shards, tokenizer, old: tuple[int, int], new: tuple[int, int], options: dict
) -> None:
    (old_world, old_workers), (new_world, new_workers) = old, new
    seen: Counter = Counter()
    states = []
    old_streams = layout(shards, tokenizer, old_world, num_workers=old_workers, **options)
    for index, old_stream in enumerate(old_streams):
        head, state = take(old_stream, 5 + 3 * index)
        seen.update(sequences(head))
        states.append(state)
    for new_stream in layout(shards, tokenizer, new_world, num_workers=new_workers, **options):
        new_stream.load_resharded_states(states)
        seen.update(sequences(new_stream))
    assert seen == stored_sequences(shards)


def test_a_resharded_stream_resumes_exactly_and_reshards_again(shards, tokenizer) -> None:
    states = [take(s, 4)[1] for s in layout(shards, tokenizer, 2)]
    first = stream(shards, tokenizer, drop_last=False)
    first.load_resharded_states(states)
    uninterrupted = stream(shards, tokenizer, drop_last=False)
    uninterrupted.load_resharded_states(states)
    expected = list(uninterrupted)
    head, state = take(first, 6)
    assert "remainder" in state
    same = stream(shards, tokenizer, drop_last=False)
    same.load_state_dict(state)
    assert_same_batches(head + list(same), expected)
    # Interrupted again inside the dealt remainder, now onto three ranks.
    seen = Counter(sequences(head))
    for rank_stream in layout(shards, tokenizer, 3):
        rank_stream.load_resharded_states([state])
        seen.update(sequences(rank_stream))
    assert seen == Counter(sequences(expected))


def test_resharding_refuses_another_stream_or_missing_ranks(shards, tokenizer) -> None:
    states = [take(s, 2)[1] for s in layout(shards, tokenizer, 2)]
    with pytest.raises(ValueError, match="not one whole run's ranks"):
        stream(shards, tokenizer, drop_last=False).load_resharded_states(states[:1])
    with pytest.raises(ValueError, match="differs in: batch_size"):
        stream(shards, tokenizer, drop_last=False, batch_size=8).load_resharded_states(states)
