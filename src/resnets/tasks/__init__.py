"""What a model is trained and scored for, one room a task: classification, detection, segmentation. Each room holds
its task's whole policy (the data it trains on, the model made for its classes, the batch as the model takes it, the
loss as a dict of named losses, the scores and how they are shown); the engine (engine/) is one trainer that asks
the task for them. A task's traits (models.registry.TASK_TRAITS: its model families, names, datasets, augmentations) are what the
floors below know of it; its room here is registered under its name, and
`task_of` answers "which task is this?" for a model, a config or an architecture's name: the one place that asks.

Adding a task: one module here with its traits (`add_task`), its models (`register_model(family=...)`), a `Task`
subclass and its `register(...)` line, imported below; tests/tasks/test_task_base.py adds a toy one."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..meta import traits_of
from ..models import get_entry, list_models
from . import classification, detection, segmentation  # noqa: F401  (each room registers itself)
from .base import TASKS, Batch, Task, register

__all__ = ["Batch", "Task", "register", "task_of", "tasks"]


def task_of(thing: Any) -> Task:
    """The task of a model (by its recorded architecture, else its kind: meta.traits_of), a config (by its
    --model), or an architecture's name. A name that is no registered model (a config that takes its model from
    --weights) is classification's, as the config's own checks have it."""
    if isinstance(thing, nn.Module):
        return TASKS[traits_of(thing).name]
    name = thing if isinstance(thing, str) else thing.model
    return TASKS[get_entry(name).task.name if name in list_models() else "classification"]


def tasks() -> list[Task]:
    """Each registered task, in the order registered."""
    return list(TASKS.values())
