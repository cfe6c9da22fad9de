"""Opening inputs: transparent gzip/bz2/xz decompression, the errors a broken stream raises,
and fast JSON parsing."""

from __future__ import annotations

import bz2
import gc
import gzip
import json
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from cluster.readers.records import InputFile, _describe, _Failure

try:  # orjson comes with pymatgen and parses JSON about 3x faster than the standard library
    import orjson
except ImportError:  # pragma: no cover - pymatgen depends on it
    orjson = None

_PEEK_BYTES = 1 << 16
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError)
# ValueError covers JSONDecodeError and UnicodeDecodeError; the standard library's parser
# recurses, so absurdly nested input raises RecursionError.
_JSON_ERRORS = (ValueError, RecursionError)
# Leading bytes of each compressed stream, and how to open or decompress it.
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_OPENERS = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}
_DECOMPRESSORS = {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress}


def _compression_from_magic(magic: bytes) -> str | None:
    return next((name for prefix, name in _MAGIC if magic.startswith(prefix)), None)


def _open_binary(path: str, compression: str | None) -> IO[bytes]:
    opener = _OPENERS.get(compression) if compression else None
    return opener(path, "rb") if opener else open(path, "rb")


def _peek(path: str, compression: str | None, size: int = _PEEK_BYTES) -> bytes:
    """The first ``size`` decompressed bytes, or fewer when the stream breaks after some data."""
    chunks: list[bytes] = []
    got = 0
    with _open_binary(path, compression) as handle:
        try:
            while got < size:
                chunk = handle.read1(size - got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except _STREAM_ERRORS:
            if not chunks:
                raise
    return b"".join(chunks)


def _read_all(path: str, compression: str | None) -> bytes:
    with _open_binary(path, compression) as handle:
        return handle.read()


def _decompress_bytes(data: bytes) -> bytes:
    compression = _compression_from_magic(data[:8])
    decompress = _DECOMPRESSORS.get(compression) if compression else None
    return decompress(data) if decompress else data


def _stream_failure(file: InputFile, exc: BaseException, after: int, unit: str) -> _Failure:
    kind = f"{file.compression} stream" if file.compression else "file"
    return _Failure(f"truncated or corrupt {kind} after {after} {unit}: {_describe(exc)}")


def _loads(data: bytes | str) -> Any:
    """Parse JSON; the standard library is the fallback for NaN/Infinity that orjson refuses."""
    if orjson is not None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Parsing a big document creates millions of objects, each allocation burst triggering a
    cyclic-GC pass over the growing heap: pausing the collector makes it about 3x faster."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
