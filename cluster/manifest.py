"""The layout of a built corpus directory, shared by the builder and the training loader.

A corpus directory holds WebDataset shards ``corpus-000000.tar`` …, ``quarantine.jsonl`` (one
line per input that could not be read or encoded) and ``manifest.json``, which says what the
shards are (name, sha256, samples), where they came from and how they were made. Nothing here
imports ray, torch or pymatgen: the loader reads manifests on training nodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMAT_NAME = "cloud-corpus"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
QUARANTINE_NAME = "quarantine.jsonl"
SHARD_PREFIX = "corpus-"
SHARD_SUFFIX = ".tar"
COUNT_FIELDS: tuple[str, ...] = ("read", "written", "quarantined", "duplicates", "excluded")
DEDUP_MODES: tuple[str, ...] = ("none", "scope", "structure")


def shard_name(index: int) -> str:
    """``corpus-000042.tar``: zero-padded so that names sort in shard order."""
    return f"{SHARD_PREFIX}{index:06d}{SHARD_SUFFIX}"


def tool_version() -> str:
    """The installed package version, recorded so a corpus says which code built it."""
    from importlib import metadata

    try:
        return metadata.version("cloud-crystal")
    except metadata.PackageNotFoundError:
        return "unknown"


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON to a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A reader (or a resumed build) therefore sees the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        json.dump(data, handle, indent=1, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(handle.name, 0o644)  # NamedTemporaryFile creates 0600; others read corpora too
    os.replace(handle.name, path)
    fsync_directory(path.parent)
    return path


def check_balance(counts: Mapping[str, Mapping[str, int]]) -> None:
    """Every record read is accounted for: read = written + quarantined + duplicates + excluded."""
    for source, c in counts.items():
        accounted = c["written"] + c["quarantined"] + c["duplicates"] + c["excluded"]
        if c["read"] != accounted:
            raise AssertionError(
                f"corpus counts do not balance for source {source!r}: read {c['read']} != "
                f"written {c['written']} + quarantined {c['quarantined']} + duplicates "
                f"{c['duplicates']} + excluded {c['excluded']} = {accounted}"
            )


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a corpus directory (or of the manifest file itself), validated.

    Raises ``FileNotFoundError`` when there is none and ``ValueError`` when it is not a corpus
    manifest this code can read.
    """
    path = Path(directory)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no corpus manifest (build one with `cloud corpus build SOURCE... --out DIR`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the corpus manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: not a corpus manifest (format={found!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: corpus format version {manifest.get('version')} is not supported "
            f"(this code reads version {FORMAT_VERSION})"
        )
    return manifest


def shard_paths(directory: str | os.PathLike[str], manifest: Mapping[str, Any]) -> list[Path]:
    """The shard files of a corpus directory, in manifest (= build) order."""
    return [Path(directory) / shard["name"] for shard in manifest["shards"]]
