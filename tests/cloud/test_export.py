"""Packages: export from real DeepSpeed ZeRO checkpoints, integrity checks, format versions,
the Hugging Face layout both ways, and the released WordPiece tokenizer.

The ZeRO tests train with the real pre-training ``Trainer`` in a 2-process torchrun (this file
is the worker: ``python -m torch.distributed.run ... tests/cloud/test_export.py``), which also saves
the live engine's logits on fixed inputs; the exported package must reproduce them exactly.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # when run as the torchrun worker script
    sys.path.insert(0, str(REPO))

from cloud import CloudConfig, CloudForMaskedLM, family, load_pretrained, save_pretrained  # noqa: E402
from cloud.export import (  # noqa: E402
    FORMAT_VERSION,
    PackageError,
    checksums_text,
    register_architecture,
    save_hf_pretrained,
)
from tokenizer import ScopeTokenizer  # noqa: E402
from tokenizer.released import ReleasedWordPieceTokenizer  # noqa: E402
from train.cli import main  # noqa: E402

FIXTURE_V1 = REPO / "tests" / "fixtures" / "export_v1"
RELEASED = REPO / "data" / "cloud_reference"
STAGES = (0, 2, 3)
# Worker runs: name → (ZeRO stage, precision). bf16 checkpoints keep fp32 masters apart.
RUNS = {
    **{f"stage{stage}": (stage, "fp32") for stage in STAGES},
    "bf16-stage0": (0, "bf16"),
    "bf16-stage2": (2, "bf16"),
}
SCOPES = [
    "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5",
    "1 3 a E C C n O O O e O O O 0 | 6c 3b 3a | O 0.5 Ca 0.25 Hg 0.25",
    "1 1 c O O D 0 | 4g 2f 2e | Li 0.27 Zr 0.2 O 0.53",
]


def released_strings(limit: int | None = None) -> list[str]:
    strings = []
    for name, column in (
        ("pretrain_cloud_10k.csv", "cloud"),
        ("finetune_dielectric_test.csv", "scope"),
        ("cloud_cv_test.csv", "cloud"),
    ):
        with open(RELEASED / name, newline="") as handle:
            strings += [row[column] for row in csv.DictReader(handle)]
    return strings[:limit] if limit else strings


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (LayerNorms and biases too): a mis-mapped tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.2
            param.copy_(noise + (1.0 if "norm.weight" in name or "LayerNorm.weight" in name else 0))
    return model.eval()


def scope_batch(tokenizer: ScopeTokenizer) -> dict[str, torch.Tensor]:
    batch = tokenizer.batch_encode(SCOPES)
    return {
        "input_ids": torch.from_numpy(batch.input_ids),
        "attention_mask": torch.from_numpy(batch.attention_mask),
        "segment_ids": torch.from_numpy(batch.segment_ids),
    }


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture
def debug_model() -> CloudForMaskedLM:
    return randomised(CloudForMaskedLM(family("debug", hidden_dropout=0.0, attention_dropout=0.0)))


# ----------------------------------------------------------------------------- packages


def test_round_trip_is_exact_and_ties_stay_tied(debug_model, tmp_path: Path) -> None:
    tokenizer = ScopeTokenizer()
    metadata = {
        "training": {"steps": 1200, "tokens": 3_400_000, "val_loss": 1.234},
        "training_data": {"corpus": "runs/corpus", "variant": "canonical", "num_samples": 42},
        "finetune": {"task": "matbench_dielectric", "metrics": {"mae": 0.271, "r2": 0.83}},
    }
    out = save_pretrained(debug_model, tokenizer, tmp_path / "pkg", metadata=metadata)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "SHA256SUMS", "config.json", "model.safetensors", "vocab.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    package = load_pretrained(out)
    batch = scope_batch(tokenizer)
    assert torch.equal(logits_of(package.model, batch), logits_of(debug_model, batch))
    model = package.model
    assert model.head.decoder.weight is model.encoder.embeddings.word.weight
    assert package.tokenizer == tokenizer and package.metadata == metadata
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "cloud-pretrained" and config["format_version"] == FORMAT_VERSION
    assert config["architecture"]["name"] == "CloudForMaskedLM"
    assert config["architecture"]["config"]["cloud_config"] == debug_model.config.to_dict()
    assert config["tokenizer"]["variant"] == "canonical"
    assert config["tokenizer"]["vocab_hash"] == tokenizer.vocab_hash
    assert config["weights"]["tied"] == {"head.decoder.weight": "encoder.embeddings.word.weight"}
    assert config["tool"]["name"] == "cloud-crystal" and config["created"].endswith("Z")

    card = (out / "README.md").read_text()
    for text in ("1,200", "3,400,000", "1.234", "matbench_dielectric", "0.271", "MIT",
                 "arXiv:2506.17345", "Intended use", "Limitations"):  # fmt: skip
        assert text in card, text
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True)
        assert check.returncode == 0, check.stdout


def test_every_file_of_a_package_is_world_readable(debug_model, tmp_path: Path) -> None:
    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert all(mode & 0o444 == 0o444 for mode in modes.values()), modes


def test_existing_package_is_not_replaced_without_overwrite(debug_model, tmp_path: Path) -> None:
    tokenizer = ScopeTokenizer()
    out = save_pretrained(debug_model, tokenizer, tmp_path / "pkg")
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(debug_model, tokenizer, out)
    save_pretrained(
        debug_model, tokenizer, out, metadata={"training": {"steps": 2}}, overwrite=True
    )
    assert load_pretrained(out).metadata["training"]["steps"] == 2


def test_export_refuses_to_replace_a_package_and_names_force(
    debug_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    export = ["export", str(package), "--out", str(tmp_path / "again")]
    assert main(export) == 0
    capsys.readouterr()
    assert main(export) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err
    assert main([*export, "--force"]) == 0


def tamper(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "vocab.json", "README.md"])
def test_tampered_file_is_refused_by_name(debug_model, tmp_path: Path, name: str) -> None:
    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    tamper(out / name, offset=len((out / name).read_bytes()) // 2)
    with pytest.raises(PackageError, match=rf"{name}: SHA-256 mismatch"):
        load_pretrained(out)


def test_vocab_hash_mismatch_is_refused_even_with_fresh_checksums(
    debug_model, tmp_path: Path
) -> None:
    from cloud.export import checksums_text

    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    vocab = json.loads((out / "vocab.json").read_text())
    vocab["tokens"][-1], vocab["tokens"][-2] = vocab["tokens"][-2], vocab["tokens"][-1]
    vocab.pop("vocab_hash")  # a consistent-looking edit: only config.json's hash catches it
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "SHA256SUMS").write_text(checksums_text(out))
    with pytest.raises(PackageError, match=r"vocab.json: vocabulary hash .* differs"):
        load_pretrained(out)


def test_unknown_format_version_and_missing_sums_are_refused(debug_model, tmp_path: Path) -> None:
    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    # Edited without new checksums it is a tampered file; a genuine future version (fresh
    # checksums) is refused for its version.
    with pytest.raises(PackageError, match=r"config.json: SHA-256 mismatch"):
        load_pretrained(out)
    (out / "SHA256SUMS").write_text(checksums_text(out))
    with pytest.raises(PackageError, match=r"config.json: format_version 99 is not supported"):
        load_pretrained(out)
    with pytest.raises(PackageError, match=r"config\.json: missing"):
        load_pretrained(FIXTURE_V1.parent)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PackageError, match="use `cloud import-hf`"):
        load_pretrained(bert)
    (out / "config.json").write_text(json.dumps(config))
    (out / "SHA256SUMS").unlink()
    with pytest.raises(PackageError, match="SHA256SUMS: missing"):
        load_pretrained(out)
    assert load_pretrained(out, verify=False).format_version == FORMAT_VERSION


def rewrite_package(out: Path, config: dict | None = None, tensors: dict | None = None) -> None:
    """Replace a package's config.json and/or weights and recompute SHA256SUMS, as a careful
    tamperer would: only the checks beyond the checksums can catch the edit."""
    from safetensors.torch import save_file

    if config is not None:
        (out / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "SHA256SUMS").write_text(checksums_text(out))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_layers", 200_000),
        ("hidden_size", 10**9),
        ("vocab_size", 2**40),
        ("max_position_embeddings", 10**8),
        ("num_heads", True),
    ],
)
def test_an_oversized_config_is_refused_by_key_before_anything_is_built(
    debug_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: Any
) -> None:
    import time

    import cloud.export.load

    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    config = json.loads((out / "config.json").read_text())
    config["architecture"]["config"]["cloud_config"][key] = value
    rewrite_package(out, config)
    monkeypatch.setattr(cloud.export.load, "expected_tensors", None)  # never reached: not callable
    started = time.perf_counter()
    with pytest.raises(
        PackageError, match=rf"config.json: architecture.config.cloud_config.{key} "
    ):
        load_pretrained(out)
    assert time.perf_counter() - started < 0.5


def test_a_config_within_each_limit_but_too_many_parameters_is_refused(
    debug_model, tmp_path: Path
) -> None:
    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    config = json.loads((out / "config.json").read_text())
    # 512 layers of width 8192 and MLP 32768: each size allowed, 412 B parameters in all.
    sizes = {"num_layers": 512, "hidden_size": 8192, "num_heads": 64, "intermediate_size": 32768}
    config["architecture"]["config"]["cloud_config"].update(sizes)
    rewrite_package(out, config)
    with pytest.raises(PackageError, match=r"config.json: .*cloud_config: the model would have"):
        load_pretrained(out)


def test_an_oversized_json_file_is_refused_before_it_is_parsed(
    debug_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloud.export.limits

    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    size = (out / "config.json").stat().st_size
    # as a 64 MiB file would be:
    monkeypatch.setattr(cloud.export.limits, "MAX_JSON_BYTES", size - 1)
    with pytest.raises(PackageError, match=rf"config.json: {size:,} bytes, more than"):
        load_pretrained(out)


def test_an_oversized_head_is_refused_by_key(tmp_path: Path) -> None:
    from cloud.heads import CloudForPropertyPrediction, HeadConfig

    model = CloudForPropertyPrediction(family("debug"), HeadConfig(hidden_sizes=[16]))
    out = save_pretrained(model, ScopeTokenizer(), tmp_path / "pkg")
    config = json.loads((out / "config.json").read_text())
    config["architecture"]["config"]["head"]["hidden_sizes"] = [16, 10**12]
    rewrite_package(out, config)
    with pytest.raises(
        PackageError, match=r"config.json: architecture.config.head.hidden_sizes\[1\]"
    ):
        load_pretrained(out)


@pytest.mark.parametrize("change", ["shape", "dtype", "extra", "missing"])
def test_a_weights_header_unlike_the_config_is_refused_by_tensor_before_building(
    debug_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    from safetensors.torch import load_file

    import cloud.export.load
    import cloud.export.registry

    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    tensors = load_file(str(out / "model.safetensors"))
    name = "encoder.layers.1.mlp.up.weight"
    assert name in tensors
    if change == "shape":  # a wider MLP than config.json says: would be allocated as given
        tensors[name] = torch.zeros(tensors[name].shape[0] * 4, tensors[name].shape[1])
    elif change == "dtype":
        tensors[name] = tensors[name].to(torch.float64)
    elif change == "extra":
        name = "encoder.layers.9.mlp.up.weight"
        tensors[name] = torch.zeros(2, 2)
    else:
        del tensors[name]
    rewrite_package(out, tensors=tensors)
    # The real model is never built nor the weights read: only the meta-device skeleton.
    architecture = cloud.export.registry._ARCHITECTURES["CloudForMaskedLM"]
    devices = []

    def spy(values: dict) -> torch.nn.Module:
        devices.append(torch.get_default_device().type)
        return architecture.from_export_config(values)

    monkeypatch.setitem(
        cloud.export.registry._ARCHITECTURES,
        "CloudForMaskedLM",
        cloud.export.registry.Architecture(
            architecture.name, architecture.cls, architecture.export_config, spy
        ),
    )
    monkeypatch.setattr(cloud.export.load, "_read_safetensors", None)
    with pytest.raises(PackageError, match=rf"model.safetensors: .*{re.escape(name)}"):
        load_pretrained(out)
    assert devices == ["meta"]


def test_version_1_fixture_loads() -> None:
    package = load_pretrained(FIXTURE_V1)
    assert package.format_version == 1 and package.architecture == "CloudForMaskedLM"
    assert package.tokenizer == ScopeTokenizer(package.tokenizer.tokens)
    model = package.model
    assert model.head.decoder.weight is model.encoder.embeddings.word.weight
    probe = package.metadata["probe"]
    ids = torch.tensor([package.tokenizer.encode(probe["scope"])])
    segments = torch.tensor([package.tokenizer.segment_ids(ids[0].tolist())])
    with torch.no_grad():
        logits = model(ids, segment_ids=segments).logits[0]
    expected = torch.tensor(probe["logits_corner"])
    rows, cols = expected.shape
    torch.testing.assert_close(logits[:rows, :cols], expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_package_loads_close_and_half_size(debug_model, tmp_path: Path) -> None:
    tokenizer = ScopeTokenizer()
    full = save_pretrained(debug_model, tokenizer, tmp_path / "fp32")
    half = save_pretrained(debug_model, tokenizer, tmp_path / "bf16", dtype="bfloat16")
    ratio = (half / "model.safetensors").stat().st_size / (
        full / "model.safetensors"
    ).stat().st_size
    assert 0.45 < ratio < 0.55
    package = load_pretrained(half)
    assert package.config["weights"]["dtype"] == "bfloat16"
    assert next(package.model.parameters()).dtype == torch.float32
    batch = scope_batch(tokenizer)
    reference = logits_of(debug_model, batch)
    torch.testing.assert_close(logits_of(package.model, batch), reference, rtol=0.05, atol=0.1)
    assert not torch.equal(logits_of(package.model, batch), reference)


class TinyRegressor(torch.nn.Module):
    """A stand-in fine-tuning head: encoder + linear on [CLS], registered like cloud.heads."""

    def __init__(self, config: CloudConfig, outputs: int) -> None:
        super().__init__()
        from cloud import CloudModel

        self.config, self.outputs = config, outputs
        self.encoder = CloudModel(config)
        self.head = torch.nn.Linear(config.hidden_size, outputs)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.encode(input_ids))

    def export_config(self) -> dict:
        return {"cloud_config": self.config.to_dict(), "outputs": self.outputs}

    @classmethod
    def from_export_config(cls, values: dict) -> TinyRegressor:
        return cls(CloudConfig.from_dict(values["cloud_config"]), values["outputs"])


def test_registered_architecture_round_trips(tmp_path: Path) -> None:
    register_architecture(TinyRegressor)
    model = randomised(TinyRegressor(family("debug"), outputs=3))
    out = save_pretrained(model, ScopeTokenizer(), tmp_path / "head", metadata={"finetune": {}})
    package = load_pretrained(out)
    assert type(package.model) is TinyRegressor and package.architecture == "TinyRegressor"
    ids = torch.tensor([ScopeTokenizer().encode(SCOPES[0])])
    with torch.no_grad():
        assert torch.equal(package.model(ids), model(ids))

    class Unregistered(TinyRegressor):
        pass

    with pytest.raises(ValueError, match="not an exportable architecture"):
        save_pretrained(Unregistered(family("debug"), 1), ScopeTokenizer(), tmp_path / "x")


def test_architecture_module_outside_the_project_is_not_imported(
    debug_model, tmp_path: Path
) -> None:
    from cloud.export import checksums_text

    out = save_pretrained(debug_model, ScopeTokenizer(), tmp_path / "pkg")
    config = json.loads((out / "config.json").read_text())
    config["architecture"].update(name="Evil", module="os")
    (out / "config.json").write_text(json.dumps(config))
    (out / "SHA256SUMS").write_text(checksums_text(out))
    with pytest.raises(PackageError, match="outside the trusted packages"):
        load_pretrained(out)


# ----------------------------------------------------------------------------- Hugging Face


def hf_transformers() -> Any:
    return pytest.importorskip("transformers")


def post_ln_model(vocab_size: int, **overrides) -> CloudForMaskedLM:
    values = {"prenorm": False, "hidden_dropout": 0.0, "attention_dropout": 0.0, **overrides}
    return randomised(CloudForMaskedLM(family("debug", vocab_size=vocab_size, **values)))


@pytest.mark.parametrize("tied", [True, False])
def test_hf_format_loads_in_transformers_with_same_logits(tmp_path: Path, tied: bool) -> None:
    transformers = hf_transformers()
    tokenizer = ScopeTokenizer()
    model = post_ln_model(tokenizer.vocab_size, tie_word_embeddings=tied)
    out = save_hf_pretrained(model, tokenizer, tmp_path / "hf")
    hf = transformers.BertForMaskedLM.from_pretrained(
        out, local_files_only=True, attn_implementation="eager"
    ).eval()
    batch = scope_batch(tokenizer)
    with torch.no_grad():
        theirs = hf(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["segment_ids"],
        ).logits
    ours = logits_of(model, batch)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(theirs[mask], ours[mask], rtol=1e-4, atol=1e-4)
    # The model card's code, run as written: AutoTokenizer and the segments it derives from
    # the ids give CLOUD's logits.
    card = (out / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert "AutoTokenizer" in code and "BertTokenizer.from_pretrained" not in code
    namespace: dict[str, Any] = {"scope_strings": SCOPES}
    exec(code.replace("path/to/this/directory", str(out)), namespace)
    torch.testing.assert_close(namespace["logits"][mask], ours[mask], rtol=1e-4, atol=1e-4)
    assert namespace["hf_tokenizer"].mask_token_id == tokenizer.mask_id


def test_hf_tokenizer_gives_the_scope_tokenizer_ids_of_every_released_string(
    tmp_path: Path,
) -> None:
    transformers = hf_transformers()
    tokenizer = ScopeTokenizer()
    for name, text in tokenizer.hf_files().items():
        (tmp_path / name).write_text(text)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    strings = released_strings()
    assert len(strings) > 11_000
    expected = [tokenizer.encode(text) for text in strings]
    assert not any(tokenizer.unk_id in ids for ids in expected)
    assert hf(strings)["input_ids"] == expected
    # Namespaces are per segment: the generator O and the element O are different ids.
    assert hf("O O | 2a | O 1.0")["input_ids"] == tokenizer.encode("O O | 2a | O 1.0")
    assert tokenizer.token_to_id["G:O"] != tokenizer.token_to_id["E:O"]
    # Malformed strings too (words out of their segment, extra or missing separators, '|x').
    rng = random.Random(0)
    words = sorted({w for text in strings[:500] for w in text.split()} | {"|x", "9z", "Qq"})
    odd = [" ".join(rng.choices(words + ["|"] * 8, k=rng.randint(1, 40))) for _ in range(500)]
    assert hf(odd)["input_ids"] == [tokenizer.encode(text) for text in odd]
    # Padding, truncation (keeping [SEP]) and decoding as ScopeTokenizer does them.
    batch = hf(strings[:7], padding=True, return_tensors="np")
    assert set(batch) == {"input_ids", "attention_mask"}  # no all-zero token types
    ours = tokenizer.batch_encode(strings[:7])
    assert (batch["input_ids"] == ours.input_ids).all()
    assert (batch["attention_mask"] == ours.attention_mask).all()
    long_text = "0 " * 10 + "| " + "1a " * 200 + "| O 1.0"
    truncated = tokenizer.batch_encode([long_text], truncate=True).input_ids[0].tolist()
    assert hf(long_text, truncation=True)["input_ids"] == truncated
    for text, ids in zip(strings[::1000], expected[::1000], strict=True):
        assert hf.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids) == text


def test_hf_format_refuses_pre_ln_saying_how_to_get_a_model_it_exports(
    debug_model, tmp_path: Path
) -> None:
    from train.pretrain import load_config, model_config

    with pytest.raises(ValueError, match="pre-LN") as refusal:
        save_hf_pretrained(debug_model, ScopeTokenizer(), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    # The message's recipe is a post-LN model without token features, which exports.
    recipe = re.search(r"cloud pretrain --config (\S+) (.+?), and export", str(refusal.value))
    assert recipe is not None, str(refusal.value)
    config = load_config(REPO / recipe.group(1), recipe.group(2).split())
    tokenizer = ScopeTokenizer()
    cloud_config = model_config(config, tokenizer.vocab_size, tokenizer.pad_id)
    assert not cloud_config.prenorm and cloud_config.token_features is None
    save_hf_pretrained(CloudForMaskedLM(cloud_config), tokenizer, tmp_path / "post-ln")
    assert (tmp_path / "post-ln" / "tokenizer.json").is_file()


def released_bert(tmp_path: Path, **shape) -> tuple[Path, Any]:
    """A randomly initialised BertForMaskedLM saved as the released checkpoint is laid out,
    with the released WordPiece tokenizer files beside it."""
    transformers = hf_transformers()
    config = transformers.BertConfig(**shape, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    directory = tmp_path / "released"
    model.save_pretrained(directory)
    for name, text in ReleasedWordPieceTokenizer.released().hf_files().items():
        (directory / name).write_text(text)
    return directory, model


def check_imported_matches(directory: Path, hf_model: Any, out: Path, scopes: list[str]) -> None:
    transformers = hf_transformers()
    assert main(["import-hf", str(directory), "--out", str(out)]) == 0
    package = load_pretrained(out)
    assert isinstance(package.tokenizer, ReleasedWordPieceTokenizer)
    assert package.config["tokenizer"]["type"] == "released-wordpiece"
    assert (out / "vocab.txt").read_text() == (directory / "vocab.txt").read_text()
    hf_tokenizer = transformers.BertTokenizer.from_pretrained(directory, local_files_only=True)
    encoded = package.tokenizer.batch_encode(scopes)
    theirs_ids = hf_tokenizer(scopes, padding=True)["input_ids"]
    assert encoded.input_ids.tolist() == theirs_ids  # whitespace lookup = released tokenization
    ids = torch.from_numpy(encoded.input_ids)
    mask = torch.from_numpy(encoded.attention_mask)
    with torch.no_grad():
        ours = package.model(ids, attention_mask=mask).logits
        theirs = hf_model(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], rtol=1e-4, atol=1e-4)


def test_shipped_released_vocabulary_is_the_released_one(shared_data: Path) -> None:
    released = shared_data / "cloud_reference" / "released_tokenizer"
    tables = REPO / "tokenizer" / "tables"
    assert (tables / "released_vocab.txt").read_bytes() == (released / "vocab.txt").read_bytes()
    added = (released / "added_tokens.json").read_bytes()
    assert (tables / "released_added_tokens.json").read_bytes() == added


def test_import_hf_small_checkpoint(tmp_path: Path) -> None:
    directory, hf_model = released_bert(
        tmp_path,
        vocab_size=600,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    check_imported_matches(directory, hf_model, tmp_path / "pkg", SCOPES)
    # pytorch_model.bin instead of safetensors: read with torch.load(weights_only=True).
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    check_imported_matches(directory, hf_model, tmp_path / "pkg-bin", SCOPES)


@pytest.mark.slow
def test_import_hf_released_shape(tmp_path: Path) -> None:
    """The released CLOUD shape: BERT-base, 12 layers, width 768, vocabulary 30,522."""
    directory, hf_model = released_bert(
        tmp_path, vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12
    )
    check_imported_matches(directory, hf_model, tmp_path / "pkg", released_strings(limit=2))


def test_released_strings_tokenize_without_unk(tmp_path: Path) -> None:
    tokenizer = ReleasedWordPieceTokenizer.released()
    assert tokenizer.vocab_size == 564 and tokenizer.cls_id == 0 and tokenizer.pad_id == 1
    strings = released_strings()
    assert len(strings) > 10_000
    unknown = {w for s in strings for w in s.split() if w not in tokenizer.token_to_id}
    assert not unknown
    # The same ids as transformers' BertTokenizer on the released files (shipped verbatim).
    tables = REPO / "tokenizer" / "tables"
    files = tokenizer.hf_files()
    assert files["vocab.txt"] == (tables / "released_vocab.txt").read_text()
    assert json.loads(files["added_tokens.json"]) == json.loads(
        (tables / "released_added_tokens.json").read_text()
    )
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    shutil.copy(tables / "released_vocab.txt", tmp_path / "vocab.txt")
    shutil.copy(tables / "released_added_tokens.json", tmp_path / "added_tokens.json")
    hf = hf_transformers().BertTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in strings[::97]:
        assert tokenizer.encode(text) == hf(text)["input_ids"], text
    assert ReleasedWordPieceTokenizer.from_dict(tokenizer.to_dict()) == tokenizer


# ----------------------------------------------------------------------------- DeepSpeed


def worker(corpus: str, out: str, runs: list[str]) -> None:
    """torchrun worker: train a few steps per run with the real Trainer, checkpoint, then save
    the live engine's logits on fixed inputs and its module's weights (rank 0)."""
    from safetensors.torch import save_file

    from train.pretrain import Trainer, load_config

    torch.set_num_threads(1)
    for name in runs:
        stage, precision = RUNS[name]
        run_dir = Path(out) / name
        overrides = [
            f"run_dir={run_dir}",
            f"data.corpus={corpus}",
            f"system.zero_stage={stage}",
            f"system.precision={precision}",
            "system.cpu_threads=1",
            "train.max_steps=3",
            "train.log_interval=1",
            "train.eval_interval=0",
            "data.micro_batch_size=4",
            "data.eval_batch_size=8",
            "data.eval_batches=1",
            "optim.warmup_steps=1",
            "checkpoint.interval=0",
            "logging.tensorboard=false",
        ]
        trainer = Trainer(load_config(REPO / "configs" / "pretrain" / "debug.yaml", overrides))
        trainer.setup()
        trainer.fit()
        trainer.engine.eval()
        batch = scope_batch(trainer.tokenizer)
        with torch.no_grad():
            logits = trainer.engine(**batch).logits  # collective under ZeRO-3
        if trainer.dist.rank == 0:
            reference = {**batch, "logits": logits.float().contiguous()}
            save_file(reference, str(run_dir / "reference.safetensors"))
            if stage < 3:  # ZeRO-3 modules hold only this rank's partition
                module = {
                    k: v.detach().clone() for k, v in trainer.engine.module.state_dict().items()
                }
                save_file(module, str(run_dir / "module.safetensors"))
        trainer.engine = trainer.model = None


@pytest.fixture(scope="module")
def zero_runs(sample_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.distributed import free_port

    out = tmp_path_factory.mktemp("zero_runs")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}", __file__,
        "--corpus", str(sample_corpus), "--out", str(out),
        "--runs", ",".join(RUNS),
    ]  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_zero_checkpoint_export_reproduces_training_model(
    zero_runs: Path, tmp_path: Path, stage: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    run_dir = zero_runs / f"stage{stage}"
    assert main(["export", str(run_dir), "--out", str(tmp_path / "pkg")]) == 0
    assert "wrote cloud package" in capsys.readouterr().out
    package = load_pretrained(tmp_path / "pkg")
    reference = load_file(str(run_dir / "reference.safetensors"))
    batch = {k: reference[k] for k in ("input_ids", "attention_mask", "segment_ids")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same kernels, same reduction order
    try:
        assert torch.equal(logits_of(package.model, batch), reference["logits"])
    finally:
        torch.set_num_threads(threads)

    summary = json.loads((run_dir / "summary.json").read_text())
    training = package.metadata["training"]
    assert training["steps"] == summary["steps"] == 3
    assert training["tokens"] == summary["tokens"]
    assert training["val_loss"] == summary["val_loss"]
    assert training["zero_stage"] == stage and training["world_size"] == 2
    data = package.metadata["training_data"]
    manifest = json.loads(Path(data["corpus"], "manifest.json").read_text())
    assert data["num_samples"] == manifest["num_samples"] and data["variant"] == "cloud"
    assert package.config["tokenizer"]["variant"] == "cloud"
    card = (tmp_path / "pkg" / "README.md").read_text()
    assert f"{summary['val_loss']:.6g}" in card


@pytest.mark.slow
@pytest.mark.parametrize("run", ["bf16-stage0", "bf16-stage2"])
def test_bf16_checkpoint_exports_fp32_master_weights(
    zero_runs: Path, tmp_path: Path, run: str
) -> None:
    from safetensors.torch import load_file

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the rounded module weights
        assert main(["export", str(zero_runs / run), "--out", str(tmp_path / "pkg")]) == 0
    package = load_pretrained(tmp_path / "pkg")
    module = load_file(str(zero_runs / run / "module.safetensors"))
    weights = package.model.state_dict()
    assert module.keys() == weights.keys()
    for name, tensor in weights.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor.to(torch.bfloat16), module[name]), name
    # The masters carry more precision than the bf16 weights the engine computed with.
    assert sum(not torch.equal(t.to(torch.bfloat16).float(), t) for t in weights.values()) > 10
    reference = load_file(str(zero_runs / run / "reference.safetensors"))
    batch = {k: reference[k] for k in ("input_ids", "attention_mask", "segment_ids")}
    torch.testing.assert_close(
        logits_of(package.model, batch), reference["logits"], rtol=0.05, atol=0.15
    )


@pytest.mark.slow
def test_export_accepts_checkpoint_and_tag_dirs_and_reexports(
    zero_runs: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    checkpoints = zero_runs / "stage3" / "checkpoints"
    tag = checkpoints / (checkpoints / "latest").read_text().strip()
    assert main(["export", str(checkpoints), "--out", str(tmp_path / "a")]) == 0
    assert main(["export", str(tag), "--out", str(tmp_path / "b")]) == 0
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # A package re-exported in bfloat16: close, metadata and provenance kept.
    assert (
        main(["export", str(tmp_path / "a"), "--out", str(tmp_path / "c"), "--dtype", "bfloat16"])
        == 0
    )
    original, half = load_pretrained(tmp_path / "a"), load_pretrained(tmp_path / "c")
    assert half.config["weights"]["dtype"] == "bfloat16"
    assert half.metadata["training"] == original.metadata["training"]
    assert half.metadata["source"]["package"] == str((tmp_path / "a").resolve())
    batch = scope_batch(original.tokenizer)
    reference = logits_of(original.model, batch)
    torch.testing.assert_close(logits_of(half.model, batch), reference, rtol=0.05, atol=0.15)

    # The pre-training model is pre-LN: --format hf refuses, saying why.
    code = main(["export", str(checkpoints), "--out", str(tmp_path / "hf"), "--format", "hf"])
    assert code == 2 and not (tmp_path / "hf").exists()


def test_export_cli_reports_bad_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "neither a package, a run directory" in capsys.readouterr().err
    assert main(["import-hf", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "config.json: missing" in capsys.readouterr().err


def test_export_of_a_package_to_hf_format(tmp_path: Path) -> None:
    tokenizer = ScopeTokenizer()
    model = post_ln_model(tokenizer.vocab_size)
    save_pretrained(model, tokenizer, tmp_path / "pkg", metadata={"training": {"steps": 5}})
    assert (
        main(["export", str(tmp_path / "pkg"), "--out", str(tmp_path / "hf"), "--format", "hf"])
        == 0
    )
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForMaskedLM"] and hf_config["type_vocab_size"] == 3
    assert "optimizer steps: 5" in (tmp_path / "hf" / "README.md").read_text()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="torchrun worker of tests/cloud/test_export.py")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", required=True, help=f"comma-separated names of {list(RUNS)}")
    cli = parser.parse_args()
    worker(cli.corpus, cli.out, cli.runs.split(","))


def test_model_card_lists_only_sources_trained_on_and_the_exclusion(
    debug_model, tmp_path: Path
) -> None:
    from train.export import corpus_summary

    manifest = {
        "format": "cloud-corpus",
        "num_samples": 10,
        "shards": [{}],
        "counts": {
            "mp_20": {"read": 12, "written": 10, "excluded": 2},
            "matbench_dielectric": {"read": 5, "written": 0, "excluded": 5},
        },
        "totals": {"excluded": 7},
        "exclude": {"files": [{"path": "/data/matbench/matbench_dielectric.json.gz"}]},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    summary = corpus_summary({"corpus": str(tmp_path), "variant": "canonical"})
    assert summary["sources"] == ["mp_20"]  # nothing of matbench_dielectric was written
    assert summary["excluded"] == {
        "files": ["matbench_dielectric.json.gz"],
        "structures_excluded": 7,
    }
    package = save_pretrained(
        debug_model, ScopeTokenizer(), tmp_path / "pkg", metadata={"training_data": summary}
    )
    card = (package / "README.md").read_text()
    assert "kept out of the corpus (--exclude)" in card
    assert "matbench_dielectric.json.gz" in card
