"""Reading packages: ``load_pretrained`` (checksums, then bounds, then weights), the package
config, the tokenizer a package records, and loading weights with their recorded ties."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cloud.export.format import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    FORMAT_NAME,
    READABLE_VERSIONS,
    TOKENIZER_FORMATS,
    VOCAB_FILE,
    WEIGHTS_FILE,
    PackageError,
    _check_dtype,
    _plain_name,
    tool_version,
    verify_checksums,
)
from cloud.export.limits import (
    _read_json_file,
    check_config_limits,
    check_safetensors_header,
    expected_tensors,
)
from cloud.export.registry import get_architecture
from cloud.model import CloudConfig, CloudForMaskedLM


@dataclass
class Pretrained:
    """What :func:`load_pretrained` returns."""

    model: nn.Module
    """The rebuilt model, in eval mode, on CPU."""
    tokenizer: Any
    """``ScopeTokenizer`` (or the tokenizer the package records, e.g. the released WordPiece)."""
    config: dict[str, Any]
    """The package's config.json as read."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Training / fine-tuning facts recorded at export (steps, tokens, losses, data...)."""
    path: Path | None = None

    @property
    def format_version(self) -> int:
        return int(self.config["format_version"])

    @property
    def architecture(self) -> str:
        if self.format_version == 1:
            return "CloudForMaskedLM"
        return str(self.config["architecture"]["name"])


