"""`cloud scope encode`: CIF, POSCAR, pymatgen JSON and stdin; bad files named, others kept."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pymatgen.core import Structure
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from tokenizer import encode, parse
from train.cli import main


@pytest.fixture(scope="module")
def released_pairs(repo_data: Path) -> list[tuple[Structure, str]]:
    """Real Matbench crystals with the SCOPE string the CLOUD release wrote for them."""
    with gzip.open(repo_data / "matbench/matbench_dielectric_sample.json.gz", "rb") as f:
        structures = json.loads(f.read())["structure"]
    with open(repo_data / "cloud_reference/finetune_dielectric_test_pairs.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:3]
    return [(Structure.from_dict(structures[r["matbench_row"]]), r["scope"]) for r in rows]


@pytest.fixture()
def structure_files(tmp_path: Path, released_pairs: list[tuple[Structure, str]]) -> list[Path]:
    (a, _), (b, _), (c, _) = released_pairs
    cif = tmp_path / "first.cif"
    CifWriter(a).write_file(cif)
    poscar = tmp_path / "POSCAR"
    Poscar(b).write_file(poscar)
    as_json = tmp_path / "third.json"
    as_json.write_text(json.dumps(c.as_dict()))
    return [cif, poscar, as_json]


def test_encodes_cif_poscar_and_json(
    structure_files: list[Path], released_pairs: list[tuple[Structure, str]], capsys
) -> None:
    # CIF and POSCAR writers regroup sites by element, and the released format follows site
    # order; the canonical variant does not, so it must equal that of the original crystal.
    assert main(["scope", "encode", "--variant", "canonical", *map(str, structure_files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [encode(s, "canonical") for s, _ in released_pairs]


def test_pymatgen_json_keeps_site_order_and_gives_the_released_string(
    structure_files: list[Path], released_pairs: list[tuple[Structure, str]], capsys
) -> None:
    assert main(["scope", "encode", str(structure_files[2])]) == 0
    assert capsys.readouterr().out.strip() == released_pairs[2][1]


def test_bad_file_is_named_others_still_encoded_and_exit_is_nonzero(
    structure_files: list[Path], tmp_path: Path, capsys
) -> None:
    bad = tmp_path / "broken.cif"
    bad.write_text("data_broken\n_cell_length_a 3.0\nthis is not a CIF loop\n")
    missing = tmp_path / "missing.cif"
    code = main(
        [
            "scope",
            "encode",
            str(structure_files[0]),
            str(bad),
            str(missing),
            str(structure_files[2]),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.splitlines()) == 2
    assert "broken.cif" in captured.err
    assert "missing.cif" in captured.err
    assert captured.err.count("error:") == 2


def test_partial_occupancy_is_reported_with_the_reason(tmp_path: Path, capsys) -> None:
    alloy = Structure.from_spacegroup(
        "Fm-3m", [[3.6, 0, 0], [0, 3.6, 0], [0, 0, 3.6]], [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]
    )
    path = tmp_path / "alloy.cif"
    CifWriter(alloy).write_file(path)
    assert main(["scope", "encode", str(path)]) == 1
    assert "partial occupancy" in capsys.readouterr().err


def test_json_records_and_variants(structure_files: list[Path], capsys) -> None:
    assert (
        main(["scope", "encode", "--json", "--variant", "canonical", str(structure_files[0])]) == 0
    )
    record = json.loads(capsys.readouterr().out)
    assert record["file"] == str(structure_files[0])
    assert parse(record["scope"]).variant == "canonical"
    assert parse(record["scope"]).space_group == record["space_group"]
    assert record["formula"]


def test_reads_standard_input_through_the_console_command(
    structure_files: list[Path], released_pairs: list[tuple[Structure, str]]
) -> None:
    cloud = Path(sys.executable).with_name("cloud")
    result = subprocess.run(
        [str(cloud), "scope", "encode", "-", "--symprec", "0.01"],
        input=structure_files[2].read_bytes(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == released_pairs[2][1]


def test_a_closed_pipe_ends_quietly(repo_data: Path) -> None:
    # The README's first command: `cloud scope encode … | head -3`.
    cloud = Path(sys.executable).with_name("cloud")
    sample = repo_data / "matbench/matbench_dielectric_sample.json.gz"
    result = subprocess.run(
        f"set -o pipefail; '{cloud}' scope encode '{sample}' | head -3",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.stdout.decode().count("\n") == 3
    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    assert "BrokenPipeError" not in result.stderr.decode()
    assert result.returncode == 0
