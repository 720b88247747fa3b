"""Training throughput of `resnets train` against its peers, same model and data, in one run.

Cases (each prints one line per run and the medians; --json writes them):
- fashion-mnist: resnet20 on Fashion-MNIST, the `fashion-mnist` recipe, against the plain loop a tutorial writes
  (eager, fp32, NCHW, a default DataLoader over a Dataset that augments each image with the same crop/flip/
  erasing) and, on a GPU, against the engine's own host-loader path (per-image CPU augmentation, no CUDA graph:
  the engine as it was before the GPU data path). Targets: CPU >= 2.0x the plain loop; GPU >= 5x 3,200 img/s.
- resnet50-synthetic (GPU): ResNet-50 at 224, batch 256, bf16, channels_last, torch.compile, on synthetic data
  held on the GPU, against a hand-written compiled bf16 channels_last loop on a batch already on the GPU (target
  >= 0.9x).
- resnet50-jpeg (GPU): the same net trained on a folder of JPEGs (made here: crops of real photos, 375x500,
  quality 90) with the `paper-imagenet` augmentation, JPEGs decoded by nvJPEG, against torchvision's ImageFolder
  + DataLoader(16 workers) loop with the same per-image augmentation and the same compiled bf16 model (target >=
  2x), and against the engine on GPU-resident synthetic data (target >= 85%).
- cifar-nets (GPU): the paper's CIFAR nets (resnet20/56/110) at batch 128 with the paper's augmentation:
  the engine's iterations/s against the whole training step captured once as a CUDA graph on a static batch
  (target >= 0.8x).

    python benchmarks/train_throughput.py --case fashion-mnist --runs 3                   # CPU
    python benchmarks/train_throughput.py --case fashion-mnist --device cuda --runs 3
    python benchmarks/train_throughput.py --case resnet50-synthetic --device cuda --runs 3
    python benchmarks/train_throughput.py --case resnet50-jpeg --device cuda --runs 2 --images 10240
    python benchmarks/train_throughput.py --case cifar-nets --device cuda --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_and_threads
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

import resnets
from resnets import config as C
from resnets.data import build
from resnets.engine import train


class PlainDataset(Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(
    model: nn.Module, loader, device: torch.device, amp: str = "none", channels_last: bool = False, skip: int = 0
) -> float:
    """One epoch of the textbook loop; images/s over the batches after the first `skip` (warm-up, compilation)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train().to(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    n, t0 = 0, time.perf_counter()
    for b, (x, y) in enumerate(loader):
        if b == skip:
            _sync(device)
            n, t0 = 0, time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        n += len(y)
    _sync(device)
    return n / (time.perf_counter() - t0)


def resident_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, compiled: bool, amp: str) -> float:
    """The hand-written ceiling: the same batch, already on the GPU, every step; images/s after 10 warm-up steps."""
    model.train()
    fn = torch.compile(model) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    for i in range(10 + steps):
        if i == 10:
            _sync(x.device)
            t0 = time.perf_counter()
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(fn(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(x.device)
    return steps * len(x) / (time.perf_counter() - t0)


def graph_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, amp: str) -> float:
    """The whole training step (forward, loss, backward, SGD) captured once as a CUDA graph on a static batch and
    replayed (PyTorch's "whole network capture"): the launch-free ceiling. Iterations/s."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None, cache_enabled=False):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def engine_rate(overrides: dict, epochs: int = 2) -> tuple[float, dict]:
    """`resnets train` with these keys; images/s of the last epoch (the first one pays warm-up and capture)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = C.resolve(
            overrides=dict(overrides, out=out, name="bench", epochs=epochs, progress=False, eval_every=10**6)
        )
        result = train(cfg)
    return result["history"][-1]["images_per_s"], {
        k: result[k] for k in ("amp", "channels_last", "loader", "cuda_graph")
    }


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_and_threads()


# ---------------------------------------------------------------- cases
def case_fashion_mnist(run: int, n: int, dev: torch.device) -> dict:
    cfg = C.resolve("fashion-mnist", overrides=dict(limit_train=n, limit_val=256, device=str(dev)))
    bundle = build(cfg)
    plain_tf = v2.Compose(
        [
            v2.RandomCrop(28, padding=cfg.pad),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(bundle.mean), list(bundle.std)),
            v2.RandomErasing(cfg.random_erasing),
        ]
    )
    torch.manual_seed(run)
    model = resnets.create_model(cfg.model, num_classes=len(bundle.classes), in_chans=bundle.in_chans)
    loader = DataLoader(
        PlainDataset(bundle.train.images, bundle.train.labels, plain_tf),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
    )
    row = {"plain_img_s": plain_loop(model, loader, dev, amp="fp16" if dev.type == "cuda" else "none")}
    common = {**{k: v for k, v in cfg.to_dict().items()}, "seed": run}
    row["resnets_img_s"], row["resnets"] = engine_rate(common, epochs=2 if dev.type == "cuda" else 1)
    if dev.type == "cpu":  # the compute ceiling: the same step on one batch held in memory, no data work at all
        x = torch.randn(cfg.batch_size, 1, 28, 28)
        y = torch.randint(0, 10, (cfg.batch_size,))
        model = resnets.create_model(cfg.model, num_classes=10, in_chans=1)
        amp = row["resnets"]["amp"]
        if row["resnets"]["channels_last"]:  # the engine's layout
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        row["step_only_img_s"] = resident_loop(model, x, y, 40, compiled=False, amp=amp)
        row["of_step_only"] = row["resnets_img_s"] / row["step_only_img_s"]
    if dev.type == "cuda":  # the engine's path before the GPU loaders: per-image CPU augmentation, eager steps
        row["host_img_s"], _ = engine_rate(dict(common, loader="host", cuda_graph="off"), epochs=2)
        row["vs_host"] = row["resnets_img_s"] / row["host_img_s"]
    row["ratio"] = row["resnets_img_s"] / row["plain_img_s"]
    return row


