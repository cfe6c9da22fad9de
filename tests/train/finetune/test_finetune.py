"""Fine-tuning: the head, export round trip, the Matbench protocol (no test id in training
or early stopping, training-fold standardisation), results layout, CLI and predictions."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud import CloudForMaskedLM, family
from cloud.export import is_package, load_pretrained, save_pretrained
from cloud.heads import CloudForPropertyPrediction, HeadConfig
from tokenizer import ScopeTokenizer
from train import finetune as FT
from train.finetune.trainer import _fold_rows as fold_rows
from train.tasks import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    SAMPLE_ROOT,
    GivenSplits,
    Task,
    get_task,
    load_task,
    split_fold,
)

NO_ROOT = "/nonexistent/cloud-data-root"  # forces the shipped sample
REPO = Path(__file__).resolve().parents[3]


def _debug_config(**overrides) -> object:
    return family("debug", vocab_size=ScopeTokenizer().vocab_size, **overrides)


def _config(tmp: Path, checkpoint: Path, **values) -> FT.FinetuneConfig:
    base = {
        "task": "matbench_dielectric",
        "checkpoint": str(checkpoint),
        "out": str(tmp),
        "folds": [0],
        "data_root": NO_ROOT,
        "threads": 1,  # two shared cores: one thread each is much faster than contending
        "device": "cpu",
        "baselines": [],  # the dielectric_run fixture and the tests that need them ask for them
    }
    return FT.config_from_dict({**base, **values})


# ----------------------------------------------------------------------------- the head


def test_head_shapes_and_config() -> None:
    torch.manual_seed(0)
    ids = torch.randint(6, 60, (3, 9))
    regression = CloudForPropertyPrediction(_debug_config(), HeadConfig(hidden_sizes=[16, 8]))
    assert regression(ids).shape == (3, 1)
    classifier = CloudForPropertyPrediction(
        _debug_config(), HeadConfig(task_type="classification", num_outputs=3, hidden_sizes=[])
    )
    probabilities = classifier.predict(ids)
    assert probabilities.shape == (3, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="classes"):
        HeadConfig(task_type="classification", num_outputs=1)
    with pytest.raises(ValueError, match="unknown HeadConfig"):
        HeadConfig.from_dict({"hidden": [3]})


def test_target_scaling_round_trip() -> None:
    model = CloudForPropertyPrediction(_debug_config(), HeadConfig())
    model.set_target_scaling(torch.tensor(5.0), torch.tensor(2.0))
    y = torch.tensor([1.0, 5.0, 9.0])
    assert torch.allclose(model.standardise(y), torch.tensor([-2.0, 0.0, 2.0]))
    assert torch.allclose(model.destandardise(model.standardise(y)[:, None])[:, 0], y)
    model.set_target_scaling(3.0, 0.0)  # a constant target must not divide by zero
    assert model.target_scale.item() == 1.0


def test_from_pretrained_encoder_copies_the_encoder() -> None:
    torch.manual_seed(1)
    masked_lm = CloudForMaskedLM(_debug_config())
    model = CloudForPropertyPrediction.from_pretrained_encoder(masked_lm, HeadConfig(), dropout=0.2)
    for name, tensor in masked_lm.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name
    assert model.config.hidden_dropout == 0.2 and masked_lm.config.hidden_dropout == 0.1
    model.encoder.embeddings.word.weight.data.add_(1.0)  # a copy, not shared storage
    assert not torch.equal(
        model.encoder.embeddings.word.weight, masked_lm.encoder.embeddings.word.weight
    )


def test_fine_tuned_model_is_a_normal_export_package(tmp_path: Path) -> None:
    torch.manual_seed(2)
    tokenizer = ScopeTokenizer()
    model = CloudForPropertyPrediction(
        _debug_config(), HeadConfig(hidden_sizes=[12], activation="silu")
    )
    model.set_target_scaling(torch.tensor(7.5), torch.tensor(3.0))
    out = save_pretrained(
        model.eval(), tokenizer, tmp_path / "pkg", metadata={"finetune": {"task": "x"}}
    )
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"]["name"] == "CloudForPropertyPrediction"
    assert config["architecture"]["module"] == "cloud.heads"
    package = load_pretrained(out)
    assert isinstance(package.model, CloudForPropertyPrediction)
    assert package.model.head_config == model.head_config
    ids = torch.tensor([tokenizer.encode("1 6 a O D D 0 | 4a 4b | Na 0.5 Cl 0.5")])
    assert torch.equal(package.model.predict(ids), model.predict(ids))
    assert package.model.target_mean.item() == 7.5


def test_model_card_says_unitless_for_a_dimensionless_target(tmp_path: Path) -> None:
    model = CloudForPropertyPrediction(_debug_config(), HeadConfig(hidden_sizes=[12]))
    finetune = {
        "task": "matbench_dielectric",
        "target": "n",
        "unit": get_task("matbench_dielectric").unit,
    }
    out = save_pretrained(
        model.eval(), ScopeTokenizer(), tmp_path / "n", metadata={"finetune": finetune}
    )
    card = (out / "README.md").read_text().splitlines()
    assert "- unit: unitless" in card
    assert not [line for line in card if line.rstrip().endswith(":") and "unit" in line]
    assert load_pretrained(out).metadata["finetune"]["unit"] == ""  # the metadata stays exact
    phonons = {"task": "matbench_phonons", "unit": get_task("matbench_phonons").unit}
    out = save_pretrained(
        model.eval(), ScopeTokenizer(), tmp_path / "w", metadata={"finetune": phonons}
    )
    assert "- unit: cm⁻¹" in (out / "README.md").read_text().splitlines()


# ----------------------------------------------------------------------------- optimisation


def test_layer_wise_learning_rates() -> None:
    model = CloudForPropertyPrediction(_debug_config(), HeadConfig())  # 2 layers
    config = FT.FinetuneConfig(lr=1.0, head_lr=10.0, layer_decay=0.5, weight_decay=0.1)
    lr_of = {}
    decay_of = {}
    for group in FT.parameter_groups(model, config):
        for param in group["params"]:
            lr_of[id(param)] = group["lr"]
            decay_of[id(param)] = group["weight_decay"]
    named = dict(model.named_parameters())
    assert lr_of[id(named["encoder.embeddings.word.weight"])] == 0.25
    assert lr_of[id(named["encoder.layers.0.mlp.up.weight"])] == 0.5
    assert lr_of[id(named["encoder.layers.1.mlp.up.weight"])] == 1.0
    assert lr_of[id(named["encoder.final_norm.weight"])] == 1.0
    assert lr_of[id(named["head.mlp.1.weight"])] == 10.0
    assert decay_of[id(named["encoder.layers.1.mlp.up.weight"])] == 0.1
    assert decay_of[id(named["encoder.layers.1.mlp.up.bias"])] == 0.0
    assert len(lr_of) == len(named)  # every parameter in exactly one group


def test_lr_schedule() -> None:
    kwargs = {"warmup_steps": 10, "max_steps": 100, "min_ratio": 0.1}
    factors = [FT.lr_factor(s, **kwargs) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))


def test_leak_guard() -> None:
    guard = FT.LeakGuard(["t1", "t2"])
    guard.check_fit_batch("training", ["a", "b"])
    with pytest.raises(AssertionError, match="test ids reached training"):
        guard.check_fit_batch("training", ["a", "t2"])
    guard.open_test()
    with pytest.raises(AssertionError, match="already predicted"):
        guard.open_test()


# ----------------------------------------------------------------------------- config


def test_config_files_load_and_overrides_apply() -> None:
    for path in sorted((REPO / "configs" / "finetune").glob("*.yaml")):
        config = FT.load_config(path, ["epochs=3", "head.dropout=0.2"], task="matbench_phonons")
        assert config.epochs == 3 and config.head.dropout == 0.2, path
    with pytest.raises(ValueError, match="unknown finetune config key"):
        FT.load_config(None, ["learning_rate=1e-3"])
    with pytest.raises(ValueError, match="must be a number"):
        FT.load_config(None, ["lr=fast"])
    assert FT.load_config(None, ["lr=1e-4"]).lr == 1e-4  # YAML reads 1e-4 as a string


def test_parse_folds() -> None:
    assert FT.parse_folds("0-4") == [0, 1, 2, 3, 4]
    assert FT.parse_folds("3,1") == [1, 3]
    assert FT.parse_folds(None) is None and FT.parse_folds("all") is None
    with pytest.raises(ValueError):
        FT.parse_folds("-1")


# ----------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def dielectric_run(tmp_path_factory: pytest.TempPathFactory, tiny_pretrained: Path):
    """The tiny pretrained model fine-tuned on fold 0 of the dielectric sample, with every
    batch's ids recorded."""
    fed: dict[str, list[str]] = defaultdict(list)

    def observe(stage: str, ids) -> None:
        fed[stage].extend(ids)

    out = tmp_path_factory.mktemp("finetune_dielectric")
    config = _config(
        out,
        tiny_pretrained,
        epochs=10,
        patience=4,
        batch_size=32,
        lr=3e-3,
        head_lr=3e-3,
        layer_decay=0.8,
        freeze_encoder_epochs=1,
        head={"hidden_sizes": [64], "dropout": 0.0},
        encoder_dropout=0.0,
        baselines=list(FT.BASELINES),
    )
    data = load_task("matbench_dielectric", NO_ROOT)
    result = FT.run_finetune(config, data=data, observer=observe)
    return result, data, config, fed


