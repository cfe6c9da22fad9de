"""Mistakes a newcomer makes on the command line end in one line that names what is wrong,
exit status 2 (1 for `cloud scope encode`, a filter whose unreadable inputs are reported as
they come), and no traceback; each case is refused before any work starts. (A corpus build of
missing inputs is a build that quarantines them, with the reasons printed:
tests/cluster/test_corpus.py.)"""

from __future__ import annotations

import os

import pytest

from train.cli import main

DEBUG = "configs/pretrain/debug.yaml"
MODEL = "models/cloud-tiny-canonical-el"

MISUSES = [
    ("pretrain --config configs/pretrain/nope.yaml", "nope.yaml"),
    (f"pretrain --config {DEBUG} optim.lrr=1", "unknown config key(s) ['lrr'] in section 'optim'"),
    (f"pretrain --config {DEBUG} optim.lr=abc", "optim.lr must be a number, got 'abc'"),
    (f"pretrain --config {DEBUG} data.corpus=/nonexistent", "/nonexistent: no corpus manifest"),
    (f"pretrain --config {DEBUG} checkpoint.interval=-1", "checkpoint.interval must be >= 0"),
    (f"pretrain --config {DEBUG} checkpoint.keep_last=-1", "checkpoint.keep_last"),
    (f"pretrain --config {DEBUG} train.eval_interval=-2", "train.eval_interval"),
    (f"pretrain --config {DEBUG} optim.warmup_steps=-3", "optim.warmup_steps"),
    (f"pretrain --config {DEBUG} data.max_length=2", "data.max_length must be >= 8, got 2"),
    (f"pretrain --config {DEBUG} model.flavour=giant", "unknown CLOUD flavour 'giant'"),
    (f"pretrain --config {DEBUG} system.zero_stage=5", "system.zero_stage must be 0-3, got 5"),
    (f"pretrain --config {DEBUG} train.max_steps", "is not of the form dotted.key=value"),
    (f"pretrain --config {DEBUG} optim.lr=[1", "override 'optim.lr=[1': the value is not YAML"),
    ("pretrain --config README.md", "README.md: not a YAML pretrain config (line"),
    ("export /nonexistent --out /tmp/cloud-misuse-x", "/nonexistent: no such directory"),
    ("export configs --out /tmp/cloud-misuse-x", "configs: neither a package"),
    ("finetune --checkpoint /nonexistent --task matbench_phonons", "is not a CLOUD package"),
    (f"finetune --checkpoint {MODEL} --task nope", "unknown task 'nope'"),
    (f"finetune --checkpoint {MODEL} --task matbench_phonons --folds 0-", "invalid fold list '0-'"),
    (f"finetune --checkpoint {MODEL} --task matbench_phonons epochs=0", "epochs, batch_size"),
    (f"finetune --checkpoint {MODEL} --task matbench_phonons lr=-1", "lr must be > 0"),
    (f"finetune --checkpoint {MODEL}", "--checkpoint and --task are needed"),
    (f"predict --checkpoint {MODEL} --input x.cif --out p.csv", "not a fine-tuned one"),
    (f"debye --checkpoint {MODEL} --data nope", "invalid choice: 'nope'"),
    (f"debye --checkpoint {MODEL} --data petretto --temperatures abc", "start:stop:step"),
    ("scope encode /nonexistent.cif", "/nonexistent.cif: no such file"),
    ("scope encode --variant fancy x.json", "invalid choice: 'fancy'"),
    ("corpus stats /nonexistent", "/nonexistent: no corpus manifest"),
    ("corpus build x.json --out /tmp/cloud-misuse-c --shard-size 0", "must be at least 1, got 0"),
    ("scaling fit /nonexistent.csv --out /tmp/cloud-misuse-f", "results CSV not found"),
    ("scaling sweep --config configs/scaling/nope.yaml", "nope.yaml"),
    ("submit slurm --nodes 0 --dry-run -- pretrain", "--nodes must be at least 1, got 0"),
    ("submit slurm --dry-run", "no JOB given"),
]


@pytest.fixture(autouse=True)
def _as_a_fresh_process():
    """Each command as if in its own process: `cloud pretrain` run in-process sets RANK and
    the other launcher variables and starts a one-process group before it reads the corpus;
    left behind, they would make later tests look like launched workers."""
    import torch.distributed as dist

    saved = dict(os.environ)
    had_group = dist.is_available() and dist.is_initialized()
    yield
    if not had_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize(("line", "message"), MISUSES, ids=[m[0][:60] for m in MISUSES])
def test_a_misuse_ends_in_one_line_naming_the_mistake(
    line: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from train.common.paths import REPO

    monkeypatch.chdir(REPO)
    try:
        status = main(line.split())
    except SystemExit as stop:  # argparse's own refusals
        status = stop.code
    err = capsys.readouterr().err
    assert status == (1 if line.startswith("scope encode /") else 2), err
    assert "Traceback" not in err
    assert message in err, err
    said = next(line for line in err.splitlines() if message in line)
    # Our own refusals and argparse's both begin "cloud COMMAND: "; the scope filter reports
    # each unreadable input as "error: PATH: reason" among its output.
    assert said.startswith("cloud ") or (status == 1 and said.startswith("error: ")), said
