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

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path

from tokenizer.tables import TABLES
from tokenizer.vocab import BatchEncoding

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


class ReleasedWordPieceTokenizer:
    """Token ids of released SCOPE strings in the released checkpoint's vocabulary.

    Mirrors the ``ScopeTokenizer`` interface (``encode``, ``batch_encode``, ``decode``,
    ``vocab_hash``, ``to_dict``/``from_dict``, ``save``/``load``) so packages and fine-tuning
    code can use either.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        *,
        num_base_tokens: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        self.tokens: tuple[str, ...] = tuple(tokens)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self.token_to_id) != len(self.tokens):
            raise ValueError("WordPiece vocabulary has duplicate tokens")
        missing = [t for t in SPECIAL_TOKENS if t not in self.token_to_id]
        if missing:
            raise ValueError(f"WordPiece vocabulary lacks special tokens {missing}")
        # Where vocab.txt ends and the added tokens begin, to write the HF files back unchanged.
        self.num_base_tokens = len(self.tokens) if num_base_tokens is None else num_base_tokens
        self.max_length = max_length
        self.pad_id = self.token_to_id["[PAD]"]
        self.cls_id = self.token_to_id["[CLS]"]
        self.sep_id = self.token_to_id["[SEP]"]
        self.mask_id = self.token_to_id["[MASK]"]
        self.unk_id = self.token_to_id["[UNK]"]

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

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.token_to_id[t] for t in SPECIAL_TOKENS)

    @cached_property
    def vocab_hash(self) -> str:
        """SHA-256 of the token list, computed as ``ScopeTokenizer.vocab_hash`` is."""
        return hashlib.sha256(json.dumps(self.tokens).encode()).hexdigest()

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one released SCOPE string; unknown words map to [UNK]."""
        ids = [self.token_to_id.get(word, self.unk_id) for word in self.tokenize(text)]
        return [self.cls_id, *ids, self.sep_id] if add_special_tokens else ids

    def segment_ids(self, ids: Sequence[int]) -> list[int]:
        return [0] * len(ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        words = [self.tokens[int(i)] for i in ids]
        if skip_special_tokens:
            words = [w for w in words if w not in SPECIAL_TOKENS]
        return " ".join(words)

    def batch_encode(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        truncate: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> BatchEncoding:
        """Encode and pad a batch (see ``ScopeTokenizer.batch_encode``)."""
        import numpy as np

        limit = max_length or self.max_length
        encoded = []
        for index, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > limit:
                if not truncate:
                    raise ValueError(
                        f"sequence {index} has {len(ids)} tokens, more than max_length={limit}"
                    )
                ids = [*ids[: limit - 1], self.sep_id]
            encoded.append(ids)
        length = max((len(s) for s in encoded), default=0)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = np.full((len(encoded), length), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(encoded), length), dtype=np.int64)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
        return BatchEncoding(input_ids, attention, np.zeros_like(input_ids))

    # ------------------------------------------------------------------ persistence

    def hf_files(self) -> dict[str, str]:
        """The Hugging Face ``BertTokenizer`` files of this vocabulary (name → text)."""
        added = {t: i for i, t in enumerate(self.tokens) if i >= self.num_base_tokens}
        special = {
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
        }
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": False,
            "model_max_length": self.max_length,
            **special,
        }
        files = {
            "vocab.txt": "".join(f"{t}\n" for t in self.tokens[: self.num_base_tokens]),
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        }
        if added:
            files["added_tokens.json"] = json.dumps(added, indent=2) + "\n"
        return files

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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (atomically: temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(f.name, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReleasedWordPieceTokenizer:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read tokenizer JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReleasedWordPieceTokenizer) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def __repr__(self) -> str:
        return (
            f"ReleasedWordPieceTokenizer(vocab_size={self.vocab_size}, "
            f"vocab_hash={self.vocab_hash[:12]})"
        )
