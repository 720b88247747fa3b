"""Architectures and their registry. `zoo` registers every entrypoint on import; torch is loaded only when a
model is built (or `ResNet` / `ResNetV2` is asked for), so the catalog answers fast."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import zoo  # noqa: F401  (registers the models)
from .registry import ModelEntry, get_entry, list_models, register_model

if TYPE_CHECKING:
    from .resnet import ResNet, ResNetV2

__all__ = ["ModelEntry", "ResNet", "ResNetV2", "get_entry", "list_models", "register_model"]


def __getattr__(name: str):
    if name in ("ResNet", "ResNetV2"):
        return getattr(importlib.import_module(".resnet", __name__), name)
    raise AttributeError(f"module 'resnets.models' has no attribute {name!r}")