def test_fine_tuned_tiny_model_beats_the_mean_predictor(dielectric_run) -> None:
    result, *_ = dielectric_run
    (fold,) = result.folds
    assert fold.scores["mae"] < fold.baseline_scores["mae"], (fold.scores, fold.baseline_scores)
    history = fold.history
    assert min(h["val/mae"] for h in history) < history[0]["val/mae"]  # it learnt something


def test_every_report_carries_the_random_init_and_classical_baselines(dielectric_run) -> None:
    result, data, *_ = dielectric_run
    (fold,) = result.folds
    test_ids = set(data.folds[0].test_ids)
    for name in ("random_init", "classical"):
        baseline = fold.baselines[name]
        assert set(baseline.predictions) == test_ids  # the same test rows as the model
        assert baseline.scores["mae"] < fold.baseline_scores["mae"]  # both learn something
        assert baseline.predictions != fold.predictions
    summary = json.loads((result.out / FT.SUMMARY_FILE).read_text())
    assert set(summary["baselines"]) == {"random_init", "classical"}
    assert summary["baselines"]["classical"]["mae"]["mean"] == pytest.approx(
        fold.baselines["classical"].scores["mae"]
    )
    report = (result.out / FT.REPORT_FILE).read_text()
    assert "same recipe, random initialisation" in report
    assert "random forest on SCOPE features" in report
    assert "the random forest on SCOPE features baseline by" in report  # the verdict line
    document = FT.read_results(result.out / FT.RESULTS_FILE)
    stored = document["user_metadata"]["baselines"]["classical"]["results"]["fold_0"]
    assert set(stored["data"]) == test_ids
    assert stored["scores"]["mae"] == pytest.approx(fold.baselines["classical"].scores["mae"])


