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
    "predict": "inference",
    "embed": "inference",
    "explain": "inference",
    "grad_cam": "inference",
    "train": "engine",
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
    "embed",
    "explain",
    "get_weights",
    "grad_cam",
    "list_models",
    "list_weights",
    "load",
    "predict",
    "read_weights",
    "save",
    "train",
]
assert sorted(__all__) == sorted(_EXPORTS)
# resnets.detect(model, paths) and resnets.segment(...): the modules detect.py and segment.py, callable as their
# function of the same name (a package attribute cannot be both the submodule and a function)
CALLABLE_MODULES = ("detect", "segment")
__all__ += list(CALLABLE_MODULES)

if TYPE_CHECKING:
    from .data.preprocessing import Preprocessing
    from .engine import train
    from .errors import OptionError, ResnetsError, UnknownModelError, WeightsError
    from .factory import apply_state_dict, create_model, load
    from .inference import embed, explain, grad_cam, predict
    from .meta import ModelMeta
    from .models import list_models
    from .weights import WeightSpec, get_weights, list_weights
    from .weights.files import read_weights, save


def __getattr__(name: str):
    if name in CALLABLE_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The API only (not this module's own imports: importlib, TYPE_CHECKING, annotations)."""
    return sorted({*_EXPORTS, *CALLABLE_MODULES, "__version__"})
