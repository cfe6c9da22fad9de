"""ScopeTokenizer: closed vocabulary, no [UNK] on valid strings, batches, persistence."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tokenizer import ScopeTokenizer, parse
from tokenizer import tables as symmetry_tables
from tokenizer.elements import ELEMENTS

ROCK_SALT = "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5"


@pytest.fixture(scope="module")
def tokenizer() -> ScopeTokenizer:
    return ScopeTokenizer()


def released_strings(repo_data: Path) -> list[str]:
    strings = []
    for name, column in (
        ("pretrain_cloud_10k.csv", "cloud"),
        ("finetune_dielectric_test.csv", "scope"),
        ("cloud_cv_test.csv", "cloud"),
    ):
        with open(repo_data / "cloud_reference" / name, newline="") as f:
            strings += [row[column] for row in csv.DictReader(f)]
    return strings


def test_vocabulary_is_the_grammar_and_small(tokenizer: ScopeTokenizer) -> None:
    # The released WordPiece vocabulary has 30,522 rows of which fewer than 600 are used.
    assert 300 < tokenizer.vocab_size < 600
    assert tokenizer.tokens[:5] == ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
    for symbols in symmetry_tables.wyckoff_symbols().values():
        assert all(f"W:{s}" in tokenizer.token_to_id for s in symbols.values())
    assert all(f"E:{e}" in tokenizer.token_to_id for e in ELEMENTS)


def test_generator_letters_and_elements_do_not_collide(tokenizer: ScopeTokenizer) -> None:
    # "O" is a generator character and the element oxygen: two different tokens.
    ids = tokenizer.encode("1 1 c O O D 0 | 4g 2f 2e | Li 0.27 Zr 0.2 O 0.53")
    generator_o = tokenizer.token_to_id["G:O"]
    oxygen = tokenizer.token_to_id["E:O"]
    assert generator_o != oxygen
    assert ids.count(generator_o) == 2 and ids.count(oxygen) == 1


def test_no_unknown_token_on_any_released_string(
    tokenizer: ScopeTokenizer, repo_data: Path
) -> None:
    strings = released_strings(repo_data)
    assert len(strings) > 10_000
    unknown = [s for s in strings if tokenizer.unk_id in tokenizer.encode(s)]
    assert unknown == []


def test_no_unknown_token_on_full_and_canonical_strings(tokenizer: ScopeTokenizer) -> None:
    full = "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4a 4b 4b | Na Na Cl Cl"
    canonical = (
        "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a Na 4b Cl | Na 0.5 Cl 0.5"
    )
    for text in (full, canonical):
        assert tokenizer.unk_id not in tokenizer.encode(text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_decode_round_trip_on_released_strings(
    tokenizer: ScopeTokenizer, repo_data: Path
) -> None:
    for text in released_strings(repo_data)[:2000]:
        ids = tokenizer.encode(text)
        assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
        assert tokenizer.decode(ids) == text
        assert parse(tokenizer.decode(ids)).to_text() == text


def test_unknown_words_become_unk(tokenizer: ScopeTokenizer) -> None:
    ids = tokenizer.encode("1 6 a | 4a | Qq 1.0")
    assert tokenizer.unk_id in ids


def test_segments_follow_the_separators(tokenizer: ScopeTokenizer) -> None:
    ids = tokenizer.encode(ROCK_SALT)
    segments = tokenizer.segment_ids(ids)
    words = ["[CLS]", *ROCK_SALT.split(), "[SEP]"]
    assert len(segments) == len(words)
    first_bar, second_bar = (i for i, w in enumerate(words) if w == "|")
    assert set(segments[:first_bar]) == {0}
    assert set(segments[first_bar:second_bar]) == {1}
    assert set(segments[second_bar:]) == {2}


def test_batch_encoding_pads_and_masks(tokenizer: ScopeTokenizer) -> None:
    short = "1 0 0 | 1a | Fe 1.0"
    batch = tokenizer.batch_encode([ROCK_SALT, short], pad_to_multiple_of=8)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.segment_ids.shape
    assert batch.input_ids.shape[1] % 8 == 0
    lengths = batch.attention_mask.sum(axis=1)
    assert list(lengths) == [len(tokenizer.encode(ROCK_SALT)), len(tokenizer.encode(short))]
    assert np.all(batch.input_ids[1, lengths[1] :] == tokenizer.pad_id)
    assert batch.input_ids.dtype == np.int64


def test_too_long_sequences_are_refused_or_truncated(tokenizer: ScopeTokenizer) -> None:
    with pytest.raises(ValueError, match="sequence 0 has 37 tokens, more than max_length=10"):
        tokenizer.batch_encode([ROCK_SALT], max_length=10)
    batch = tokenizer.batch_encode([ROCK_SALT], max_length=10, truncate=True)
    assert batch.input_ids.shape == (1, 10)
    assert batch.input_ids[0, -1] == tokenizer.sep_id


def test_save_and_load_round_trip(tokenizer: ScopeTokenizer, tmp_path: Path) -> None:
    path = tokenizer.save(tmp_path / "tok" / "tokenizer.json")
    loaded = ScopeTokenizer.load(path)
    assert loaded == tokenizer
    assert loaded.vocab_hash == tokenizer.vocab_hash
    assert loaded.encode(ROCK_SALT) == tokenizer.encode(ROCK_SALT)
    assert not list(path.parent.glob("*.tmp"))


def test_load_refuses_edited_or_foreign_files(tokenizer: ScopeTokenizer, tmp_path: Path) -> None:
    data = tokenizer.to_dict()
    edited = dict(data, tokens=[*data["tokens"][:-1], "F:9.99"])
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="vocabulary hash mismatch"):
        ScopeTokenizer.load(tmp_path / "edited.json")
    (tmp_path / "future.json").write_text(json.dumps(dict(data, version=99)))
    with pytest.raises(ValueError, match="version 99 is not supported"):
        ScopeTokenizer.load(tmp_path / "future.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: cannot read tokenizer JSON"):
        ScopeTokenizer.load(tmp_path / "broken.json")


def test_vocabulary_hash_is_stable(tokenizer: ScopeTokenizer) -> None:
    # Corpora record this hash; changing the grammar tokens must be a deliberate, visible act.
    assert tokenizer.vocab_hash == ScopeTokenizer().vocab_hash
    assert len(tokenizer.vocab_hash) == 64
