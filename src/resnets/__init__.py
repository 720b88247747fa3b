"""resnets: the ResNet family of "Deep Residual Learning for Image Recognition" (He et al., 2015).

The names below are imported on first use (PEP 562), so `resnets --help` and `--version` answer without
loading torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__  # noqa: F401

# public name -> the module that defines it
_EXPORTS = {
    "OptionError": "errors",
    "ResnetsError": "errors",
    "UnknownModelError": "errors",
    "WeightsError": "errors",
    "ModelMeta": "meta",
    "Preprocessing": "data.preprocessing",
    "read_weights": "weights.files",
    "save": "weights.files",
    "apply_state_dict": "factory",
    "create_model": "factory",
    "load": "factory",
    "list_models": "models",
    "WeightSpec": "weights",
    "get_weights": "weights",
    "list_weights": "weights",
}

__all__ = [
    "ModelMeta",
    "OptionError",
    "Preprocessing",
    "ResnetsError",
    "UnknownModelError",
    "WeightSpec",
    "WeightsError",
    "apply_state_dict",
    "create_model",
    "get_weights",
    "list_models",
    "list_weights",
    "load",
    "read_weights",
    "save",
]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from .data.preprocessing import Preprocessing
    from .errors import OptionError, ResnetsError, UnknownModelError, WeightsError
    from .factory import apply_state_dict, create_model, load
    from .meta import ModelMeta
    from .models import list_models
    from .weights import WeightSpec, get_weights, list_weights
    from .weights.files import read_weights, save


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
