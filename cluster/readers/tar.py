"""tar archives (plain or compressed) of CIF, POSCAR and JSON members, read in one pass."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from typing import NamedTuple

from cluster.readers.cif import _split_cif_blocks, _valid_cif_structure
from cluster.readers.json_formats import _json_entries, _record_from_entry
from cluster.readers.poscar import _POSCAR_NAME, _structure_from_poscar
from cluster.readers.records import (
    InputFile,
    Record,
    _checked_record,
    _describe,
    _error_record,
    _Failure,
    _source_stem,
    _strip_compression_suffix,
)
from cluster.readers.streams import (
    _JSON_ERRORS,
    _STREAM_ERRORS,
    _decompress_bytes,
    _loads,
    _stream_failure,
)


class _TarMember(NamedTuple):
    archive: tarfile.TarFile
    info: tarfile.TarInfo


def _tar_items(file: InputFile) -> Iterator[_TarMember | _Failure]:
    # Stream mode reads the archive once, front to back; a member's data must be read before
    # the next item is asked for, which _read_range does.
    count = 0
    try:
        with tarfile.open(file.path, mode="r|*") as archive:
            for info in archive:
                if info.isfile() and not os.path.basename(info.name).startswith("."):
                    yield _TarMember(archive, info)
                    count += 1
    except _STREAM_ERRORS as exc:
        yield _stream_failure(file, exc, count, "members")


def _records_from_tar_member(file: InputFile, index: int, member: _TarMember) -> Iterator[Record]:
    name = member.info.name
    position = f"{file.path}:{name}"
    member_stem = _source_stem(os.path.basename(name))
    try:
        handle = member.archive.extractfile(member.info)
        data = _decompress_bytes(handle.read() if handle else b"")
    except (*_STREAM_ERRORS, ValueError) as exc:
        yield _error_record(
            file.stem, member_stem, position, f"unreadable member: {_describe(exc)}"
        )
        return
    inner = _strip_compression_suffix(os.path.basename(name)).lower()
    if not data.strip():
        yield _error_record(file.stem, member_stem, position, "empty member")
    elif inner.endswith((".cif", ".mcif")):
        blocks = _split_cif_blocks(data.decode("utf-8", "replace"))
        for k, block in enumerate(blocks):
            sub_id, sub_position = (
                (member_stem, position)
                if len(blocks) == 1
                else (f"{member_stem}:{k}", f"{position}:{k}")
            )
            yield _checked_record(file.stem, sub_id, sub_position, {}, _valid_cif_structure, block)
    elif _POSCAR_NAME.match(inner) or inner.endswith((".vasp", ".poscar")):
        text = data.decode("utf-8", "replace")
        yield _checked_record(file.stem, member_stem, position, {}, _structure_from_poscar, text)
    elif inner.endswith((".json", ".jsonl")):
        yield from _records_from_json_member(file.stem, member_stem, position, data)
    else:
        message = "unsupported member format (expected .cif, POSCAR/.vasp or .json)"
        yield _error_record(file.stem, member_stem, position, message)


def _records_from_json_member(
    source: str, member_stem: str, position: str, data: bytes
) -> Iterator[Record]:
    try:
        value = _loads(data)
    except _JSON_ERRORS as exc:
        yield _error_record(source, member_stem, position, f"JSON decode error: {exc}")
        return
    entries = _json_entries(value, matbench_task=None)
    for k, entry in enumerate(entries):
        sub_id, sub_position = (
            (member_stem, position)
            if len(entries) == 1
            else (f"{member_stem}:{k}", f"{position}:{k}")
        )
        yield _record_from_entry(source, sub_id, sub_position, entry)
