"""Task registry, Matbench folds by mb-id, given / index splits, validation carving, scores."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from train import tasks as T
from train.finetune.loading import task_structures
from train.tasks import (
    Fold,
    FoldSplit,
    GivenSplits,
    IndexSplit,
    Task,
    assert_disjoint,
    carve_validation,
    get_task,
    load_task,
    read_matbench,
    read_matbench_folds,
    roc_auc,
    score_classification,
    score_regression,
    split_fold,
)

FOLDS_FILE = "matbench/matbench_v0.1_validation_dielectric_phonons.json"
NO_ROOT = "/nonexistent/cloud-data-root"  # forces the shipped sample


@pytest.fixture(scope="module")
def dielectric_sample() -> T.TaskData:
    return load_task("matbench_dielectric", NO_ROOT)


@pytest.fixture(scope="module")
def aflow_sample() -> T.TaskData:
    return load_task("aflow_debye_temperature", NO_ROOT)


# ----------------------------------------------------------------------------- registry


def test_registry_declares_the_benchmarks() -> None:
    expected = {
        "matbench_dielectric",
        "matbench_phonons",
        "aflow_debye_temperature",
        "aflow_bulk_modulus",
        "aflow_shear_modulus",
        "aflow_thermal_conductivity",
        "castelli_formation_energy",
        "castelli_band_gap",
        "mp20_formation_energy",
        "mp20_band_gap",
        "mpts52_formation_energy",
    }
    assert expected <= set(T.task_names())
    assert "mpts52_band_gap" not in T.task_names()  # MPTS-52 has no band-gap column
    dielectric = get_task("matbench_dielectric")
    assert dielectric.reference_scores == {
        "MODNet": 0.2711,
        "coGN": 0.3088,
        "CrabNet": 0.3234,
        "Dummy": 0.8088,
    }
    assert get_task("matbench_phonons").reference_scores["MegNet"] == 28.76
    assert get_task("matbench_phonons").reference_scores["Dummy"] == 323.98
    with pytest.raises(ValueError, match="unknown task"):
        get_task("matbench_nope")


def test_task_declaration_is_validated() -> None:
    splits = GivenSplits(train="a.csv", test="b.csv")
    with pytest.raises(ValueError, match="metric"):
        Task(name="x", target="y", splits=splits, metric="rocauc")
    with pytest.raises(ValueError, match="task_type"):
        Task(name="x", target="y", splits=splits, task_type="ranking")
    with pytest.raises(ValueError, match="keep_rule"):
        Task(name="x", target="y", splits=splits, keep=lambda value: True)
    with pytest.raises(ValueError, match="already registered"):
        T.register_task(get_task("matbench_dielectric"))


@pytest.mark.shared_data
def test_declared_task_files_exist_in_the_shared_data(shared_data: Path) -> None:
    for task in T.iter_tasks():
        resolved = T.resolve_files(task, shared_data, allow_sample=False)
        assert not resolved.is_sample
        assert all(path.is_file() for path in resolved.paths.values()), task.name


@pytest.mark.shared_data
def test_declared_target_columns_exist(shared_data: Path) -> None:
    # One row of each file of each CSV-backed task is enough to check the column names.
    from cluster.readers import read_file

    for task in T.iter_tasks():
        if task.reader != "records":
            continue
        for path in T.resolve_files(task, shared_data, allow_sample=False).paths.values():
            record = next(iter(read_file(path)))
            assert task.target in record.properties, (task.name, path, sorted(record.properties))


# ----------------------------------------------------------------------------- Matbench folds


def test_sample_falls_back_and_restricts_the_official_folds(dielectric_sample) -> None:
    report = dielectric_sample.report
    assert report.is_sample
    assert report.n_rows == 821
    assert any("NOT comparable" in note for note in report.notes)
    official = read_matbench_folds(T.SAMPLE_ROOT / FOLDS_FILE, "matbench_dielectric")
    assert [f.name for f in dielectric_sample.folds] == [f.name for f in official]
    for fold, full in zip(dielectric_sample.folds, official, strict=True):
        assert set(fold.train_ids) <= set(full.train_ids)
        assert set(fold.test_ids) <= set(full.test_ids)
        assert not set(fold.train_ids) & set(fold.test_ids)
    every_test = [i for fold in dielectric_sample.folds for i in fold.test_ids]
    assert sorted(every_test) == sorted(dielectric_sample.examples)  # each row tested once


def test_sample_rows_get_their_official_mb_ids(dielectric_sample) -> None:
    with gzip.open(T.SAMPLE_ROOT / "matbench/matbench_dielectric_sample.json.gz", "rt") as f:
        table = json.load(f)
    labels = list(table["n"])
    assert labels[-1] != str(len(labels) - 1)  # keys are original rows, not positions
    for label in (labels[0], labels[500], labels[-1]):
        mb_id = f"mb-dielectric-{int(label) + 1:04d}"
        assert dielectric_sample.examples[mb_id].target == pytest.approx(table["n"][label])


def test_phonons_sample_ids(tmp_path: Path) -> None:
    data = load_task("matbench_phonons", NO_ROOT)
    assert data.report.is_sample
    assert sorted(data.examples)[:2] == ["mb-phonons-0001", "mb-phonons-0002"]
    assert "mb-phonons-0300" in data.examples and len(data.examples) == 300
    official = read_matbench_folds(T.SAMPLE_ROOT / FOLDS_FILE, "matbench_phonons")
    for fold, full in zip(data.folds, official, strict=True):
        assert set(fold.test_ids) <= set(full.test_ids)


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["matbench_dielectric", "matbench_phonons"])
def test_full_dataset_rows_match_the_official_folds(shared_data: Path, name: str) -> None:
    # The ids a reader gives, checked against the official splits (no SCOPE encoding: fast).
    task = get_task(name)
    rows = read_matbench(shared_data / task.splits.data, task, {})
    official = read_matbench_folds(shared_data / FOLDS_FILE, name)
    ids = [row.id for row in rows]
    assert ids == [f"mb-{name.removeprefix('matbench_')}-{i + 1:04d}" for i in range(len(ids))]
    for fold in official:
        assert set(fold.train_ids) | set(fold.test_ids) == set(ids)
        assert not set(fold.train_ids) & set(fold.test_ids)
    tests = [i for fold in official for i in fold.test_ids]
    assert sorted(tests) == sorted(ids)


@pytest.mark.slow
@pytest.mark.shared_data
def test_full_phonons_load_reproduces_the_official_folds(shared_data: Path) -> None:
    data = load_task("matbench_phonons", shared_data)
    assert not data.report.is_sample and data.report.n_rows == 1265
    official = read_matbench_folds(shared_data / FOLDS_FILE, "matbench_phonons")
    assert data.folds == official
    assert data.report.n_usable == data.report.n_rows, data.report.lines()


def test_rows_not_in_the_official_folds_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "matbench").mkdir(parents=True)
    shutil.copy(T.SAMPLE_ROOT / FOLDS_FILE, root / FOLDS_FILE)
    with gzip.open(T.SAMPLE_ROOT / "matbench/matbench_phonons_sample.json.gz", "rt") as f:
        records = json.load(f)
    with gzip.open(root / "matbench/matbench_phonons.json.gz", "wt") as f:
        json.dump(
            {"structure": {"99999": records[0]["structure"]}, "last phdos peak": {"99999": 1.0}}, f
        )
    with pytest.raises(ValueError, match="not in the official"):
        load_task("matbench_phonons", root, allow_sample=False)


# ----------------------------------------------------------------------------- resolving files


def test_missing_files_without_fallback_are_an_error() -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        load_task("matbench_dielectric", NO_ROOT, allow_sample=False)
    with pytest.raises(FileNotFoundError, match="no complete shipped sample"):
        load_task("castelli_band_gap", NO_ROOT)  # no sample in data/


# ----------------------------------------------------------------------------- given splits


def test_given_splits_keep_their_roles(aflow_sample) -> None:
    (fold,) = aflow_sample.folds
    assert (len(fold.train_ids), len(fold.val_ids), len(fold.test_ids)) == (400, 80, 80)
    roles = {aflow_sample.examples[i].role for i in fold.test_ids}
    assert roles == {"test"}
    split = split_fold(aflow_sample, fold)
    assert split.val_ids == fold.val_ids  # a given validation set is used as it is
    assert_disjoint(split)


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _aflow_rows(split: str, n: int) -> list[dict[str, str]]:
    import csv

    with gzip.open(T.SAMPLE_ROOT / f"aflow/debye_temperature/{split}.csv.gz", "rt") as f:
        return [dict(row) for row, _ in zip(csv.DictReader(f), range(n), strict=False)]


def test_pooled_training_files_add_training_rows_only(tmp_path: Path) -> None:
    _write_csv(tmp_path / "t/train.csv.gz", _aflow_rows("train", 20))
    _write_csv(tmp_path / "u/extra.csv.gz", _aflow_rows("val", 10))
    _write_csv(tmp_path / "t/test.csv.gz", _aflow_rows("test", 8))
    splits = GivenSplits(
        train="t/train.csv.gz", more_train=("u/extra.csv.gz",), test="t/test.csv.gz"
    )
    task = Task(name="tmp_pooled", target="debye_temperature", splits=splits)
    data = load_task(task, tmp_path)
    (fold,) = data.folds
    assert len(fold.train_ids) == 30 and len(fold.test_ids) == 8 and fold.val_ids is None
    assert {data.examples[i].role for i in fold.train_ids} == {"train"}
    assert sum(i.startswith("extra:") for i in fold.train_ids) == 10
    assert data.report.files["train+1"] == str(tmp_path / "u/extra.csv.gz")
    split = split_fold(data, fold, val_fraction=0.2, seed=0)
    assert len(split.train_ids) + len(split.val_ids) == 30
    assert_disjoint(split)


def test_pooled_files_whose_row_ids_collide_are_refused(tmp_path: Path) -> None:
    # Both files are named train.csv.gz and have no id column: both name row 0 "train:0".
    _write_csv(tmp_path / "t/train.csv.gz", _aflow_rows("train", 5))
    _write_csv(tmp_path / "u/train.csv.gz", _aflow_rows("train", 5))
    _write_csv(tmp_path / "t/test.csv.gz", _aflow_rows("test", 5))
    splits = GivenSplits(
        train="t/train.csv.gz", more_train=("u/train.csv.gz",), test="t/test.csv.gz"
    )
    task = Task(name="tmp_clash", target="debye_temperature", splits=splits)
    with pytest.raises(ValueError, match=r"id 'train:0' occurs twice .*u/train\.csv\.gz"):
        load_task(task, tmp_path)


def test_unusable_rows_are_reported_never_dropped(tmp_path: Path) -> None:
    train = _aflow_rows("train", 30)
    train[3]["cif"] = "data_broken\n_cell_length_a 3\nloop_\n"
    train[5]["debye_temperature"] = ""
    disordered = train[7]["cif"].replace("_atom_site_occupancy\n", "_atom_site_occupancy\n", 1)
    train[7]["cif"] = _with_half_occupancy(disordered)
    _write_csv(tmp_path / "t/train.csv.gz", train)
    _write_csv(tmp_path / "t/test.csv.gz", _aflow_rows("test", 10))
    task = Task(
        name="tmp_debye",
        target="debye_temperature",
        splits=GivenSplits(train="t/train.csv.gz", test="t/test.csv.gz"),
    )
    data = load_task(task, tmp_path)
    report = data.report
    assert report.n_rows == 40 and report.n_usable == 37
    kinds = set(report.problems)
    assert any(k.startswith("read:") for k in kinds)
    assert any(k.startswith("target:") for k in kinds)
    assert any("partial occupancy" in k for k in kinds), kinds
    text = "\n".join(report.lines())
    assert "train:3" in text and "train:5" in text
    assert len(data.examples) == 40  # kept, with their errors
    split = split_fold(data, data.folds[0], val_fraction=0.2, seed=1)
    assert set(split.excluded) == {"train:3", "train:5", "train:7"}
    assert not set(split.excluded) & (set(split.train_ids) | set(split.val_ids))
    assert len(split.train_ids) + len(split.val_ids) == 27


def test_rows_a_task_keeps_out_are_in_no_fold_and_counted(tmp_path: Path) -> None:
    # The shape of pbe_band_gap_nonmetals: a keep rule on the raw target, in train and test;
    # the rows it rejects are no rows of the task (in no fold), only counted.
    train, test = _aflow_rows("train", 30), _aflow_rows("test", 10)
    threshold = sorted(float(row["debye_temperature"]) for row in train + test)[20]
    train.append({**train[0], "debye_temperature": ""})  # no target: reported, not "outside"
    _write_csv(tmp_path / "t/train.csv.gz", train)
    _write_csv(tmp_path / "t/test.csv.gz", test)
    task = Task(
        name="tmp_hot",
        target="debye_temperature",
        splits=GivenSplits(train="t/train.csv.gz", test="t/test.csv.gz"),
        keep=lambda theta: float(theta) >= threshold,
        keep_rule=f"debye_temperature >= {threshold}",
    )
    data = load_task(task, tmp_path)
    report = data.report
    usable = {i: e for i, e in data.examples.items() if e.ok}
    assert len(usable) == 20 and all(e.target >= threshold for e in usable.values())
    assert data.examples["train:30"].error == "target: missing debye_temperature"
    assert (report.n_rows, report.n_usable, report.n_outside) == (21, 20, 20)
    assert set(task_structures(task, tmp_path)) == set(data.examples)
    assert f"kept rows with debye_temperature >= {threshold}; 20 others" in "\n".join(
        report.lines()
    )
    split = split_fold(data, data.folds[0], val_fraction=0.2, seed=0)
    used = set(split.train_ids) | set(split.val_ids) | set(split.test_ids)
    assert used == set(usable) and set(split.excluded) == {"train:30"}
    expected_test = sum(float(row["debye_temperature"]) >= threshold for row in test)
    assert len(split.test_ids) == expected_test


def test_the_non_metal_gap_stage_keeps_non_metals_only() -> None:
    task = get_task("pbe_band_gap_nonmetals")
    assert task.splits == get_task("pbe_band_gap").splits
    assert [task.keep(gap) for gap in (0.0, "0.0", 0.01, 3.2)] == [False, False, True, True]


def _with_half_occupancy(cif: str) -> str:
    # Turn the first site's occupancy into 0.5: a disordered structure SCOPE cannot encode.
    lines = cif.splitlines()
    header = [i for i, line in enumerate(lines) if line.strip().startswith("_atom_site_")]
    columns = [lines[i].strip() for i in header]
    first_site = header[-1] + 1
    fields = lines[first_site].split()
    fields[columns.index("_atom_site_occupancy")] = "0.5"
    lines[first_site] = "  " + " ".join(fields)
    return "\n".join(lines) + "\n"


def test_index_split(tmp_path: Path) -> None:
    _write_csv(tmp_path / "d/data.csv.gz", _aflow_rows("train", 20))
    (tmp_path / "d/idx_train.txt").write_text("\n".join(map(str, range(0, 12))))
    (tmp_path / "d/idx_val.txt").write_text("12 13 14")
    (tmp_path / "d/idx_test.txt").write_text("15\n16\n17\n18\n19\n")
    task = Task(
        name="tmp_index",
        target="debye_temperature",
        splits=IndexSplit(
            data="d/data.csv.gz",
            train_index="d/idx_train.txt",
            val_index="d/idx_val.txt",
            test_index="d/idx_test.txt",
        ),
    )
    data = load_task(task, tmp_path)
    (fold,) = data.folds
    ordered = list(data.examples)
    assert fold.train_ids == tuple(ordered[:12])
    assert fold.val_ids == tuple(ordered[12:15])
    assert fold.test_ids == tuple(ordered[15:])
    (tmp_path / "d/idx_test.txt").write_text("15 99")
    with pytest.raises(ValueError, match="outside"):
        load_task(task, tmp_path)


def test_phonondb_rows_carry_the_highest_frequency_in_inverse_cm(tmp_path: Path) -> None:
    data = load_task("phonondb_max_frequency", NO_ROOT)
    assert data.report.is_sample and data.report.n_usable == data.report.n_rows == 300
    with gzip.open(T.SAMPLE_ROOT / "phonondb/thermal_sample.jsonl.gz", "rt") as handle:
        first = json.loads(handle.readline())
    example = data.examples[first["mp_id"]]
    assert example.target == pytest.approx(first["max_freq_THz"] * 33.35641)
    assert example.ok and example.scope
    (fold,) = data.folds
    assert (len(fold.train_ids), len(fold.test_ids)) == (270, 30)
    assert not set(fold.train_ids) & set(fold.test_ids)
    assert load_task("phonondb_max_frequency", NO_ROOT).folds[0] == fold  # seeded, stable


def test_phonondb_material_without_a_structure_is_kept_with_its_reason(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "phonondb").mkdir(parents=True)
    shutil.copy(
        T.SAMPLE_ROOT / "phonondb/thermal_sample.jsonl.gz", root / "phonondb/thermal.jsonl.gz"
    )
    with gzip.open(T.SAMPLE_ROOT / "phonondb/structures_sample.jsonl.gz", "rt") as handle:
        lines = handle.readlines()
    missing = json.loads(lines[5])["mp_id"]
    with gzip.open(root / "phonondb/structures.jsonl.gz", "wt") as handle:
        handle.writelines(lines[:5] + lines[6:])
    data = load_task("phonondb_max_frequency", root)
    assert not data.report.is_sample and data.report.n_rows == 300
    assert data.report.n_usable == 299
    assert "no structure for this mp_id" in (data.examples[missing].error or "")


# ----------------------------------------------------------------------------- validation carve


def test_validation_is_carved_from_training_and_removed(dielectric_sample) -> None:
    fold = dielectric_sample.folds[0]
    split = split_fold(dielectric_sample, fold, val_fraction=0.1, seed=0)
    train, val, test = set(split.train_ids), set(split.val_ids), set(split.test_ids)
    assert not train & val and not train & test and not val & test
    assert train | val == set(fold.train_ids)
    assert test == set(fold.test_ids)
    assert len(val) == round(0.1 * len(fold.train_ids))
    again = split_fold(dielectric_sample, fold, val_fraction=0.1, seed=0)
    other = split_fold(dielectric_sample, fold, val_fraction=0.1, seed=1)
    assert again.val_ids == split.val_ids and other.val_ids != split.val_ids


def test_carve_validation_edge_cases() -> None:
    train, val = carve_validation(["a", "b"], 0.01, seed=0)
    assert len(val) == 1 and len(train) == 1  # at least one each
    train, val = carve_validation([f"x{i}" for i in range(100)], 0.25, seed=3)
    assert len(val) == 25 and not set(train) & set(val)


def test_assert_disjoint_catches_leaks() -> None:
    with pytest.raises(AssertionError, match="train∩test"):
        assert_disjoint(FoldSplit("fold_0", ("a", "b"), ("c",), ("b", "d"), {}))
    with pytest.raises(AssertionError, match="val∩test"):
        assert_disjoint(FoldSplit("fold_0", ("a",), ("c",), ("c",), {}))


def test_split_refuses_empty_sets(aflow_sample) -> None:
    fold = Fold("fold_0", (), aflow_sample.folds[0].test_ids)
    with pytest.raises(ValueError, match="need at least one"):
        split_fold(aflow_sample, fold)


# ----------------------------------------------------------------------------- scores


def test_regression_scores() -> None:
    scores = score_regression([1.0, 2.0, 4.0], [1.5, 2.0, 1.0])
    assert scores["mae"] == pytest.approx((0.5 + 0 + 3) / 3)
    assert scores["rmse"] == pytest.approx(np.sqrt((0.25 + 9) / 3))
    assert scores["max_error"] == pytest.approx(3.0)
    assert scores["mape"] == pytest.approx((0.5 + 0 + 0.75) / 3)
    assert set(scores) == set(T.REGRESSION_METRICS)


def test_roc_auc_matches_pair_counting() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.4
    scores = np.round(rng.random(200), 1)  # ties on purpose
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert roc_auc(labels, scores) == pytest.approx(pairs)
    assert np.isnan(roc_auc(np.ones(3, bool), np.arange(3.0)))


def test_classification_scores() -> None:
    truth = [0, 0, 1, 1]
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    scores = score_classification(truth, probs, 2)
    assert scores["accuracy"] == 0.75
    assert scores["balanced_accuracy"] == pytest.approx(0.75)
    assert scores["f1"] == pytest.approx(0.8)
    assert scores["rocauc"] == 1.0
    assert set(scores) == set(T.CLASSIFICATION_METRICS)
