"""Datasets by name, like the models: each declares how it loads, its channels, its native image size and its
statistics. Training (`data.build`), evaluation, int8 calibration, `reproduce` and the command line's choices
all read this one table; adding a dataset is one entry. No torch at import (the CLI's help reads it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ResnetsError
from ..registry import Registry
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class DatasetSpec:
    """kind "tensors": held in memory, at a fixed size and channel count, loaded by `tensors(split, data,
    download)` -> (images uint8 (N, C, H, W), labels, class names). kind "files": image files, decoded to the
    model's channels and resized (native 0). kind "synthetic": random images made from the config."""

    name: str
    doc: str
    kind: str
    channels: int = 0  # tensors: their channels; 0: the model's (files are decoded to it)
    native: int = 0  # tensors: their size; 0: any (files are resized and cropped)
    mean: tuple[float, ...] = IMAGENET_MEAN  # per-channel statistics of the training set, in [0, 1] units
    std: tuple[float, ...] = IMAGENET_STD
    tensors: Callable[[str, Any, bool], tuple] | None = None
    downloadable: bool = False
    needs_data: bool = False  # --data must name the files
    task: str = "classification"  # the task whose models train on it (models.registry.TASK_TRAITS)

    def load(
        self,
        split: str,
        data: str | None = None,
        download: bool = False,
        *,
        channels: int = 3,
        classes: list[str] | None = None,
    ):
        """The `split` ("train" or "test") as a dataset. For image files: "train" is DIR/train (or DIR), "test"
        the first of DIR/val, DIR/validation, DIR/test; a CSV manifest is the file itself. None: no such split
        (training then holds part of the training set out; evaluation takes the images of DIR)."""
        from .datasets import TensorDataset, csv_manifest, image_folder

        if self.tensors is not None:
            return TensorDataset(*self.tensors(split, data, download))
        if self.kind != "files":
            raise ResnetsError(f"{self.name} has no {split} split to load")
        if not data:
            raise ResnetsError(f"dataset {self.name} needs --data (the image folder or CSV manifest)")
        if self.name == "csv":
            return csv_manifest(data, channels, classes=classes)
        if self.name == "wds":
            from .shards import load

            return load(data, split, channels, classes)
        if self.name == "hf":
            from .hf import load

            return load(data, split, channels, classes)
        root = Path(data)
        if not root.is_dir():
            raise ResnetsError(f"data folder not found: {root}")
        if split == "train":
            return image_folder(root / "train" if (root / "train").is_dir() else root, channels, classes=classes)
        held = next((root / v for v in ("val", "validation", "test") if (root / v).is_dir()), None)
        return image_folder(held, channels, classes=classes) if held is not None else None

    def evaluation(
        self, data: str | None = None, download: bool = False, *, channels: int = 3, classes: list[str] | None = None
    ):
        """The images to evaluate a model on: the test split, or for image files without one, the folder's."""
        if self.kind == "synthetic":
            raise ResnetsError("synthetic data has no labels to evaluate against")
        ds = self.load("test", data, download, channels=channels, classes=classes)
        return ds if ds is not None else self.load("train", data, download, channels=channels, classes=classes)


def _fashion_mnist(split: str, data, download: bool):
    from .sources import load_fashion_mnist

    return load_fashion_mnist(split, data, download)


def _cifar(name: str):
    def load(split: str, data, download: bool):
        from .sources import load_cifar

        return load_cifar(name, split, data, download)

    return load


DATASETS: Registry[DatasetSpec] = Registry("dataset", ResnetsError, "see `resnets data --list`")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.add(spec.name, spec)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.find(name)


def list_datasets(kind: str | None = None) -> list[str]:
    return [n for n, s in DATASETS.items() if kind is None or s.kind == kind]


register_dataset(
    DatasetSpec(
        "fashion-mnist",
        "Zalando's 70k 28x28 grey clothing images, 10 classes",
        "tensors",
        channels=1,
        native=28,
        mean=(0.2860,),
        std=(0.3530,),
        tensors=_fashion_mnist,
        downloadable=True,
    )
)
register_dataset(
    DatasetSpec(
        "cifar10",
        "60k 32x32 colour images, 10 classes (the paper's section 4.2)",
        "tensors",
        channels=3,
        native=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        tensors=_cifar("cifar10"),
        downloadable=True,
    )
)
register_dataset(
    DatasetSpec(
        "cifar100",
        "60k 32x32 colour images, 100 classes",
        "tensors",
        channels=3,
        native=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        tensors=_cifar("cifar100"),
        downloadable=True,
    )
)
register_dataset(
    DatasetSpec(
        "imagefolder",
        "your images: DIR/<class>/*, or DIR/train/<class>/* and DIR/val/<class>/*",
        "files",
        needs_data=True,
    )
)
register_dataset(
    DatasetSpec(
        "csv", "your images listed in a path,label CSV (--val-data: the validation CSV)", "files", needs_data=True
    )
)
register_dataset(
    DatasetSpec(
        "wds",
        "WebDataset tar shards with their index (`resnets data shard` writes them): a folder, shard files, or shards "
        "to stream (a URL or pipe: pattern)",
        "files",
        needs_data=True,
    )
)
register_dataset(
    DatasetSpec(
        "hf",
        "a Hugging Face image dataset: a save_to_disk folder, a folder of parquet/arrow files, or a Hub name "
        "(its cache when offline); its Image and ClassLabel columns",
        "files",
        needs_data=True,
    )
)
register_dataset(
    DatasetSpec(
        "coco",
        "boxes (and masks) in COCO's format: DIR/train and DIR/val, each images and an instances.json",
        "detection",
        needs_data=True,
        task="detection",
    )
)
register_dataset(
    DatasetSpec(
        "voc",
        "boxes in Pascal VOC's layout: DIR/Annotations/*.xml, DIR/JPEGImages, DIR/ImageSets/Main/train.txt, val.txt",
        "detection",
        needs_data=True,
        task="detection",
    )
)
register_dataset(
    DatasetSpec(
        "masks",
        "class maps for segmentation: DIR/train and DIR/val, each images/ and masks/ (PNG, a class per pixel), "
        "DIR/classes.txt",
        "segmentation",
        needs_data=True,
        task="segmentation",
    )
)
register_dataset(DatasetSpec("synthetic", "random images, for throughput runs (no learning signal)", "synthetic"))
