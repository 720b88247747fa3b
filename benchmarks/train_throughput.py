"""Training throughput of `resnets train` against a plain PyTorch loop, same model and data, in one run.

The plain loop is what a tutorial writes: eager, fp32, NCHW, a default DataLoader over a Dataset that augments
each image (the same crop/flip/erasing pipeline as ours). Ours is the engine as `resnets train` runs it (the
recipe's bf16 autocast, channels_last, in-process seeded augmentation, uint8 batches normalised on the device).

CPU (the issue's target: >= 1.5x):
    python benchmarks/train_throughput.py --case fashion-mnist --runs 3
GPU (>= 1.3x a plain AMP loop; absolute images/s for ResNet-50 at 224):
    python benchmarks/train_throughput.py --case resnet50-synthetic --runs 3 --device cuda
Prints one line per run and the medians; --json writes them to a file.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import resnets
from resnets import config as C
from resnets.data import STATS, build
from resnets.engine import train


class PlainDataset(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def plain_loop(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> float:
    """One epoch of the textbook loop; returns images/s."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train().to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    n, t0 = 0, time.perf_counter()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        n += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def case_config(case: str, n: int, device: str) -> C.TrainConfig:
    if case == "fashion-mnist":
        return C.resolve("fashion-mnist", overrides=dict(limit_train=n, limit_val=256, epochs=1, progress=False, device=device))
    # ResNet-50 at 224 on synthetic data, the modern GPU set-up: bf16, channels_last, torch.compile
    return C.resolve(overrides=dict(model="resnet50", dataset="synthetic", synthetic_samples=n, synthetic_classes=1000,
                                    train_crop=224, augment="none", batch_size=256, epochs=1, amp="bf16",
                                    channels_last=True, compile=True, workers=8, limit_val=256, progress=False,
                                    device=device))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=["fashion-mnist", "resnet50-synthetic"], default="fashion-mnist")
    ap.add_argument("--images", type=int, default=0, help="images per epoch (default 15360 CPU / 25600 GPU)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    n = args.images or (15360 if args.case == "fashion-mnist" else 25600)
    cfg = case_config(args.case, n, args.device)
    bundle = build(cfg)
    mean, std = bundle.mean, bundle.std
    if args.case == "fashion-mnist":
        plain_tf = v2.Compose([v2.RandomCrop(28, padding=cfg.pad), v2.RandomHorizontalFlip(),
                               v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)),
                               v2.RandomErasing(cfg.random_erasing)])  # fmt: skip
        workers = 0
    else:
        plain_tf = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
        workers = 8
    plain_ds = PlainDataset(bundle.train.images, bundle.train.labels, plain_tf)
    rows = []
    for run in range(args.runs):
        torch.manual_seed(run)
        model = resnets.create_model(cfg.model, num_classes=len(bundle.classes), in_chans=bundle.in_chans)
        loader = DataLoader(plain_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=workers)
        plain = plain_loop(model, loader, dev, amp=dev.type == "cuda")
        with tempfile.TemporaryDirectory() as out:
            result = train(C.apply(C.TrainConfig(**cfg.to_dict()), {"out": out, "name": "bench", "seed": run}, "bench"))
        ours = result["history"][-1]["images_per_s"]
        rows.append({"run": run, "plain_img_s": plain, "resnets_img_s": ours, "ratio": ours / plain})
        print(f"run {run}: plain loop {plain:8.1f} img/s   resnets train {ours:8.1f} img/s   ratio {ours / plain:.2f}x", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("plain_img_s", "resnets_img_s", "ratio")}
    summary = {
        "case": args.case, "images_per_epoch": n, "runs": args.runs, "statistic": "median",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "median": med, "rows": rows,
    }  # fmt: skip
    print(f"median over {args.runs} runs: plain {med['plain_img_s']:.1f} img/s, resnets {med['resnets_img_s']:.1f} img/s, ratio {med['ratio']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
