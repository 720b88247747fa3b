"""Where datasets come from: local files first, the official download (checksummed) only when asked.

Fashion-MNIST is looked for in $RESNETS_DATA/fashion-mnist, the user cache and Debian's
`dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist). CIFAR-10/100 come from the official python
archive (a path, or downloaded when asked).
"""

from __future__ import annotations

import gzip
import os
import pickle  # noqa: S403  (CIFAR's archive is a pickle of plain lists and arrays; read with a restricted unpickler)
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ResnetsError

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the official .gz files (as torchvision records them); Debian re-compresses, so local files are checked
# by their IDX headers and sizes instead
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

CIFAR = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
}


def data_home() -> Path:
    """$RESNETS_DATA, else $XDG_CACHE_HOME/resnets/data, else ~/.cache/resnets/data."""
    if os.environ.get("RESNETS_DATA"):
        return Path(os.environ["RESNETS_DATA"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resnets" / "data"


def fetch_file(url: str, dest: Path, md5: str) -> None:
    """Fetch url to dest with torchvision's downloader (redirects, retries, progress, the md5 check), into a
    temporary folder beside dest and renamed there only when the file checks out: nothing half-written or failing
    its checksum is left behind (torchvision's own download leaves such a file in place)."""
    import tempfile

    from torchvision.datasets.utils import download_url

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        try:
            download_url(url, tmp, dest.name, md5=md5)
        except RuntimeError as e:  # torchvision's "File not found or corrupted": the md5 did not match
            raise ResnetsError(f"{url} failed its checksum (expected md5 {md5}): {e}") from None
        except OSError as e:  # no network, a refused connection, an HTTP error (urllib's)
            raise ResnetsError(f"cannot download {url} ({e})") from None
        os.replace(Path(tmp) / dest.name, dest)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ResnetsError(f"cannot read {path}: {e}") from None
    if len(data) < 8 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ResnetsError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise ResnetsError(f"{path} is truncated: header says {dims}, {len(data) - offset} bytes follow")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding the four Fashion-MNIST files (gzipped or not), or None."""
    candidates = [Path(root)] if root else []
    candidates += [data_home() / "fashion-mnist", DEBIAN_FASHION]
    for folder in candidates:
        if all((folder / n).is_file() or (folder / n[:-3]).is_file() for n in FASHION_FILES):
            return folder
    if root:
        raise ResnetsError(f"no Fashion-MNIST files in {root} (expected {', '.join(FASHION_FILES)})")
    return None


def fetch_fashion_mnist(download: bool = False) -> Path:
    folder = find_fashion_mnist()
    if folder is not None:
        return folder
    dest = data_home() / "fashion-mnist"
    if not download:
        raise ResnetsError(
            "Fashion-MNIST not found; install Debian's dataset-fashion-mnist, put the four .gz files in "
            f"{dest}, or pass --download"
        )
    for name, md5 in FASHION_FILES.items():
        fetch_file(FASHION_URL + name, dest / name, md5)
    return dest


def load_fashion_mnist(split: str, root: str | os.PathLike | None = None, download: bool = False):
    """(images uint8 (N, 1, 28, 28), labels int64 (N,), class names) for split 'train' (60k) or 'test' (10k)."""
    folder = find_fashion_mnist(root) if root else fetch_fashion_mnist(download)
    prefix = "train" if split == "train" else "t10k"

    def pick(stem: str) -> Path:
        gz = folder / f"{prefix}-{stem}.gz"
        return gz if gz.is_file() else folder / f"{prefix}-{stem}"

    images = _read_idx(pick("images-idx3-ubyte"))
    labels = _read_idx(pick("labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ResnetsError(f"Fashion-MNIST files in {folder} do not match each other")
    return (
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(FASHION_CLASSES),
    )


class _PlainUnpickler(pickle.Unpickler):
    """CIFAR batches hold dicts of lists, bytes and numpy arrays: allow numpy's array reconstruction only."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise ResnetsError(f"CIFAR archive holds an unexpected object {module}.{name}; refusing to load it")


def _load_batch(tar: tarfile.TarFile, member: str) -> dict:
    f = tar.extractfile(member)
    if f is None:
        raise ResnetsError(f"CIFAR archive lacks {member}")
    return _PlainUnpickler(f, encoding="bytes").load()


def load_cifar(name: str, split: str, path: str | os.PathLike | None = None, download: bool = False):
    """(images uint8 (N, 3, 32, 32), labels int64, class names) from the official python archive (.tar.gz)."""
    url, md5, inner = CIFAR[name]
    archive = Path(path) if path else data_home() / url.rsplit("/", 1)[-1]
    if archive.is_dir():
        archive = archive / url.rsplit("/", 1)[-1]
    if not archive.is_file():
        if not download:
            raise ResnetsError(f"{name} archive not found at {archive}; download {url} there, or pass --download")
        fetch_file(url, archive, md5)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if name == "cifar10":
                members = (
                    [f"{inner}/data_batch_{i}" for i in range(1, 6)] if split == "train" else [f"{inner}/test_batch"]
                )
                meta, key, names_key = f"{inner}/batches.meta", b"labels", b"label_names"
            else:
                members = [f"{inner}/{'train' if split == 'train' else 'test'}"]
                meta, key, names_key = f"{inner}/meta", b"fine_labels", b"fine_label_names"
            batches = [_load_batch(tar, m) for m in members]
            classes = [c.decode() for c in _load_batch(tar, meta)[names_key]]
    except (tarfile.TarError, KeyError, EOFError, OSError) as e:
        raise ResnetsError(f"cannot read CIFAR archive {archive}: {e}") from None
    data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
    return torch.from_numpy(data.copy()), torch.from_numpy(labels), classes