def test_the_random_init_baseline_starts_from_fresh_weights(tiny_pretrained: Path) -> None:
    package = load_pretrained(tiny_pretrained)
    fresh = FT.randomly_initialised(package.model)
    pretrained = package.model.encoder.state_dict()
    changed = [k for k, v in fresh.state_dict().items() if not torch.equal(v, pretrained[k])]
    assert "embeddings.word.weight" in changed and "layers.0.mlp.up.weight" in changed
    assert fresh.config == package.model.encoder.config


def test_an_ensemble_averages_members_that_differ(tmp_path: Path, tiny_pretrained: Path) -> None:
    data = load_task("matbench_dielectric", NO_ROOT)
    package = load_pretrained(tiny_pretrained)
    single = FT.finetune_fold(
        data, 0, package.model, package.tokenizer, _config(tmp_path, tiny_pretrained, epochs=2)
    )
    pair = FT.finetune_fold(
        data,
        0,
        package.model,
        package.tokenizer,
        _config(tmp_path, tiny_pretrained, epochs=2, ensemble=2),
    )
    assert len(pair.parameters["ensemble_best_val_scores"]) == 2
    scores = pair.parameters["ensemble_best_val_scores"]
    assert scores[0] == pytest.approx(single.best_val)  # member 0 is the single-model run
    assert scores[0] != scores[1]
    assert set(pair.predictions) == set(single.predictions)
    assert pair.predictions != single.predictions


