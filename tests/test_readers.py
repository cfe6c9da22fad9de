"""Structure readers: every input format on real data, malformed inputs, deterministic work units."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import itertools
import json
import lzma
import pickle
import sys
import tarfile
import warnings
from pathlib import Path

import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.entries.computed_entries import ComputedStructureEntry, ConstantEnergyAdjustment
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from cluster.readers import (
    InputFile,
    Record,
    UnitPart,
    WorkUnit,
    count_items,
    discover,
    plan_units,
    read_file,
    read_unit,
    structure_from_pymatgen_dict,
)

CORPUS = "corpus/structures.jsonl.gz"


def first(records, n: int) -> list[Record]:
    return list(itertools.islice(records, n))


def read_all(path: Path) -> list[Record]:
    records = list(read_file(path))
    for record in records:
        assert_well_formed(record)
    return records


def assert_well_formed(record: Record) -> None:
    """The Record contract: an error xor a structure, JSON-safe properties, a position."""
    assert record.source and record.source_id and record.position
    assert (record.error is None) == (record.structure is not None), record
    json.dumps(record.properties, allow_nan=False)


def same_structure(a: Structure, b: Structure) -> bool:
    matcher = StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False)
    return a.composition == b.composition and matcher.fit(a, b)


@pytest.fixture(scope="module")
def corpus_dicts(shared_data: Path) -> list[dict]:
    """The first 300 raw lines of the real corpus, parsed."""
    with gzip.open(shared_data / CORPUS, "rt") as handle:
        return [json.loads(line) for line in itertools.islice(handle, 300)]


@pytest.fixture(scope="module")
def real_structures(corpus_dicts: list[dict]) -> list[Structure]:
    """Six real structures of different sizes from the shared corpus."""
    picked = {}
    for record in corpus_dicts:
        picked.setdefault(len(record["structure"]["sites"]), record["structure"])
    return [Structure.from_dict(d) for d in list(picked.values())[:6]]


# ---------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------


def test_corpus_jsonl_records(shared_data: Path) -> None:
    records = first(read_file(shared_data / CORPUS), 40)
    assert len(records) == 40
    for record in records:
        assert_well_formed(record)
        assert record.ok, record.error
    head = records[0]
    assert (head.source, head.source_id) == ("matbench_dielectric", "matbench_dielectric:0")
    assert head.position.endswith("structures.jsonl.gz:0")
    assert head.structure.composition.reduced_formula == "KS"
    assert records[7].position.endswith(":7")


def test_fast_pymatgen_dict_equals_from_dict(corpus_dicts: list[dict], shared_data: Path) -> None:
    structures = [d["structure"] for d in corpus_dicts]
    # Matbench dicts carry site labels and (empty or magmom) site properties: they must survive.
    phonons = json.loads(
        gzip.decompress((shared_data / "matbench/matbench_phonons.json.gz").read_bytes())
    )
    structures += [row["structure"] for row in phonons[:50]]
    for data in structures:
        # as_dict equality is exact (species, order, coordinates, labels, properties, charge);
        # Structure.__eq__ would also do but costs 25 ms a structure.
        assert structure_from_pymatgen_dict(data).as_dict() == Structure.from_dict(data).as_dict()


def test_corpus_uses_the_fast_path(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("Structure.from_dict should not be needed for plain corpus dicts")

    monkeypatch.setattr(Structure, "from_dict", refuse)
    assert all(r.ok for r in first(read_file(shared_data / CORPUS), 50))


def test_fast_path_covers_oxidation_states_and_falls_back_for_the_rest() -> None:
    lattice = Lattice.cubic(4.2)
    coords = [[0, 0, 0], [0.5, 0.5, 0.5]]
    decorated = Structure(lattice, ["Na+", "Cl-"], coords, charge=0)
    disordered = Structure(lattice, [{"Fe": 0.5, "Mn": 0.5}, "O"], coords)
    magnetic = Structure(
        lattice, ["Fe", "O"], coords, site_properties={"magmom": [4.0, 0.0]}, labels=["Fe1", "O1"]
    )
    uneven = Structure(lattice, ["Na", "Cl"], coords)
    uneven[0].properties["magmom"] = 1.0  # only one site has it: from_dict's job
    for structure in (decorated, disordered, magnetic, uneven):
        data = structure.as_dict()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # from_dict warns about the uneven properties
            assert (
                structure_from_pymatgen_dict(data).as_dict() == Structure.from_dict(data).as_dict()
            )


def test_matbench_columns_layout_ids_and_target(shared_data: Path) -> None:
    path = shared_data / "matbench/matbench_dielectric.json.gz"
    records = first(read_file(path), 3)
    assert [r.source_id for r in records] == [f"mb-dielectric-000{i}" for i in (1, 2, 3)]
    assert records[0].source == "matbench_dielectric"
    assert records[0].properties["n"] == pytest.approx(1.7520636404)
    assert records[0].structure.composition.reduced_formula == "KS"
    file = discover([path])[0]
    assert file.format == "json"
    last = list(read_unit(WorkUnit(0, (UnitPart(file, 4763, 4764),))))
    assert [r.source_id for r in last] == ["mb-dielectric-4764"]


def test_matbench_list_of_records_layout(shared_data: Path) -> None:
    records = first(read_file(shared_data / "matbench/matbench_phonons.json.gz"), 3)
    assert [r.source_id for r in records] == [
        "mb-phonons-0001",
        "mb-phonons-0002",
        "mb-phonons-0003",
    ]
    assert records[0].properties["last phdos peak"] == pytest.approx(98.58577122703691)
    assert records[0].properties["sg_number"] == 225
    assert all(r.ok for r in records)


def test_matbench_ids_match_the_official_splits(shared_data: Path) -> None:
    splits = json.loads(
        (shared_data / "matbench/matbench_v0.1_validation_dielectric_phonons.json").read_text()
    )
    fold = splits["splits"]["matbench_phonons"]["fold_0"]
    official = set(fold["train"]) | set(fold["test"])
    records = first(read_file(shared_data / "matbench/matbench_phonons.json.gz"), 20)
    assert {r.source_id for r in records} <= official


@pytest.mark.parametrize(
    ("relative", "id_", "expected_properties"),
    [
        (
            "mp_20_biternary/test.csv.gz",
            "mp-10009",
            {"formation_energy_per_atom", "band_gap", "e_above_hull"},
        ),
        ("mpts_52/test.csv.gz", "mp-31117", {"formation_energy_per_atom", "year", "theoretical"}),
        ("perov_5/test.csv", "3961", {"heat_all", "dir_gap"}),
        ("carbon_24/test.csv", "C-13927-8536-14", {"energy_per_atom"}),
        ("wbm/val.csv.gz", "val:0", {"formation_energy_per_atom", "band_gap"}),
    ],
)
def test_cif_csv_tables(
    shared_data: Path, relative: str, id_: str, expected_properties: set[str]
) -> None:
    records = first(read_file(shared_data / relative), 3)
    for record in records:
        assert_well_formed(record)
        assert record.ok, record.error
        assert "cif" not in record.properties and "material_id" not in record.properties
        assert expected_properties <= set(record.properties)
    assert records[0].source_id == id_
    assert records[0].position.endswith(f"{relative}:0")
    numeric = records[0].properties[sorted(expected_properties)[0]]
    assert isinstance(numeric, int | float)


def test_mpts_52_types(shared_data: Path) -> None:
    record = first(read_file(shared_data / "mpts_52/test.csv.gz"), 1)[0]
    assert record.properties["year"] == 2004
    assert record.properties["theoretical"] is False
    assert record.structure.composition.reduced_formula == "NdScO3"


def test_phonondb_jsonl_with_mp_ids(shared_data: Path) -> None:
    records = first(read_file(shared_data / "phonondb/structures.jsonl.gz"), 3)
    assert records[0].source_id == "mp-1000"
    assert records[0].properties["spg"] == 225
    assert "structure" not in records[0].properties
    assert all(r.ok for r in records)


def test_petretto_csv_with_ase_style_structures(shared_data: Path) -> None:
    records = first(read_file(shared_data / "petretto_phdos/data.csv"), 3)
    assert records[0].source_id == "mp-1000"
    assert records[0].structure.composition.reduced_formula == "BaTe"
    assert all(r.ok for r in records)


def test_discover_real_folder(shared_data: Path) -> None:
    files = discover([shared_data / "matbench", shared_data / "mp_20_biternary"])
    formats = {Path(f.path).name: f.format for f in files}
    assert formats["matbench_dielectric.json.gz"] == "json"
    assert formats["test.csv.gz"] == "csv"
    assert formats["README"] == "error"  # a text file: one error record, not a crash
    assert [f.path for f in files] == [
        f.path for f in discover([shared_data / "matbench", shared_data / "mp_20_biternary"])
    ]
    compressed = next(f for f in files if f.path.endswith("test.csv.gz"))
    assert compressed.compression == "gzip"


# ---------------------------------------------------------------------------------------------
# Files written from real structures
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Malformed inputs
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Work units
# ---------------------------------------------------------------------------------------------


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
    import cluster.readers as readers

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
