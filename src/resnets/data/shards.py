"""Sharded datasets: image folders written as WebDataset tar shards (webdataset's ShardWriter) with an index, and
read back as a map-style dataset.

`write(splits, out)` writes OUT/train-000000.tar, ... (and val-000000.tar, ... when there is a validation split),
each sample `KEY.<ext>` (the image's own bytes, checked from its header first) and `KEY.cls` (the label), then
OUT/index.json: the class names, and for each shard its size and each sample's key, label, byte offset and size.
Any tar-reading tool (webdataset, timm's `wds/` reader, `tar -x`) reads the shards; with the index, `ShardDataset`
reads any sample by its number, so the samplers, exact resumes, rank splits and both loaders work as they do for an
image folder, and a cluster's shared filesystem serves a few large files instead of a million small ones.

The index is untrusted input: it is bounded in size, checked against a schema and against the shard files
(plain names inside the folder, never a path, URL or command; offsets inside each file, labels inside the class
list) before anything is read.
Shards named by URLs or `pipe:` commands are streamed (data/remote.py): fetched whole into a local cache as a rank
first needs them, then read the same way.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tarfile
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..errors import ResnetsError, printable
from ..safe_io import process_alive
from . import jsonfile, remote
from .datasets import (
    BYTES_PER_PIXEL_BOUND,
    BadSample,
    FileDataset,
    TensorDataset,
    label_map,
    max_pixels,
    read_header,
)

FORMAT = "resnets.shards/1"
INDEX = "index.json"
OPEN_SHARDS = 32  # descriptors a process keeps open
MAX_INDEX_BYTES = 256 << 20  # 1.28 M ImageNet images take ~60 MB
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}
SPLITS = {"train": "train", "test": "val"}  # our split names -> the shards' prefixes
PLAIN_NAME = re.compile(r"\w[\w.+-]{0,250}\.tar")  # a shard's name in an index (webdataset writes train-000000.tar)


class ShardDataset(FileDataset):
    """Images inside tar shards: sample i is `where[i]` = (shard path, byte offset, size), named in errors as
    `shard.tar/KEY.ext`. Read with one positioned read from a file kept open per process."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        classes,
        channels: int,
        where: list[tuple[str, int, int]],
        streamed: dict[str, tuple[str, int]] | None = None,
    ):
        super().__init__(samples, classes, channels)
        self.where = where
        self.streamed = streamed or {}  # a streamed shard's source -> (its file name, its size in the index)
        self._open: OrderedDict[tuple[int, str], int] = OrderedDict()
        self._failed: dict[str, str] = {}

    def _local(self, source: str) -> str:
        """A shard's file here: itself, or a streamed shard's copy in the cache (fetched when first needed; a shard
        that could not be fetched is not tried again by this process: each of its images is a named bad sample)."""
        if source not in self.streamed:
            return source
        if source in self._failed:
            raise OSError(self._failed[source])
        try:
            return remote.fetch(source, *self.streamed[source])
        except OSError as e:
            self._failed[source] = f"cannot fetch {self.streamed[source][0]}: {e.strerror or e}"
            raise OSError(self._failed[source]) from None

    def _descriptor(self, path: str) -> int:
        """An open descriptor of the shard `path`: kept per process (not shared with loader workers forked later),
        at most OPEN_SHARDS at a time, the least recently used closed first (so the cache's removed shards free
        their disk); a streamed shard removed from the cache between its fetch and its opening is fetched again."""
        key = (os.getpid(), path)
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        try:
            fd = os.open(self._local(path), os.O_RDONLY)
        except FileNotFoundError:
            if path not in self.streamed:
                raise
            fd = os.open(self._local(path), os.O_RDONLY)
        self._open[key] = fd
        while len(self._open) > OPEN_SHARDS:
            os.close(self._open.popitem(last=False)[1])
        return fd

    def read(self, i: int) -> bytes:
        path, offset, size = self.where[i]
        limit = max_pixels()
        if size > limit * BYTES_PER_PIXEL_BOUND + (1 << 20):
            raise BadSample(self.samples[i][0], f"{size:,} bytes is more than any image within the pixel limit holds")
        try:
            data = os.pread(self._descriptor(path), size, offset)
        except OSError as e:
            raise BadSample(self.samples[i][0], f"cannot read shard ({e.strerror or e})") from None
        if len(data) != size:
            raise BadSample(self.samples[i][0], "the shard is shorter than its index says", "corrupt_image")
        return data

    def __getstate__(self):  # sent to loader workers without the open descriptors
        return {**self.__dict__, "_open": OrderedDict()}

    def subset(self, indices: Sequence[int]) -> "ShardDataset":
        idx = [int(i) for i in indices]
        return ShardDataset(
            [self.samples[i] for i in idx], self.classes, self.channels, [self.where[i] for i in idx], self.streamed
        )

    def relabel(self, mapping: dict[int, int], classes: Sequence[str]) -> "ShardDataset":
        return ShardDataset(
            [(p, mapping[t]) for p, t in self.samples], classes, self.channels, self.where, self.streamed
        )

    def numbered(self, channels: int) -> "ShardDataset":
        return ShardDataset([(p, i) for i, (p, _) in enumerate(self.samples)], [], channels, self.where, self.streamed)

    def shard_groups(self) -> list[list[int]] | None:
        """Streamed: the sample numbers of each shard, in shard order (the samplers deal whole shards to ranks so
        each fetches only its share); None for local shards, read in any order."""
        if not self.streamed:
            return None
        groups: dict[str, list[int]] = {}
        for i, (path, _, _) in enumerate(self.where):
            groups.setdefault(path, []).append(i)
        return list(groups.values())


