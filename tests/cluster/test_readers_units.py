"""Work units: deterministic, worker-independent, every item once; discovery order."""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

from cluster.readers import InputFile, count_items, discover, plan_units, read_file, read_unit
from tests.cluster.readers_support import read_all


@pytest.fixture
def mixed_inputs(
    tmp_path: Path, corpus_dicts: list[dict], real_structures: list[Structure]
) -> Path:
    root = tmp_path / "inputs"
    root.mkdir()
    lines = [json.dumps(d) for d in corpus_dicts[:23]]
    lines[5] = "{broken"
    (root / "a.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["material_id", "cif", "e"])
    for i in range(7):
        writer.writerow([f"m-{i}", str(CifWriter(real_structures[i % 6])), i])
    (root / "b.csv").write_text(buffer.getvalue())
    for i in range(5):
        CifWriter(real_structures[i]).write_file(root / f"c{i}.cif")
    (root / "d.json").write_text(json.dumps([s.as_dict() for s in real_structures[:5]]))
    (root / "e.txt").write_text("unknown")
    with tarfile.open(root / "f.tar.gz", "w:gz") as archive:
        for i in range(3):
            archive.add(root / f"c{i}.cif", arcname=f"f/c{i}.cif")
    return root


def test_plan_units_cover_every_item_once(mixed_inputs: Path) -> None:
    files = discover([mixed_inputs])
    counts = [count_items(f) for f in files]
    assert counts == [23, 7, 1, 1, 1, 1, 1, 5, 1, 3]
    units = plan_units(files, unit_size=4)
    assert [u.index for u in units] == list(range(len(units)))
    covered = {}
    for unit in units:
        for part in unit.parts:
            for item in range(part.start, part.stop):
                key = (part.file.path, item)
                assert key not in covered
                covered[key] = unit.index
    assert len(covered) == sum(counts)
    for unit in units[:-1]:  # a JSON document stays whole, so it may exceed unit_size
        assert unit.n_items <= 4 or any(p.file.format == "json" for p in unit.parts)

    positions_by_units = [r.position for u in units for r in read_unit(u)]
    positions_by_files = [r.position for f in files for r in read_file(f.path)]
    assert positions_by_units == positions_by_files
    assert len(positions_by_files) == len(set(positions_by_files)) == sum(counts)


def test_plan_units_are_deterministic_and_worker_independent(mixed_inputs: Path) -> None:
    files = discover([mixed_inputs])
    units = plan_units(files, unit_size=5)
    assert plan_units(discover([mixed_inputs]), unit_size=5) == units
    assert plan_units(files, unit_size=5, counts=[count_items(f) for f in files]) == units
    # Units travel to workers pickled and may run in any order: same records either way.
    shipped = [pickle.loads(pickle.dumps(u)) for u in reversed(units)]
    by_worker = sorted(r.position for u in shipped for r in read_unit(u))
    assert by_worker == sorted(r.position for u in units for r in read_unit(u))
    with pytest.raises(ValueError):
        plan_units(files, unit_size=0)


def test_plan_units_split_big_files_into_ranges(mixed_inputs: Path) -> None:
    (jsonl,) = discover([mixed_inputs / "a.jsonl.gz"])
    units = plan_units([jsonl], unit_size=10)
    assert [(p.start, p.stop) for u in units for p in u.parts] == [(0, 10), (10, 20), (20, 23)]
    second = list(read_unit(units[1]))
    assert [r.position.rsplit(":", 1)[1] for r in second] == [str(i) for i in range(10, 20)]


def test_input_file_is_plain_data() -> None:
    file = InputFile("/data/x/structures.jsonl.gz", "jsonl", "gzip")
    assert file.stem == "structures"
    assert pickle.loads(pickle.dumps(file)) == file


def test_discover_keeps_order_and_lists_each_file_once(mixed_inputs: Path) -> None:
    files = discover([mixed_inputs / "d.json", mixed_inputs, mixed_inputs / "b.csv"])
    names = [Path(f.path).name for f in files]
    assert names[0] == "d.json"
    assert names[1:] == [
        "a.jsonl.gz",
        "b.csv",
        "c0.cif",
        "c1.cif",
        "c2.cif",
        "c3.cif",
        "c4.cif",
        "e.txt",
        "f.tar.gz",
    ]
    assert [f.format for f in files[1:]] == ["jsonl", "csv"] + ["cif"] * 5 + ["error", "tar"]


def test_a_symlink_loop_is_walked_once_and_the_walk_ends(tmp_path: Path) -> None:
    import multiprocessing

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "top.cif").write_text("data_x\n")
    (data / "sub" / "inner.cif").write_text("data_y\n")
    (data / "sub" / "up").symlink_to("..")
    (data / "sub" / "again").symlink_to(".")
    linked = tmp_path / "elsewhere"
    linked.mkdir()
    (linked / "linked.cif").write_text("data_z\n")
    (data / "link").symlink_to(linked)  # a folder reached only through a link is still read
    # In a child process, so a regression fails the test instead of hanging the suite.
    with multiprocessing.get_context("fork").Pool(1) as pool:
        files = pool.apply_async(discover, ([data],)).get(timeout=30)
    names = sorted(Path(f.path).name for f in files)
    assert names == ["inner.cif", "linked.cif", "top.cif"]


def test_byte_order_marks_do_not_hide_columns_or_blocks(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    cif = str(CifWriter(real_structures[0]))
    (tmp_path / "bom.cif").write_bytes(b"\xef\xbb\xbf" + cif.encode())
    (record,) = read_all(tmp_path / "bom.cif")
    assert record.ok, record.error
    table = 'material_id,cif\nm-7,"' + cif.replace('"', '""') + '"\n'
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + table.encode())
    (record,) = read_all(tmp_path / "bom.csv")
    assert record.source_id == "m-7" and record.ok, record.error


def test_consecutive_units_of_a_file_read_it_once(
    mixed_inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JSON Lines files are opened by their room of the readers package.
    import cluster.readers.json_formats as readers

    opened: list[str] = []
    real_open = readers._open_binary

    def counting_open(path: str, compression: str | None):
        opened.append(path)
        return real_open(path, compression)

    monkeypatch.setattr(readers, "_open_binary", counting_open)
    path = mixed_inputs / "a.jsonl.gz"
    (jsonl,) = discover([path])
    expected = [r.position for r in read_file(path)]
    units = plan_units([jsonl], unit_size=5)
    opened.clear()

    in_order = [r.position for u in units for r in read_unit(u)]
    assert in_order == expected
    assert len(opened) == 1, "each unit re-read the file from its start"

    opened.clear()
    backwards = [r.position for u in reversed(units) for r in read_unit(u)]
    assert sorted(backwards) == sorted(expected)
    assert len(opened) == len(units)

    # Two ranges of one file read side by side each get their own stream.
    side_by_side = list(zip(read_unit(units[0]), read_unit(units[1]), strict=True))
    assert [a.position for a, _ in side_by_side] == expected[:5]
    assert [b.position for _, b in side_by_side] == expected[5:10]

    # A file replaced between units is read afresh, not from the stale stream.
    list(read_unit(units[0]))
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    lines[7] = json.dumps({**json.loads(lines[6]), "id": "replaced"})
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    ids = [r.source_id for r in read_unit(units[1])]
    assert ids[2] == "replaced"
