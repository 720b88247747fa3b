"""Data: the registry (datasets by name), sources (where files come from), datasets (items), transforms (v2
pipelines), augment (whole batches on the device), loader (batches).

`build(cfg)` turns a training config into the train and validation datasets and everything the engine needs to
know about them (classes, channels, crop sizes, normalisation). Names are imported on first use, so the registry
can be read without loading torch (`resnets --help`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataBundle": "bundle",
    "build": "bundle",
    "per_class_subset": "bundle",
    "select_classes": "bundle",
    "stratified_split": "bundle",
    "BadSample": "datasets",
    "FileDataset": "datasets",
    "TensorDataset": "datasets",
    "csv_manifest": "datasets",
    "decode": "datasets",
    "image_folder": "datasets",
    "synthetic": "datasets",
    "DATASETS": "registry",
    "DatasetSpec": "registry",
    "get_dataset": "registry",
}
_MODULES = (
    "augment",
    "batching",
    "bundle",
    "datasets",
    "device_loader",
    "loader",
    "preprocessing",
    "registry",
    "sources",
    "transforms",
)

__all__ = [
    "BadSample",
    "DATASETS",
    "DataBundle",
    "DatasetSpec",
    "FileDataset",
    "TensorDataset",
    "build",
    "csv_manifest",
    "decode",
    "get_dataset",
    "image_folder",
    "per_class_subset",
    "select_classes",
    "stratified_split",
    "synthetic",
]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'resnets.data' has no attribute {name!r}")
