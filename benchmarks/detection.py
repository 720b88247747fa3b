"""Faster R-CNN on the shapes set (issue 24): our engine (`resnets train`, recipe finetune-detection) against the
plain loop of torchvision's detection reference (references/detection/engine.py: model(images, targets), the
losses summed, SGD, warmup then the schedule; evaluated by pycocotools' COCOeval as its CocoEvaluator does), with
the same model, data, augmentation, seed and steps. Reports training images/s and box mAP side by side.

Both run in this process on the CPU's threads (workers=0), one after the other, at the precision the recipe's
`--amp auto` picks here (bf16 autocast where the CPU computes bf16, else fp32); the machine should be quiet.

    python benchmarks/detection.py [--epochs 12] [--train 400] [--val 100] [--size 128] [--device auto]
        [--json benchmarks/results/detection.json]

Writes benchmarks/results/detection.json; RESULTS.md's "Detection" section quotes it.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_and_threads

import resnets
from resnets.config import resolve
from resnets.data import coco
from resnets.data.shapes import generate
from resnets.engine import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "detection.json"
MODEL = dict(backbone="resnet18", min_size=128, max_size=128, box_batch_size_per_image=64)


def ours(data: Path, out: Path, epochs: int, device: str) -> dict:
    cfg = resolve(
        "finetune-detection",
        None,
        dict(
            data=str(data), out=str(out), name="ours", epochs=epochs, workers=0, progress=False, device=device, **MODEL
        ),
    )
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    train_s = sum(h["time_s"] for h in res["history"])
    n = sum(h["step"] - (res["history"][i - 1]["step"] if i else 0) for i, h in enumerate(res["history"])) * 8
    return {
        "map": res["map"],
        "map_50": res["map_50"],
        "train_s": train_s,
        "images": n,
        "wall_s": wall,
        "amp": res["amp"],
        "cfg": cfg,
    }


def reference(data: Path, cfg, amp: str, device: torch.device) -> dict:
    """torchvision's reference loop, written as its train_one_epoch and evaluate are."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    torch.manual_seed(cfg.seed)
    train = coco.load(data / "train").with_augment("hflip", cfg.seed)
    val = coco.load(data / "val")
    model = resnets.create_model("fasterrcnn_resnet50_fpn", num_classes=4, norm="batch", trainable_layers=5, **MODEL)
    model = model.to(device)
    cast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(train) // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    warm = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=cfg.warmup_start, total_iters=warm),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warm),
        ],
        milestones=[warm],
    )
    loader = torch.utils.data.DataLoader(
        train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, collate_fn=lambda b: tuple(zip(*b))
    )
    model.train()
    t0, seen = time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        for images, targets in loader:
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
            with torch.autocast(**cast):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise SystemExit(f"reference loop: non-finite loss {losses}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(images)
    train_s = time.perf_counter() - t0
    model.eval()
    dets = []
    with torch.no_grad():
        for i in range(len(val)):
            img, t = val[i]
            with torch.autocast(**cast):
                out = model([img.to(device)])[0]
            for (x0, y0, x1, y1), c, s in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist()):
                dets.append(
                    {"image_id": t["image_id"], "category_id": c, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": s}
                )
    gt = COCO(str(data / "val" / "instances.json"))
    ev = COCOeval(gt, gt.loadRes(dets) if dets else COCO(), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    return {"map": 100 * ev.stats[0], "map_50": 100 * ev.stats[1], "train_s": train_s, "images": seen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    ap.add_argument("--json", default=str(RESULTS), help="where the results go")
    args = ap.parse_args()
    from resnets.devices import pick_device

    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shapes"
        generate(data, train=args.train, val=args.val, size=args.size, progress=False)
        a = ours(data, Path(tmp) / "runs", args.epochs, str(device))
        b = reference(data, a.pop("cfg"), a["amp"], device)
    rows = {"resnets engine": a, "torchvision reference loop": b}
    for name, r in rows.items():
        r["images_per_s"] = r["images"] / r["train_s"]
        print(f"{name:28s} {r['images_per_s']:6.2f} img/s  box mAP {r['map']:6.2f}  AP50 {r['map_50']:6.2f}")
    ratio = a["images_per_s"] / b["images_per_s"]
    print(f"speed ratio (ours / reference): {ratio:.3f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": f"python benchmarks/detection.py --epochs {args.epochs} --train {args.train} --val {args.val} "
                f"--size {args.size} --device {args.device}",
                "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_and_threads(),
                "date": time.strftime("%Y-%m-%d"),
                "torch": torch.__version__,
                "rows": rows,
                "speed_ratio": ratio,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
