"""Writing packages: ``save_pretrained``, the atomic ``write_package`` (also used by the
Hugging Face layout), and the tensors and tokenizer record a package stores."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cloud.export.card import model_card
from cloud.export.format import (
    CARD_FILE,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    TOKENIZER_FORMATS,
    VOCAB_FILE,
    WEIGHTS_FILE,
    _check_dtype,
    _plain_name,
    checksums_text,
    tool_version,
)
from cloud.export.registry import architecture_of


def save_pretrained(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    variant: str | None = None,
    extra_files: Mapping[str, str | bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and ``tokenizer`` as a package in ``out_dir``; returns its path.

    ``metadata`` (JSON-safe) goes into config.json and the model card; recognised keys are
    ``training``, ``training_data``, ``finetune``, ``source`` (see ``model_card``). ``variant``
    is the SCOPE variant the model reads (default ``metadata["training_data"]["variant"]``).
    ``extra_files`` are written beside the others and covered by SHA256SUMS. The package is
    assembled in a temporary sibling directory and renamed into place when complete; an
    existing non-empty ``out_dir`` is replaced only with ``overwrite``.
    """
    target_dtype = _check_dtype(dtype)
    architecture = architecture_of(model)
    metadata = json.loads(json.dumps(dict(metadata or {})))  # JSON-safe copy, fails early
    variant = variant or metadata.get("training_data", {}).get("variant")
    tensors, tied = weights_to_store(model, target_dtype)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": {
            "name": architecture.name,
            "module": architecture.module,
            "config": architecture.export_config(model),
        },
        "tokenizer": tokenizer_record(tokenizer, variant),
        "weights": {"file": WEIGHTS_FILE, "dtype": dtype, "tied": tied},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": {"name": "cloud-crystal", "version": tool_version()},
        "metadata": metadata,
    }
    files: dict[str, str | bytes] = {
        CONFIG_FILE: json.dumps(config, indent=1) + "\n",
        VOCAB_FILE: json.dumps(tokenizer.to_dict(), indent=1) + "\n",
        CARD_FILE: model_card(config),
        **dict(extra_files or {}),
    }
    return write_package(out_dir, tensors, files, overwrite=overwrite)


def write_package(
    out_dir: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    files: Mapping[str, str | bytes],
    *,
    weights_file: str = WEIGHTS_FILE,
    overwrite: bool = False,
) -> Path:
    """Write ``tensors`` (safetensors) and ``files`` plus SHA256SUMS, atomically, into out_dir."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    _check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_file(dict(tensors), str(staging / weights_file), metadata={"format": "pt"})
        # safetensors writes through a private temporary file (mode 0600); a package is
        # meant to be shared, like the other files beside it.
        os.chmod(staging / weights_file, 0o644)
        _fsync(staging / weights_file)
        for name, content in files.items():
            _write_file(staging / _plain_name(name), content)
        _write_file(staging / CHECKSUMS_FILE, checksums_text(staging))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; packages are meant to be shared
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_writable(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; choose another directory, or replace it with "
            "--force (overwrite=True in Python)"
        )


def _publish(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    # os.replace cannot replace a non-empty directory: move the old one aside first.
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def _write_file(path: Path, content: str | bytes) -> None:
    data = content.encode("utf-8") if isinstance(content, str) else content
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def weights_to_store(
    model: nn.Module, dtype: torch.dtype = torch.float32
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors to save, {alias: stored name}) of ``model.state_dict()``.

    Tied parameters (the MLM decoder sharing the word embeddings) appear under several names
    in a state dict and safetensors refuses shared storage, so each is stored once under its
    first name and its aliases are recorded. Floating tensors are cast to ``dtype``.
    """
    return dedupe_tensors(model.state_dict(), dtype)


def dedupe_tensors(
    state: Mapping[str, Tensor], dtype: torch.dtype | None = torch.float32
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``weights_to_store`` for any state dict: aliases dropped (and reported), views copied;
    ``dtype=None`` keeps every tensor's own dtype."""
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    first_name: dict[tuple, str] = {}
    kept_storages: set[int] = set()
    for name, tensor in state.items():
        identity = (
            tensor.untyped_storage().data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if tensor.numel() and identity in first_name:
            tied[name] = first_name[identity]
            continue
        first_name[identity] = name
        stored = tensor.detach().to("cpu")
        if dtype is not None and stored.is_floating_point():
            stored = stored.to(dtype)
        stored = stored.contiguous()
        if stored.untyped_storage().data_ptr() in kept_storages:
            stored = stored.clone()  # a distinct view of storage another kept tensor uses
        kept_storages.add(stored.untyped_storage().data_ptr())
        tensors[name] = stored
    return tensors, tied


def tokenizer_record(tokenizer: Any, variant: str | None) -> dict[str, Any]:
    """config.json's description of the package tokenizer."""
    data = tokenizer.to_dict()
    kind = TOKENIZER_FORMATS.get(data.get("format"), (None, None, data.get("format")))[2]
    return {
        "file": VOCAB_FILE,
        "format": data.get("format"),
        "type": kind,
        "variant": variant,
        "vocab_hash": tokenizer.vocab_hash,
        "vocab_size": tokenizer.vocab_size,
    }
