"""Self-contained model packages: save and load CLOUD models without DeepSpeed or pickle.

A package is a directory (format ``cloud-pretrained``, version ``FORMAT_VERSION`` = 2)::

    model.safetensors   weights; tied tensors stored once (see config.json "weights.tied")
    config.json         format, format_version, architecture {name, module, config},
                        tokenizer {file, format, type, variant, vocab_hash, vocab_size},
                        weights {file, dtype, tied}, created, tool {name, version}, metadata
    vocab.json          the tokenizer (``ScopeTokenizer.to_dict`` or another tokenizer's dict)
    README.md           model card: data, steps, tokens, losses, use, limitations, licence
    SHA256SUMS          ``sha256sum -c SHA256SUMS`` checks every other file
    (extra files)       e.g. the WordPiece vocab.txt of an imported released checkpoint

Version 1, the first layout, had no ``architecture`` (always ``CloudForMaskedLM``, its
CloudConfig under ``model_config``), no tokenizer type or variant (always the SCOPE tokenizer,
its hash under ``vocab_hash``), no model card, and stored tied tensors twice. Version 1 packages
still load; only version 2 is written.

Architectures: a model class is exportable once registered with :func:`register_architecture`;
it provides ``export_config() -> dict`` (JSON-safe: its CloudConfig and any head settings) and
a classmethod ``from_export_config(dict)`` that rebuilds an untrained instance of the same
shape. ``CloudForMaskedLM`` is registered here through adapter functions. Fine-tuning heads
register in the module that defines the class (``@register_architecture`` on the class): the
package records ``cls.__module__`` and loading imports it (only under ``cloud.``/``train.``).

Loading never unpickles: weights come from safetensors, everything else from JSON. Nor does
it trust a package's size: config.json is checked against ``CONFIG_LIMITS``, ``HEAD_LIMITS``
and ``MAX_PARAMETERS`` before anything is built, and every tensor's shape and dtype in the
safetensors header against the model the config describes (built on the meta device, without
memory) before the model itself is built or a weight read.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cloud.flavours import count_parameters
from cloud.model import CloudConfig, CloudForMaskedLM

FORMAT_NAME = "cloud-pretrained"
FORMAT_VERSION = 2
READABLE_VERSIONS: tuple[int, ...] = (1, 2)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CARD_FILE = "README.md"
CHECKSUMS_FILE = "SHA256SUMS"

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

# Modules a package may name for its architecture: importing them registers it. Anything else
# is refused, so a crafted config.json cannot make the loader import arbitrary code.
TRUSTED_MODULE_PREFIXES: tuple[str, ...] = ("cloud.", "train.")

# Tokenizer formats (the "format" of their to_dict) → (module, class, short type name).
TOKENIZER_FORMATS: dict[str, tuple[str, str, str]] = {
    "cloud-scope-tokenizer": ("tokenizer.vocab", "ScopeTokenizer", "scope"),
    "cloud-released-wordpiece": (
        "tokenizer.released",
        "ReleasedWordPieceTokenizer",
        "released-wordpiece",
    ),
}

CITATION = """@article{xu2025cloud,
  title   = {CLOUD: A Scalable and Physics-Informed Foundation Model for Crystal Representation Learning},
  author  = {Xu, Changwen and Zhu, Shang and Viswanathan, Venkatasubramanian},
  journal = {arXiv preprint arXiv:2506.17345},
  year    = {2025}
}"""


class PackageError(ValueError):
    """A package that must not be loaded: corrupted, modified, or of an unknown format."""


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


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Architecture:
    """How one exportable model class describes and rebuilds itself."""

    name: str
    cls: type[nn.Module]
    export_config: Callable[[nn.Module], dict[str, Any]]
    from_export_config: Callable[[dict[str, Any]], nn.Module]

    @property
    def module(self) -> str:
        return self.cls.__module__


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(
    cls: type[nn.Module] | None = None,
    *,
    name: str | None = None,
    export_config: Callable[[nn.Module], dict[str, Any]] | None = None,
    from_export_config: Callable[[dict[str, Any]], nn.Module] | None = None,
) -> Any:
    """Make ``cls`` exportable; usable as ``@register_architecture`` or called with adapters.

    Without adapters the class must define ``export_config(self) -> dict`` and the classmethod
    ``from_export_config(cls, d) -> instance``. ``name`` defaults to the class name and is what
    packages record, so it must stay stable once packages exist.
    """

    def register(target: type[nn.Module]) -> type[nn.Module]:
        describe = export_config or getattr(target, "export_config", None)
        rebuild = from_export_config or getattr(target, "from_export_config", None)
        if describe is None or rebuild is None:
            raise TypeError(
                f"{target.__name__} needs export_config() and a from_export_config classmethod "
                "(or pass export_config=/from_export_config= adapters) to be exportable"
            )
        key = name or target.__name__
        existing = _ARCHITECTURES.get(key)
        if existing is not None and existing.cls is not target:
            raise ValueError(f"architecture name {key!r} is already registered by {existing.cls}")
        _ARCHITECTURES[key] = Architecture(key, target, describe, rebuild)
        return target

    return register if cls is None else register(cls)


def registered_architectures() -> list[str]:
    return sorted(_ARCHITECTURES)


def architecture_of(model: nn.Module) -> Architecture:
    """The registration of ``type(model)`` (exact class: a subclass may hold more weights)."""
    for architecture in _ARCHITECTURES.values():
        if type(model) is architecture.cls:
            return architecture
    raise ValueError(
        f"{type(model).__name__} is not an exportable architecture; register it with "
        f"cloud.export.register_architecture (registered: {registered_architectures()})"
    )


def get_architecture(name: str, module: str | None = None) -> Architecture:
    """The architecture called ``name``, importing its (trusted) ``module`` if needed."""
    if name not in _ARCHITECTURES and module:
        if not module.startswith(TRUSTED_MODULE_PREFIXES):
            raise PackageError(
                f"architecture {name!r} names module {module!r}, outside the trusted "
                f"packages {TRUSTED_MODULE_PREFIXES}; refusing to import it"
            )
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise PackageError(f"architecture {name!r}: cannot import {module!r}: {exc}") from exc
    if name not in _ARCHITECTURES:
        raise PackageError(
            f"unknown architecture {name!r}; registered: {registered_architectures()}"
        )
    return _ARCHITECTURES[name]


def _masked_lm_export_config(model: nn.Module) -> dict[str, Any]:
    return {"cloud_config": model.config.to_dict()}


def _masked_lm_from_export_config(values: dict[str, Any]) -> nn.Module:
    return CloudForMaskedLM(CloudConfig.from_dict(values["cloud_config"]))


register_architecture(
    CloudForMaskedLM,
    export_config=_masked_lm_export_config,
    from_export_config=_masked_lm_from_export_config,
)


# ----------------------------------------------------------------------------- package


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


def tool_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("cloud-crystal")
    except metadata.PackageNotFoundError:
        return "unknown"


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


def _check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


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


def _plain_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name == CHECKSUMS_FILE:
        raise ValueError(f"package file names must be plain names, got {name!r}")
    return name


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


# ----------------------------------------------------------------------------- checksums


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def checksums_text(directory: Path) -> str:
    """``sha256sum``-compatible lines for every file of ``directory`` but SHA256SUMS."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE)
    return "".join(f"{sha256_file(directory / name)}  {name}\n" for name in names)


