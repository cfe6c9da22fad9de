"""Fixtures of the training jobs' tests: a real pretrained tiny package."""

from __future__ import annotations

from pathlib import Path

import pytest

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
