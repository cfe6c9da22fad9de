"""What a build keeps on disk while it runs: append-only files resumable at a committed length,
the directory lock, and clearing a build's own files."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import IO

from cluster.manifest import MANIFEST_NAME, QUARANTINE_NAME

STATE_DIR = ".build"
STATE_NAME = "state.json"
INDEX_NAME = "index.jsonl"
PARTIAL_SUFFIX = ".partial"

_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_RECORD = tarfile.RECORDSIZE


class TarAppender:
    """Append-only tar writer with fixed member metadata; resumable at any committed length."""

    def __init__(self, path: Path, start: int, samples: int) -> None:
        self.path = path
        mode = "r+b" if path.exists() else "w+b"
        self.handle: IO[bytes] = open(path, mode)  # noqa: SIM115 - closed by finish()/close()
        size = self.handle.seek(0, os.SEEK_END)
        if size < start:
            self.handle.close()
            raise RuntimeError(
                f"{path} has {size} bytes but the build state says {start} were committed; "
                "the directory was changed outside the builder (delete it and rebuild)"
            )
        self.handle.truncate(start)
        self.handle.seek(start)
        self.samples = samples

    @property
    def tell(self) -> int:
        return self.handle.tell()

    def add(self, member: bytes) -> None:
        self.handle.write(member)
        self.samples += 1

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def finish(self) -> None:
        """End-of-archive blocks, padded to a whole record as ``tarfile`` writes them."""
        end = self.handle.tell() + 2 * _TAR_BLOCK
        self.handle.write(b"\0" * (2 * _TAR_BLOCK + (-end % _TAR_RECORD)))
        self.sync()
        self.handle.close()

    def close(self) -> None:
        self.handle.close()


def appendable(path: Path, committed: int) -> IO[bytes]:
    """Open an append-only text log truncated to its committed length."""
    handle = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 - owned by the build
    size = handle.seek(0, os.SEEK_END)
    if size < committed:
        handle.close()
        raise RuntimeError(f"{path} is shorter ({size} bytes) than its committed {committed}")
    handle.truncate(committed)
    handle.seek(committed)
    return handle


def lock_directory(state_dir: Path) -> IO[str]:
    """One build per directory: two would interleave their appends. The kernel drops the
    lock when its holder dies, so a killed build never blocks its own resumption."""
    import fcntl

    state_dir.mkdir(parents=True, exist_ok=True)
    handle = open(state_dir / "lock", "w")  # noqa: SIM115 - held for the whole build
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(
            f"{state_dir.parent} is being built by another process right now; "
            "wait for it to finish (or kill it and re-run to resume)"
        ) from None
    return handle


def refuse_foreign_files(out: Path) -> None:
    """Never write over shards that this builder did not start (no state, no manifest)."""
    foreign = sorted(p.name for p in out.glob("corpus-*.tar")) if out.is_dir() else []
    if foreign:
        raise ValueError(
            f"{out} already holds {foreign[0]} (and {len(foreign) - 1} more) but no build state "
            "or manifest; use an empty --out directory, or --force to delete them"
        )


def clear_build(out: Path) -> None:
    """Remove what a build writes to ``out`` (shards, quarantine, manifest, resume state but
    the lock held by the caller); anything else there stays."""
    patterns = (
        "corpus-*.tar",
        f"corpus-*.tar{PARTIAL_SUFFIX}",
        QUARANTINE_NAME,
        MANIFEST_NAME,
        f".{MANIFEST_NAME}.*.tmp",
        f"{STATE_DIR}/{STATE_NAME}",
        f"{STATE_DIR}/{INDEX_NAME}",
        f"{STATE_DIR}/.*.tmp",
    )
    for pattern in patterns:
        for path in out.glob(pattern):
            path.unlink()
