"""Structure readers: every input format, written from real structures."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import sys
import tarfile
from pathlib import Path

import pytest
from pymatgen.core import Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry, ConstantEnergyAdjustment
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from tests.cluster.readers_support import read_all, same_structure


def test_cif_files_plain_compressed_and_multi_block(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    structure = real_structures[0]
    text = str(CifWriter(structure))
    (tmp_path / "one.cif").write_text(text)
    (tmp_path / "two.cif.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "three.cif.xz").write_bytes(lzma.compress(text.encode()))
    (tmp_path / "four.cif.bz2").write_bytes(bz2.compress(text.encode()))
    blocks = [str(CifWriter(s)) for s in real_structures[:3]]
    (tmp_path / "many.cif").write_text(blocks[0] + "\n" + blocks[1] + "\n" + blocks[2])

    for name in ("one.cif", "two.cif.gz", "three.cif.xz", "four.cif.bz2"):
        (record,) = read_all(tmp_path / name)
        assert record.ok, record.error
        assert record.source_id == name.split(".")[0]
        assert same_structure(record.structure, structure)
    many = read_all(tmp_path / "many.cif")
    assert [r.source_id for r in many] == ["many:0", "many:1", "many:2"]
    for record, original in zip(many, real_structures[:3], strict=True):
        assert same_structure(record.structure, original)


def test_cif_directory_and_tar_archives(tmp_path: Path, real_structures: list[Structure]) -> None:
    folder = tmp_path / "cifs"
    (folder / "sub").mkdir(parents=True)
    for i, structure in enumerate(real_structures[:3]):
        CifWriter(structure).write_file(folder / ("sub" if i == 2 else "") / f"s{i}.cif")
    (folder / ".hidden.cif").write_text("not read")
    records = read_all(folder)
    assert [r.source_id for r in records] == ["s0", "s1", "s2"]
    assert all(r.ok for r in records)

    for mode, name in (("w", "cifs.tar"), ("w:gz", "cifs.tar.gz")):
        with tarfile.open(tmp_path / name, mode) as archive:
            for i in range(3):
                archive.add(
                    folder / ("sub" if i == 2 else "") / f"s{i}.cif", arcname=f"cifs/s{i}.cif"
                )
            readme = tmp_path / "README.txt"
            readme.write_text("hello")
            archive.add(readme, arcname="cifs/README.txt")
        records = read_all(tmp_path / name)
        assert [r.source_id for r in records] == ["s0", "s1", "s2", "README.txt"]
        assert all(r.ok for r in records[:3])
        assert records[0].position.endswith(f"{name}:cifs/s0.cif")
        assert "unsupported member" in records[3].error
        assert same_structure(records[1].structure, real_structures[1])


def test_poscar_files(tmp_path: Path, real_structures: list[Structure]) -> None:
    structure = real_structures[1]
    (tmp_path / "mp-1234").mkdir()
    Poscar(structure).write_file(tmp_path / "mp-1234" / "POSCAR")
    Poscar(structure).write_file(tmp_path / "relaxed.vasp")
    (record,) = read_all(tmp_path / "mp-1234" / "POSCAR")
    assert record.source_id == "mp-1234/POSCAR"
    assert record.ok and same_structure(record.structure, structure)
    (record,) = read_all(tmp_path / "relaxed.vasp")
    assert record.source_id == "relaxed" and record.ok


def optimade_entry(identifier: str, structure: Structure, **attributes) -> dict:
    symbols = [site.specie.symbol for site in structure]
    entry = {
        "id": identifier,
        "type": "structures",
        "attributes": {
            "lattice_vectors": structure.lattice.matrix.tolist(),
            "cartesian_site_positions": structure.cart_coords.tolist(),
            "species_at_sites": symbols,
            "species": [
                {"name": s, "chemical_symbols": [s], "concentration": [1.0]}
                for s in sorted(set(symbols))
            ],
            "dimension_types": [1, 1, 1],
            "nperiodic_dimensions": 3,
            "nsites": len(structure),
            "chemical_formula_reduced": structure.composition.reduced_formula,
            "_prov_energy": -1.25,
            "_prov_tags": ["a", "b"],
        },
    }
    entry["attributes"].update(attributes)
    return entry


def test_optimade_response_partial_occupancy_and_dimensions(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    good = optimade_entry("prov-1", real_structures[0])
    mixed = optimade_entry("prov-2", real_structures[1])
    mixed["attributes"]["species"][0]["chemical_symbols"] = ["Fe", "Mn"]
    mixed["attributes"]["species"][0]["concentration"] = [0.5, 0.5]
    slab = optimade_entry(
        "prov-3", real_structures[2], dimension_types=[1, 1, 0], nperiodic_dimensions=2
    )
    no_lattice = optimade_entry("prov-4", real_structures[3], lattice_vectors=None)
    response = {"data": [good, mixed, slab, no_lattice], "meta": {"provider": {"prefix": "prov"}}}
    (tmp_path / "page.json").write_text(json.dumps(response))

    records = read_all(tmp_path / "page.json")
    assert [r.source_id for r in records] == ["prov-1", "prov-2", "prov-3", "prov-4"]
    assert records[0].ok and same_structure(records[0].structure, real_structures[0])
    assert records[0].properties["_prov_energy"] == -1.25
    assert (
        records[0].properties["chemical_formula_reduced"]
        == real_structures[0].composition.reduced_formula
    )
    assert "_prov_tags" not in records[0].properties  # not a scalar
    assert records[1].error.startswith("partial occupancy (disordered site")
    assert "not periodic in 3D" in records[2].error
    assert records[3].error == "missing lattice"


def test_optimade_jsonl_of_pages_and_single_entries(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    pages = [
        {
            "data": [
                optimade_entry("a-1", real_structures[0]),
                optimade_entry("a-2", real_structures[1]),
            ]
        },
        optimade_entry("a-3", real_structures[2]),
    ]
    (tmp_path / "dump.jsonl").write_text("\n".join(json.dumps(p) for p in pages) + "\n")
    records = read_all(tmp_path / "dump.jsonl")
    assert [r.source_id for r in records] == ["a-1", "a-2", "a-3"]
    assert [r.position.rsplit("/", 1)[1] for r in records] == [
        "dump.jsonl:0:0",
        "dump.jsonl:0:1",
        "dump.jsonl:1",
    ]
    assert all(r.ok for r in records)


def computed_entry(structure: Structure, identifier: str) -> ComputedStructureEntry:
    return ComputedStructureEntry(
        structure,
        energy=-12.5,
        entry_id=identifier,
        energy_adjustments=[ConstantEnergyAdjustment(-0.75)],
        data={"e_form": -1.1, "spg": 225, "stress": [[0.0] * 3] * 3, "mat_id": identifier},
    )


def test_computed_structure_entries_and_alexandria_dump(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    entries = [computed_entry(s, f"agm{i:09d}") for i, s in enumerate(real_structures[:3])]
    dicts = [e.as_dict() for e in entries]
    # monty's dumpfn writes NaN for unknown uncertainties: the reader must take it.
    (tmp_path / "alexandria_000.json.bz2").write_bytes(
        bz2.compress(json.dumps({"entries": dicts}).encode())
    )
    (tmp_path / "single.json").write_text(json.dumps(dicts[0]))
    (tmp_path / "list.json.gz").write_bytes(gzip.compress(json.dumps(dicts).encode()))
    (tmp_path / "entries.jsonl.xz").write_bytes(
        lzma.compress("\n".join(map(json.dumps, dicts)).encode())
    )

    for name, count in (
        ("alexandria_000.json.bz2", 3),
        ("single.json", 1),
        ("list.json.gz", 3),
        ("entries.jsonl.xz", 3),
    ):
        records = read_all(tmp_path / name)
        assert [r.source_id for r in records] == [f"agm{i:09d}" for i in range(count)], name
        assert all(r.ok for r in records)
        properties = records[0].properties
        assert properties["energy"] == -12.5
        assert properties["correction"] == pytest.approx(-0.75)
        assert properties["entry_id"] == "agm000000000"
        assert properties["e_form"] == -1.1 and properties["spg"] == 225
        assert "stress" not in properties
        assert same_structure(records[0].structure, real_structures[0])


def test_pymatgen_structure_json_single_list_and_lines(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    dicts = [s.as_dict() for s in real_structures[:3]]
    (tmp_path / "one.json").write_text(json.dumps(dicts[0]))
    (tmp_path / "many.json").write_text(json.dumps(dicts))
    (tmp_path / "lines.jsonl").write_text("\n".join(map(json.dumps, dicts)))
    assert [r.source_id for r in read_all(tmp_path / "one.json")] == ["one:0"]
    assert [r.source_id for r in read_all(tmp_path / "many.json")] == ["many:0", "many:1", "many:2"]
    lines = read_all(tmp_path / "lines.jsonl")
    assert [r.source_id for r in lines] == ["lines:0", "lines:1", "lines:2"]
    assert lines[2].structure == real_structures[2]


def test_matbench_split_layout_pads_like_matbench(
    tmp_path: Path, real_structures: list[Structure]
) -> None:
    rows = [[s.as_dict(), float(i)] for i, s in enumerate(real_structures * 2)]
    table = {
        "columns": ["structure", "exfoliation_en"],
        "index": list(range(len(rows))),
        "data": rows,
    }
    (tmp_path / "matbench_jdft2d.json").write_text(json.dumps(table))
    records = read_all(tmp_path / "matbench_jdft2d.json")
    # Matbench pads ids to the digits of the row count (12 rows: two digits).
    assert [r.source_id for r in records][:2] == ["mb-jdft2d-01", "mb-jdft2d-02"]
    assert records[-1].source_id == "mb-jdft2d-12"
    assert records[3].properties == {"exfoliation_en": 3.0}


def test_extended_xyz_through_ase(tmp_path: Path, real_structures: list[Structure]) -> None:
    pytest.importorskip("ase")
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = [AseAtomsAdaptor.get_atoms(s) for s in real_structures[:2]]
    frames[0].info["energy_per_atom"] = -3.5
    frames[0].info["material_id"] = "x-1"
    import ase.io

    ase.io.write(tmp_path / "frames.extxyz", frames, format="extxyz")
    records = read_all(tmp_path / "frames.extxyz")
    assert [r.source_id for r in records] == ["x-1", "frames:1"]
    assert records[0].properties["energy_per_atom"] == -3.5
    assert same_structure(records[1].structure, real_structures[1])


def test_ase_formats_need_ase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "frames.xyz").write_text('1\nLattice="3 0 0 0 3 0 0 0 3" pbc="T T T"\nCu 0 0 0\n')
    monkeypatch.setitem(sys.modules, "ase", None)
    monkeypatch.setitem(sys.modules, "ase.io", None)
    (record,) = read_all(tmp_path / "frames.xyz")
    assert "needs ase" in record.error
    assert record.position.endswith("frames.xyz:0")
