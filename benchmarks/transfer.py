"""Proof that a backbone pretrained by us carries over to detection and segmentation (issue 24, point 6): a ResNet-18
classifier is trained on shapes cut out of a separate generated set (`resnets data shapes --crops`: the ImageNet
of this small world), then Faster R-CNN and DeepLabV3 are fine-tuned on the shapes detection/segmentation set with
the recipes `finetune-detection` / `finetune-segmentation`, once with the backbone from that classifier
(`--weights CLASSIFIER`: FrozenBatchNorm, the top three stages train, as torchvision's references fine-tune) and
once from random weights (BatchNorm, everything trains: the engine's choice without weights), with the same data,
seed, schedule and steps. Reports box mAP / AP50 and mIoU per epoch for both, and the time each part took.

    python benchmarks/transfer.py [--epochs 6] [--seg-epochs 6] [--pretrain-epochs 6] [--device auto]
        [--json benchmarks/results/transfer.json] [--plot docs/transfer.png]

Everything runs in this process, one part after the other (workers=0); the numbers that matter here are the
accuracies, not the times.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name

import resnets
from resnets.config import resolve
from resnets.data.shapes import generate
from resnets.engine import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "transfer.json"
PLOT = ROOT / "docs" / "transfer.png"
CROP = 32
DETECTOR = dict(backbone="resnet18", min_size=128, max_size=128, box_batch_size_per_image=64)
SEGMENTER = dict(model="fcn_resnet50", backbone="resnet18", output_stride=8)


def pretrain(crops: Path, out: Path, epochs: int, device: str) -> dict:
    """ResNet-18 on the cut-out shapes: AdamW (it trains a net this size from nothing on 2,000 images where SGD
    at these learning rates stalls for epochs), no augmentation beyond the crops' own variety."""
    cfg = resolve(
        None,
        None,
        dict(
            model="resnet18",
            dataset="imagefolder",
            data=str(crops),
            train_crop=CROP,
            eval_resize=CROP,
            eval_crop=CROP,
            augment="none",
            optimizer="adamw",
            lr=0.003,
            weight_decay=0.05,
            batch_size=64,
            epochs=epochs,
            workers=0,
            progress=False,
            device=device,
            out=str(out),
            name="classifier",
        ),
    )
    t0 = time.perf_counter()
    res = train(cfg)
    return {
        "top1": res["top1"],
        "wall_s": time.perf_counter() - t0,
        "weights": str(out / "classifier" / "model.safetensors"),
    }


def finetune(recipe: str, data: Path, out: Path, name: str, epochs: int, weights: str, device: str, model: dict):
    cfg = resolve(
        recipe,
        None,
        dict(
            data=str(data),
            out=str(out),
            name=name,
            epochs=epochs,
            eval_every=1,
            workers=0,
            progress=False,
            device=device,
            weights=weights,
            **model,
        ),
    )
    t0 = time.perf_counter()
    res = train(cfg)
    keys = ("map", "map_50") if "map" in res else ("miou", "pixel_acc")
    return {
        **{k: res[k] for k in keys},
        "curve": [{"epoch": h["epoch"], **{k: h.get(f"val_{k}") for k in keys}} for h in res["history"]],
        "wall_s": time.perf_counter() - t0,
        "amp": res.get("amp"),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, task, key, label in (
        (axes[0], "detection", "map_50", "box AP50 (Faster R-CNN, ResNet-18 FPN)"),
        (axes[1], "segmentation", "miou", "mIoU (FCN, ResNet-18, output stride 8)"),
    ):
        for start, style in (("pretrained", "-o"), ("random", "--s")):
            curve = results[task][start]["curve"]
            ax.plot([c["epoch"] for c in curve], [c[key] for c in curve], style, label=f"backbone: {start}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Shapes set: a backbone pretrained on the shapes cut out, against random weights")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6, help="detection fine-tune epochs")
    ap.add_argument("--seg-epochs", type=int, default=6, help="segmentation fine-tune epochs")
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--pretrain-images", type=int, default=1000, help="images of the set the crops come from")
    ap.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda")
    ap.add_argument("--json", default=str(RESULTS), help="where the results go")
    ap.add_argument("--plot", default=str(PLOT), help="the figure: accuracy per epoch, pretrained against random")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "corpus", train=args.pretrain_images, val=100, size=64, seed=1, crops=CROP, progress=False)
        generate(tmp / "shapes", train=400, val=100, size=128, seed=0, progress=False)
        results = {"pretrain": pretrain(tmp / "corpus" / "crops", tmp / "runs", args.pretrain_epochs, args.device)}
        print(f"classifier: top-1 {results['pretrain']['top1']:.2f}% in {results['pretrain']['wall_s']:.0f} s")
        weights = results["pretrain"].pop("weights")
        for task, recipe, epochs, model in (
            ("detection", "finetune-detection", args.epochs, DETECTOR),
            ("segmentation", "finetune-segmentation", args.seg_epochs, SEGMENTER),
        ):
            results[task] = {
                start: finetune(recipe, tmp / "shapes", tmp / "runs", f"{task}-{start}", epochs, w, args.device, model)
                for start, w in (("pretrained", weights), ("random", ""))
            }
            for start, r in results[task].items():
                scores = ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k in ("map", "map_50", "miou"))
                print(f"{task} from a {start} backbone: {scores} in {r['wall_s']:.0f} s")
    results["setup"] = {
        "machine": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "resnets": resnets.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": vars(args),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    plot(results, Path(args.plot))
    print(f"results: {args.json}; figure: {args.plot}")


if __name__ == "__main__":
    main()
