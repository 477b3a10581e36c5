"""The one model registry of the book.

Each model module decorates a factory ``fn(num_classes, in_chans, **overrides) -> nn.Module``
with :func:`register_model`.  ``num_classes=0`` asks for the backbone alone (no head).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import torch.nn as nn

# Modules that register models, imported lazily on first lookup (in book order).
_MODEL_MODULES = ("hrvit_edu.models.baseline", "hrvit_edu.models.hrvit", "hrvit_edu.models.segformer",
                  "hrvit_edu.models.cswin", "hrvit_edu.models.transnext", "hrvit_edu.models.rtformer",
                  "hrvit_edu.models.hire_mlp", "hrvit_edu.models.expedite")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    paper: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, paper: str, description: str = ""):
    """Decorator: add a factory under ``name`` (names are unique; re-registering is an error)."""
    def wrap(fn):
        if name in _REGISTRY and _REGISTRY[name].factory.__qualname__ != fn.__qualname__:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, fn, paper, description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return wrap


def register_variants(prefix: str, *, paper: str, model_cls, variants: dict, title: str) -> None:
    """Register ``<prefix>_<variant>`` for every config in ``variants``: a factory
    ``(num_classes=11, in_chans=1, **overrides) -> model_cls(replace(config, **overrides), ...)``."""
    def factory(variant: str):
        def make(num_classes=11, in_chans=1, **overrides):
            return model_cls(dataclasses.replace(variants[variant], **overrides), num_classes=num_classes,
                             in_chans=in_chans)
        make.__doc__ = f"{title}-{variant.capitalize()} (official configuration; task='classify' for ImageNet)"
        make.__qualname__ = f"{prefix}_{variant}"
        return make

    for variant in variants:
        register_model(f"{prefix}_{variant}", paper=paper)(factory(variant))


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        importlib.import_module(mod)


def _book_order(entry: ModelEntry) -> int:
    mod = entry.factory.__module__
    return _MODEL_MODULES.index(mod) if mod in _MODEL_MODULES else len(_MODEL_MODULES)


def list_models(paper: str | None = None) -> list[str]:
    """Registered names in book order (chapter by chapter, then registration order)."""
    _load_all()
    entries = sorted(_REGISTRY.values(), key=_book_order)      # stable: keeps registration order
    return [e.name for e in entries if paper is None or e.paper == paper]


def model_info(name: str) -> ModelEntry:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 11, in_chans: int = 1, **overrides) -> nn.Module:
    """Build a registered model.  ``num_classes=0`` gives the backbone without a head.

    DigitScenes defaults: 11 classes (ten digits + background), 1 input channel.
    """
    entry = model_info(name)
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    model = entry.factory(num_classes=num_classes, in_chans=in_chans, **overrides)
    model.registry_name = name
    return model
