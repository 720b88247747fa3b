"""torch.hub entrypoints: `torch.hub.load("<path or owner/repo>", "resnet50", weights=..., num_classes=...)`.

Every registered model name is an entrypoint taking the keyword arguments of `resnets.create_model`.
"""

import os
import sys

dependencies = ["torch", "torchvision", "safetensors"]

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from resnets import create_model as _create_model  # noqa: E402
from resnets import list_models as _list_models  # noqa: E402


def _entrypoint(name):
    def fn(**kwargs):
        return _create_model(name, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"{name}: see resnets.create_model for the keyword arguments."
    return fn


for _name in _list_models():
    globals()[_name] = _entrypoint(_name)