# the ResNet-50 cases' net, batch, crop and precision (--arch/--batch/--crop/--amp make a small CPU smoke run)
R50 = {"arch": "resnet50", "batch": 256, "crop": 224, "amp": "bf16"}


def _r50(dev: torch.device) -> nn.Module:
    return resnets.create_model(R50["arch"]).to(dev, memory_format=torch.channels_last)


def case_resnet50_synthetic(run: int, n: int, dev: torch.device) -> dict:
    torch.manual_seed(run)
    bs, crop = R50["batch"], R50["crop"]
    x = torch.randn(bs, 3, crop, crop, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (bs,), device=dev)
    row = {"resident_compiled_img_s": resident_loop(_r50(dev), x, y, max(n // bs, 10), compiled=True, amp=R50["amp"])}
    row["resnets_img_s"], row["resnets"] = engine_rate(
        dict(
            model=R50["arch"],
            dataset="synthetic",
            synthetic_samples=n,
            synthetic_classes=1000,
            train_crop=crop,
            augment="none",
            batch_size=bs,
            amp=R50["amp"],
            channels_last=True,
            compile=True,
            workers=8,
            limit_val=256,
            device=str(dev),
            seed=run,
        )
    )
    row["ratio"] = row["resnets_img_s"] / row["resident_compiled_img_s"]
    return row


def make_jpegs(folder: Path, n: int, size=(375, 500), classes: int = 10) -> None:
    """n JPEGs (quality 90) of `size`: random crops and scales of scikit-image's photos, in `classes` folders."""
    from skimage import data as sk
    from torchvision.io import encode_jpeg

    photos = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.hubble_deep_field(), sk.immunohistochemistry()]
    crop = v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True)
    torch.manual_seed(0)
    for i in range(n):
        d = folder / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        img = torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1).contiguous()
        (d / f"{i:06d}.jpg").write_bytes(encode_jpeg(crop(img), quality=90).numpy().tobytes())


