"""Shards against the image folder (issue 25): images/s of reading + decoding + augmenting on one core, the same
10,000 JPEGs as files and as tar shards (`resnets data shard`), with the page cache warm and cold; and the speed
of writing the shards.

The training transform is the ImageNet one (random-resized crop to 224 and flip, torchvision.transforms.v2) run by
the host loader in this process (workers=0: one core), so the figure is per core. Cold: every file's pages are
dropped from the page cache first (posix_fadvise DONTNEED after a sync), as on a first epoch over data on disk.

    python benchmarks/shards.py [--images 10000] [--runs 3]

Writes benchmarks/results/shards.json; RESULTS.md's "Shards" section quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name

from resnets.data import shards
from resnets.data.datasets import image_folder
from resnets.data.loader import make_train_loader

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "shards.json"


def make_jpegs(root: Path, n: int) -> None:
    """`n` JPEGs of 10 classes: random 320x256 crops of scikit-image's photos, resized, quality 90 (~30 KB each)."""
    from PIL import Image
    from skimage import data as sk

    photos = [np.asarray(Image.fromarray(getattr(sk, k)()).convert("RGB")) for k in ("astronaut", "chelsea", "coffee")]
    photos += [np.asarray(Image.fromarray(getattr(sk, k)()).convert("RGB")) for k in ("rocket", "immunohistochemistry")]
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"class{i % 10}"
        cls.mkdir(parents=True, exist_ok=True)
        p = photos[i % len(photos)]
        h, w = min(256, p.shape[0]), min(320, p.shape[1])
        y, x = rng.integers(0, p.shape[0] - h + 1), rng.integers(0, p.shape[1] - w + 1)
        Image.fromarray(p[y : y + h, x : x + w]).save(cls / f"{i:06d}.jpg", quality=90)


def drop_cache(paths) -> None:
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def one_pass(dataset) -> float:
    """Images/s of one epoch through the host loader on this core."""
    loader = make_train_loader(
        dataset,
        kind="host",
        device=torch.device("cpu"),
        batch_size=64,
        seed=0,
        augment="rrc",
        crop=224,
        mean=(0.485, 0.456, 0.406),
        workers=0,
    )
    loader.set_epoch(0)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch.labels)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="resnets-shards-"))
    try:
        make_jpegs(work / "folder", args.images)
        folder = image_folder(work / "folder")
        files = [p for p, _ in folder.samples]
        size_mb = sum(os.path.getsize(p) for p in files) / 2**20
        writes = []
        for r in range(args.runs):
            out = work / f"shards{r}"
            drop_cache(files)
            t0 = time.perf_counter()
            shards.write({"train": folder}, out, shard_bytes=64 << 20, progress=False)
            writes.append(time.perf_counter() - t0)
        sharded = shards.load(str(work / "shards0"), "train")
        tars = sorted(str(p) for p in (work / "shards0").glob("*.tar"))
        rates: dict[str, list[float]] = {"folder warm": [], "shards warm": [], "folder cold": [], "shards cold": []}
        for _ in range(args.runs):  # interleaved, so a slow spell of the machine falls on both
            for name, ds, paths in (("folder", folder, files), ("shards", sharded, tars)):
                drop_cache(paths)
                rates[f"{name} cold"].append(one_pass(ds))
                rates[f"{name} warm"].append(one_pass(ds))
        med = {k: statistics.median(v) for k, v in rates.items()}
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": cpu_name(),
            "torch": torch.__version__,
            "images": args.images,
            "megabytes": round(size_mb, 1),
            "shards": len(tars),
            "runs": args.runs,
            "images_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            "median_images_per_s": {k: round(v, 1) for k, v in med.items()},
            "shards_over_folder": {t: round(med[f"shards {t}"] / med[f"folder {t}"], 3) for t in ("warm", "cold")},
            "write_seconds": [round(w, 2) for w in writes],
            "write_images_per_s": round(args.images / statistics.median(writes), 1),
            "write_mb_per_s": round(size_mb / statistics.median(writes), 1),
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")
        print(json.dumps(record, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
