"""Bounded loading: the limits a package's config.json and JSON files must keep, and the
safetensors header checks, all run before a model is built or a weight is read."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cloud.export.format import DTYPES, PackageError
from cloud.flavours import count_parameters
from cloud.model import CloudConfig

# A package is data from elsewhere, checksums included: without bounds, "num_layers": 200000
# in its config.json would make load_pretrained build (and randomly initialise) modules until
# the machine runs out of memory before any check could object. The bounds are finite and far
# above every flavour (xl: 24 layers, width 2048, MLP 8192, 1.3 B parameters; the SCOPE
# vocabulary has 443 tokens, the released WordPiece one 564).
CONFIG_LIMITS: dict[str, int] = {
    "vocab_size": 1 << 20,
    "max_position_embeddings": 1 << 16,
    "hidden_size": 1 << 15,
    "num_layers": 512,
    "num_heads": 1024,
    "intermediate_size": 1 << 17,
    "num_segments": 1024,
}
"""Largest value of each CloudConfig size a package may ask for (``cloud_config``, or
``model_config`` in version 1)."""

HEAD_LIMITS: dict[str, int] = {"num_outputs": 1 << 20, "hidden_sizes": 1 << 15}
"""Largest head outputs and hidden width (each of ``hidden_sizes``) of a fine-tuned package."""

MAX_HEAD_LAYERS = 64
"""Most hidden layers (entries of ``hidden_sizes``) a head may have."""

MAX_PARAMETERS = 20_000_000_000
"""Most parameters a package's model may have (20 B; counted from the config first)."""

MAX_JSON_BYTES = 64 << 20
"""Largest config.json or vocab.json read (64 MiB; both are kilobytes)."""


def _read_json_file(path: Path) -> Any:
    """``json.loads`` of a file no larger than ``MAX_JSON_BYTES`` (``PackageError`` if larger)."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise PackageError(
            f"{path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a package file may have"
        )
    return json.loads(path.read_text())


def check_config_limits(config: Mapping[str, Any], source: Path) -> None:
    """Refuse (``PackageError`` naming ``source`` and the key) a package config.json whose
    encoder sizes exceed ``CONFIG_LIMITS``, whose head exceeds ``HEAD_LIMITS`` or
    ``MAX_HEAD_LAYERS``, or whose encoder alone, counted from the config, has more than
    ``MAX_PARAMETERS`` parameters. Allocates nothing; runs before any model is built."""
    if config["format_version"] == 1:
        sections = {"model_config": config["model_config"]}
    else:
        architecture_config = config["architecture"]["config"]
        sections = {
            f"architecture.config.{name}": architecture_config[name]
            for name in ("cloud_config", "head")
            if name in architecture_config
        }
    for prefix, values in sections.items():
        if not isinstance(values, Mapping):
            raise PackageError(f"{source}: {prefix} is not an object")
        if prefix.endswith("head"):
            _check_head_limits(values, f"{source}: {prefix}")
            continue
        for key, limit in CONFIG_LIMITS.items():
            if key in values:
                _check_size(values[key], limit, f"{source}: {prefix}.{key}")
        try:
            parameters = count_parameters(CloudConfig.from_dict(values))
        except (TypeError, ValueError) as exc:
            raise PackageError(f"{source}: {prefix}: {exc}") from exc
        _check_parameter_count(parameters, f"{source}: {prefix}")


def _check_head_limits(values: Mapping[str, Any], where: str) -> None:
    if "num_outputs" in values:
        _check_size(values["num_outputs"], HEAD_LIMITS["num_outputs"], f"{where}.num_outputs")
    sizes = values.get("hidden_sizes", [])
    if not isinstance(sizes, list) or len(sizes) > MAX_HEAD_LAYERS:
        raise PackageError(
            f"{where}.hidden_sizes: must be a list of at most {MAX_HEAD_LAYERS} layer widths"
        )
    for index, size in enumerate(sizes):
        _check_size(size, HEAD_LIMITS["hidden_sizes"], f"{where}.hidden_sizes[{index}]")


def _check_size(value: Any, limit: int, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise PackageError(f"{where} = {value!r}: must be an integer")
    if value > limit:
        raise PackageError(
            f"{where} = {value:,} is above the limit of {limit:,}; refusing to build the model"
        )


def _check_parameter_count(parameters: int, where: str) -> None:
    if parameters > MAX_PARAMETERS:
        raise PackageError(
            f"{where}: the model would have {parameters:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} a package may have; refusing to build it"
        )


def expected_tensors(
    build: Callable[[], nn.Module], source: Path
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{state-dict name: (shape, dtype)} of the model ``build()`` makes, built on the meta
    device (modules and shapes, no memory, no initialisation). Its parameter count, shared
    tensors once, is checked against ``MAX_PARAMETERS`` (covering heads and architectures
    ``check_config_limits`` does not know)."""
    with torch.device("meta"):
        skeleton = build()
    _check_parameter_count(count_parameters(skeleton), f"{source}: the architecture")
    return {name: (tuple(t.shape), t.dtype) for name, t in skeleton.state_dict().items()}


# safetensors' dtype names (its header's "dtype") of the torch dtypes a package may hold.
_SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def check_safetensors_header(
    path: Path,
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    tied: Mapping[str, str],
    dtype: str,
) -> None:
    """Refuse (``PackageError`` naming the tensor) a weights file whose header, read alone,
    lists a tensor the model does not have, lacks one it has (tied aliases aside), or gives
    one another shape, or another dtype than ``dtype`` (the package's, for floating tensors)
    or the model's own (for the others)."""
    from safetensors import safe_open

    stored_dtype = DTYPES.get(dtype)
    if stored_dtype is None:
        raise PackageError(f"{path}: weights dtype {dtype!r} is not one of {sorted(DTYPES)}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = {
                name: (
                    tuple(handle.get_slice(name).get_shape()),
                    handle.get_slice(name).get_dtype(),
                )
                for name in handle.keys()  # noqa: SIM118 (safe_open is not a mapping)
            }
    except Exception as exc:  # safetensors raises its own error types
        raise PackageError(f"{path}: cannot read safetensors header: {exc}") from exc
    for name, (shape, found) in header.items():
        if name not in expected:
            raise PackageError(f"{path}: tensor {name!r} is not one the model has")
        want_shape, model_dtype = expected[name]
        want = _SAFETENSORS_DTYPES.get(
            stored_dtype if model_dtype.is_floating_point else model_dtype
        )
        if shape != want_shape:
            raise PackageError(
                f"{path}: tensor {name!r} has shape {list(shape)} in the header, but "
                f"config.json implies {list(want_shape)}; refusing to load"
            )
        if found != want:
            raise PackageError(
                f"{path}: tensor {name!r} is {found} in the header, but {want} is expected "
                "(config.json's weights dtype for floating tensors, the model's for others)"
            )
    missing = [name for name in expected if name not in header and name not in tied]
    if missing:
        raise PackageError(f"{path}: tensors missing from the file: {missing}")
