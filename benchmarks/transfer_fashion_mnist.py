"""Does transfer help with little data? Real Fashion-MNIST, one command.

1. Pretrain resnet20 on Fashion-MNIST classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat) with the
   `fashion-mnist` recipe.
2. Write classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) as an image folder: train/ (all training images;
   each run draws `--per-class` of them per class with its seed) and val/ (all 5,000 test images).
3. With only those few images per class, compare on the 5,000 test images, over `--seeds`:
   linear probe, partial (top stage), gradual unfreezing, full fine-tune (layer-wise lr), training from scratch
   with the same budget (epochs, batch, augmentation), and scikit-learn logistic regression on frozen embeddings.

Nothing is chosen on the test images: every run trains a fixed number of epochs and is evaluated once.

    python benchmarks/transfer_fashion_mnist.py --out runs/transfer --json benchmarks/results/transfer_fashion_mnist.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import cpu_and_threads

from resnets import config as C
from resnets.data import sources
from resnets.engine import train

NEW = range(5, 10)


def write_folder(root: Path) -> None:
    from torchvision.io import write_png
    from tqdm import tqdm

    if (root / "done").is_file():
        return
    for split, folder in (("train", "train"), ("test", "val")):
        images, labels, classes = sources.load_fashion_mnist(split)
        keep = [i for i, t in enumerate(labels.tolist()) if t in NEW]
        for i in tqdm(keep, desc=f"writing {folder}/", unit="img", leave=False):
            d = root / folder / classes[int(labels[i])]
            d.mkdir(parents=True, exist_ok=True)
            write_png(images[i], str(d / f"{i:05d}.png"))
    (root / "done").write_text("ok\n")


def logistic_regression(model_path: str, data: Path, per_class: int, seed: int) -> float:
    """Frozen pre-logit embeddings of the pretrained net (`resnets.inference.embed` on the files), then a
    standardised multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    import resnets
    from resnets.data import image_folder, per_class_subset
    from resnets.inference import embed

    model = resnets.load(model_path)
    train_set = image_folder(data / "train", channels=1)
    pick = per_class_subset(train_set.targets, per_class, seed)
    train_files = [train_set.samples[i][0] for i in pick]
    val_set = image_folder(data / "val", channels=1, classes=train_set.classes)
    x_tr, files_tr, _ = embed(model, train_files, workers=0, batch_size=256)
    x_te, files_te, _ = embed(model, [p for p, _ in val_set.samples], workers=0, batch_size=256)
    label = {p: t for p, t in train_set.samples + val_set.samples}
    y_tr = [label[f] for f in files_tr]
    y_te = [label[f] for f in files_te]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=0.1))
    clf.fit(x_tr.numpy(), y_tr)
    return 100.0 * float((clf.predict(x_te.numpy()) == torch.tensor(y_te).numpy()).mean())


def plot(results: dict, path: Path, per_class: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [statistics.mean(results[n]) for n in names]
    stds = [statistics.pstdev(results[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = ax.bar(names, means, yerr=stds, capsize=4, color=["#4c72b0"] * (len(names) - 2) + ["#dd8452", "#55a868"])
    for b, m in zip(bars, means):
        ax.text(b.get_x() + b.get_width() / 2, m + 0.5, f"{m:.1f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylim(max(0, min(means) - 15), 100)
    ax.set_ylabel("top-1 on 5,000 test images (%)")
    ax.set_title(f"Fashion-MNIST classes 5-9 from {per_class} images per class: transfer from classes 0-4 vs scratch")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/transfer")
    ap.add_argument("--pretrain-epochs", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=30, help="fine-tuning / scratch budget")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.time()

    pre_dir = out / "pretrain"
    if not (pre_dir / "model.safetensors").is_file():
        r = train(
            C.resolve(
                "fashion-mnist",
                overrides=dict(classes="0,1,2,3,4", epochs=args.pretrain_epochs, out=out, name="pretrain"),
            )
        )
        print(f"pretrained on classes 0-4: top-1 {r['top1']:.2f}% on their 5,000 test images", flush=True)
    pretrained = str(pre_dir / "model.safetensors")
    data = out / "data"
    write_folder(data)

    # one budget for all: epochs, batch 32, crops and flips of 28-pixel images, cosine with 1 warmup epoch
    common = dict(
        data=str(data),
        per_class=args.per_class,
        epochs=args.epochs,
        eval_every=args.epochs,
        early_stop=0,
        augment="crop-flip",
        pad=2,
        random_erasing=0.0,
        workers=0,
        progress=False,
        out=str(out),
    )
    methods = {
        "linear probe": dict(weights=pretrained, strategy="linear-probe", lr=0.1),
        "partial (top stage)": dict(weights=pretrained, strategy="partial", unfreeze_stages=1, lr=0.05),
        "gradual unfreezing": dict(
            weights=pretrained, strategy="gradual", unfreeze_every=max(args.epochs // 5, 1), lr=0.05
        ),
        "full fine-tune": dict(weights=pretrained, strategy="full", layer_decay=0.7, lr=0.05),
        "scratch": dict(model="resnet20", in_chans=1, lr=0.1, train_crop=28, eval_crop=28, eval_resize=28),
    }
    results: dict[str, list[float]] = {m: [] for m in methods}
    results["logistic regression"] = []
    for seed in seeds:
        for name, opts in methods.items():
            run = f"{name.split(' ')[0]}-seed{seed}"
            done = out / run / "eval.json"  # a finished run is reused (the script can be run again after a stop)
            r = (
                json.loads(done.read_text())
                if done.is_file()
                else train(C.resolve("finetune", overrides=dict(common, seed=seed, name=run, **opts)))
            )
            results[name].append(r["top1"])
            print(f"seed {seed}: {name:<20} top-1 {r['top1']:.2f}%", flush=True)
        acc = logistic_regression(pretrained, data, args.per_class, seed)
        results["logistic regression"].append(acc)
        print(f"seed {seed}: {'logistic regression':<20} top-1 {acc:.2f}%", flush=True)

    summary = {n: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "runs": v} for n, v in results.items()}
    print(f"\n| method ({args.per_class} images/class) | top-1 % (mean ± std over {len(seeds)} seeds) |\n|---|---|")
    for n, s in summary.items():
        print(f"| {n} | {s['mean']:.2f} ± {s['std']:.2f} |")
    plot(results, out / "transfer.png", args.per_class)
    record = {
        "machine": cpu_and_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "per_class": args.per_class,
        "epochs": args.epochs,
        "pretrain_epochs": args.pretrain_epochs,
        "seeds": seeds,
        "results": summary,
        "methods": methods | {"logistic regression": {"C": 0.1, "features": "pre-logits of the pretrained net"}},
        "wall_s": time.time() - t0,
    }
    (out / "transfer.json").write_text(json.dumps(record, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2, default=str))
    print(f"plot: {out / 'transfer.png'}; {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
