"""Fixtures several packages' tests share: the repository's data, ../shared/data when present,
one Ray per session and the real sample corpus built with it. Fixtures of one package's
tests live beside them (tests/cluster/conftest.py: the readers' structures and a one-node
Slurm; tests/train/conftest.py: a pretrained tiny package)."""

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


@pytest.fixture(autouse=True)
def _environment_restored():
    """Every test leaves os.environ as it found it: an in-process `cloud pretrain` or
    `run_pretraining` sets RANK, WORLD_SIZE and the socket interfaces, which would make a
    later test's `cloud pretrain --nproc-per-node N` child look like a launched worker."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
