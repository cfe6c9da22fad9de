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

Rooms: ``format`` (format name and versions, file names, dtypes, ``PackageError``, checksums,
``tool_version``), ``limits`` (config.json bounds, bounded JSON reads, safetensors header
checks), ``registry`` (``register_architecture`` and lookups), ``save`` (``save_pretrained``,
``write_package``, the tensors and tokenizer record stored), ``load`` (``load_pretrained`` and
the reading and verifying behind it), ``card`` (``model_card``, one function per section),
``huggingface`` (``save_hf_pretrained``, ``read_hf_bert``). This module re-exports their
public names (the same objects).
"""

from __future__ import annotations

from cloud.export.card import (
    model_card,
)
from cloud.export.format import (
    CARD_FILE,
    CHECKSUMS_FILE,
    CITATION,
    CONFIG_FILE,
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    TOKENIZER_FORMATS,
    TRUSTED_MODULE_PREFIXES,
    VOCAB_FILE,
    WEIGHTS_FILE,
    PackageError,
    checksums_text,
    read_checksums,
    sha256_file,
    tool_version,
    verify_checksums,
)
from cloud.export.huggingface import (
    HF_SAFETENSORS,
    HF_SAFETENSORS_INDEX,
    HF_TORCH_FILE,
    PRENORM_NOT_BERT,
    read_hf_bert,
    save_hf_pretrained,
)
from cloud.export.limits import (
    CONFIG_LIMITS,
    HEAD_LIMITS,
    MAX_HEAD_LAYERS,
    MAX_JSON_BYTES,
    MAX_PARAMETERS,
    check_config_limits,
    check_safetensors_header,
    expected_tensors,
)
from cloud.export.load import (
    Pretrained,
    is_package,
    load_pretrained,
    load_weights,
    read_package_config,
    tokenizer_from_dict,
    tokenizer_from_file,
)
from cloud.export.registry import (
    Architecture,
    architecture_of,
    get_architecture,
    register_architecture,
    registered_architectures,
)
from cloud.export.save import (
    dedupe_tensors,
    save_pretrained,
    tokenizer_record,
    weights_to_store,
    write_package,
)

__all__ = [
    "CARD_FILE",
    "CHECKSUMS_FILE",
    "CITATION",
    "CONFIG_FILE",
    "CONFIG_LIMITS",
    "DTYPES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "HEAD_LIMITS",
    "HF_SAFETENSORS",
    "HF_SAFETENSORS_INDEX",
    "HF_TORCH_FILE",
    "MAX_HEAD_LAYERS",
    "MAX_JSON_BYTES",
    "MAX_PARAMETERS",
    "PRENORM_NOT_BERT",
    "READABLE_VERSIONS",
    "TOKENIZER_FORMATS",
    "TRUSTED_MODULE_PREFIXES",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "Architecture",
    "PackageError",
    "Pretrained",
    "architecture_of",
    "check_config_limits",
    "check_safetensors_header",
    "checksums_text",
    "dedupe_tensors",
    "expected_tensors",
    "get_architecture",
    "is_package",
    "load_pretrained",
    "load_weights",
    "model_card",
    "read_checksums",
    "read_hf_bert",
    "read_package_config",
    "register_architecture",
    "registered_architectures",
    "save_hf_pretrained",
    "save_pretrained",
    "sha256_file",
    "tokenizer_from_dict",
    "tokenizer_from_file",
    "tokenizer_record",
    "tool_version",
    "verify_checksums",
    "weights_to_store",
    "write_package",
]