def test_fine_tuning_logs_one_progress_line_per_epoch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import re

    data = load_task("matbench_dielectric", NO_ROOT)
    torch.manual_seed(0)
    config = _config(
        tmp_path,
        tmp_path,
        epochs=3,
        patience=0,
        freeze_encoder_epochs=1,
        max_train_rows=64,
        baselines=["random_init"],
    )
    with caplog.at_level(logging.INFO, logger="train.finetune"):
        result = FT.finetune_fold(
            data, 0, CloudForMaskedLM(_debug_config()), ScopeTokenizer(), config
        )
    line = re.compile(
        r"(?P<run>.+) epoch (?P<epoch>\d+)/3(?P<frozen> \(encoder frozen\))?: train loss \S+, "
        r"val mae \S+ \(best \S+ at epoch \d\), \d+ s"
    )
    matches = [line.fullmatch(record.getMessage()) for record in caplog.records]
    runs = [(m["run"], int(m["epoch"]), bool(m["frozen"])) for m in matches if m]
    fold = "matbench_dielectric fold_0"
    baseline = f"{fold} random-init baseline"
    assert runs == [
        (fold, 1, True), (fold, 2, False), (fold, 3, False),
        (baseline, 1, True), (baseline, 2, False), (baseline, 3, False),
    ]  # fmt: skip
    last_of_fold = next(m.string for m in matches if m and m["run"] == fold and m["epoch"] == "3")
    best = f"(best {result.best_val:.4g} at epoch {result.parameters['best_epoch']})"
    assert best in last_of_fold


def test_unknown_baselines_and_empty_ensembles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown baselines"):
        _config(tmp_path, tmp_path, baselines=["gnn"])
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        _config(tmp_path, tmp_path, ensemble=0)


def test_no_test_id_reaches_training_or_early_stopping(dielectric_run) -> None:
    result, data, config, fed = dielectric_run
    split = split_fold(data, data.folds[0], val_fraction=config.val_fraction, seed=config.seed)
    test_ids = set(data.folds[0].test_ids)
    assert fed["train"] and fed["val"]
    assert not test_ids & set(fed["train"])
    assert not test_ids & set(fed["val"])
    assert not set(fed["train"]) & set(fed["val"])  # validation rows never trained on
    assert set(fed["train"]) == set(split.train_ids)
    assert set(fed["val"]) == set(split.val_ids)
    # The test fold is predicted once, at the end: each test id exactly once.
    assert sorted(fed["test"]) == sorted(test_ids)
    assert set(result.folds[0].predictions) == test_ids


def test_standardisation_uses_training_rows_only(dielectric_run) -> None:
    result, data, _, fed = dielectric_run
    model = result.folds[0].model
    train = np.array([data.examples[i].target for i in set(fed["train"])])
    assert model.target_mean.item() == pytest.approx(train.mean(), rel=1e-5)
    assert model.target_scale.item() == pytest.approx(train.std(), rel=1e-4)
    everything = np.array([e.target for e in data.examples.values()])
    assert abs(everything.mean() - train.mean()) > 1e-4  # the check would notice a leak


