"""Structure readers on the real data sets of ../shared/data: every layout they come in."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import pytest
from pymatgen.core import Lattice, Structure

from cluster.readers import (
    UnitPart,
    WorkUnit,
    discover,
    read_file,
    read_unit,
    structure_from_pymatgen_dict,
)
from tests.cluster.readers_support import CORPUS, assert_well_formed, first


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
