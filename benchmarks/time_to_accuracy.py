"""Time to accuracy on Fashion-MNIST on this CPU (issue 23): top-1 on the 10,000 test images against the seconds of
training, for the `fashion-mnist` recipe as it was, for candidate recipes, and for the plain PyTorch loop with the
same model (the baseline line). Each run goes to its end, evaluating after every epoch; the saved model of every
engine run is then evaluated again, independently of resnets' data path (the idx files read here with numpy, the
model's recorded normalisation, a plain forward).

`--isa avx2` runs every job as an AVX2-only CPU would (oneDNN and ATen limited to AVX2: ONEDNN_MAX_CPU_ISA=AVX2,
ATEN_CPU_CAPABILITY=avx2, fp32), the CPUs most laptops have; `--isa native` lets bf16 units work (`--amp auto`)
where the CPU has them. Each record names the CPU it ran on and the precision it trained in (what the engine chose,
read from the run); a run replaces only the record of the same name, seed, ISA and CPU.

    python benchmarks/time_to_accuracy.py --isa avx2 --runs current r8-e4 plain-r20-e3 --seeds 0
    python benchmarks/time_to_accuracy.py --isa avx2 --runs r8-e4 --seeds 1 --append
    python benchmarks/time_to_accuracy.py --plot-only     # the figure and the table from the JSON

Writes benchmarks/results/time_to_accuracy.json (one record per run: the curve, the final and independent top-1,
the command's wall time) and docs/time_to_accuracy.png (accuracy against minutes, one line per recipe and seed).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy.json"
FIGURE = ROOT / "docs" / "time_to_accuracy.png"

# name -> flags added to `resnets train --recipe fashion-mnist` (the recipe as it was before issue 23: resnet20,
# 5 epochs, batch 128, SGD nesterov 0.2 one-cycle, wd 5e-4, label smoothing 0.05, pad-2 crop + flip + erasing 0.25)
OLD_RECIPE = ["--model", "resnet20", "--epochs", "5", "--batch-size", "128", "--lr", "0.2", "--tta", "none"]
OLD_RECIPE += ["--augment", "crop-flip", "--pad", "2", "--random-erasing", "0.25"]  # said: the recipe has changed
# every recipe before the third study's decayed the norms' weights and biases like the rest
WD_NORMS = ["--norm-weight-decay", "none"]
OLD_RECIPE += WD_NORMS
# the recipe between (resnet14, 4 epochs, pad-2 crops and flips, flip TTA)
R14_E4 = ["--epochs", "4", "--augment", "crop-flip", "--pad", "2", *WD_NORMS]
CANDIDATES: dict[str, list[str]] = {
    "current": OLD_RECIPE,
    "r20-e3": [*OLD_RECIPE, "--epochs", "3"],
    "r20-e2-b256": [*OLD_RECIPE, "--epochs", "2", "--batch-size", "256", "--lr", "0.4"],
    "r14-e3": [*OLD_RECIPE, "--model", "resnet14", "--epochs", "3"],
    "r8-e4": [*OLD_RECIPE, "--model", "resnet8", "--epochs", "4"],
    "r8-e6": [*OLD_RECIPE, "--model", "resnet8", "--epochs", "6"],
    "r8-e4-b256": [*OLD_RECIPE, "--model", "resnet8", "--epochs", "4", "--batch-size", "256", "--lr", "0.4"],
    "r8-e4-ema": [*OLD_RECIPE, "--model", "resnet8", "--epochs", "4", "--ema", "true"],
    "r8-e4-noerase": [*OLD_RECIPE, "--model", "resnet8", "--epochs", "4", "--random-erasing", "0"],
    "r14-e3-noerase": [*OLD_RECIPE, "--model", "resnet14", "--epochs", "3", "--random-erasing", "0"],
    "r14-e3-noerase-lr04": [
        *OLD_RECIPE,
        "--model",
        "resnet14",
        "--epochs",
        "3",
        "--random-erasing",
        "0",
        "--lr",
        "0.4",
    ],
    "r8-e6-noerase": [*OLD_RECIPE, "--model", "resnet8", "--epochs", "6", "--random-erasing", "0"],
    "r14-e4-noerase": [*OLD_RECIPE, "--model", "resnet14", "--epochs", "4", "--random-erasing", "0"],
    "r20-e2-noerase": [*OLD_RECIPE, "--epochs", "2", "--random-erasing", "0"],
    "recipe": [],  # the `fashion-mnist` recipe as it is now (= recipe-e2.5-nwd0)
    # the second study: 3 epochs of the recipe between with less regularisation (a short run underfits): no
    # augmentation, crops of pad 1, label smoothing off
    "recipe-e3-noaug": ["--epochs", "3", "--augment", "none", *WD_NORMS],
    "recipe-e2-noaug": ["--epochs", "2", "--augment", "none", *WD_NORMS],
    "recipe-e3-pad1": [*R14_E4, "--epochs", "3", "--pad", "1"],
    "recipe-e3-ls0": [*R14_E4, "--epochs", "3", "--label-smoothing", "0"],
    # the third study: fewer images than the second's 3 epochs without augmentation (a real AVX2-only CPU needs
    # about 0.8 of the time): 2 epochs with twice the steps (batch 64: the same cost per image on a CPU), 2.5
    # epochs (1,172 steps of 128, then --epochs 2.5: 1,170), 2.25 epochs, and changes at 2.5 epochs
    "recipe-e2-b64": ["--epochs", "2", "--batch-size", "64", "--lr", "0.1", *WD_NORMS],
    "recipe-e2-b64-lr02": ["--epochs", "2", "--batch-size", "64", "--lr", "0.2", *WD_NORMS],
    "recipe-i1172": ["--iterations", "1172", *WD_NORMS],
    "recipe-i1055": ["--iterations", "1055", *WD_NORMS],
    "recipe-e2.5": ["--epochs", "2.5", *WD_NORMS],
    "recipe-e2.5-ls0": ["--epochs", "2.5", "--label-smoothing", "0", *WD_NORMS],
    "recipe-e2.5-wd1e4": ["--epochs", "2.5", "--weight-decay", "1e-4", *WD_NORMS],
    # each residual branch starting at zero (Goyal et al.); no weight decay on the norms' weights and biases
    "recipe-e2.5-zir": ["--epochs", "2.5", "--zero-init-residual", *WD_NORMS],
    "recipe-e2.5-nwd0": ["--epochs", "2.5", "--norm-weight-decay", "0"],
    "r14-e4-flip": R14_E4,  # `make run`'s recipe from the first study to the second
    "recipe-e3-nwd0": ["--epochs", "3", "--norm-weight-decay", "0"],
}
PLAIN = {"plain-r20-e3": ("resnet20", 3), "plain-r14-e4": ("resnet14", 4), "plain-r8-e6": ("resnet8", 6)}


def isa_env(isa: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    if isa == "avx2":
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
    return env


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format) read with numpy alone: the independent reader."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    folder = Path(os.environ.get("RESNETS_DATA", "/usr/share/datasets/fashion-mnist"))
    if (folder / "fashion-mnist").is_dir():
        folder = folder / "fashion-mnist"
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


@torch.no_grad()
def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: float, std: float) -> float:
    model.eval()
    hits = 0
    for i in range(0, len(x), 500):
        xb = (x[i : i + 500].float() / 255 - mean) / std
        hits += (model(xb).argmax(1) == y[i : i + 500]).sum().item()
    return 100.0 * hits / len(x)


def independent_top1(model_path: Path) -> float:
    """The saved model file on the 10,000 test images: weights through resnets.load, everything else here."""
    import resnets

    model = resnets.load(model_path)
    pre = model.meta.preprocessing
    x, y = fashion_mnist("test")
    assert pre.crop == 28 and pre.resize == 28, pre  # the native size: no resize or crop to apply
    return top1(model, x, y, pre.mean[0], pre.std[0])


def engine_run(name: str, flags: list[str], seed: int, isa: str, work: Path) -> dict:
    cmd = [sys.executable, "-m", "resnets", "train", "--recipe", "fashion-mnist", *flags]
    cmd += ["--seed", str(seed), "--eval-every", "1", "--out", str(work), "--name", f"{name}-s{seed}", "--no-progress"]
    if isa == "avx2":
        cmd += ["--amp", "none"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=isa_env(isa), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name}: {p.stderr[-2000:]}")
    run = work / f"{name}-s{seed}"
    hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((run / "config.json").read_text())
    curve, spent = [], 0.0
    for h in hist:
        spent += h["time_s"]
        curve.append({"epoch": h["epoch"], "train_s": spent, "top1": h["val_top1"]})
    ev = json.loads((run / "eval.json").read_text())
    return {
        "name": name,
        "seed": seed,
        "kind": "engine",
        "model": cfg.get("model"),
        # what it trained: --iterations counts steps (468 batches of 128 an epoch), --epochs may be a fraction
        "epochs": round(cfg["iterations"] / (60_000 // cfg["batch_size"]), 2)
        if cfg.get("iterations")
        else cfg["epochs"],
        "batch_size": cfg.get("batch_size"),
        "command": " ".join(cmd[1:]),
        "curve": curve,
        "final_top1": ev.get("top1"),
        "tta_top1": (ev.get("tta") or {}).get("top1"),
        "precision": "fp32" if ev.get("amp") in (None, "none") else ev["amp"],  # what --amp auto chose here
        "independent_top1": subprocess_independent(run / "model.safetensors", isa),
        "wall_s": wall,
    }


def subprocess_independent(path: Path, isa: str) -> float:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import time_to_accuracy as t; "
    code += f"print(t.independent_top1(__import__('pathlib').Path({str(path)!r})))"
    p = subprocess.run([sys.executable, "-c", code], env=isa_env(isa), capture_output=True, text=True, check=True)
    return float(p.stdout.strip().splitlines()[-1])


def plain_run(name: str, arch: str, epochs: int, seed: int, isa: str) -> dict:
    """The loop a tutorial writes, in a process of its own under the same ISA: same model, optimiser, schedule,
    label smoothing and crop/flip as the recipe, a DataLoader over the tensors, fp32, evaluated every epoch."""
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import time_to_accuracy as t, json; "
    code += f"print(json.dumps(t.plain_loop({arch!r}, {epochs}, {seed})))"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], env=isa_env(isa), capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name}: {p.stderr[-2000:]}")
    curve = json.loads(p.stdout.strip().splitlines()[-1])
    return {
        "name": name,
        "seed": seed,
        "kind": "plain",
        "model": arch,
        "epochs": epochs,
        "batch_size": 128,
        "command": f"plain_loop({arch!r}, {epochs}, seed={seed})",
        "curve": curve,
        "final_top1": curve[-1]["top1"],
        "tta_top1": None,
        "precision": "fp32",
        "independent_top1": curve[-1]["top1"],
        "wall_s": time.perf_counter() - t0,
    }


def plain_loop(arch: str, epochs: int, seed: int, batch: int = 128) -> list[dict]:
    import resnets

    torch.manual_seed(seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    mean, std = 0.2860, 0.3530
    model = resnets.create_model(arch, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True
    )
    curve, spent = [], 0.0
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb = F.pad(xb.float() / 255, (2, 2, 2, 2))
            i, j = torch.randint(0, 5, (2,)).tolist()
            xb = xb[..., i : i + 28, j : j + 28]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model((xb - mean) / std), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        spent += time.perf_counter() - t0
        curve.append({"epoch": epoch, "train_s": spent, "top1": top1(model, xt, yt, mean, std)})
    return curve


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 7))
    colours = plt.get_cmap("tab20").colors
    several = len({r.get("cpu") for r in records}) > 1
    for i, r in enumerate(records):
        xs = [0] + [c["train_s"] / 60 for c in r["curve"]]
        ys = [10.0] + [c["top1"] for c in r["curve"]]
        style = (
            "--" if r["kind"] == "plain" else ":" if precision(r) == "bf16" else "-." if r["isa"] == "native" else "-"
        )
        where = f", {ran_as(r)}" if several else ", bf16 units" if precision(r) == "bf16" else ""
        marker = "os^"[i // 20 % 3]  # past 20 runs the colours repeat: the marker tells them apart
        ax.plot(
            xs, ys, style, color=colours[i % 20], marker=marker, ms=3, label=f"{r['name']} (seed {r['seed']}{where})"
        )
    ax.axhline(92.0, color="grey", lw=0.8)
    ax.set_ylim(84, 93.2)  # where the recipes part; every run starts lower
    ax.set_xlabel("minutes of training")
    ax.set_ylabel("top-1 on the 10,000 test images (%)")
    cpus = "; ".join(sorted({r.get("cpu", "?") for r in records}))
    ax.set_title(
        f"Fashion-MNIST on 2 threads of {cpus}\n(solid: fp32 under the AVX2 limit; dash-dot: fp32 on the CPU as it "
        "is; dotted: bf16 units; dashed: the plain loop)",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncol=1 if len(records) <= 44 else 2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def precision(r: dict) -> str:
    # records from before "precision" was kept: native runs were all on a CPU with bf16 units (--amp auto -> bf16)
    return r.get("precision") or ("bf16" if r.get("isa") == "native" else "fp32")


def ran_as(r: dict) -> str:
    """e.g. "25/1, fp32": the CPU's family/model (where the name has them), the AVX2 limit if set, the precision."""
    cpu = r.get("cpu", "")
    fm = cpu.split("(family ", 1)[1].split(";")[0].replace(" model ", "/") if "(family " in cpu else cpu
    limit = ", AVX2 limit" if r.get("isa") == "avx2" else ""
    return f"{fm}{limit}, {precision(r)}"


