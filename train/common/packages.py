"""What a job reads from a model package (``cloud.export``) beyond its weights."""

from __future__ import annotations

from typing import Any


def checkpoint_variant(pretrained: Any) -> str:
    """The SCOPE variant the package's model reads.

    In order: the variant its tokenizer record names (``config["tokenizer"]["variant"]``,
    written by every version-2 package), else the one of its training data
    (``metadata["training_data"]["variant"]``), else ``metadata["variant"]``; ``"cloud"``
    when the package says none (version-1 packages).
    """
    config = getattr(pretrained, "config", None)
    record = config.get("tokenizer", {}) if isinstance(config, dict) else {}
    if isinstance(record.get("variant"), str):
        return record["variant"]
    metadata = getattr(pretrained, "metadata", None) or {}
    training_data = metadata.get("training_data") or {}
    return training_data.get("variant") or metadata.get("variant") or "cloud"
