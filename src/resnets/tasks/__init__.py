"""What a model is trained and scored for, one room a task: classification, detection, segmentation. Each room holds
its task's whole policy (the data it trains on, the model made for its classes, the batch as the model takes it, the
loss as a dict of named losses, the scores and how they are shown); the engine (engine/) is one trainer that asks
the task for them. A task is registered under the model families it trains (models.registry's `family`), and
`task_of` answers "which task is this?" for a model, a config or an architecture's name: the one place that asks.

Adding a task: one module here with a `Task` subclass and its `register(...)` line, imported below."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ResnetsError
from ..meta import meta_of
from ..models import get_entry, list_models
from . import classification, detection, segmentation  # noqa: F401  (each room registers itself)
from .base import TASKS, Batch, Task, register

__all__ = ["Batch", "Task", "register", "task_of", "tasks"]


def task_of(thing: Any) -> Task:
    """The task of a model (by its recorded architecture, else its kind), a config (by its --model), or an
    architecture's name. A name that is no registered model (a config that takes its model from --weights) is
    classification's, as the config's own checks have it."""
    if isinstance(thing, nn.Module):
        try:
            return task_of(meta_of(thing).architecture)
        except ResnetsError:  # built elsewhere (torchvision's own): by its kind
            return next((t for t in tasks() if t.owns(thing)), TASKS["imagenet"])
    name = thing if isinstance(thing, str) else thing.model
    family = get_entry(name).family if name in list_models() else "imagenet"
    return TASKS[family]


def tasks() -> list[Task]:
    """Each registered task once, in the order registered."""
    return list(dict.fromkeys(TASKS.values()))
