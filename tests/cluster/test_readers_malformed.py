"""Structure readers on malformed inputs: each bad item becomes a record that says why."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter

from cluster.readers import UnitPart, WorkUnit, count_items, discover, read_unit
from tests.cluster.readers_support import read_all

PARTIAL_CIF = """data_FeMnO
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_symmetry_equiv_pos_as_xyz
'x, y, z'
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Fe Fe1 0 0 0 0.5
Mn Mn1 0 0 0 0.5
O O1 0.5 0.5 0.5 1
"""


def test_malformed_and_partially_occupied_cif(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    good = str(CifWriter(real_structures[0]))
    broken = "data_broken\n_cell_length_a 3\nloop_\n_atom_site_label\n_atom_site_fract_x\nNa 0.1\n"
    (tmp_path / "mixed.cif").write_text(good + broken + PARTIAL_CIF)
    records = read_all(tmp_path / "mixed.cif")
    assert [r.ok for r in records] == [True, False, False]
    assert records[1].error and records[1].position.endswith("mixed.cif:1")
    assert records[2].error.startswith("partial occupancy (disordered site 0: ")
    (tmp_path / "garbage.cif").write_text("this is not a CIF at all\n")
    (record,) = read_all(tmp_path / "garbage.cif")
    assert not record.ok


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "empty.json.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "blank.csv").write_text("  \n")
    for name in ("empty.jsonl", "empty.json.gz", "blank.csv"):
        (file,) = discover([tmp_path / name])
        assert file.format == "error" and file.error.startswith("empty file"), name
        (record,) = read_all(tmp_path / name)
        assert record.error.startswith("empty file")
        assert record.position == str(tmp_path / name)


def test_truncated_gzip_keeps_what_was_readable(tmp_path: Path, corpus_dicts: list[dict]) -> None:
    payload = "".join(json.dumps(d) + "\n" for d in corpus_dicts[:200]).encode()
    compressed = gzip.compress(payload)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    records = read_all(path)
    good, last = records[:-1], records[-1]
    assert 10 < len(good) < 200 and all(r.ok for r in good)
    assert "truncated or corrupt gzip stream" in last.error
    assert last.position.endswith(f"cut.jsonl.gz:{len(good)}")
    assert count_items(discover([path])[0]) == len(records)


def test_bad_json_line_in_the_middle(tmp_path: Path, corpus_dicts: list[dict]) -> None:
    lines = [json.dumps(d) for d in corpus_dicts[:6]]
    lines[3] = lines[3][: len(lines[3]) // 2]  # a half-written line
    (tmp_path / "part.jsonl").write_text("\n".join(lines) + "\n")
    records = read_all(tmp_path / "part.jsonl")
    assert [r.ok for r in records] == [True, True, True, False, True, True]
    assert records[3].error.startswith("JSON decode error at line 4")
    assert records[3].position.endswith("part.jsonl:3")
    assert records[4].source_id == corpus_dicts[4]["id"]


def test_structure_content_errors(tmp_path: Path, corpus_dicts: list[dict]) -> None:
    base = corpus_dicts[0]["structure"]
    nan_coords = json.loads(json.dumps(base))
    nan_coords["sites"][2]["abc"] = [float("nan"), 0.1, 0.2]
    null_coords = json.loads(json.dumps(base))
    null_coords["sites"][0]["abc"] = [None, 0.1, 0.2]
    no_lattice = {k: v for k, v in base.items() if k != "lattice"}
    no_sites = {**base, "sites": []}
    flat = {**base, "lattice": {**base["lattice"], "matrix": [[1, 0, 0], [0, 1, 0], [0, 2, 0]]}}
    unknown = json.loads(json.dumps(base))
    unknown["sites"][0]["species"][0]["element"] = "Qq"
    lines = [
        {"id": f"bad-{i}", "structure": s}
        for i, s in enumerate([nan_coords, null_coords, no_lattice, no_sites, flat, unknown])
    ]
    lines.append({"id": "nothing", "energy": 1.0})
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(x) for x in lines))  # NaN as JSON NaN
    records = read_all(tmp_path / "bad.jsonl")
    errors = [r.error for r in records]
    assert errors[0] == "NaN or infinite coordinates (site 2)"
    assert errors[1] == "NaN or infinite coordinates (site 0)"  # null reads as NaN
    assert errors[2] == "missing lattice"
    assert errors[3] == "zero sites"
    assert errors[4].startswith("degenerate lattice")
    assert errors[5] == "unknown element 'Qq'"
    assert errors[6].startswith("no structure")
    assert [r.source_id for r in records[:6]] == [f"bad-{i}" for i in range(6)]


def test_unknown_missing_and_headerless_inputs(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("just some notes\n")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "archive.zip").write_bytes(b"PK\x03\x04rest")
    files = discover(
        [
            tmp_path / "notes.txt",
            tmp_path / "table.csv",
            tmp_path / "archive.zip",
            tmp_path / "missing.cif",
        ]
    )
    errors = [f.error for f in files]
    assert errors[0].startswith("unknown format")
    assert errors[1].startswith("CSV without a cif or structure column")
    assert "zip" in errors[2]
    assert errors[3] == "no such file or directory"
    for file in files:
        (record,) = list(read_unit(WorkUnit(0, (UnitPart(file, 0, 1),))))
        assert record.error == file.error and record.position == file.path


def test_csv_rows_with_bad_cells(tmp_path: Path, real_structures: list[Structure]) -> None:
    good = str(CifWriter(real_structures[0]))
    rows = [
        ["material_id", "cif", "e", "tags"],
        ["m-1", good, "1.5", "[1, 2]"],
        ["m-2", "", "nan", "x"],
        ["m-3", "data_x\nnonsense", "2", "y"],
    ]
    path = tmp_path / "table.csv.gz"
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    path.write_bytes(gzip.compress(buffer.getvalue().encode()))
    records = read_all(path)
    assert [r.source_id for r in records] == ["m-1", "m-2", "m-3"]
    assert records[0].ok and records[0].properties == {"e": 1.5}
    assert records[1].error == "empty structure cell" and records[1].properties == {
        "e": None,
        "tags": "x",
    }
    assert not records[2].ok
