"""Shared fixtures: the repository's data, ../shared/data when present, one Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.ray_env import setdefault_loopback

# Ray must stay on loopback: without these it listens on every interface.
setdefault_loopback(os.environ)
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
REPO_DATA = REPO / "data"
SHARED_DATA = Path(os.environ.get("CLOUD_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def repo_data() -> Path:
    """The small real sample shipped in the repository's data/ folder."""
    return REPO_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the clone; tests that need it skip, saying why, when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(
            f"needs the full data sets in {SHARED_DATA} (../shared/data beside the clone; "
            "CI has it, a user's clone does not)"
        )
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session, on loopback only (see the env above)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # address="local": a new Ray of our own even when another one runs on this machine
        # (a user's, or a test's Ray-in-SLURM job), which ray.init would otherwise join.
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory, ray_session) -> Path:
    """WebDataset shards built once from the shipped corpus sample (2,986 real structures)."""
    from cluster.corpus import build_corpus

    out = tmp_path_factory.mktemp("sample_corpus")
    build_corpus(
        [REPO_DATA / "corpus" / "structures_sample.jsonl.gz"],
        out,
        shard_size=500,
        workers=2,
        ray_address="auto",
        variants=("cloud", "canonical"),
        progress=False,
    )
    return out


TINY_PRETRAIN_STEPS = 300


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory, sample_corpus: Path) -> Path:
    """A real pretrained export package: the ``debug`` flavour trained with masked LM for
    300 steps on the ``sample_corpus`` shards (plain PyTorch in this process; the DeepSpeed
    path is tested in test_pretrain.py), saved with ``cloud.export.save_pretrained``."""
    import torch

    from cloud import CloudForMaskedLM, family
    from cloud.export import save_pretrained
    from tokenizer import ScopeTokenizer
    from train.data import CorpusStream, split_train_val
    from train.masking import MLMMasker, make_generator

    tokenizer = ScopeTokenizer()
    train_shards, _ = split_train_val(sample_corpus, val_shards=1)
    stream = CorpusStream(
        train_shards,
        tokenizer=tokenizer,
        batch_size=32,
        variant="cloud",
        seed=0,
        shuffle_buffer=300,
    )
    caller_rng, caller_threads = torch.get_rng_state(), torch.get_num_threads()
    # One thread: on two shared cores two contending threads are ~10x slower than one.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = family(
        "debug", vocab_size=tokenizer.vocab_size, hidden_dropout=0.0, attention_dropout=0.0
    )
    model = CloudForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    masker = MLMMasker.from_tokenizer(tokenizer)
    losses = []
    for step, batch in enumerate(stream):
        if step == TINY_PRETRAIN_STEPS:
            break
        inputs, labels = masker(batch["input_ids"], make_generator(0, step))
        loss = model(inputs, batch["attention_mask"], labels, batch["segment_ids"]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    torch.set_rng_state(caller_rng)
    torch.set_num_threads(caller_threads)
    out = tmp_path_factory.mktemp("tiny_pretrained") / "package"
    metadata = {
        "training": {
            "objective": "masked LM (15 %, 80/10/10)",
            "steps": len(losses),
            "first_loss": losses[0],
            "final_loss": sum(losses[-20:]) / 20,
        },
        "training_data": {"corpus": "data/corpus/structures_sample.jsonl.gz", "variant": "cloud"},
    }
    save_pretrained(model.eval(), tokenizer, out, metadata=metadata)
    return out


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real one-node Slurm (munged, slurmctld, slurmd) on 127.0.0.1 for the session, torn
    down at its end (tests/slurm_cluster.py); skips saying why where the programs are missing
    or the daemons do not start."""
    from tests import slurm_cluster as slurm

    reason = slurm.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        cluster = slurm.start_cluster(tmp_path_factory.mktemp("slurm"))
    except slurm.SlurmStartError as exc:
        pytest.skip(f"the Slurm daemons did not start here: {exc}")
    yield cluster
    cluster.stop()
