"""Typed YAML configs: dataclasses built from ``yaml.safe_load`` data and dotted overrides.

Pretraining, fine-tuning and CLOUD-DEBYE training each describe their run as a dataclass
(with nested dataclass sections). This module turns plain YAML data into such a dataclass,
refusing unknown keys and values of the wrong type with a message that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def build_config(cls: type[T], values: Any, *, label: str = "", path: str = "") -> T:
    """``cls`` built from nested dicts; unknown keys and wrong types raise ``ValueError``.

    ``label`` names the kind of config in the unknown-key message ("finetune" → "unknown
    finetune config key(s)"); ``path`` is the dotted section being built.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"config section {path or '<root>'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"section {path!r}" if path else "the top level"
        kind = f"{label} config" if label else "config"
        raise ValueError(f"unknown {kind} key(s) {unknown} in {where}; valid keys: {names}")
    kwargs = {
        name: _coerce(value, hints[name], f"{path}.{name}" if path else name, label)
        for name, value in values.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"config section {path or '<root>'}: {err}") from err


def _coerce(value: Any, hint: Any, path: str, label: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value, label=label, path=path)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, option, path, label)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, path, label) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{path} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path} must be an integer, got {value!r}")
        return value
    if hint is float:
        # YAML reads 1e-3 (no dot) as a string; accept it, and ints, as floats.
        if isinstance(value, bool):
            raise ValueError(f"{path} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path} must be a number, got {value!r}") from None
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{path} must be a string, got {value!r}")
    return value


def apply_overrides(values: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``dotted.key=value`` overrides (values parsed as YAML) in a copy of a nested dict."""
    result = copy.deepcopy(dict(values))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form dotted.key=value")
        node = result
        *sections, last = key.split(".")
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        try:
            node[last] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(
                f"override {item!r}: the value is not YAML ({_first_line(err)})"
            ) from None
    return result


def _first_line(err: yaml.YAMLError) -> str:
    return str(err).strip().splitlines()[0]


def read_yaml_mapping(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (``yaml.safe_load``); a file that is not
    YAML is a ValueError naming it and the place."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"{path}: not a YAML {kind} config{where}: {_first_line(err)}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the top level of a {kind} config must be a mapping")
    return values


def load_layered_config(
    path: str | os.PathLike[str] | None,
    overrides: Sequence[str],
    fields: Mapping[str, Any],
    *,
    kind: str,
    build: Callable[[dict[str, Any]], T],
) -> T:
    """``build`` of a job's layered config: the YAML file at ``path`` (``None``: start empty),
    then ``fields`` (command-line flags; a ``None`` value means not given and is skipped),
    then the dotted ``overrides``. A ValueError or TypeError of the overrides or of ``build``
    is raised again as a ValueError that starts with ``path`` (``"<kind> config"`` without
    one); ``kind`` also names the config in the message about a non-mapping file."""
    values = read_yaml_mapping(path, kind) if path is not None else {}
    values.update({k: v for k, v in fields.items() if v is not None})
    try:
        return build(apply_overrides(values, overrides))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path or f'{kind} config'}: {err}") from None