def parse_size(text: str) -> int:
    """'512MB', '1.5 GB', '20KB', '4096' -> bytes."""
    units = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
    units |= {k[0]: v for k, v in units.items() if len(k) == 2}
    t = str(text).strip().upper().replace(" ", "")
    num = t.rstrip("KMGTB")
    try:
        value = float(num) * units[t[len(num) :]]
    except (ValueError, KeyError):
        raise ResnetsError(f"--shard-size {text!r}: give a size such as 512MB, 1GB or 20KB") from None
    if not RECORD <= value <= 1 << 40:
        raise ResnetsError(f"--shard-size {text!r}: between 10KB (the smallest tar file) and 1TB")
    return int(value)


RECORD = tarfile.RECORDSIZE  # 10,240 bytes: a tar file written as a stream is padded to a multiple of it


def tar_bytes(sizes: list[int]) -> int:
    """The bytes members of these sizes take in a tar file (USTAR, short names): a 512-byte header each, the data
    padded to 512."""
    return sum(512 + -(-n // 512) * 512 for n in sizes)


def closed_bytes(members: int) -> int:
    """The size of a tar file once closed, whose members take `members` bytes: two empty blocks end it, and the
    stream is padded to a whole record."""
    return -(-(members + 1024) // RECORD) * RECORD


class ShardSink:
    """Tar shards `pattern % n` of at most `limit` bytes each as written (tar_bytes, closed_bytes: the sizes are
    counted, not estimated from the payload; webdataset's ShardWriter counts only the payload and went 40-45% over
    with small images). A sample that is bigger than `limit` alone gets a shard of its own (`oversized` lists them).
    A full disk names the shard being written."""

    def __init__(self, pattern: str, limit: int):
        self.pattern, self.limit = pattern, limit
        self.n, self.used, self.writer, self.file = 0, 0, None, None
        self.mtime = int(time.time())
        self.path = ""
        self.oversized: list[str] = []

    def write(self, sample: dict) -> None:
        size = tar_bytes([len(v) for k, v in sample.items() if k != "__key__"])
        if self.writer is not None and closed_bytes(self.used + size) > self.limit:
            self.close()
        if self.writer is None:
            self._open()
        if closed_bytes(size) > self.limit:
            self.oversized.append(f"{sample['__key__']} ({closed_bytes(size):,} bytes in {Path(self.path).name})")
        self._guard(self.writer.write, sample)
        self.used += size

    def _open(self) -> None:
        from webdataset import TarWriter

        self.path = self.pattern % self.n
        self.n += 1
        self.file = self._guard(open, self.path, "wb")
        # a whole-second mtime: tarfile writes a fractional one (webdataset's default) as a PAX header of 1 KB more
        # before every member, which the count above would miss
        self.writer, self.used = TarWriter(self.file, encoder=False, mtime=self.mtime), 0

    def close(self) -> None:
        if self.writer is not None:
            self._guard(self.writer.close)
            self._guard(self.file.close)
            self.writer = self.file = None

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            if e.filename is None and self.path:  # a full disk, a quota: say where
                raise OSError(e.errno, e.strerror, self.path) from None
            raise

    def __enter__(self) -> "ShardSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sweep_partials(out: Path) -> list[str]:
    """Remove the temporary folders (`.partial-PID`) that killed `resnets data shard` runs left in `out`: those
    whose process is gone."""
    gone = []
    for p in out.glob(".partial-*"):
        pid = p.name.rpartition("-")[2]
        # this process's own pid: a run killed before it under the same pid (a container's restart: pid 1 again)
        if p.is_dir() and pid.isdigit() and (int(pid) == os.getpid() or not process_alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p.name)
    return gone


def write(splits: dict, out: Path, *, shard_bytes: int = 512 << 20, progress: bool = True) -> Path:
    """Every split's images (FileDataset: files; TensorDataset: in-memory images, as PNG) into tar shards of at most
    `shard_bytes` in `out` (a single image larger than that: a shard of its own, said in a line), and the index;
    unreadable images are left out and named. Written in a temporary folder inside `out` (one a killed run left is
    removed), moved into place when whole; one run at a time in a folder. Returns the index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _only_writer(out):
        return _write(splits, out, shard_bytes, progress)


@contextmanager
def _only_writer(out: Path):
    """`out` locked for this run (an advisory lock on the folder itself, dropped when the process ends, however):
    a second `data shard` into it is refused, where the two once mixed their shards under one index."""
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResnetsError(
                f"another `resnets data shard` is writing into {out}; wait for it, or give another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def _write(splits: dict, out: Path, shard_bytes: int, progress: bool) -> Path:
    from tqdm import tqdm

    if (out / INDEX).exists() or any(out.glob("*.tar")):  # (checked with the folder held: none is being written)
        raise ResnetsError(f"{out} already holds shards; give an empty or new folder")
    for name in sweep_partials(out):
        print(f"removed {out / name}, left by a stopped run")
    tmp = out / f".partial-{os.getpid()}"
    tmp.mkdir()
    classes = next(iter(splits.values())).classes
    index: dict = {"format": FORMAT, "classes": classes, "splits": {}}
    try:
        for split, ds in splits.items():
            labels, skipped = {}, []
            with ShardSink(str(tmp / f"{split}-%06d.tar"), shard_bytes) as sink:
                for i in tqdm(range(len(ds)), desc=f"{split} shards", disable=not progress):
                    try:
                        name, label, data = _item(ds, i)
                        header = read_header(data, name)
                    except BadSample as e:
                        skipped.append(f"{e.path}: {e.reason}")
                        continue
                    key = f"{i:09d}"
                    labels[key] = label
                    ext = EXTENSIONS.get(header.format, Path(name).suffix.lower().lstrip(".") or "img")
                    sink.write({"__key__": key, ext: data, "cls": str(label).encode()})
            for line in skipped:
                print(f"left out {line}")
            for line in sink.oversized:
                print(f"larger than --shard-size alone, a shard of its own: {line}")
            index["splits"][split] = [_scan(p, labels) for p in sorted(tmp.glob(f"{split}-*.tar"))]
        try:  # the index written before anything is moved: a full disk here leaves `out` as it was
            with open(tmp / INDEX, "w") as f:
                json.dump(index, f)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(tmp / INDEX)) from None
        for p in sorted(tmp.glob("*.tar")):
            os.replace(p, out / p.name)
        os.replace(tmp / INDEX, out / INDEX)  # last: the shards are whole when the index is there
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / INDEX


def _item(ds, i: int) -> tuple[str, int, bytes]:
    """(name, label, the image's bytes) of sample i: a file's own bytes, or an in-memory image (Fashion-MNIST,
    CIFAR) encoded as PNG, losslessly."""
    if isinstance(ds, TensorDataset):
        from torchvision.io import encode_png

        image, label = ds[i]
        return f"{i}.png", label, encode_png(image.contiguous()).numpy().tobytes()
    name, label = ds.samples[i]
    return name, label, ds.read(i)


def _scan(shard: Path, labels: dict[str, int]) -> dict:
    """One shard's index entry: each image member's key, label, data offset and size (tarfile's own reading)."""
    samples = []
    with tarfile.open(shard) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            if m.isfile() and ext != "cls" and key in labels:
                samples.append([key, labels[key], m.offset_data, m.size, ext])
    return {"file": shard.name, "size": shard.stat().st_size, "samples": samples}


def read_index(folder: Path) -> dict:
    """index.json of `folder`, checked against its schema and the shard files beside it."""
    path = folder / INDEX
    if not path.is_file():
        raise ResnetsError(f"{folder} has no {INDEX} (write shards with `resnets data shard SRC --out DIR`)")
    if path.stat().st_size > MAX_INDEX_BYTES:
        raise ResnetsError(f"{path} is {path.stat().st_size:,} bytes, over the limit of {MAX_INDEX_BYTES:,}")
    index = jsonfile.loads(path.read_bytes(), str(path), what="an index nests 4 deep")
    _check(index, folder, path)
    return index


def _check(index, folder: Path | None, path) -> None:
    """The index's schema; with `folder`, the shard files in it too (streamed shards are checked as fetched)."""

    def bad(what: str):
        raise ResnetsError(f"{path}: {what}; the shards cannot be read")

    if not isinstance(index, dict) or index.get("format") != FORMAT:
        bad(f"not a shard index (format {FORMAT!r} expected)")
    classes, splits = index.get("classes"), index.get("splits")
    if not (isinstance(classes, list) and 0 < len(classes) <= 1_000_000 and all(isinstance(c, str) for c in classes)):
        bad("'classes' must be a list of names")
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        bad("'splits' must map a split name to its shards")
    for shards in splits.values():
        for s in shards:
            if not isinstance(s, dict) or not isinstance(s.get("file"), str) or not isinstance(s.get("samples"), list):
                bad("each shard needs a file name and its samples")
            name = s["file"]
            if not PLAIN_NAME.fullmatch(name):  # never a path, a URL or a command: the index names, it never points
                bad(
                    f"shard name {printable(name)[:80]!r} is not a plain file name (NAME.tar: letters, digits, . _ + -)"
                )
            if type(s.get("size")) is not int or s["size"] < 0:
                bad(f"{name} has no size")
            if folder is not None and (not (folder / name).is_file() or (folder / name).stat().st_size != s["size"]):
                bad(f"{name} is missing or not the size the index says")
            for row in s["samples"]:
                ok = isinstance(row, list) and len(row) == 5 and isinstance(row[0], str) and isinstance(row[4], str)
                ok = ok and all(type(v) is int for v in row[1:4])
                if not ok or not (
                    0 <= row[1] < len(classes) and row[2] >= 0 and 0 < row[3] and row[2] + row[3] <= s["size"]
                ):
                    bad(f"a sample of {name} ({str(row)[:80]}) is not [key, label, offset, size, ext] inside the shard")


def holds_shards(data) -> bool:
    """Whether `data` names shards: shard files (a .tar, or a pattern of them) or a folder holding the index."""
    return str(data).endswith(".tar") or (Path(data) / INDEX).is_file()


def _expand(pattern: str) -> list[Path]:
    return [Path(p) for p in remote.expand(pattern)]


def load(data: str, split: str, channels: int = 3, classes: Sequence[str] | None = None) -> ShardDataset | None:
    """The `split` ("train" or "test") of the shards `data` names: a folder holding index.json (its train-* and
    val-* shards), shard files ('DIR/train-{000000..000127}.tar', as webdataset writes them: those shards only, as
    the training set), or shards to stream ('https://host/train-{000000..000127}.tar', 'pipe:CMD .../x.tar': as
    the training set; the index read from beside them). None: no such split."""
    text = str(data).removeprefix("file://")
    if remote.is_remote(text):
        if split != "train":
            return None
        return _streamed(text, channels, classes)
    if Path(text).is_dir():
        folder, wanted = Path(text), None
    else:
        files = _expand(text)
        folder, wanted = files[0].parent, {p.name for p in files}
        if split != "train":
            return None
    index = read_index(folder)
    if wanted is None:
        shards = index["splits"].get(SPLITS[split])
        if shards is None:
            return None
    else:
        shards = _named(index, wanted, folder / INDEX)
    return _dataset(index, [(str(folder / s["file"]), s) for s in shards], text, channels, classes)


def by_shard(data: str, channels: int = 3) -> list[tuple[str, ShardDataset]]:
    """Every image of the shards `data` names, a dataset a shard, in the index's order: (the shard's file name, its
    images). `data`: a folder holding index.json (every split of it), shard files, or shards to stream."""
    text = str(data).removeprefix("file://")
    if not remote.is_remote(text) and Path(text).is_dir():
        folder = Path(text)
        index = read_index(folder)
        entries = [(str(folder / s["file"]), s) for split in index["splits"].values() for s in split]
        ds = _dataset(index, entries, text, channels, None)
    else:
        ds = load(text, "train", channels)
    groups: dict[str, list[int]] = {}
    for i, (path, _, _) in enumerate(ds.where):
        groups.setdefault(path, []).append(i)
    return [(ds.streamed.get(path, (Path(path).name,))[0], ds.subset(idx)) for path, idx in groups.items()]


def _named(index: dict, wanted: set[str], where) -> list[dict]:
    """The index's entries of the shards `wanted` (file names), each in it or refused."""
    shards = [s for v in index["splits"].values() for s in v if s["file"] in wanted]
    missing = wanted - {s["file"] for s in shards}
    if missing:
        raise ResnetsError(f"{sorted(missing)[0]} is not in {where}")
    return shards


def _streamed(pattern: str, channels: int, classes) -> ShardDataset:
    """Shards to stream: the index from beside the first, checked (but for the files, checked as fetched)."""
    named = remote.sources(pattern)
    where = remote.index_source(*named[0])
    raw = remote.read_bounded(where, MAX_INDEX_BYTES)
    try:
        index = jsonfile.loads(raw, where[:100], what="an index nests 4 deep")
    except ResnetsError as e:
        raise ResnetsError(f"{e}: is it the shards' index.json?") from None
    _check(index, None, where[:100])
    by_name = {s["file"]: s for s in _named(index, {name for _, name in named}, where[:100])}
    shards = [(source, by_name[name]) for source, name in named]
    for _, s in shards:  # a shard that cannot fit in the cache is refused now, before anything is fetched
        why = remote.too_large(s["size"])
        if why is not None:
            raise ResnetsError(f"{s['file']} in {printable(where)[:100]}: {why}")
    ds = _dataset(index, shards, pattern, channels, classes)
    ds.streamed = {source: (s["file"], s["size"]) for source, s in shards}
    return ds


def _dataset(index: dict, shards: list[tuple[str, dict]], text: str, channels: int, classes) -> ShardDataset:
    """The samples of `shards` ((where each is read from, its index entry)), labelled in `classes`' order."""
    names = index["classes"]
    remap = label_map(names, classes, text[:100])
    samples, where = [], []
    for shard, s in shards:
        for key, label, offset, size, ext in s["samples"]:
            samples.append((f"{shard}/{key}.{ext}", remap[label]))
            where.append((shard, offset, size))
    if not samples:
        raise ResnetsError(f"the shards of {text[:100]} hold no images")
    return ShardDataset(samples, list(classes) if classes is not None else names, channels, where)