_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def read_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256} from a package's SHA256SUMS."""
    path = Path(directory) / CHECKSUMS_FILE
    if not path.is_file():
        raise PackageError(f"{path}: missing; cannot verify the package (pass verify=False?)")
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _CHECKSUM_LINE.match(line)
        if not match or "/" in match.group(2) or match.group(2) in (".", ".."):
            raise PackageError(f"{path}:{number}: not a 'sha256  filename' line: {line!r}")
        sums[match.group(2)] = match.group(1)
    return sums


def verify_checksums(directory: str | os.PathLike, required: tuple[str, ...] = ()) -> None:
    """Raise ``PackageError`` naming the first file whose SHA-256 does not match SHA256SUMS."""
    directory = Path(directory)
    sums = read_checksums(directory)
    unlisted = [name for name in required if name not in sums]
    if unlisted:
        raise PackageError(
            f"{directory / unlisted[0]}: not listed in {CHECKSUMS_FILE}; the package is "
            "incomplete or was modified"
        )
    for name, expected in sums.items():
        path = directory / name
        if not path.is_file():
            raise PackageError(f"{path}: listed in {CHECKSUMS_FILE} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise PackageError(
                f"{path}: SHA-256 mismatch (expected {expected[:16]}…, found {actual[:16]}…); "
                "the file is corrupted or was modified, refusing to load"
            )


