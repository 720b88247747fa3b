"""Hugging Face image datasets (`--dataset hf --data DIR_OR_NAME`), read through the `datasets` library: a folder
written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, a folder of parquet or arrow files (the Hub's
layout: `data/train-*.parquet`, ...), or a Hub name ('user/name', from the Hub's cache: with RESNETS_OFFLINE or
HF_HUB_OFFLINE set nothing is fetched, as for hf-hub: weights).

The images are the dataset's first Image column, read as their stored bytes (never decoded by `datasets`: each
image goes through the same bounded header check and decode as an image file), the labels its first ClassLabel
column, whose names are the classes. Splits: "train", and for validation "validation", else "test". No dataset
script is ever run (the library's remote code is not trusted)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

from ..errors import ResnetsError
from ..home import downloads_off
from . import remote
from .datasets import BYTES_PER_PIXEL_BOUND, BadSample, FileDataset, label_map, max_pixels

HELD_OUT = ("validation", "valid", "val", "test")


class HFDataset(FileDataset):
    """Rows of a `datasets.Dataset`: sample i is row `rows[i]`, named `NAME[split]#row` in errors."""

    def __init__(self, table, column: str, samples, classes, channels: int, rows: list[int]):
        super().__init__(samples, classes, channels)
        self.table, self.column, self.rows = table, column, rows

    def read(self, i: int) -> bytes:
        cell = self.table[self.rows[i]][self.column]
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not isinstance(data, (bytes, bytearray)):
            raise BadSample(self.samples[i][0], "the row holds no image bytes (an image by path is not read)")
        if len(data) > max_pixels() * BYTES_PER_PIXEL_BOUND + (1 << 20):
            raise BadSample(self.samples[i][0], f"{len(data):,} bytes is more than any image within the limit holds")
        return bytes(data)

    def subset(self, indices: Sequence[int]) -> "HFDataset":
        idx = [int(i) for i in indices]
        samples = [self.samples[i] for i in idx]
        return HFDataset(self.table, self.column, samples, self.classes, self.channels, [self.rows[i] for i in idx])

    def relabel(self, mapping: dict[int, int], classes: Sequence[str]) -> "HFDataset":
        samples = [(p, mapping[t]) for p, t in self.samples]
        return HFDataset(self.table, self.column, samples, classes, self.channels, self.rows)


@contextlib.contextmanager
def _hub_off():
    """The libraries' offline switches on for one call (they read HF_HUB_OFFLINE once, when first imported)."""
    import datasets
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


def _open(data: str):
    """The dataset or dataset dict `data` names (a saved folder, a folder of data files, or a Hub name)."""
    import datasets

    path = Path(data)
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        if path.is_dir():
            return datasets.load_dataset(str(path))
        if not remote.hub_dataset(data):
            raise ResnetsError(
                f"{data}: not a saved dataset, a folder of parquet/arrow files or a Hub name (user/name)"
            )
        with _hub_off() if downloads_off() else contextlib.nullcontext():
            return datasets.load_dataset(data)
    except ResnetsError:
        raise
    except Exception as e:  # the library's errors: not found, offline, unreadable files
        raise ResnetsError(
            f"cannot open the dataset {data}: {str(e).splitlines()[0][:200] if str(e) else e!r}"
        ) from None


def _split(opened, split: str, data: str):
    import datasets

    if isinstance(opened, datasets.Dataset):  # one split saved alone: the training set
        return opened if split == "train" else None
    names = list(opened)
    wanted = ["train"] if split == "train" else [n for n in HELD_OUT if n in names]
    if not wanted or wanted[0] not in names:
        if split == "train":
            raise ResnetsError(f"{data} has no train split (it has {', '.join(names) or 'none'})")
        return None
    return opened[wanted[0]]


def _columns(table, data: str) -> tuple[str, str]:
    """The first Image column and the first ClassLabel column."""
    import datasets

    features = table.features
    image = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image is None or label is None:
        kinds = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
        raise ResnetsError(f"{data} needs an Image column and a ClassLabel column; it has {kinds[:200]}")
    return image, label


def load(data: str, split: str, channels: int = 3, classes: Sequence[str] | None = None) -> HFDataset | None:
    """The `split` ("train" or "test") of the dataset `data` names, as images and labels; None: no such split."""
    import datasets

    text = str(data)
    table = _split(_open(text), split, text)
    if table is None:
        return None
    image, label = _columns(table, text)
    names = list(table.features[label].names)
    table = table.cast_column(image, datasets.Image(decode=False))
    remap = label_map(names, classes, text)
    labels = table[label]
    samples, rows = [], []
    name = f"{text}[{table.split or split}]"
    for row, t in enumerate(labels):
        if isinstance(t, int) and 0 <= t < len(names):  # -1: unlabelled rows (test splits on the Hub) are left out
            samples.append((f"{name}#{row}", remap[t]))
            rows.append(row)
    if not samples:
        raise ResnetsError(f"the {split} split of {text} has no labelled images")
    return HFDataset(table, image, samples, list(classes) if classes is not None else names, channels, rows)
