"""A closed vocabulary for SCOPE strings, derived from the grammar, not learned.

Tokens are namespaced by what they are, so the generator letter ``O`` and the element ``O``
(one token in the released WordPiece vocabulary) are different tokens here:

- ``[PAD] [CLS] [SEP] [MASK] [UNK]`` (ids 0–4) and the segment separator ``|``;
- ``G:<c>`` for each generator character of the 230 space groups;
- ``W:<symbol>`` for each Wyckoff symbol (multiplicity + letter) of the 230 groups;
- ``E:<symbol>`` for the 118 elements and the dummy species ``X`` (composition, per-site and
  per-orbit species);
- ``F:<x>`` for the rounded fractions 0.0, 0.01, …, 1.0.

A sequence is ``[CLS] <scope tokens> [SEP]``; segment ids are 0 for [CLS] and the generator,
1 for the Wyckoff segment, 2 for the composition (each ``|`` opens the segment after it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Self

import numpy as np

from tokenizer import tables
from tokenizer.elements import DUMMY_SPECIES, ELEMENTS

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
SEGMENT_SEPARATOR = "|"
FORMAT_NAME = "cloud-scope-tokenizer"
FORMAT_VERSION = 1
DEFAULT_MAX_LENGTH = 128
NUM_SEGMENTS = 3


def grammar_tokens() -> list[str]:
    """Every token of the SCOPE grammar, in a fixed order (the default vocabulary)."""
    generator_chars = sorted({c for code in tables.generators().values() for c in code})
    fractions = [str(np.round(i / 100, 2)) for i in range(101)]
    return [
        *SPECIAL_TOKENS,
        SEGMENT_SEPARATOR,
        *(f"G:{c}" for c in generator_chars),
        *(f"W:{s}" for s in tables.all_wyckoff_symbols()),
        *(f"E:{e}" for e in (DUMMY_SPECIES, *ELEMENTS)),
        *(f"F:{f}" for f in fractions),
    ]


@dataclass(frozen=True)
class BatchEncoding:
    """Padded token ids of a batch, as numpy int64 arrays of shape [batch, length]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    segment_ids: np.ndarray


@dataclass
class PackedEncoding:
    """Token ids of a batch packed one sequence after the other, no padding (numpy int64
    [N] arrays; ``cu_seqlens`` int32 [S + 1], the cumulative lengths starting at 0): the
    layout ``cloud.packed`` computes on."""

    input_ids: np.ndarray
    segment_ids: np.ndarray
    position_ids: np.ndarray
    """Position of each token within its own sequence (0 at its [CLS])."""
    cu_seqlens: np.ndarray


