"""Rebuild the small real-data sample in data/ from the full sets in ../shared/data.

    python data/make_sample.py [--shared ../shared/data]

Deterministic: the same full sets give the same sample. data/README.md says what each file
is, where it came from and its licence.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
csv.field_size_limit(sys.maxsize)

# Matbench dielectric rows whose space group is the same at symprec 1e-4 … 5e-2 (one per
# group, 118 groups): robust crystals for the SCOPE invariance property tests.
ROBUST_DIELECTRIC_ROWS = (
    0, 2, 3, 5, 6, 7, 8, 11, 13, 14, 22, 24, 28, 29, 31, 33, 34, 35, 37, 38, 39, 43, 45, 52,
    54, 55, 56, 58, 66, 71, 72, 75, 76, 79, 83, 86, 95, 96, 99, 101, 112, 113, 115, 116, 128,
    138, 156, 160, 172, 173, 178, 182, 185, 186, 190, 191, 199, 200, 210, 225, 231, 234, 241,
    243, 247, 255, 274, 275, 287, 290, 295, 300, 312, 315, 333, 339, 347, 349, 358, 380, 417,
    450, 467, 496, 498, 510, 547, 548, 559, 581, 627, 628, 645, 666, 674, 707, 775, 804, 838,
    840, 884, 901, 914, 938, 943, 950, 976, 1014, 1045, 1128, 1179, 1200, 1234, 1244, 1319,
    1351, 1391, 1433,
)  # fmt: skip
DIELECTRIC_ROWS = 800
PHONONS_ROWS = 300
CORPUS_EVERY = 35
PETRETTO_ROWS = 400
PHONONDB_ROWS = 300
AFLOW_ROWS = {"train": 400, "val": 80, "test": 80}


def read_gz_json(path: Path) -> object:
    with gzip.open(path, "rb") as f:
        return json.loads(f.read())


def write_gz_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(json.dumps(obj).encode())


def sample_matbench(shared: Path) -> None:
    full = read_gz_json(shared / "matbench/matbench_dielectric.json.gz")
    keep = sorted(set(range(DIELECTRIC_ROWS)) | set(ROBUST_DIELECTRIC_ROWS))
    sample = {col: {str(i): values[str(i)] for i in keep} for col, values in full.items()}
    write_gz_json(HERE / "matbench/matbench_dielectric_sample.json.gz", sample)
    phonons = read_gz_json(shared / "matbench/matbench_phonons.json.gz")
    write_gz_json(HERE / "matbench/matbench_phonons_sample.json.gz", phonons[:PHONONS_ROWS])
    for name in (
        "matbench_v0.1_validation_dielectric_phonons.json",
        "matbench_v0.1_dataset_metadata.json",
    ):
        shutil.copyfile(shared / "matbench" / name, HERE / "matbench" / name)


def sample_corpus(shared: Path) -> None:
    out = HERE / "corpus/structures_sample.jsonl.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        gzip.open(shared / "corpus/structures.jsonl.gz", "rt") as src,
        gzip.GzipFile(out, "wb", mtime=0) as dst,
    ):
        for i, line in enumerate(src):
            if i % CORPUS_EVERY == 0:
                dst.write(line.encode())


def sample_petretto(shared: Path) -> None:
    src = shared / "petretto_phdos"
    dst = HERE / "petretto_phdos"
    dst.mkdir(parents=True, exist_ok=True)
    with open(src / "data.csv", newline="") as f:
        rows = list(csv.reader(f))
    with open(dst / "data_sample.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows[: PETRETTO_ROWS + 1])
    for split in ("train", "valid", "test"):
        indices = [int(x) for x in (src / f"idx_{split}.txt").read_text().split()]
        kept = [i for i in indices if i < PETRETTO_ROWS]
        (dst / f"idx_{split}.txt").write_text("".join(f"{i}\n" for i in kept))
    shutil.copyfile(src / "LICENSE", dst / "LICENSE")


def sample_phonondb(shared: Path) -> None:
    dst = HERE / "phonondb"
    dst.mkdir(parents=True, exist_ok=True)
    with gzip.open(shared / "phonondb/thermal.jsonl.gz", "rt") as f:
        thermal = [line for _, line in zip(range(PHONONDB_ROWS), f, strict=False)]
    ids = {json.loads(line)["mp_id"] for line in thermal}
    with gzip.open(shared / "phonondb/structures.jsonl.gz", "rt") as f:
        structures = [line for line in f if json.loads(line)["mp_id"] in ids]
    for name, lines in (("thermal", thermal), ("structures", structures)):
        with gzip.GzipFile(dst / f"{name}_sample.jsonl.gz", "wb", mtime=0) as out:
            out.write("".join(lines).encode())


def sample_aflow(shared: Path) -> None:
    for split, n in AFLOW_ROWS.items():
        src = shared / f"aflow/debye_temperature/{split}.csv.gz"
        dst = HERE / f"aflow/debye_temperature/{split}.csv.gz"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(src, "rt", newline="") as f:
            rows = list(csv.reader(f))[: n + 1]
        with gzip.GzipFile(dst, "wb", mtime=0) as out:
            text = "".join(",".join(_csv_cell(c) for c in row) + "\n" for row in rows)
            out.write(text.encode())


def _csv_cell(value: str) -> str:
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def copy_cloud_reference(shared: Path) -> None:
    dst = HERE / "cloud_reference"
    dst.mkdir(parents=True, exist_ok=True)
    for name in (
        "LICENSE",
        "finetune_dielectric_test.csv",
        "pretrain_cloud_10k.csv",
        "cloud_cv_test.csv",
    ):
        shutil.copyfile(shared / "cloud_reference" / name, dst / name)


def pair_released_dielectric_strings(shared: Path) -> None:
    """Record which Matbench row each released test-fold string was made from.

    The released file has only the SCOPE string and the refractive index n; n identifies the
    row when it is unique over the whole data set, which the sample alone cannot tell.
    """
    full = read_gz_json(shared / "matbench/matbench_dielectric.json.gz")
    rows_by_n: dict[float, list[str]] = {}
    for key, n in full["n"].items():
        rows_by_n.setdefault(round(n, 8), []).append(key)
    sample = read_gz_json(HERE / "matbench/matbench_dielectric_sample.json.gz")
    with open(shared / "cloud_reference/finetune_dielectric_test.csv", newline="") as f:
        released = list(csv.DictReader(f))
    out = HERE / "cloud_reference/finetune_dielectric_test_pairs.csv"
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["matbench_row", "mb_id", "scope"])
        for row in released:
            keys = rows_by_n.get(round(float(row["n"]), 8), [])
            if len(keys) == 1 and keys[0] in sample["n"]:
                writer.writerow([keys[0], f"mb-dielectric-{int(keys[0]) + 1:04d}", row["scope"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "data")
    shared = parser.parse_args().shared
    for step in (
        sample_matbench,
        sample_corpus,
        sample_petretto,
        sample_phonondb,
        sample_aflow,
        copy_cloud_reference,
        pair_released_dielectric_strings,
    ):
        step(shared)
        print(f"done: {step.__name__}")


if __name__ == "__main__":
    main()