def table(records: list[dict]) -> str:
    rows = [
        "| run | seed | CPU family/model, as | model | epochs | batch | training | command wall | top-1 (engine) "
        "| top-1 (independent) | flip TTA |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        tta = f"{r['tta_top1']:.2f}%" if r.get("tta_top1") is not None else "-"
        rows.append(
            f"| {r['name']} | {r['seed']} | {ran_as(r)} | {r['model']} | {r['epochs']:g} | {r['batch_size']} | "
            f"{r['curve'][-1]['train_s']:.0f} s | {r['wall_s']:.0f} s | {r['final_top1']:.2f}% | "
            f"{r['independent_top1']:.2f}% | {tta} |"
        )
    return "\n".join(rows)


def merged(records: list[dict], rec: dict) -> list[dict]:
    """The records with rec added, replacing only a run of the same name, seed and ISA on the same CPU."""
    same = ("name", "seed", "isa", "cpu")
    return [r for r in records if any(r.get(k) != rec[k] for k in same)] + [rec]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="*", default=[], help=f"of {', '.join([*CANDIDATES, *PLAIN])}")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--isa", choices=["avx2", "native"], default="avx2")
    ap.add_argument("--append", action="store_true", help="add to the JSON instead of replacing it")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    records = json.loads(RESULTS.read_text()) if (args.append or args.plot_only) and RESULTS.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.plot_only else args.runs:
            for seed in args.seeds:
                if name in PLAIN:
                    rec = plain_run(name, *PLAIN[name], seed, args.isa)
                else:
                    rec = engine_run(name, CANDIDATES[name], seed, args.isa, Path(tmp))
                rec.update(isa=args.isa, cpu=cpu_name(), threads=2, date=time.strftime("%Y-%m-%d %H:%M"))
                records = merged(records, rec)
                c = rec["curve"][-1]
                print(
                    f"{name} seed {seed}: {c['top1']:.2f}% after {c['train_s']:.0f} s of training "
                    f"(independent {rec['independent_top1']:.2f}%, command {rec['wall_s']:.0f} s)",
                    flush=True,
                )
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(records, indent=1))
    if records:
        plot(records, FIGURE)
        print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