def test_results_are_in_matbench_layout(dielectric_run) -> None:
    result, data, *_ = dielectric_run
    document = FT.read_results(result.out / FT.RESULTS_FILE)
    assert {"@module", "@class", "version", "tasks", "user_metadata", "datestamp", "hash"} <= set(
        document
    )
    task_doc = document["tasks"]["matbench_dielectric"]
    assert task_doc["benchmark_name"] == "matbench_v0.1"
    fold = task_doc["results"]["fold_0"]
    assert set(fold) == {"data", "parameters", "scores"}
    assert set(fold["data"]) == set(data.folds[0].test_ids)
    assert all(key.startswith("mb-dielectric-") for key in fold["data"])
    assert set(fold["scores"]) == set(REGRESSION_METRICS)
    assert all(isinstance(v, float) for v in fold["scores"].values())
    assert fold["parameters"]["baseline_scores"]["mae"] > fold["scores"]["mae"]
    stats = document["user_metadata"]["fold_statistics"]["matbench_dielectric"]["mae"]
    assert set(stats) == {"mean", "max", "min", "std"}
    assert stats["mean"] == pytest.approx(fold["scores"]["mae"])
    assert document["user_metadata"]["is_sample"] is True


def test_run_outputs(dielectric_run) -> None:
    result, *_ = dielectric_run
    out = result.out
    report = (out / FT.REPORT_FILE).read_text()
    assert "mean predictor" in report and "MODNet" in report and "0.2711" in report
    assert "SHIPPED SAMPLE" in report  # the sample is called out
    assert (out / "fold_0" / "parity.png").stat().st_size > 1000
    assert list((out / "fold_0" / "tensorboard").glob("events.out.tfevents.*"))
    metrics = [
        json.loads(line) for line in (out / "fold_0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert {"train/loss", "val/mae"} <= set(metrics[0])
    assert is_package(out / "model")
    package = load_pretrained(out / "model")
    assert package.metadata["finetune"]["task"] == "matbench_dielectric"
    summary = json.loads((out / FT.SUMMARY_FILE).read_text())
    table = FT.metrics_table(result.task, result.folds, summary)
    assert "mean ± std" in table and "baseline mae" in table


def test_unusable_test_rows_get_the_training_mean(tmp_path: Path, tiny_pretrained: Path) -> None:
    import shutil

    root = tmp_path / "root"
    (root / "t").mkdir(parents=True)
    with gzip.open(SAMPLE_ROOT / "aflow/debye_temperature/train.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    train, test = rows[:40], rows[40:50]
    test[2]["cif"] = "data_broken\n_cell_length_a 3\nloop_\n"
    for name, part in (("train", train), ("test", test)):
        with gzip.open(root / "t" / f"{name}.csv.gz", "wt", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    task = Task(
        name="tmp_fallback",
        target="debye_temperature",
        splits=GivenSplits(train="t/train.csv.gz", test="t/test.csv.gz"),
    )
    data = load_task(task, root)
    package = load_pretrained(tiny_pretrained)
    config = _config(tmp_path / "out", tiny_pretrained, task="tmp_fallback", epochs=1)
    fold = FT.finetune_fold(data, 0, package.model, package.tokenizer, config)
    assert len(fold.predictions) == 10
    assert list(fold.parameters["test_fallback_to_train_mean"]) == ["test:2"]
    fit_ids = [i for i in data.folds[0].train_ids]
    train_mean = np.mean([data.examples[i].target for i in fit_ids])
    assert fold.predictions["test:2"] == pytest.approx(train_mean)
    assert fold.parameters["n_test_scored"] == 9  # the broken row has no target to score
    shutil.rmtree(root)


def test_classification_task(tmp_path: Path, tiny_pretrained: Path) -> None:
    # A classification task declared in a few lines: high refractive index (n > 2.2).
    task = Task(
        name="tmp_high_n",
        target="n",
        splits=get_task("matbench_dielectric").splits,
        reader="matbench",
        task_type="classification",
        metric="rocauc",
        label=lambda n: float(n) > 2.2,
    )
    data = load_task(task, NO_ROOT)
    package = load_pretrained(tiny_pretrained)
    config = _config(
        tmp_path,
        tiny_pretrained,
        epochs=8,
        lr=3e-3,
        head_lr=3e-3,
        head={"hidden_sizes": [64], "dropout": 0.0},
        encoder_dropout=0.0,
        baselines=["classical"],
    )
    fold = FT.finetune_fold(data, 0, package.model, package.tokenizer, config)
    assert set(fold.scores) == set(CLASSIFICATION_METRICS)
    forest = fold.baselines["classical"]
    assert set(forest.predictions) == set(fold.predictions)
    assert forest.scores["rocauc"] > 0.6, forest.scores
    assert fold.parameters["classes"] == [False, True]
    probabilities = np.array(list(fold.predictions.values()))
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert fold.baseline_scores["rocauc"] == pytest.approx(0.5)
    assert fold.scores["rocauc"] > 0.6, fold.scores


# ----------------------------------------------------------------------------- CLI and predict


@pytest.fixture(scope="module")
def phonons_cli_run(tmp_path_factory: pytest.TempPathFactory, tiny_pretrained: Path) -> Path:
    from train.cli import main

    out = tmp_path_factory.mktemp("cli_finetune")
    code = main(
        [
            "finetune",
            "--checkpoint",
            str(tiny_pretrained),
            "--task",
            "matbench_phonons",
            "--folds",
            "0",
            "--out",
            str(out),
            "--data-root",
            NO_ROOT,
            "--config",
            str(REPO / "configs" / "finetune" / "smoke.yaml"),
            "threads=1",
        ]
    )
    assert code == 0
    return out


def test_cli_finetune_writes_a_run(phonons_cli_run: Path, capsys) -> None:
    out = phonons_cli_run
    assert (out / "results.json.gz").is_file() and (out / "report.md").is_file()
    assert is_package(out / "model")
    assert "323.98" in (out / "report.md").read_text()  # the phonons references


def test_predict_matches_the_finetuned_predictions(phonons_cli_run: Path) -> None:
    # The phonons sample through `predict` gives, on fold 0's test rows, exactly what the
    # fine-tuning run recorded (same package, same SCOPE strings, same model).
    from train.finetune.predict import load_predictor, predict_files

    predictor = load_predictor(phonons_cli_run)  # the run dir: its model/ is used
    buffer = io.StringIO()
    predicted, failed = predict_files(
        predictor, [SAMPLE_ROOT / "matbench/matbench_phonons_sample.json.gz"], buffer
    )
    assert (predicted, failed) == (300, 0)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    by_row = {int(r["source"].rsplit(":", 1)[1]): r for r in rows}
    recorded = FT.read_results(phonons_cli_run / FT.RESULTS_FILE)
    data = recorded["tasks"]["matbench_phonons"]["results"]["fold_0"]["data"]
    for mb_id, value in data.items():
        row = by_row[int(mb_id.rsplit("-", 1)[1]) - 1]
        assert float(row["prediction"]) == pytest.approx(value, rel=1e-4), mb_id


def test_cli_predict_lists_bad_structures(phonons_cli_run: Path, tmp_path: Path, capsys) -> None:
    from pymatgen.core import Lattice, Structure

    from train.cli import main

    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )
    nacl.to(filename=str(tmp_path / "nacl.cif"))
    (tmp_path / "broken.cif").write_text("data_broken\n_cell_length_a 3\nloop_\n")
    disordered = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    (tmp_path / "structures.json").write_text(json.dumps([nacl.as_dict(), disordered.as_dict()]))
    out_csv = tmp_path / "predictions.csv"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(phonons_cli_run / "model"),
            "--input",
            str(tmp_path / "nacl.cif"),
            str(tmp_path / "broken.cif"),
            str(tmp_path / "structures.json"),
            "--out",
            str(out_csv),
        ]
    )
    assert code == 1  # some structures had no prediction
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["nacl", "broken", "structures:0", "structures:1"]
    assert list(rows[0]) == ["id", "source", "scope", "prediction", "error"]
    good = [r for r in rows if not r["error"]]
    bad = [r for r in rows if r["error"]]
    assert len(good) == 2 and len(bad) == 2
    assert all(r["prediction"] and r["scope"].startswith("1 6 a") for r in good)
    assert all(r["prediction"] == "" for r in bad)
    assert "partial occupancy" in bad[1]["error"]
    stderr = capsys.readouterr().err
    assert "broken.cif" in stderr and "partial occupancy" in stderr
    assert "2 structures predicted, 2 without a prediction" in stderr


def test_predict_refuses_a_pretrained_package(tiny_pretrained: Path) -> None:
    from train.finetune.predict import load_predictor

    with pytest.raises(ValueError, match="not a fine-tuned"):
        load_predictor(tiny_pretrained)


def test_the_same_crystal_under_another_scope_string_is_excluded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A material relaxed twice (Materials Project, phonondb) can be read as two space groups;
    # its SCOPE strings then differ, but it is still the benchmark's material.
    from pymatgen.io.cif import CifWriter

    from train.finetune import tasks as tasks_module
    from train.finetune.loading import encode_structure, task_structures

    structures = list(task_structures("matbench_dielectric", NO_ROOT).values())

    def shaken(structure):
        moved = structure.copy()
        moved.translate_sites([0], [0.04, 0.0, 0.0], frac_coords=False)
        return moved

    same = next(s for s in structures if encode_structure(shaken(s)) != encode_structure(s))
    formulas = {s.composition.reduced_formula for s in structures}
    other = next(
        s
        for s in task_structures("aflow_debye_temperature", NO_ROOT).values()
        if s.composition.reduced_formula not in formulas
    )
    rows = [
        {"id": name, "cif": str(CifWriter(structure)), "y": "1.0"}
        for name, structure in (("as-is", same), ("shaken", shaken(same)), ("other", other))
    ]
    for split in ("train", "test"):
        path = tmp_path / f"t/{split}.csv"
        path.parent.mkdir(exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "cif", "y"])
            writer.writeheader()
            writer.writerows(rows if split == "train" else [{**rows[2], "id": "other-test"}])
    task = tasks_module.Task(
        name="tmp_relaxed", target="y", splits=GivenSplits(train="t/train.csv", test="t/test.csv")
    )
    monkeypatch.setitem(tasks_module.TASKS, task.name, task)
    from train.finetune import loading

    files_read: list[str] = []
    for kind, reader in list(loading.READERS.items()):

        def counted(path, *args, _reader=reader, **kwargs):
            files_read.append(Path(path).name)
            return _reader(path, *args, **kwargs)

        monkeypatch.setitem(loading.READERS, kind, counted)
    data = load_task(task, tmp_path, keep_structures=True)
    config = _config(
        tmp_path,
        tmp_path,
        task=task.name,
        data_root=str(tmp_path),
        exclude_tasks=["matbench_dielectric"],
    )
    blocked = FT.blocked_rows(data, config, "cloud")
    assert set(blocked) == {"as-is", "shaken"}  # "other" is trained on
    # Each file is read once: the structures come with the loaded rows.
    assert sorted(files_read) == sorted(
        ["train.csv", "test.csv", "matbench_dielectric_sample.json.gz"]
    ), files_read
    assert data.examples["shaken"].scope not in {
        e.scope for e in load_task("matbench_dielectric", NO_ROOT).examples.values()
    }
    assert blocked["shaken"] == "excluded: the same crystal as a structure of matbench_dielectric"


