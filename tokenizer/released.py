"""The released CLOUD checkpoint's WordPiece vocabulary, for models imported from Hugging Face.

The released checkpoint (``cloud import-hf``) was trained with a BERT WordPiece tokenizer whose
ids differ from ``ScopeTokenizer``'s: [CLS]=0, [PAD]=1, [SEP]=2, [UNK]=3, [MASK]=4, then
characters, ``##`` pieces, Wyckoff symbols, elements and numbers (``vocab.txt``, 463 lines),
then the fractions "0.0" … "1.0" as added tokens (ids 463–563, ``added_tokens.json``).

Every word of a released SCOPE string is a whole entry of that vocabulary (checked on the
released strings in ``data/cloud_reference``: no [UNK]), so the released tokenization is
whitespace split plus lookup; BERT's punctuation split never applies because the only
punctuated words ("0.25" …) are added tokens, which BERT matches before splitting.
Segment ids are all 0, as BERT's token_type_ids for single sequences.

Provenance: ``tables/released_vocab.txt`` and ``tables/released_added_tokens.json`` are
byte-for-byte copies of the released Hugging Face tokenizer files (``vocab.txt``,
``added_tokens.json``; MIT, © 2025 Changwen Xu, ``tables/LICENSE.cloud``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tokenizer.tables import TABLES
from tokenizer.vocab import Vocabulary

FORMAT_NAME = "cloud-released-wordpiece"
FORMAT_VERSION = 1
DEFAULT_MAX_LENGTH = 512  # BERT-base position table of the released checkpoint
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
RELEASED_VOCAB = TABLES / "released_vocab.txt"
RELEASED_ADDED_TOKENS = TABLES / "released_added_tokens.json"


def read_wordpiece_files(
    vocab_txt: str | os.PathLike, added_tokens_json: str | os.PathLike | None = None
) -> tuple[list[str], int]:
    """(tokens in id order, number of vocab.txt entries) of a BERT tokenizer's files.

    Added tokens must continue the ids of vocab.txt without gaps, as Hugging Face writes them.
    """
    base = Path(vocab_txt).read_text(encoding="utf-8").splitlines()
    added: dict[str, int] = {}
    if added_tokens_json is not None and Path(added_tokens_json).is_file():
        added = json.loads(Path(added_tokens_json).read_text(encoding="utf-8"))
    extra = sorted(added.items(), key=lambda item: item[1])
    expected = list(range(len(base), len(base) + len(extra)))
    if [token_id for _, token_id in extra] != expected:
        raise ValueError(
            f"{added_tokens_json}: added token ids must continue vocab.txt's "
            f"{len(base)} ids without gaps"
        )
    return [*base, *(token for token, _ in extra)], len(base)


class ReleasedWordPieceTokenizer(Vocabulary):
    """Token ids of released SCOPE strings in the released checkpoint's vocabulary.

    A ``Vocabulary`` like ``ScopeTokenizer`` (``encode``, ``batch_encode``, ``decode``,
    ``vocab_hash``, ``to_dict``/``from_dict``, ``save``/``load``), so packages and fine-tuning
    code can use either; words are the released strings' whitespace-separated words.
    """

    name = "WordPiece vocabulary"

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        num_base_tokens: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        super().__init__(tokens, max_length)
        # Where vocab.txt ends and the added tokens begin, to write the HF files back unchanged.
        self.num_base_tokens = len(self.tokens) if num_base_tokens is None else num_base_tokens

    @classmethod
    def released(cls) -> ReleasedWordPieceTokenizer:
        """The released CLOUD vocabulary shipped with this package."""
        return cls.from_wordpiece_files(RELEASED_VOCAB, RELEASED_ADDED_TOKENS)

    @classmethod
    def from_wordpiece_files(
        cls,
        vocab_txt: str | os.PathLike,
        added_tokens_json: str | os.PathLike | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> ReleasedWordPieceTokenizer:
        tokens, num_base = read_wordpiece_files(vocab_txt, added_tokens_json)
        return cls(tokens, num_base_tokens=num_base, max_length=max_length)

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def segment_ids(self, ids: Sequence[int]) -> list[int]:
        return [0] * len(ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        words = [self.tokens[int(i)] for i in ids]
        if skip_special_tokens:
            words = [w for w in words if w not in SPECIAL_TOKENS]
        return " ".join(words)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "max_length": self.max_length,
            "num_base_tokens": self.num_base_tokens,
            "vocab_hash": self.vocab_hash,
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "tokenizer dict") -> ReleasedWordPieceTokenizer:
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"{source}: not a WordPiece tokenizer (format={data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{source}: WordPiece tokenizer format version {data.get('version')} is not "
                f"supported (this code reads version {FORMAT_VERSION})"
            )
        tokenizer = cls(
            data["tokens"],
            num_base_tokens=data.get("num_base_tokens"),
            max_length=int(data.get("max_length", DEFAULT_MAX_LENGTH)),
        )
        expected = data.get("vocab_hash")
        if expected and expected != tokenizer.vocab_hash:
            raise ValueError(f"{source}: vocabulary hash mismatch (file corrupted or edited)")
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"ReleasedWordPieceTokenizer(vocab_size={self.vocab_size}, "
            f"vocab_hash={self.vocab_hash[:12]})"
        )
