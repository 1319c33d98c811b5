"""Overrides on top of a config: `a.b=3` strings, nested merges, and configs flattened to MLflow params."""

from __future__ import annotations

import copy
from typing import Any, Iterable

from pydantic import BaseModel


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(exclude_unset=True)
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def nested(pairs: Iterable[tuple[str, Any]]) -> dict:
    """(dotted path, value) pairs to a nested dict: ("a.b", 3) -> {"a": {"b": 3}}."""
    out: dict = {}
    for key, value in pairs:
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def parse_overrides(pairs: list[str]) -> dict:
    """`a.b=3` strings (from the command line) to a nested dict; values parsed as JSON when they can be."""
    import json

    parsed = []
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not KEY=VALUE; write e.g. class_ddpm.epochs=3")
        key, raw = pair.split("=", 1)
        try:
            parsed.append((key, json.loads(raw)))
        except json.JSONDecodeError:
            parsed.append((key, raw))
    return nested(parsed)


def flatten_params(cfg: BaseModel, prefix: str = "") -> dict[str, Any]:
    """A nested config as flat `a.b` keys, for MLflow params."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_dump().items():
        _flatten(out, f"{prefix}{key}", value)
    return out


def _flatten(out: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(out, f"{key}.{k}", v)
    else:
        out[key] = value
