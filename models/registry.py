"""Model registry in the spirit of timm: `@register_model` on a builder, `create_model(name, **overrides)`.

Configs are data: each entry records the builder and its metadata (paper, native input size, stride); overrides
that are None are ignored so unset CLI flags never clobber a model's defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from edge_irst.errors import UnknownNameError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    meta: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, **meta) -> Callable:
    """Decorator registering `builder(**overrides) -> nn.Module` under `name`; a second registration is an error."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        _REGISTRY[name] = ModelEntry(name, builder, dict(meta))
        return builder

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("model", name, list_models()) from None


def create_model(name: str, **overrides):
    """Build a registered model; keyword overrides equal to None are dropped (they mean "use the default")."""
    entry = model_entry(name)
    return entry.builder(**{k: v for k, v in overrides.items() if v is not None})
