"""Finding the inputs and detecting each file's format from its content and extension."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cluster.readers.csv_tables import _structure_column
from cluster.readers.formats import ASE, CIF, CSV, ERROR, JSON, JSONL, POSCAR, TAR
from cluster.readers.poscar import _POSCAR_NAME
from cluster.readers.records import InputFile, _describe, _strip_compression_suffix
from cluster.readers.streams import (
    _JSON_ERRORS,
    _STREAM_ERRORS,
    _compression_from_magic,
    _loads,
    _peek,
)

_TAR_SUFFIXES = (".tar", ".tgz", ".tbz2", ".txz")
# The extension tells ASE which reader to use; text formats are read from decompressed text.
_ASE_FORMATS = {
    ".extxyz": "extxyz",
    ".xyz": "extxyz",
    ".traj": "traj",
    ".res": "res",
    ".gen": "gen",
}
_CIF_SNIFF = re.compile(
    rb"^[ \t]*data_\S*\s.*?_cell_length_a", re.IGNORECASE | re.MULTILINE | re.DOTALL
)


def discover(paths: Iterable[str | os.PathLike[str]]) -> list[InputFile]:
    """Expand directories (recursively, sorted, hidden names skipped) and detect formats.

    Paths keep their given order; a file reached twice is listed once. Missing, unreadable and
    unknown files come back with ``format == "error"`` so that reading them gives one error record.
    """
    files: list[InputFile] = []
    seen: set[str] = set()
    for given in paths:
        found, unreadable = _expand(Path(given))
        for path in found:
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            files.append(_detect(path))
        files.extend(unreadable)
    return files


def _expand(path: Path) -> tuple[list[Path], list[InputFile]]:
    """The files under ``path``, and the folders that could not be listed (as error inputs)."""
    if not path.is_dir():
        return [path], []
    found = []
    unreadable: list[InputFile] = []

    def report(error: OSError) -> None:
        where = error.filename or str(path)
        unreadable.append(InputFile(str(where), ERROR, error=f"unreadable directory: {error}"))

    # Symlinked folders are followed (datasets are often assembled from links), so a link back
    # up the tree (``sub/up -> ..``) would make the walk endless: each real folder is entered
    # once, by the first path that reaches it.
    visited: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(path, onerror=report, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in visited:
            dirs[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        # Hidden entries are VCS folders, editor swap files and macOS resource forks.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / n for n in names if not n.startswith("."))
    found.sort(key=lambda p: p.relative_to(path).parts)
    return found, sorted(unreadable, key=lambda f: f.path)


def _detect(path: Path) -> InputFile:
    text_path = str(path)
    try:
        if not path.exists():
            return InputFile(text_path, ERROR, error="no such file or directory")
        if not path.is_file():
            return InputFile(text_path, ERROR, error="not a regular file")
        size = path.stat().st_size
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as exc:
        return InputFile(text_path, ERROR, error=f"unreadable: {exc}")
    if size == 0:
        return InputFile(text_path, ERROR, error="empty file")
    unsupported = _unsupported_container(magic)
    if unsupported:
        return InputFile(text_path, ERROR, error=unsupported)
    compression = _compression_from_magic(magic)
    inner_name = _strip_compression_suffix(path.name).lower()
    try:
        return _detect_inner(text_path, inner_name, compression)
    except _STREAM_ERRORS as exc:
        kind = compression or "file"
        return InputFile(text_path, ERROR, compression, error=f"corrupt {kind}: {_describe(exc)}")


def _detect_inner(path: str, inner_name: str, compression: str | None) -> InputFile:
    if inner_name.endswith(_TAR_SUFFIXES):
        return InputFile(path, TAR, compression)
    if inner_name.endswith((".cif", ".mcif")):
        return InputFile(path, CIF, compression)
    if _POSCAR_NAME.match(inner_name) or inner_name.endswith((".vasp", ".poscar")):
        return InputFile(path, POSCAR, compression)
    ase_suffix = next((s for s in _ASE_FORMATS if inner_name.endswith(s)), None)
    if ase_suffix:
        return InputFile(path, ASE, compression, ase_format=_ASE_FORMATS[ase_suffix])

    head = _peek(path, compression)
    if not head.strip():
        what = f"empty after {compression} decompression" if compression else "only whitespace"
        return InputFile(path, ERROR, compression, error=f"empty file ({what})")
    if inner_name.endswith(".csv"):
        return _detect_csv(path, compression, head)
    if inner_name.endswith((".jsonl", ".ndjson")):
        return InputFile(path, JSONL, compression)
    if inner_name.endswith(".json") or _looks_like_json(head):
        return InputFile(path, _json_or_jsonl(head), compression)
    if len(head) > 262 and head[257:262] == b"ustar":
        return InputFile(path, TAR, compression)
    if _CIF_SNIFF.search(head):
        return InputFile(path, CIF, compression)
    return InputFile(
        path,
        ERROR,
        compression,
        error="unknown format (not JSON, JSON Lines, CSV, CIF, POSCAR, tar or an ASE format)",
    )


def _detect_csv(path: str, compression: str | None, head: bytes) -> InputFile:
    header_line = head.decode("utf-8-sig", "replace").splitlines()[0]
    try:
        header = next(csv.reader([header_line]), [])
    except csv.Error as exc:
        return InputFile(path, ERROR, compression, error=f"unreadable CSV header: {exc}")
    if _structure_column(header) is None:
        return InputFile(
            path,
            ERROR,
            compression,
            error=f"CSV without a cif or structure column (columns: {', '.join(header)[:200]})",
        )
    return InputFile(path, CSV, compression)


def _looks_like_json(head: bytes) -> bool:
    """An object, or an array whose first element starts like a JSON value (not ``[PAD]``)."""
    text = head.lstrip()
    if text.startswith(b"{"):
        return True
    return re.match(rb'\[\s*([{\["\]\d-]|true|false|null)', text) is not None


def _json_or_jsonl(head: bytes) -> str:
    """JSON Lines when the first line is a whole JSON value and another value follows."""
    lines = head.lstrip().split(b"\n", 2)
    if len(lines) < 2 or not lines[1].strip().startswith((b"{", b"[")):
        return JSON
    try:
        _loads(lines[0])
    except _JSON_ERRORS:
        return JSON
    return JSONL


def _unsupported_container(magic: bytes) -> str | None:
    if magic.startswith(b"PK\x03\x04"):
        return "unsupported format: zip archive (unpack it or use tar)"
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        return "unsupported compression: zstd (recompress with gzip, bz2 or xz)"
    return None
