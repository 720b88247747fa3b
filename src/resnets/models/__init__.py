"""Architectures and their registry. `zoo` registers every entrypoint on import."""
from . import zoo  # noqa: F401  (registers the models)
from .registry import ModelEntry, get_entry, list_models, register_model
from .resnet import ResNet, ResNetV2

__all__ = ["ModelEntry", "ResNet", "ResNetV2", "get_entry", "list_models", "register_model"]
