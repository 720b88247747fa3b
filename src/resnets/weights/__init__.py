"""Weights: where they come from, what they are, how they are read, written and published.

- registry.py: `WeightSpec` (url, sha256, classes, eval preprocessing, reported accuracy), the registry of names
  and `fetch` (the download cache, hash-checked); published.py: torchvision's and timm's tables, registered.
- files.py: weights files in any published layout, self-describing model files, training checkpoints (pickles
  read with weights_only after a scan for pickled code); keras.py: Keras' ResNet files.
- hub.py: `hf-hub:` names and timm folders read (their config.json checked against a schema); publish.py: the
  Hub folder, the model card and `resnets push`.
"""

from ..data.preprocessing import Preprocessing  # noqa: F401  (resnets.weights.Preprocessing, as before)
from ..home import cache_dir, class_list, offline  # noqa: F401
from . import published  # noqa: F401  (registers the tables)
from .registry import (  # noqa: F401
    WeightSpec,
    default_weights,
    fetch,
    get_weights,
    is_registered,
    list_weights,
    register_weights,
    unregister_weights,
)