# ----------------------------------------------------------------------------- loading


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


def _read_json_file(path: Path) -> Any:
    """``json.loads`` of a file no larger than ``MAX_JSON_BYTES`` (``PackageError`` if larger)."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise PackageError(
            f"{path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a package file may have"
        )
    return json.loads(path.read_text())


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


# ----------------------------------------------------------------------------- bounds


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


# ----------------------------------------------------------------------------- model card


def model_card(config: Mapping[str, Any], usage: list[str] | None = None) -> str:
    """README.md of a package, from its config.json contents (metadata included).

    ``usage`` replaces the "Loading" section's body (the Hugging Face layout shows
    ``transformers`` code instead of ``load_pretrained``).
    """
    metadata = config.get("metadata") or {}
    architecture = config["architecture"]
    cloud_config = architecture["config"].get("cloud_config", {})
    tokenizer = config["tokenizer"]
    lines = [
        f"# CLOUD — {architecture['name']}",
        "",
        "A CLOUD crystal language model (BERT-style encoder over SCOPE strings; Xu, Zhu & "
        "Viswanathan, arXiv 2506.17345), packaged by `cloud-crystal` "
        f"{config['tool']['version']} on {config['created']}.",
        "",
        "## Model",
        "",
        *_bullets(
            {
                "architecture": architecture["name"],
                "layers": cloud_config.get("num_layers"),
                "width": cloud_config.get("hidden_size"),
                "attention heads": cloud_config.get("num_heads"),
                "layer norm": _layout(cloud_config),
                "max sequence length": cloud_config.get("max_position_embeddings"),
                "vocabulary": f"{tokenizer['vocab_size']} tokens ({tokenizer['type']}, "
                f"sha256 {tokenizer['vocab_hash'][:12]}…)",
                "SCOPE variant": tokenizer.get("variant"),
                "weights dtype": config["weights"]["dtype"],
                "head settings": _json_or_none(
                    {k: v for k, v in architecture["config"].items() if k != "cloud_config"}
                ),
            }
        ),
        "",
        *_section("Training data", metadata.get("training_data")),
        *_section("Training", metadata.get("training")),
        *_section("Fine-tuning", _finetune_facts(metadata.get("finetune"))),
        *_section("Source", metadata.get("source")),
        "## Intended use",
        "",
        "Representations and property predictions for inorganic crystals given as SCOPE "
        "strings (space-group generators, Wyckoff positions, composition): pre-trained "
        "encoders are meant to be fine-tuned on materials-property tasks; fine-tuned heads "
        "predict the property they were trained on.",
        "",
        "## Limitations",
        "",
        "- SCOPE has no coordinates or lattice parameters: polymorphs sharing space group, "
        "Wyckoff occupation and composition get the same string and the same prediction.",
        "- Trained on computed (DFT) structures; predictions for structures far from the "
        "training distribution (rare space groups, exotic chemistries, disorder) are "
        "unreliable and come without uncertainty.",
        "- Token ids are only meaningful with this package's vocabulary (vocab.json); "
        "strings of another SCOPE variant than the one recorded above are out of distribution.",
        "",
        "## Loading",
        "",
        *(usage if usage is not None else _PACKAGE_USAGE),
        "",
        "Check the files by hand with `sha256sum -c SHA256SUMS`.",
        "",
        "## Licence",
        "",
        "MIT (the CLOUD code and released tables are MIT, © 2025 Changwen Xu; training data "
        "keep their own licences, see the training data above).",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


_PACKAGE_USAGE = [
    "```python",
    "from cloud import load_pretrained",
    "",
    'package = load_pretrained("path/to/this/directory")  # verifies SHA256SUMS',
    "batch = package.tokenizer.batch_encode([scope_string])",
    "```",
]


def _layout(cloud_config: Mapping[str, Any]) -> str | None:
    if "prenorm" not in cloud_config:
        return None
    return "pre-LN" if cloud_config["prenorm"] else "post-LN (BERT)"


def _finetune_facts(finetune: Any) -> Any:
    """The fine-tuning metadata as the card shows it: an empty unit (a dimensionless target,
    e.g. matbench_dielectric's refractive index) reads "unitless" instead of nothing."""
    if not isinstance(finetune, Mapping) or finetune.get("unit") != "":
        return finetune
    return {**finetune, "unit": "unitless"}


def _json_or_none(values: Mapping[str, Any]) -> str | None:
    return json.dumps(values, sort_keys=True) if values else None


# Readable names of the metadata keys export writes; other keys are shown as they are.
_LABELS = {
    "steps": "optimizer steps",
    "tokens": "training tokens",
    "sequences": "training sequences",
    "flops": "training FLOPs",
    "world_size": "data-parallel processes",
    "zero_stage": "ZeRO stage",
    "initial_val_loss": "validation loss at initialisation",
    "val_loss": "validation loss (masked-token cross-entropy, nats)",
    "val_accuracy": "validation masked-token accuracy",
    "val_step": "validation measured at step",
    "num_samples": "structures",
    "num_shards": "shards",
    "validation_shards": "held-out validation shards",
    "max_length": "max tokens per sequence",
    "variant": "SCOPE variant",
    "dedup": "deduplication",
    "excluded": "kept out of the corpus (--exclude)",
    "structures_excluded": "inputs that matched an excluded structure",
}


def _bullets(values: Mapping[str, Any], depth: int = 0) -> list[str]:
    lines = []
    indent = "  " * depth
    for key, value in values.items():
        if value is None:
            continue
        label = _LABELS.get(key, key)
        if isinstance(value, Mapping) and value:
            lines.append(f"{indent}- {label}:")
            lines.extend(_bullets(value, depth + 1))
        else:
            lines.append(f"{indent}- {label}: {_format_value(value)}")
    return lines


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 1000:
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _section(title: str, values: Any) -> list[str]:
    if not values:
        return []
    body = _bullets(values) if isinstance(values, Mapping) else [str(values)]
    return [f"## {title}", "", *body, ""]


# ----------------------------------------------------------------------------- Hugging Face

HF_SAFETENSORS = "model.safetensors"
HF_SAFETENSORS_INDEX = "model.safetensors.index.json"
HF_TORCH_FILE = "pytorch_model.bin"
PRENORM_NOT_BERT = (
    "the model is pre-LN (prenorm=True): its blocks compute x + f(LN(x)) and end on a final "
    "LayerNorm, which BERT's post-LN layout LN(x + f(x)) cannot express, so no "
    "BertForMaskedLM computes the same function. Export it with --format cloud "
    "(cloud.load_pretrained) instead; every shipped pre-training config trains pre-LN, so for "
    "a model transformers can load, pre-train a post-LN one without token features (BERT has "
    "neither), e.g. cloud pretrain --config configs/pretrain/tiny.yaml "
    "model.overrides.prenorm=false model.overrides.token_features=null, and export that"
)


def save_hf_pretrained(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a Hugging Face ``BertForMaskedLM`` directory (``from_pretrained``-loadable).

    config.json in BERT's schema, model.safetensors under BERT's names (tied tensors dropped,
    as ``transformers`` saves them), the tokenizer's Hugging Face files (``hf_files``: for the
    SCOPE tokenizer a tokenizer.json that ``AutoTokenizer`` loads and that gives
    ``ScopeTokenizer``'s ids), a model card (how to feed it, segments included) and
    SHA256SUMS. Only post-LN ``CloudForMaskedLM`` models have a BERT equivalent; anything
    else raises ``ValueError`` saying why and what to export instead.
    """
    from cloud.hf import hf_bert_config, state_dict_to_hf_bert

    if type(model) is not CloudForMaskedLM:
        raise ValueError(
            f"--format hf writes BertForMaskedLM; {type(model).__name__} has no BERT "
            "equivalent (export it with --format cloud)"
        )
    config: CloudConfig = model.config
    if config.prenorm:
        raise ValueError(PRENORM_NOT_BERT)
    target_dtype = _check_dtype(dtype)
    hf_state = state_dict_to_hf_bert(model.state_dict(), config)
    if config.tie_word_embeddings:
        # transformers re-ties these on load and leaves them out of its own files.
        del hf_state["cls.predictions.decoder.weight"]
        del hf_state["cls.predictions.decoder.bias"]
    tensors, aliases = dedupe_tensors(hf_state, target_dtype)
    for alias, target in aliases.items():
        # Names transformers does not re-tie (the untied decoder bias) need their own copy.
        tensors[alias] = tensors[target].clone()
    hf_config = {**hf_bert_config(config), "dtype": dtype}
    card_config = {
        "architecture": {"name": "CloudForMaskedLM", "config": {"cloud_config": config.to_dict()}},
        "tokenizer": tokenizer_record(
            tokenizer, (metadata or {}).get("training_data", {}).get("variant")
        ),
        "weights": {"dtype": dtype},
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tool": {"name": "cloud-crystal", "version": tool_version()},
        "metadata": json.loads(json.dumps(dict(metadata or {}))),
    }
    files: dict[str, str | bytes] = {
        "config.json": json.dumps(hf_config, indent=2) + "\n",
        **tokenizer.hf_files(),
        CARD_FILE: model_card(card_config, usage=_hf_usage(tokenizer, config)),
    }
    return write_package(out_dir, tensors, files, weights_file=HF_SAFETENSORS, overwrite=overwrite)


def _hf_usage(tokenizer: Any, config: CloudConfig) -> list[str]:
    """The model card's "Loading" section of a Hugging Face directory."""
    from tokenizer.released import ReleasedWordPieceTokenizer

    header = [
        "A Hugging Face `BertForMaskedLM` directory (post-LN CLOUD models are exactly BERT).",
        "",
    ]
    if isinstance(tokenizer, ReleasedWordPieceTokenizer):
        # The released WordPiece vocabulary tokenizes released SCOPE strings as they are.
        return [
            *header,
            "```python",
            "from transformers import BertForMaskedLM, BertTokenizer",
            "",
            'model = BertForMaskedLM.from_pretrained("path/to/this/directory")',
            'hf_tokenizer = BertTokenizer.from_pretrained("path/to/this/directory")',
            'logits = model(**hf_tokenizer(scope_string, return_tensors="pt")).logits',
            "```",
        ]
    lines = [
        *header,
        "tokenizer.json gives the ids of CLOUD's `ScopeTokenizer` (namespaced tokens: the "
        "generator `O` and the element `O` are different tokens). Load it with "
        "`AutoTokenizer`, not `BertTokenizer`, whose BERT pre-tokenizer turns SCOPE words "
        "into [UNK].",
        "",
        "```python",
        "from transformers import AutoTokenizer, BertForMaskedLM",
        "",
        'model = BertForMaskedLM.from_pretrained("path/to/this/directory")',
        'hf_tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")',
        'batch = hf_tokenizer(scope_strings, padding=True, return_tensors="pt")',
    ]
    if config.num_segments:
        lines += [
            "# The SCOPE segments (0 generators, 1 Wyckoff, 2 composition), which the model",
            "# reads as token types: each '|' opens the next. The tokenizer cannot count them.",
            'separator = hf_tokenizer.convert_tokens_to_ids("|")',
            'segments = (batch["input_ids"] == separator).cumsum(-1).clamp(max=2)',
            'batch["token_type_ids"] = segments * batch["attention_mask"]',
        ]
    return [*lines, "logits = model(**batch).logits", "```"]


def read_hf_bert(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config.json, state dict) of a Hugging Face BERT directory, without unpickling.

    Reads model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin
    (``torch.load(weights_only=True)``: tensors only, no arbitrary objects).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: missing; not a Hugging Face model directory")
    hf_config = json.loads(config_path.read_text())
    if (directory / HF_SAFETENSORS).is_file():
        return hf_config, load_file(str(directory / HF_SAFETENSORS))
    if (directory / HF_SAFETENSORS_INDEX).is_file():
        index = json.loads((directory / HF_SAFETENSORS_INDEX).read_text())
        state: dict[str, Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(directory / _plain_name(shard))))
        return hf_config, state
    if (directory / HF_TORCH_FILE).is_file():
        state = torch.load(directory / HF_TORCH_FILE, map_location="cpu", weights_only=True)
        return hf_config, dict(state)
    raise FileNotFoundError(
        f"{directory}: no {HF_SAFETENSORS}, {HF_SAFETENSORS_INDEX} or {HF_TORCH_FILE}"
    )
