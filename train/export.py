"""Checkpoint export: DeepSpeed training checkpoints → self-contained packages, and back in.

``export_checkpoint`` takes a pre-training run directory, its checkpoint directory, one tag
directory (layout: ``train.checkpoint``) or an existing package, consolidates ZeRO stage 0–3
shards with DeepSpeed's own ``zero_to_fp32`` helpers, gathers what the run recorded (steps,
tokens, validation loss, corpus summary) and writes a package with the pure
``cloud.export.save_pretrained`` (or a Hugging Face ``BertForMaskedLM`` directory).
``import_hf`` turns a released Hugging Face CLOUD checkpoint into a package.

This module is the only place DeepSpeed is needed for export; loading a package is
``cloud.load_pretrained`` alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cloud.export import (
    CARD_FILE,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    get_architecture,
    is_package,
    load_pretrained,
    read_checksums,
    read_hf_bert,
    save_hf_pretrained,
    save_pretrained,
    sha256_file,
    tokenizer_from_file,
)
from train.checkpoint import safe_torch_load, weights_only_torch_load

FORMATS = ("cloud", "hf")
LATEST = "latest"
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
PACKAGE_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, CARD_FILE, CHECKSUMS_FILE)


@dataclass(frozen=True)
class CheckpointLocation:
    """One published checkpoint of a run."""

    checkpoint_dir: Path
    """The directory holding ``latest`` and one sub-directory per tag."""
    tag: str
    """The tag exported (``latest``'s unless a tag directory was given)."""
    run_dir: Path | None
    """The run directory (metrics.jsonl, summary.json), when it can be found."""

    @property
    def tag_dir(self) -> Path:
        return self.checkpoint_dir / self.tag


@dataclass
class LoadedModel:
    """A model with everything a package needs beside it."""

    model: nn.Module
    tokenizer: Any
    metadata: dict[str, Any]
    variant: str | None = None
    extra_files: dict[str, bytes] | None = None


# ----------------------------------------------------------------------------- locating


def locate_checkpoint(path: str | os.PathLike) -> CheckpointLocation:
    """Resolve a run directory, a checkpoint directory or a tag directory to one checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory")
    if _is_tag_dir(path):
        return CheckpointLocation(path.parent, path.name, _run_dir_of(path.parent, path))
    for checkpoint_dir in _candidate_checkpoint_dirs(path):
        if (checkpoint_dir / LATEST).is_file():
            tag = (checkpoint_dir / LATEST).read_text().strip()
            if not (checkpoint_dir / tag).is_dir():
                raise FileNotFoundError(
                    f"{checkpoint_dir / LATEST} names {tag!r}, which is missing"
                )
            return CheckpointLocation(
                checkpoint_dir, tag, _run_dir_of(checkpoint_dir, checkpoint_dir / tag)
            )
    raise FileNotFoundError(
        f"{path}: neither a package, a run directory, a checkpoint directory (with a "
        f"'{LATEST}' file) nor a checkpoint tag directory"
    )


def _is_tag_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in MODEL_STATES)


def _candidate_checkpoint_dirs(path: Path) -> list[Path]:
    candidates = [path, path / "checkpoints"]
    summary = _read_json(path / "summary.json")
    if summary and summary.get("checkpoint_dir"):
        # checkpoint.dir may point outside the run directory; the summary says where.
        candidates.append(Path(summary["checkpoint_dir"]))
    return candidates


def _run_dir_of(checkpoint_dir: Path, tag_dir: Path) -> Path | None:
    pretrain_config = _read_json(tag_dir / "pretrain_config.json") or {}
    recorded = pretrain_config.get("run_dir")
    for candidate in ([Path(recorded)] if recorded else []) + [checkpoint_dir.parent]:
        if (candidate / "metrics.jsonl").is_file() or (candidate / "summary.json").is_file():
            return candidate
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- weights


def consolidate_state_dict(location: CheckpointLocation) -> dict[str, Tensor]:
    """The full fp32 state dict of a checkpoint, whatever its ZeRO stage and world size.

    ZeRO 1–3 checkpoints hold the fp32 master weights in per-rank optimizer shards, merged by
    DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``. A stage-0 checkpoint has no
    shards: its model-states file holds the whole module, and, when training was bf16, the
    optimizer's fp32 masters, which replace the module's rounded weights (see
    ``stage0_state_dict``). Every file is read with ``weights_only=True`` (DeepSpeed's reads
    through ``train.checkpoint.weights_only_torch_load``): a file holding objects beyond
    tensors, plain containers and ``DEEPSPEED_SAFE_GLOBALS`` raises ``CheckpointFileError``.
    """
    tag_dir = location.tag_dir
    if any(tag_dir.glob("*_optim_states.pt")):
        from train.distributed import select_accelerator

        select_accelerator()  # DeepSpeed picks its accelerator at import: CPU without CUDA
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # zero_to_fp32 reports progress with print(); keep stdout for our own output.
        with contextlib.redirect_stdout(sys.stderr), weights_only_torch_load():
            return get_fp32_state_dict_from_zero_checkpoint(
                str(location.checkpoint_dir), tag=location.tag
            )
    model_states = tag_dir / MODEL_STATES[0]
    if not model_states.is_file():
        raise FileNotFoundError(f"{tag_dir}: no ZeRO optimizer shards and no {MODEL_STATES[0]}")
    return stage0_state_dict(safe_torch_load(model_states))


def stage0_state_dict(states: Mapping[str, Any]) -> dict[str, Tensor]:
    """The module of a stage-0 model-states dict, with fp32 master weights when it has them.

    DeepSpeed's stage-0 bf16/fp16 optimizer saves ``optimizer["fp32_groups"]``: per param
    group, the fp32 masters in group order, without names. Each group lists parameters in
    module order (optimizers group by filtering ``parameters()``), so a greedy in-order match
    on shape and on the module's rounded values assigns every master to its name. If any
    master does not match, the module's own weights are exported, with a warning.
    """
    module = dict(states["module"])
    optimizer = states.get("optimizer")
    groups = optimizer.get("fp32_groups") if isinstance(optimizer, Mapping) else None
    low_precision = any(t.is_floating_point() and t.dtype != torch.float32 for t in module.values())
    if not groups or not low_precision:
        return module
    buffers = set(states.get("buffer_names") or ())
    masters = _match_fp32_masters(module, groups, buffers)
    if masters is None:
        warnings.warn(
            "stage-0 checkpoint: the optimizer's fp32 master weights could not be matched to "
            "parameter names; exporting the module's lower-precision weights",
            stacklevel=2,
        )
        return module
    storage_names = {t.untyped_storage().data_ptr(): n for n, t in module.items() if n in masters}
    for name, tensor in module.items():
        owner = storage_names.get(tensor.untyped_storage().data_ptr())
        if owner is not None:  # the master itself, or a tied alias of it
            module[name] = masters[owner]
    return module


def _match_fp32_masters(
    module: Mapping[str, Tensor], groups: list[list[Tensor]], buffers: set[str]
) -> dict[str, Tensor] | None:
    params: list[tuple[str, Tensor]] = []
    seen: set[int] = set()
    for name, tensor in module.items():
        pointer = tensor.untyped_storage().data_ptr()
        if name in buffers or not tensor.is_floating_point() or pointer in seen:
            continue
        seen.add(pointer)
        params.append((name, tensor))
    matched: dict[str, Tensor] = {}
    for group in groups:
        index = 0
        for name, tensor in params:
            if index == len(group):
                break
            master = group[index]
            if name not in matched and _rounds_to(master, tensor):
                matched[name] = master.float()
                index += 1
        if index != len(group):
            return None
    return matched if len(matched) == len(params) else None


def _rounds_to(master: Tensor, weight: Tensor) -> bool:
    return master.shape == weight.shape and torch.equal(master.to(weight.dtype), weight)


def model_from_checkpoint_config(values: Mapping[str, Any]) -> nn.Module:
    """The untrained model a checkpoint's config.json describes.

    Pre-training writes a bare CloudConfig dict (a ``CloudForMaskedLM``); a checkpoint of any
    other registered architecture writes ``{"architecture": name, "module": ..., "config":
    export_config}``.
    """
    if "architecture" in values:
        architecture = get_architecture(values["architecture"], values.get("module"))
        return architecture.from_export_config(dict(values["config"]))
    from cloud import CloudConfig, CloudForMaskedLM

    return CloudForMaskedLM(CloudConfig.from_dict(values))


def load_training_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Model (consolidated weights, eval mode), tokenizer and run metadata of a checkpoint."""
    location = locate_checkpoint(path)
    config_path = _beside_checkpoint(location, CONFIG_FILE)
    model = model_from_checkpoint_config(json.loads(config_path.read_text()))
    state = consolidate_state_dict(location)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{location.tag_dir}: weights do not match {config_path} (missing "
            f"{result.missing_keys}, unexpected {result.unexpected_keys})"
        )
    tokenizer = tokenizer_from_file(_beside_checkpoint(location, "tokenizer.json"))
    metadata = training_metadata(location)
    variant = metadata.get("training_data", {}).get("variant")
    return LoadedModel(model.eval(), tokenizer, metadata, variant)


def _beside_checkpoint(location: CheckpointLocation, name: str) -> Path:
    # Each tag holds its own copy; the checkpoint directory's copy is the newest run's.
    for candidate in (location.tag_dir / name, location.checkpoint_dir / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{location.tag_dir}: no {name} beside the checkpoint")


# ----------------------------------------------------------------------------- metadata


def training_metadata(location: CheckpointLocation) -> dict[str, Any]:
    """What the run recorded about the exported step: progress, losses, data, provenance."""
    trainer_state = _read_json(location.tag_dir / "trainer_state.json") or {}
    pretrain_config = _read_json(location.tag_dir / "pretrain_config.json") or {}
    step = trainer_state.get("step")
    training = {
        "steps": step,
        "tokens": trainer_state.get("tokens"),
        "sequences": trainer_state.get("sequences"),
        "flops": trainer_state.get("flops"),
        "world_size": trainer_state.get("world_size"),
        "flavour": pretrain_config.get("model", {}).get("flavour"),
        "zero_stage": pretrain_config.get("system", {}).get("zero_stage"),
        "initial_val_loss": trainer_state.get("first_val_loss"),
        **_validation_at(location.run_dir, step),
    }
    metadata: dict[str, Any] = {
        "training": {k: v for k, v in training.items() if v is not None},
        "source": {
            "checkpoint_dir": str(location.checkpoint_dir.resolve()),
            "tag": location.tag,
            "run_dir": str(location.run_dir.resolve()) if location.run_dir else None,
        },
    }
    data = corpus_summary(pretrain_config.get("data", {}))
    if data:
        metadata["training_data"] = data
    return metadata


def _validation_at(run_dir: Path | None, step: int | None) -> dict[str, Any]:
    """Validation loss/accuracy of the exported step: the run's summary when it ended there,
    else the last validation metrics.jsonl logged at or before that step."""
    if run_dir is None:
        return {}
    summary = _read_json(run_dir / "summary.json") or {}
    if step is not None and summary.get("steps") == step and summary.get("val_loss") is not None:
        return {
            "val_loss": summary["val_loss"],
            "val_accuracy": summary.get("val_accuracy"),
            "val_step": step,
            "precision": summary.get("precision"),
        }
    latest: dict[str, Any] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = _parse_json_line(line)
            if "val/loss" in record and (step is None or record.get("step", 0) <= step):
                latest = {
                    "val_loss": record["val/loss"],
                    "val_accuracy": record.get("val/accuracy"),
                    "val_step": record.get("step"),
                }
    return latest


def _parse_json_line(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return {}  # a line cut by a killed run
    return record if isinstance(record, dict) else {}


def corpus_summary(data_section: Mapping[str, Any]) -> dict[str, Any]:
    """The training corpus as the run's config and the corpus manifest describe it."""
    if not data_section:
        return {}
    summary: dict[str, Any] = {
        "corpus": data_section.get("corpus"),
        "variant": data_section.get("variant"),
        "max_length": data_section.get("max_length"),
        "validation_shards": data_section.get("val_shards"),
    }
    manifest = _read_json(Path(str(data_section.get("corpus", ""))) / "manifest.json")
    if isinstance(manifest, dict) and manifest.get("format") == "cloud-corpus":
        summary.update(
            {
                "num_samples": manifest.get("num_samples"),
                "num_shards": len(manifest.get("shards", [])),
                # Only sources that contributed strings: a source removed whole by the
                # exclusion (a benchmark's own structures) was not trained on.
                "sources": sorted(
                    name
                    for name, count in manifest.get("counts", {}).items()
                    if count.get("written", 0) > 0
                ),
                "excluded": _exclusion_summary(manifest),
                "dedup": manifest.get("dedup"),
                "corpus_tool_version": manifest.get("tool", {}).get("version"),
            }
        )
    return {k: v for k, v in summary.items() if v is not None}


def _exclusion_summary(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """What ``--exclude`` kept out of the corpus: the files and how many inputs matched."""
    exclude = manifest.get("exclude") or {}
    files = [Path(str(f.get("path", ""))).name for f in exclude.get("files", [])]
    if not files:
        return None
    return {
        "files": files,
        "structures_excluded": (manifest.get("totals") or {}).get("excluded"),
    }


# ----------------------------------------------------------------------------- export


def load_package_for_export(path: str | os.PathLike) -> LoadedModel:
    """A package's model, tokenizer, metadata and extra files (re-exported unchanged)."""
    package = load_pretrained(path)
    sums = read_checksums(path)
    extra = {name: (Path(path) / name).read_bytes() for name in sums if name not in PACKAGE_FILES}
    variant = None
    if package.format_version >= 2:
        variant = package.config["tokenizer"].get("variant")
    metadata = dict(package.metadata)
    metadata["source"] = {
        **metadata.get("source", {}),
        "package": str(Path(path).resolve()),
        "package_dtype": package.config.get("weights", {}).get("dtype")
        or package.config.get("dtype"),
        "package_format_version": package.format_version,
    }
    return LoadedModel(package.model, package.tokenizer, metadata, variant, extra)


def export_checkpoint(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "float32",
    format: str = "cloud",
    overwrite: bool = False,
) -> Path:
    """Export a run / checkpoint / package at ``source`` to ``out_dir``; returns out_dir.

    ``format="cloud"`` writes a package (``cloud.load_pretrained``); ``format="hf"`` a
    Hugging Face ``BertForMaskedLM`` directory, refused for pre-LN models.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    loaded = (
        load_package_for_export(source) if is_package(source) else load_training_checkpoint(source)
    )
    if format == "hf":
        return save_hf_pretrained(
            loaded.model,
            loaded.tokenizer,
            out_dir,
            metadata=loaded.metadata,
            dtype=dtype,
            overwrite=overwrite,
        )
    return save_pretrained(
        loaded.model,
        loaded.tokenizer,
        out_dir,
        metadata=loaded.metadata,
        dtype=dtype,
        variant=loaded.variant,
        extra_files=loaded.extra_files,
        overwrite=overwrite,
    )


# ----------------------------------------------------------------------------- import


def released_tokenizer_for(directory: Path, tokenizer_dir: str | os.PathLike | None) -> Any:
    """The WordPiece tokenizer of an HF checkpoint: ``tokenizer_dir``, else the checkpoint's
    own vocab.txt, else the released CLOUD vocabulary shipped with ``tokenizer``."""
    from tokenizer.released import ReleasedWordPieceTokenizer

    source = Path(tokenizer_dir) if tokenizer_dir else directory
    if (source / "vocab.txt").is_file():
        return ReleasedWordPieceTokenizer.from_wordpiece_files(
            source / "vocab.txt", source / "added_tokens.json"
        )
    if tokenizer_dir:
        raise FileNotFoundError(f"{source}: no vocab.txt")
    return ReleasedWordPieceTokenizer.released()


def import_hf(
    directory: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Package a Hugging Face ``BertForMaskedLM`` CLOUD checkpoint (the released one).

    The package keeps the checkpoint's WordPiece vocabulary (vocab.json, plus vocab.txt and
    added_tokens.json as released) so the imported model is fed released SCOPE strings with
    ``ReleasedWordPieceTokenizer``.
    """
    from cloud.hf import model_from_hf_bert

    directory = Path(directory)
    hf_config, state = read_hf_bert(directory)
    model = model_from_hf_bert(hf_config, state).eval()
    tokenizer = released_tokenizer_for(directory, tokenizer_dir)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.config.vocab_size} embeddings; wrong --tokenizer?"
        )
    files = sorted(p.name for p in directory.iterdir() if p.is_file())
    metadata = {
        "source": {
            "imported_from": str(directory.resolve()),
            "format": "Hugging Face BertForMaskedLM",
            "sha256": {name: sha256_file(directory / name) for name in files},
        },
        "training_data": {
            "description": "the released CLOUD pre-training (see the paper); SCOPE strings "
            "of the released 'cloud' variant, WordPiece vocabulary",
            "variant": "cloud",
        },
    }
    extra = {name: text.encode() for name, text in tokenizer.hf_files().items()}
    return save_pretrained(
        model,
        tokenizer,
        out_dir,
        metadata=metadata,
        dtype=dtype,
        variant="cloud",
        extra_files=extra,
        overwrite=overwrite,
    )