def case_resnet50_jpeg(run: int, n: int, dev: torch.device, folder: Path, workers: int, shards=None) -> dict:
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_image, read_file

    from resnets.data.transforms import train_transform

    tf = v2.Compose(
        [
            train_transform("paper-imagenet", crop=R50["crop"], mean=(0.485, 0.456, 0.406)),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ds = ImageFolder(str(folder), transform=tf, loader=lambda p: decode_image(read_file(p), mode=ImageReadMode.RGB))
    bs, crop = R50["batch"], R50["crop"]
    loader = DataLoader(
        ds,
        batch_size=bs,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    torch.manual_seed(run)
    model = torch.compile(_r50(dev))
    row = {"torchvision_loop_img_s": plain_loop(model, loader, dev, amp=R50["amp"], channels_last=True, skip=5)}
    common = dict(
        model=R50["arch"],
        batch_size=bs,
        amp=R50["amp"],
        channels_last=True,
        compile=True,
        workers=workers,
        limit_val=256,
        device=str(dev),
        seed=run,
        lr=0.1,
    )
    files = dict(
        common,
        augment="paper-imagenet",
        train_crop=crop,
        eval_crop=crop,
        eval_resize=crop,
        val_split=0.02,
        loader="device",
    )
    row["resnets_img_s"], row["resnets"] = engine_rate(dict(files, dataset="imagefolder", data=str(folder)))
    if shards is not None:  # the same JPEGs from tar shards (issue 25): the same loader, decode and augmentation
        row["resnets_shards_img_s"], _ = engine_rate(dict(files, dataset="wds", data=str(shards)))
        row["shards_vs_folder"] = row["resnets_shards_img_s"] / row["resnets_img_s"]
    row["resnets_synthetic_img_s"], _ = engine_rate(
        dict(common, dataset="synthetic", synthetic_samples=n, synthetic_classes=1000, train_crop=crop, augment="none")
    )
    row["vs_torchvision"] = row["resnets_img_s"] / row["torchvision_loop_img_s"]
    row["vs_synthetic"] = row["resnets_img_s"] / row["resnets_synthetic_img_s"]
    return row


def case_cifar_nets(run: int, n: int, dev: torch.device, nets: list[str]) -> dict:
    row = {}
    for net in nets:
        torch.manual_seed(run)
        x = torch.randn(128, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (128,), device=dev)
        model = resnets.create_model(net).to(dev, memory_format=torch.channels_last)
        ceiling = graph_loop(model, x, y, 400, amp="bf16") if dev.type == "cuda" else float("nan")  # CUDA only
        rate, info = engine_rate(
            dict(
                model=net,
                dataset="synthetic",
                synthetic_samples=n,
                synthetic_classes=10,
                train_crop=32,
                augment="paper-cifar",
                batch_size=128,
                lr=0.1,
                momentum=0.9,
                weight_decay=1e-4,
                schedule="step",
                milestones=[10**9],
                amp="auto",
                channels_last=None,
                workers=0,
                limit_val=256,
                device=str(dev),
                seed=run,
            )
        )
        row[net] = {
            "graph_it_s": ceiling,
            "resnets_it_s": rate / 128,
            "ratio": rate / 128 / ceiling,
            "minutes_per_64k": 64_000 / (rate / 128) / 60,
            "resnets": info,
        }
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--case",
        choices=["fashion-mnist", "resnet50-synthetic", "resnet50-jpeg", "cifar-nets"],
        default="fashion-mnist",
    )
    ap.add_argument(
        "--images",
        type=int,
        default=0,
        help="images per epoch (default: 15360 CPU, 60000 GPU fashion-mnist; "
        "25600 resnet50; 10240 JPEGs; 25600 cifar-nets)",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=16, help="resnet50-jpeg: loader processes for both loops")
    ap.add_argument("--nets", default="resnet20,resnet56,resnet110", help="cifar-nets: which nets")
    ap.add_argument("--jpeg-dir", help="resnet50-jpeg: an existing folder of JPEGs (default: made in a temp folder)")
    ap.add_argument(
        "--shards", action="store_true", help="resnet50-jpeg: also train from the same JPEGs written as tar shards"
    )
    ap.add_argument("--arch", default="resnet50", help="resnet50 cases: the net (a small one for a CPU smoke run)")
    ap.add_argument("--batch", type=int, default=256, help="resnet50 cases: the batch")
    ap.add_argument("--crop", type=int, default=224, help="resnet50 cases: the crop")
    ap.add_argument("--amp", default="bf16", help="resnet50 cases: the precision")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    R50.update(arch=args.arch, batch=args.batch, crop=args.crop, amp=args.amp)
    defaults = {
        "fashion-mnist": 60000 if gpu else 15360,
        "resnet50-synthetic": 25600,
        "resnet50-jpeg": 10240,
        "cifar-nets": 25600,
    }
    n = args.images or defaults[args.case]
    tmp = tempfile.TemporaryDirectory()
    folder = Path(args.jpeg_dir or tmp.name)
    if args.case == "resnet50-jpeg" and not args.jpeg_dir:
        t0 = time.perf_counter()
        make_jpegs(folder, n)
        print(f"wrote {n} JPEGs in {time.perf_counter() - t0:.0f} s", flush=True)
    shards = None
    if args.case == "resnet50-jpeg" and args.shards:
        from resnets.data import shards as shard_io
        from resnets.data.datasets import image_folder

        shards, t0 = Path(tmp.name) / "shards", time.perf_counter()
        shard_io.write({"train": image_folder(folder)}, shards, progress=False)
        print(f"wrote the JPEGs as shards in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for run in range(args.runs):
        if args.case == "fashion-mnist":
            row = case_fashion_mnist(run, n, dev)
        elif args.case == "resnet50-synthetic":
            row = case_resnet50_synthetic(run, n, dev)
        elif args.case == "resnet50-jpeg":
            row = case_resnet50_jpeg(run, n, dev, folder, args.workers, shards)
        else:
            row = case_cifar_nets(run, n, dev, [s for s in args.nets.split(",") if s])
        rows.append(row)
        print(f"run {run}: " + json.dumps(row), flush=True)

    def med(path: list[str]) -> float:
        vals = []
        for r in rows:
            v = r
            for p in path:
                v = v[p]
            vals.append(v)
        return statistics.median(vals)

    flat = [([k], v) for k, v in rows[0].items() if isinstance(v, float)]
    flat += [
        ([k, k2], v2)
        for k, v in rows[0].items()
        if isinstance(v, dict)
        for k2, v2 in v.items()
        if isinstance(v2, float)
    ]
    medians = {".".join(p): med(p) for p, _ in flat}
    summary = {
        "case": args.case,
        "images": n,
        "runs": args.runs,
        "statistic": "median",
        "device": _device_name(dev),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "median": medians,
        "rows": rows,
    }
    print("medians: " + ", ".join(f"{k} {v:.2f}" for k, v in medians.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
