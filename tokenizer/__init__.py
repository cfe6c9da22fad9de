"""Crystal structure → SCOPE string → token ids. No torch here."""

from __future__ import annotations

from tokenizer.scope import Scope, ScopeError, encode, parse
from tokenizer.vocab import ScopeTokenizer

__all__ = ["Scope", "ScopeError", "ScopeTokenizer", "encode", "parse"]
