"""The model card (README.md) of a package, from its config.json: one function per section.

``model_card`` joins the sections in order: title, Model, the metadata sections (Training
data, Training, Fine-tuning, Source; each only when recorded), Intended use, Limitations,
Loading, Licence, Citation. Each section function returns its lines, ending with a blank one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cloud.export.format import CITATION


def model_card(config: Mapping[str, Any], usage: list[str] | None = None) -> str:
    """README.md of a package, from its config.json contents (metadata included).

    ``usage`` replaces the "Loading" section's body (the Hugging Face layout shows
    ``transformers`` code instead of ``load_pretrained``).
    """
    lines = [
        *_title_section(config),
        *_model_section(config),
        *_metadata_sections(config.get("metadata") or {}),
        *_intended_use_section(),
        *_limitations_section(),
        *_loading_section(usage),
        *_licence_section(),
        *_citation_section(),
    ]
    return "\n".join(lines)


def _title_section(config: Mapping[str, Any]) -> list[str]:
    """The title and the line saying what packaged the model, and when."""
    return [
        f"# CLOUD — {config['architecture']['name']}",
        "",
        "A CLOUD crystal language model (BERT-style encoder over SCOPE strings; Xu, Zhu & "
        "Viswanathan, arXiv 2506.17345), packaged by `cloud-crystal` "
        f"{config['tool']['version']} on {config['created']}.",
        "",
    ]


def _model_section(config: Mapping[str, Any]) -> list[str]:
    """ "Model": the architecture, its sizes, the vocabulary, the weights dtype, head settings."""
    architecture = config["architecture"]
    cloud_config = architecture["config"].get("cloud_config", {})
    tokenizer = config["tokenizer"]
    return [
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
    ]


def _metadata_sections(metadata: Mapping[str, Any]) -> list[str]:
    """ "Training data", "Training", "Fine-tuning" and "Source", each only when recorded."""
    return [
        *_section("Training data", metadata.get("training_data")),
        *_section("Training", metadata.get("training")),
        *_section("Fine-tuning", _finetune_facts(metadata.get("finetune"))),
        *_section("Source", metadata.get("source")),
    ]


def _intended_use_section() -> list[str]:
    """ "Intended use": what the representations and heads are for."""
    return [
        "## Intended use",
        "",
        "Representations and property predictions for inorganic crystals given as SCOPE "
        "strings (space-group generators, Wyckoff positions, composition): pre-trained "
        "encoders are meant to be fine-tuned on materials-property tasks; fine-tuned heads "
        "predict the property they were trained on.",
        "",
    ]


def _limitations_section() -> list[str]:
    """ "Limitations": what SCOPE cannot tell apart, the training distribution, the vocabulary."""
    return [
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
    ]


def _loading_section(usage: list[str] | None) -> list[str]:
    """ "Loading": ``usage`` (default ``_PACKAGE_USAGE``) and how to check the files by hand."""
    return [
        "## Loading",
        "",
        *(usage if usage is not None else _PACKAGE_USAGE),
        "",
        "Check the files by hand with `sha256sum -c SHA256SUMS`.",
        "",
    ]


def _licence_section() -> list[str]:
    """ "Licence": the code's and the tables' licence; the training data keep their own."""
    return [
        "## Licence",
        "",
        "MIT (the CLOUD code and released tables are MIT, © 2025 Changwen Xu; training data "
        "keep their own licences, see the training data above).",
        "",
    ]


def _citation_section() -> list[str]:
    """ "Citation": ``CITATION`` as a BibTeX block."""
    return ["## Citation", "", "```bibtex", CITATION, "```", ""]


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