class Vocabulary:
    """What every tokenizer here shares: a token list with the BERT special tokens, ids,
    padding into ``BatchEncoding`` (or packing into ``PackedEncoding``) and the JSON file (``to_dict``/``from_dict`` are the
    subclass's, with its format name). Subclasses say how a string splits (``tokenize``),
    which segment each position is in (``segment_ids``) and how ids read back (``decode``).
    """

    name = "tokenizer vocabulary"  # how errors name it

    def __init__(self, tokens: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.tokens: tuple[str, ...] = tuple(tokens)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        if len(self.token_to_id) != len(self.tokens):
            raise ValueError(f"{self.name} has duplicate tokens")
        missing = [t for t in SPECIAL_TOKENS if t not in self.token_to_id]
        if missing:
            raise ValueError(f"{self.name} lacks special tokens {missing}")
        self.max_length = max_length
        # vocab.txt entries of the Hugging Face files; any tokens after them are added tokens.
        self.num_base_tokens = len(self.tokens)
        self.pad_id = self.token_to_id["[PAD]"]
        self.cls_id = self.token_to_id["[CLS]"]
        self.sep_id = self.token_to_id["[SEP]"]
        self.mask_id = self.token_to_id["[MASK]"]
        self.unk_id = self.token_to_id["[UNK]"]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.token_to_id[t] for t in SPECIAL_TOKENS)

    @cached_property
    def vocab_hash(self) -> str:
        """SHA-256 of the token list: two tokenizers with the same hash give the same ids."""
        return hashlib.sha256(json.dumps(self.tokens).encode()).hexdigest()

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def segment_ids(self, ids: Sequence[int]) -> list[int]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "tokenizer dict") -> Self:
        raise NotImplementedError

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one SCOPE string; unknown words map to [UNK]."""
        ids = [self.token_to_id.get(t, self.unk_id) for t in self.tokenize(text)]
        return [self.cls_id, *ids, self.sep_id] if add_special_tokens else ids

    def batch_encode(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        truncate: bool = False,
        pad_to_multiple_of: int | None = None,
    ) -> BatchEncoding:
        """Encode and pad a batch to its longest sequence (at most ``max_length``).

        A sequence longer than ``max_length`` raises ``ValueError`` naming it, unless
        ``truncate`` is set (the [SEP] is kept as the last token).
        """
        limit = max_length or self.max_length
        encoded = [self._fit(self.encode(t), limit, truncate, i) for i, t in enumerate(texts)]
        return self.pad(encoded, pad_to_multiple_of)

    def pad(
        self, sequences: Sequence[Sequence[int]], pad_to_multiple_of: int | None = None
    ) -> BatchEncoding:
        """Pad id sequences into arrays with an attention mask and segment ids."""
        length = max((len(s) for s in sequences), default=0)
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = np.full((len(sequences), length), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(sequences), length), dtype=np.int64)
        segments = np.zeros((len(sequences), length), dtype=np.int64)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
            segments[row, : len(ids)] = self.segment_ids(ids)
        return BatchEncoding(input_ids, attention, segments)

    def pack(self, sequences: Sequence[Sequence[int]]) -> PackedEncoding:
        """Concatenate id sequences without padding, with positions restarting at each."""
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        cu_seqlens = np.zeros(len(sequences) + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu_seqlens[1:])
        flat = [token for ids in sequences for token in ids]
        segments = [segment for ids in sequences for segment in self.segment_ids(ids)]
        starts = np.repeat(cu_seqlens[:-1].astype(np.int64), lengths)
        positions = np.arange(int(cu_seqlens[-1]), dtype=np.int64) - starts
        return PackedEncoding(
            np.asarray(flat, dtype=np.int64),
            np.asarray(segments, dtype=np.int64),
            positions,
            cu_seqlens,
        )

    def _fit(self, ids: list[int], limit: int, truncate: bool, index: int) -> list[int]:
        if len(ids) <= limit:
            return ids
        if not truncate:
            raise ValueError(
                f"sequence {index} has {len(ids)} tokens, more than max_length={limit}; "
                "raise max_length or pass truncate=True"
            )
        return [*ids[: limit - 1], self.sep_id]

    def hf_files(self) -> dict[str, str]:
        """The Hugging Face ``BertTokenizer`` files of this vocabulary (name → text).

        Right for a vocabulary whose whitespace-separated words are its tokens (the released
        WordPiece vocabulary): vocab.txt lists the tokens in id order, later ones go to
        added_tokens.json. ``ScopeTokenizer`` writes other files (its words are not its
        tokens).
        """
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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (atomically: temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(f.name, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read tokenizer JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.tokens == other.tokens  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.tokens)


# The namespaces of ``ScopeTokenizer.tokenize`` as Oniguruma regexes (those of the Hugging
# Face ``tokenizers`` library) for its ``Replace`` normalizer. Each matches the empty string at
# the start of the words it prefixes, so the replacement inserts the prefix. A word's segment
# is the number of "|" words before it (a variable-length look-behind); the rules run in this
# order: E first, so that the digit rules see unprefixed words only, and G last.
_AFTER_SEPARATOR = r"(?:^|\s)\|\s[\s\S]*"
_AFTER_TWO_SEPARATORS = r"(?:^|\s)\|\s(?:[\s\S]*\s)?\|\s[\s\S]*"
_WORD_START = r"(?<!\S)"
_NOT_SEPARATOR = r"(?!\|(?:\s|$))"
HF_NAMESPACE_RULES: tuple[tuple[str, str], ...] = (
    # segment >= 1, not starting with a digit: an element
    (rf"(?<={_AFTER_SEPARATOR}){_WORD_START}(?=[^\s\d]){_NOT_SEPARATOR}", "E:"),
    # segment 1, starting with a digit: a Wyckoff symbol
    (rf"(?<={_AFTER_SEPARATOR})(?<!{_AFTER_TWO_SEPARATORS}){_WORD_START}(?=\d)", "W:"),
    # segment >= 2, starting with a digit: a fraction
    (rf"(?<={_AFTER_TWO_SEPARATORS}){_WORD_START}(?=\d)", "F:"),
    # segment 0: a generator character
    (rf"(?<!{_AFTER_SEPARATOR}){_WORD_START}(?=\S){_NOT_SEPARATOR}", "G:"),
)
HF_TOKENIZER_FILE = "tokenizer.json"


class ScopeTokenizer(Vocabulary):
    """Token ids for SCOPE strings of any variant, with a closed vocabulary."""

    def __init__(self, tokens: Sequence[str] | None = None, max_length: int = DEFAULT_MAX_LENGTH):
        super().__init__(tokens if tokens is not None else grammar_tokens(), max_length)
        self.separator_id = self.token_to_id[SEGMENT_SEPARATOR]

    # ------------------------------------------------------------------ strings ↔ tokens

    def tokenize(self, text: str) -> list[str]:
        """The namespaced tokens of a SCOPE string (without [CLS]/[SEP])."""
        result: list[str] = []
        segment = 0
        for word in text.split():
            if word == SEGMENT_SEPARATOR:
                segment += 1
                result.append(SEGMENT_SEPARATOR)
            elif segment == 0:
                result.append(f"G:{word}")
            elif word[0].isdigit():
                result.append(f"{'W' if segment == 1 else 'F'}:{word}")
            else:
                result.append(f"E:{word}")
        return result

    def segment_ids(self, ids: Sequence[int]) -> list[int]:
        """Segment of each position: 0 generator (and [CLS]), 1 Wyckoff, 2 composition."""
        segments, current = [], 0
        for token_id in ids:
            if token_id == self.separator_id:
                current = min(current + 1, NUM_SEGMENTS - 1)
            segments.append(current)
        return segments

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The SCOPE string of token ids (the inverse of ``encode`` on valid strings)."""
        words = []
        for token_id in ids:
            token = self.tokens[int(token_id)]
            if token in SPECIAL_TOKENS:
                if skip_special_tokens:
                    continue
                words.append(token)
            else:
                words.append(token.split(":", 1)[1] if ":" in token else token)
        return " ".join(words)

    # ------------------------------------------------------------------ Hugging Face

    def hf_files(self) -> dict[str, str]:
        """Hugging Face tokenizer files (name → text) that give this tokenizer's ids.

        ``tokenizer.json`` (``tokenizers``: a WordLevel model over ``tokens``, after a
        normalizer that writes each word's namespace in front of it as ``tokenize`` does,
        ``HF_NAMESPACE_RULES``, and a whitespace split; [CLS] … [SEP] around it; a decoder
        that drops the namespaces again) and a tokenizer_config.json naming
        ``PreTrainedTokenizerFast``, so ``AutoTokenizer.from_pretrained`` gives ``encode``'s
        ids, pads with [PAD] and truncates keeping [SEP] as ``batch_encode(truncate=True)``.

        Differences: [CLS], [SEP], [MASK], [PAD] and [UNK] written in the text are those
        tokens (fill-mask needs [MASK]; ``tokenize`` reads them as words, i.e. [UNK]), and the
        tokenizer returns no token_type_ids: the SCOPE segments (``segment_ids``) depend on
        the "|" before each token, which no ``tokenizers`` post-processor can count, so the
        caller derives them from input_ids (the model card says how).
        """
        special = {
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "pad_token": "[PAD]",
            "sep_token": "[SEP]",
            "unk_token": "[UNK]",
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.max_length,
            "model_input_names": ["input_ids", "attention_mask"],
            "padding_side": "right",
            "truncation_side": "right",
            "clean_up_tokenization_spaces": False,
            **special,
        }
        return {
            HF_TOKENIZER_FILE: json.dumps(self.hf_tokenizer_json(), indent=1) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        }

    def hf_tokenizer_json(self) -> dict:
        """The ``tokenizers`` serialisation (tokenizer.json) described in ``hf_files``."""

        def special_token(token: str, type_id: int = 0) -> dict:
            return {"SpecialToken": {"id": token, "type_id": type_id}}

        def sequence(name: str, type_id: int) -> dict:
            return {"Sequence": {"id": name, "type_id": type_id}}

        added = [
            {
                "id": self.token_to_id[token],
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token in SPECIAL_TOKENS
        ]
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {
                "type": "Sequence",
                "normalizers": [
                    {"type": "Replace", "pattern": {"Regex": pattern}, "content": prefix}
                    for pattern, prefix in HF_NAMESPACE_RULES
                ],
            },
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [special_token("[CLS]"), sequence("A", 0), special_token("[SEP]")],
                "pair": [
                    special_token("[CLS]"),
                    sequence("A", 0),
                    special_token("[SEP]"),
                    sequence("B", 1),
                    special_token("[SEP]", 1),
                ],
                "special_tokens": {
                    token: {"id": token, "ids": [self.token_to_id[token]], "tokens": [token]}
                    for token in ("[CLS]", "[SEP]")
                },
            },
            # Each token loses its namespace and gains a leading space; the first space goes.
            "decoder": {
                "type": "Sequence",
                "decoders": [
                    {"type": "Replace", "pattern": {"Regex": "^(?:[^:]*:)?"}, "content": " "},
                    {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0},
                ],
            },
            "model": {"type": "WordLevel", "vocab": dict(self.token_to_id), "unk_token": "[UNK]"},
        }

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "max_length": self.max_length,
            "vocab_hash": self.vocab_hash,
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "tokenizer dict") -> ScopeTokenizer:
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"{source}: not a SCOPE tokenizer (format={data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{source}: tokenizer format version {data.get('version')} is not supported "
                f"(this code reads version {FORMAT_VERSION})"
            )
        tokenizer = cls(data["tokens"], max_length=int(data.get("max_length", DEFAULT_MAX_LENGTH)))
        expected = data.get("vocab_hash")
        if expected and expected != tokenizer.vocab_hash:
            raise ValueError(f"{source}: vocabulary hash mismatch (file corrupted or edited)")
        return tokenizer

    def __repr__(self) -> str:
        return f"ScopeTokenizer(vocab_size={self.vocab_size}, vocab_hash={self.vocab_hash[:12]})"
