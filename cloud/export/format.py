"""The package format: its name and versions, file names, dtypes, trusted modules,
tokenizer formats, the citation, ``PackageError``, and the SHA256SUMS checksums.

The layout these name is described in ``cloud.export`` (the package docstring).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

FORMAT_NAME = "cloud-pretrained"
FORMAT_VERSION = 2
READABLE_VERSIONS: tuple[int, ...] = (1, 2)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CARD_FILE = "README.md"
CHECKSUMS_FILE = "SHA256SUMS"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Modules a package may name for its architecture: importing them registers it. Anything else
# is refused, so a crafted config.json cannot make the loader import arbitrary code.
TRUSTED_MODULE_PREFIXES: tuple[str, ...] = ("cloud.", "train.")

# Tokenizer formats (the "format" of their to_dict) → (module, class, short type name).
TOKENIZER_FORMATS: dict[str, tuple[str, str, str]] = {
    "cloud-scope-tokenizer": ("tokenizer.vocab", "ScopeTokenizer", "scope"),
    "cloud-released-wordpiece": (
        "tokenizer.released",
        "ReleasedWordPieceTokenizer",
        "released-wordpiece",
    ),
}

CITATION = """@article{xu2025cloud,
  title   = {CLOUD: A Scalable and Physics-Informed Foundation Model for Crystal Representation Learning},
  author  = {Xu, Changwen and Zhu, Shang and Viswanathan, Venkatasubramanian},
  journal = {arXiv preprint arXiv:2506.17345},
  year    = {2025}
}"""


class PackageError(ValueError):
    """A package that must not be loaded: corrupted, modified, or of an unknown format."""


def tool_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("cloud-crystal")
    except metadata.PackageNotFoundError:
        return "unknown"


def _check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _plain_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name == CHECKSUMS_FILE:
        raise ValueError(f"package file names must be plain names, got {name!r}")
    return name


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def checksums_text(directory: Path) -> str:
    """``sha256sum``-compatible lines for every file of ``directory`` but SHA256SUMS."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE)
    return "".join(f"{sha256_file(directory / name)}  {name}\n" for name in names)


_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def read_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256} from a package's SHA256SUMS."""
    path = Path(directory) / CHECKSUMS_FILE
    if not path.is_file():
        raise PackageError(f"{path}: missing; cannot verify the package (pass verify=False?)")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _CHECKSUM_LINE.match(line)
        if not match or "/" in match.group(2) or match.group(2) in (".", ".."):
            raise PackageError(f"{path}:{number}: not a 'sha256  filename' line: {line!r}")
        sums[match.group(2)] = match.group(1)
    return sums


def verify_checksums(directory: str | os.PathLike, required: tuple[str, ...] = ()) -> None:
    """Raise ``PackageError`` naming the first file whose SHA-256 does not match SHA256SUMS."""
    directory = Path(directory)
    sums = read_checksums(directory)
    unlisted = [name for name in required if name not in sums]
    if unlisted:
        raise PackageError(
            f"{directory / unlisted[0]}: not listed in {CHECKSUMS_FILE}; the package is "
            "incomplete or was modified"
        )
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise PackageError(f"{path}: listed in {CHECKSUMS_FILE} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise PackageError(
                f"{path}: SHA-256 mismatch (expected {expected[:16]}…, found {actual[:16]}…); "
                "the file is corrupted or was modified, refusing to load"
            )