def read_package_config(path: str | os.PathLike) -> dict[str, Any]:
    """config.json of a package, checked for the format name and a readable version."""
    config_path = Path(path) / CONFIG_FILE
    try:
        config = _read_json_file(config_path)
    except FileNotFoundError:
        raise PackageError(f"{config_path}: missing; {path} is not a CLOUD package") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{config_path}: cannot read JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else None
        hint = ""
        if isinstance(config, dict) and config.get("model_type") == "bert":
            hint = " (a Hugging Face BERT directory: use `cloud import-hf`)"
        raise PackageError(f"{config_path}: format {found!r} is not {FORMAT_NAME!r}{hint}")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        raise PackageError(
            f"{config_path}: format_version {version!r} is not supported; this cloud-crystal "
            f"({tool_version()}) reads versions {list(READABLE_VERSIONS)}"
            + (" (written by a newer version? upgrade)" if isinstance(version, int) else "")
        )
    return config


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory whose config.json (of at most ``MAX_JSON_BYTES``) says
    it is a CLOUD package."""
    config_path = Path(path) / CONFIG_FILE
    try:
        return _read_json_file(config_path).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):  # PackageError is a ValueError
        return False


def load_pretrained(
    path: str | os.PathLike, *, verify: bool = True, dtype: str = "float32"
) -> Pretrained:
    """Rebuild the model and tokenizer of a package (format version 1 or 2).

    With ``verify`` (the default) every file is checked against SHA256SUMS first. A package of
    an unknown format version, a checksum mismatch, or a vocab.json whose hash differs from the
    one config.json records is refused with a ``PackageError`` naming the file. So is one
    whose config.json asks for a model beyond ``CONFIG_LIMITS``, ``HEAD_LIMITS`` or
    ``MAX_PARAMETERS`` (naming the key; checked before anything is allocated), or whose
    safetensors header holds a tensor of another name, shape or dtype than that model's
    (naming the tensor; checked before the model is built). The model is returned in eval
    mode, in ``dtype`` (bf16 weights are upcast to float32 by default).
    """
    path = Path(path)
    required = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE)
    # Checksums before parsing: a tampered config.json is refused as tampered, not parsed.
    verified = verify and (path / CHECKSUMS_FILE).is_file()
    if verified:
        verify_checksums(path, required)
    config = read_package_config(path)
    version = config["format_version"]
    if verify and not verified:
        verify_checksums(path, required)  # says what is missing
    loader = _load_v1 if version == 1 else _load_v2
    try:
        check_config_limits(config, path / CONFIG_FILE)
        model, tokenizer = loader(path, config)
    except (KeyError, TypeError) as exc:
        raise PackageError(
            f"{path / CONFIG_FILE}: malformed version-{version} config ({exc!r})"
        ) from exc
    model.to(_check_dtype(dtype)).eval()
    return Pretrained(model, tokenizer, config, dict(config.get("metadata") or {}), path)


def _load_v2(path: Path, config: dict[str, Any]) -> tuple[nn.Module, Any]:
    record = config["tokenizer"]
    vocab_path = path / _plain_name(record.get("file", VOCAB_FILE))
    tokenizer = _read_tokenizer(vocab_path, record["vocab_hash"])
    spec = config["architecture"]
    architecture = get_architecture(spec["name"], spec.get("module"))
    weights = config["weights"]
    weights_path = path / _plain_name(weights.get("file", WEIGHTS_FILE))

    def build() -> nn.Module:
        return architecture.from_export_config(spec["config"])

    expected = expected_tensors(build, path / CONFIG_FILE)
    check_safetensors_header(weights_path, expected, weights.get("tied", {}), weights["dtype"])
    model = build()
    state = _read_safetensors(weights_path)
    load_weights(model, state, weights.get("tied", {}), source=path / WEIGHTS_FILE)
    return model, tokenizer


def _load_v1(path: Path, config: dict[str, Any]) -> tuple[nn.Module, Any]:
    # Version 1: always a CloudForMaskedLM and a SCOPE tokenizer; tied tensors stored twice.
    tokenizer = _read_tokenizer(path / VOCAB_FILE, config["vocab_hash"])

    def build() -> nn.Module:
        return CloudForMaskedLM(CloudConfig.from_dict(config["model_config"]))

    expected = expected_tensors(build, path / CONFIG_FILE)
    check_safetensors_header(path / WEIGHTS_FILE, expected, {}, config.get("dtype", "float32"))
    model = build()
    state = _read_safetensors(path / WEIGHTS_FILE)
    load_weights(model, state, {}, source=path / WEIGHTS_FILE)
    return model, tokenizer


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise PackageError(f"{path}: cannot read safetensors: {exc}") from exc


def tokenizer_from_dict(data: Any, source: str) -> Any:
    """The tokenizer a ``to_dict()`` describes, whichever registered format it has."""
    tokenizer_format = data.get("format") if isinstance(data, dict) else None
    if tokenizer_format not in TOKENIZER_FORMATS:
        raise PackageError(f"{source}: unknown tokenizer format {tokenizer_format!r}")
    module, class_name, _ = TOKENIZER_FORMATS[tokenizer_format]
    cls = getattr(importlib.import_module(module), class_name)
    try:
        return cls.from_dict(data, source=source)
    except (ValueError, KeyError, TypeError) as exc:
        raise PackageError(str(exc)) from exc


def tokenizer_from_file(path: str | os.PathLike) -> Any:
    """``tokenizer_from_dict`` of a JSON file (vocab.json, a checkpoint's tokenizer.json)."""
    try:
        data = _read_json_file(Path(path))
    except (OSError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: cannot read tokenizer JSON: {exc}") from exc
    return tokenizer_from_dict(data, str(path))


def _read_tokenizer(path: Path, expected_hash: str) -> Any:
    tokenizer = tokenizer_from_file(path)
    if tokenizer.vocab_hash != expected_hash:
        raise PackageError(
            f"{path}: vocabulary hash {tokenizer.vocab_hash[:16]}… differs from the "
            f"{expected_hash[:16]}… that config.json records; the model's token ids would "
            "not match, refusing to load"
        )
    return tokenizer


def load_weights(
    model: nn.Module, state: Mapping[str, Tensor], tied: Mapping[str, str], *, source: Any
) -> None:
    """Load ``state`` into ``model``: every key must be used, and every missing key must be
    a recorded alias that the rebuilt model ties to a loaded tensor."""
    result = model.load_state_dict(dict(state), strict=False)
    if result.unexpected_keys:
        raise PackageError(f"{source}: tensors the model does not have: {result.unexpected_keys}")
    missing = [key for key in result.missing_keys if key not in tied]
    if missing:
        raise PackageError(f"{source}: tensors missing from the file: {missing}")
    params = model.state_dict(keep_vars=True)
    for alias, target in tied.items():
        if alias not in params or target not in params or params[alias] is not params[target]:
            raise PackageError(
                f"{source}: {alias} is stored as a tie to {target}, but the rebuilt model does "
                "not tie them"
            )