def test_rows_of_an_excluded_task_are_never_trained_on(tmp_path: Path) -> None:
    # The intermediate-stage guard: a property set fine-tuned before a benchmark must not
    # train on the benchmark's structures. Here the task excludes itself, so every row with
    # a SCOPE string is blocked from training and validation.
    data = load_task("matbench_dielectric", NO_ROOT)
    config = _config(tmp_path, tmp_path, exclude_tasks=["matbench_dielectric"])
    blocked = FT.blocked_rows(data, config, "cloud")
    usable = {i for i, e in data.examples.items() if e.scope is not None}
    assert set(blocked) == usable
    assert all("matbench_dielectric" in reason for reason in blocked.values())
    tokenizer = ScopeTokenizer()
    encoded = FT.encode_examples(data, tokenizer, 128)
    encoded.blocked = dict(list(blocked.items())[: len(blocked) // 2])
    rows = fold_rows(data, 0, encoded, config)
    assert not set(encoded.blocked) & {*rows.train, *rows.val}
    assert set(encoded.blocked) & set(data.folds[0].train_ids) <= set(rows.excluded)
    assert set(rows.test_usable) == set(data.folds[0].test_ids) & set(encoded.ids)


def test_predict_with_a_pretrained_package_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from train.cli import main

    package = save_pretrained(CloudForMaskedLM(_debug_config()), ScopeTokenizer(), tmp_path / "pt")
    sample = REPO / "data/matbench/matbench_phonons_sample.json.gz"
    code = main(["predict", "--checkpoint", str(package), "--input", str(sample)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"{package} is a pretrained package" in err and "no prediction head" in err
    assert f"cloud finetune --checkpoint {package} --task TASK" in err
    with pytest.raises(ValueError, match="no prediction head"):  # --debug shows the real error
        main(["--debug", "predict", "--checkpoint", str(package), "--input", str(sample)])


@pytest.mark.slow
def test_an_interrupted_run_resumes_keeping_its_finished_folds(
    tmp_path: Path, tiny_pretrained: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run stopped after fold 0, then resumed over folds 0-1: fold 0 is read back (not
    trained again), fold 1 is trained, and the results are those of one uninterrupted run;
    a fold made with other settings is run again."""
    quick = {"epochs": 2, "baselines": ["classical"]}
    run_dir = tmp_path / "run"
    first = FT.run_finetune(_config(run_dir, tiny_pretrained, **quick, folds=[0]))
    assert (run_dir / "fold_0" / "result.json").is_file() and (run_dir / "model").is_dir()
    with caplog.at_level("INFO", logger="train.finetune"):
        resumed = FT.run_finetune(
            _config(run_dir, tiny_pretrained, **quick, folds=[0, 1], resume=True)
        )
    assert "fold_0: kept from the earlier run" in caplog.text
    assert "fold_1: kept" not in caplog.text
    straight = FT.run_finetune(
        _config(tmp_path / "straight", tiny_pretrained, **quick, folds=[0, 1])
    )
    assert resumed.folds[0].predictions == first.folds[0].predictions
    for mine, theirs in zip(resumed.folds, straight.folds, strict=True):
        assert mine.fold == theirs.fold
        assert mine.scores == pytest.approx(theirs.scores, rel=1e-6)
        assert mine.baselines["classical"].scores == theirs.baselines["classical"].scores
    with gzip.open(run_dir / "results.json.gz", "rt") as handle:
        written = json.load(handle)
    assert sorted(written["tasks"]["matbench_dielectric"]["results"]) == ["fold_0", "fold_1"]

    caplog.clear()
    with caplog.at_level("INFO", logger="train.finetune"):
        FT.run_finetune(_config(run_dir, tiny_pretrained, epochs=1, folds=[0], resume=True))
    assert "made with other settings; running the fold again" in caplog.text
