"""The paper's claims from real training runs: `resnets reproduce WHAT`.

- degradation: plain-20/56 and ResNet-20/56 trained with the section 4.2 set-up (a shortened schedule by
  `budget`), training error (dashed) and test error (solid) against iterations: Figure 6.
- layer-responses: the standard deviation of each 3x3 layer's response (after BN, before the addition and the
  ReLU) of those trained nets, in layer order and sorted by magnitude: Figure 7.
- gradient-flow: the gradient norm of every conv layer, input to output, at initialisation and after training,
  plain-56 against ResNet-56.
- table1: Table 1 from the model code (output sizes, blocks, multiply-adds against the paper's FLOPs).
- cifar-table: Table 6 rows (depth, parameters, test error; mean +- std over seeds).

Each writes a markdown report and PNG figures in `out`; trained runs are kept in `out/runs/` and reused by the
others (and by a second call) when their configuration is the same.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .config import BUDGETS, TrainConfig, from_dict, resolve
from .data.registry import get_dataset
from .data.transforms import normalizer
from .engine import train
from .errors import ResnetsError
from .factory import create_model, load
from .models.layers import BasicBlock
from .safe_io import atomic_path
from .summary import summarize

log = logging.getLogger("resnets")
# matplotlib (through reports) is imported by the functions that draw: every spawned training worker imports
# this module

PAPER_CIFAR10_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}  # Table 6
PAPER_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}  # Table 1, multiply-adds x 10^9
DATASETS = ("fashion-mnist", "cifar10")  # the registered datasets the paper's experiments run on (28 and 32 pixels)


def iterations(budget: str | int) -> int:
    if isinstance(budget, int) or str(budget).isdigit():
        n = int(budget)
        if n < 10:
            raise ResnetsError(f"a budget is at least 10 iterations; got {n}")
        return n
    if budget not in BUDGETS:
        raise ResnetsError(f"budget must be one of {', '.join(BUDGETS)} or a number of iterations; got {budget!r}")
    return BUDGETS[budget]


def run_config(
    model: str,
    dataset: str,
    budget: str | int,
    seed: int,
    out: Path,
    data: str | None = None,
    progress: bool = True,
    device: str = "auto",
    extra: dict | None = None,
) -> TrainConfig:
    """The paper's CIFAR set-up (section 4.2): SGD lr 0.1, momentum 0.9, wd 1e-4, batch 128, 4-pixel padding, crop,
    flip; lr /10 at 50% and 75% of the iterations (32k and 48k of 64k). ResNet-110 and deeper warm up at lr
    0.01 for the first 400 iterations, as the paper does. bf16 autocast and channels_last where they are faster."""
    n = iterations(budget)
    depth = int("".join(ch for ch in model if ch.isdigit()) or 0)
    overrides: dict[str, Any] = dict(
        model=model,
        dataset=dataset,
        data=data,
        iterations=n,
        milestones=[n // 2, n * 3 // 4],
        seed=seed,
        curve_steps=max(n // 12, 1),
        eval_every=10**6,
        amp="auto",
        channels_last=None,
        workers=0,
        out=str(out / "runs"),
        name=f"{model}-{dataset}-{n}it-seed{seed}",
        progress=progress,
        device=device,
    )
    if depth >= 110:
        steps_per_epoch = (60_000 if dataset == "fashion-mnist" else 50_000) // 128
        overrides.update(warmup_epochs=min(400, n // 10) / steps_per_epoch, warmup_start=0.1)
    overrides.update(extra or {})  # e.g. limit_train / limit_val for a quick look
    return resolve("paper-cifar", overrides=overrides)


@dataclass
class Setup:
    """What every reproduction shares: the data, the training budget, where runs and reports go, and how many
    runs train at once (`jobs`: separate processes sharing the device; one GPU has room for several small nets)."""

    dataset: str = "fashion-mnist"
    budget: str | int = "short"
    out: Path = Path("runs/reproduce")
    seed: int = 0
    data: str | None = None  # CIFAR archive or folder; Fashion-MNIST IDX folder
    device: str = "auto"
    progress: bool = True
    extra: dict = field(default_factory=dict)  # further config keys for every run (e.g. limit_val)
    jobs: int = 1

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        iterations(self.budget)  # a bad budget fails before anything runs
        if self.dataset not in DATASETS:
            raise ResnetsError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if self.jobs < 1:
            raise ResnetsError(f"--jobs must be at least 1; got {self.jobs}")

    def config(self, model: str, seed: int | None = None) -> TrainConfig:
        seed = self.seed if seed is None else seed
        return run_config(
            model, self.dataset, self.budget, seed, self.out, self.data, self.progress, self.device, self.extra
        )

    def run(self, model: str, seed: int | None = None) -> dict:
        return self.run_all([(model, seed)])[(model, seed)]

    def run_all(self, wanted: list[tuple[str, int | None]]) -> dict[tuple[str, int | None], dict]:
        """The finished runs of these (model, seed) pairs: trained (`jobs` at a time), resumed, or reused."""
        configs = {w: self.config(*w) for w in wanted}
        todo = [c for c in configs.values() if status(c) != "done"]
        if self.jobs > 1 and len(todo) > 1:
            train_parallel(todo, self.jobs, self.progress)
        return {w: trained(c) for w, c in configs.items()}


def status(cfg: TrainConfig) -> str:
    """Where the run of `cfg` stands in its folder: "done", "partial" (resumable), "new", or "other" (a run of
    another configuration under the same name)."""
    run_dir = Path(cfg.out) / cfg.name
    if not (run_dir / "config.json").is_file():
        return "new"
    ignore = (
        "progress",
        "device",
        "workers",
        "loader",
        "cuda_graph",
    )  # how a run is shown or placed, not what it computes
    saved = json.loads((run_dir / "config.json").read_text())
    wanted = json.loads(json.dumps(cfg.to_dict()))
    if {k: v for k, v in saved.items() if k not in ignore} != {k: v for k, v in wanted.items() if k not in ignore}:
        return "other"
    if (run_dir / "reproduce.json").is_file():
        return "done"
    return "partial" if (run_dir / "last.pt").is_file() else "new"


def trained(cfg: TrainConfig, on_progress=None) -> dict:
    """Train as `cfg` says, or reuse the finished run of the same config in its run directory, or continue an
    interrupted one from its last checkpoint."""
    run_dir = Path(cfg.out) / cfg.name
    done = run_dir / "reproduce.json"
    state = status(cfg)
    if state == "done":
        return json.loads(done.read_text())
    if state == "partial":
        r = train(resume=run_dir, overrides={"progress": cfg.progress}, on_progress=on_progress)
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # a different run of ours under the same name, or one that never saved: start again
        r = train(cfg, on_progress=on_progress)
    keep = {k: r[k] for k in ("run_dir", "model_path", "top1", "top5", "n", "curve")}
    keep["params"] = sum(p.numel() for p in load(r["model_path"]).parameters())
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(keep))
    return keep


def _worker(cfg_dict: dict, queue, threads: int, parent: int) -> None:
    """One run in its own process (spawned): its output to OUT/runs/NAME.log, its progress to the parent. It stops
    when the parent is gone (the command was killed), leaving its last checkpoint for the next command."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
    cfg = from_dict(cfg_dict)
    log_path = Path(cfg.out) / f"{cfg.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout = sys.stderr = open(log_path, "a", buffering=1)  # noqa: SIM115  (the process's own streams)
    print(f"worker pid {os.getpid()}: {cfg.name}", flush=True)
    torch.set_num_threads(threads)
    result = trained(cfg, on_progress=lambda p: queue.put((cfg.name, p)))
    queue.put((cfg.name, {"done": True, "top1": result["top1"]}))


def train_parallel(configs: list[TrainConfig], jobs: int, progress: bool = True) -> None:
    """Train these runs, `jobs` processes at a time, with a progress line per run. Each resumes from its own
    checkpoints, so a stopped command continues where it was when run again."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    messages = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo, running, failed = list(configs), {}, []
    width = max(len(c.name) for c in configs)
    bars = {
        c.name: tqdm(
            total=c.iterations,
            desc=c.name.ljust(width),
            position=i,
            unit="it",
            leave=True,
            disable=not progress,
            dynamic_ncols=True,
        )
        for i, c in enumerate(configs)
    }

    def show(name: str, p: dict) -> None:
        bar = bars[name]
        if p.get("done"):
            bar.update(bar.total - bar.n)
            bar.set_postfix(top1=f"{p['top1']:.2f}%")
            if not progress:
                print(f"{name}: done, top-1 {p['top1']:.2f}%", flush=True)
        else:
            bar.update(p["step"] - bar.n)
            bar.set_postfix(loss=f"{p['loss']:.3f}", acc=f"{p['acc']:.1f}", img_s=f"{p['img_s']:.0f}")

    try:
        while todo or running:
            while todo and len(running) < jobs:
                cfg = todo.pop(0)
                proc = ctx.Process(target=_worker, args=(cfg.to_dict(), messages, threads, os.getpid()), name=cfg.name)
                proc.start()
                running[cfg.name] = (proc, cfg)
            try:
                show(*messages.get(timeout=0.5))
            except Empty:
                pass
            for name, (proc, cfg) in list(running.items()):
                if not proc.is_alive():
                    proc.join()
                    del running[name]
                    if proc.exitcode:
                        failed.append((cfg, proc.exitcode))
    except BaseException:
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            proc.join()
        raise
    finally:
        while True:  # what the last workers said before they ended
            try:
                show(*messages.get(timeout=0.1))
            except Empty:
                break
        for bar in bars.values():
            bar.close()
    if failed:
        cfg, code = failed[0]
        raise ResnetsError(
            f"run {cfg.name} failed (exit {code}); see {Path(cfg.out) / (cfg.name + '.log')}; the "
            "command resumes unfinished runs when it is run again"
        )


# ---------------------------------------------------------------- degradation (Figure 6)
DEGRADATION_NETS = ("plain20", "plain56", "resnet20", "resnet56")


def degradation(setup: Setup) -> dict:
    import matplotlib.pyplot as plt

    from .reports import save_png

    dataset, budget, out, seed = setup.dataset, setup.budget, setup.out, setup.seed
    out.mkdir(parents=True, exist_ok=True)
    runs = {m: r for (m, _), r in setup.run_all([(m, None) for m in DEGRADATION_NETS]).items()}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = {"20": "tab:orange", "56": "tab:red"}
    for ax, kind, label in ((axes[0], "plain", "plain"), (axes[1], "resnet", "ResNet")):
        for depth in ("20", "56"):
            c = runs[f"{kind}{depth}"]["curve"]
            it = [p["step"] for p in c]
            ax.plot(it, [p["train_err"] for p in c], "--", color=colors[depth], alpha=0.8)
            ax.plot(it, [p["val_err"] for p in c], "-", color=colors[depth], lw=2, label=f"{label}-{depth}")
        ax.set_xlabel("iterations"), ax.grid(alpha=0.3), ax.legend(title="dashed: training, solid: test")
        ax.set_title(f"{label} nets on {dataset}")
    axes[0].set_ylabel("error (%)")
    top = max(max(p["train_err"], p["val_err"]) for r in runs.values() for p in r["curve"][1:] or r["curve"])
    axes[0].set_ylim(0, min(100, top * 1.1 + 1))
    save_png(fig, out / "degradation.png")

    final = {
        m: {"train_err": r["curve"][-1]["train_err"], "test_err": 100 - r["top1"], "params": r["params"]}
        for m, r in runs.items()
    }
    plain_degrades = final["plain56"]["train_err"] > final["plain20"]["train_err"]
    resnet_improves = final["resnet56"]["train_err"] < final["resnet20"]["train_err"]
    n = iterations(budget)
    lines = [
        f"# Degradation (Figure 6) on {dataset}",
        "",
        f"`resnets reproduce degradation --dataset {dataset} --budget {budget}`: {n:,} iterations of batch 128 "
        f"(the paper: 64,000), lr 0.1 divided by 10 at {n // 2:,} and {n * 3 // 4:,}, weight decay 1e-4, "
        "4-pixel padding, crops and flips; seed " + str(seed) + ".",
        "",
        "![degradation](degradation.png)",
        "",
        "| net | params | training error % (last window) | test error % |",
        "|---|---:|---:|---:|",
    ]
    for m in DEGRADATION_NETS:
        f = final[m]
        lines.append(f"| {m} | {f['params']:,} | {f['train_err']:.2f} | {f['test_err']:.2f} |")
    lines += [
        "",
        f"- plain-56 ends with {'higher' if plain_degrades else 'lower'} training error than plain-20 "
        f"({final['plain56']['train_err']:.2f}% vs {final['plain20']['train_err']:.2f}%): "
        + (
            "the degradation problem, as in the paper."
            if plain_degrades
            else "here the paper's degradation does not show."
        ),
        f"- ResNet-56 ends with {'lower' if resnet_improves else 'higher'} training error than ResNet-20 "
        f"({final['resnet56']['train_err']:.2f}% vs {final['resnet20']['train_err']:.2f}%): "
        + (
            "depth helps once there are shortcuts, as in the paper."
            if resnet_improves
            else "unlike the paper, the deeper ResNet has not overtaken the shallower one in this budget."
        ),
        f"- At depth 56 the shortcuts take the training error from {final['plain56']['train_err']:.2f}% (plain) to "
        f"{final['resnet56']['train_err']:.2f}% (ResNet), and the test error from {final['plain56']['test_err']:.2f}% "
        f"to {final['resnet56']['test_err']:.2f}%; at depth 20 from {final['plain20']['train_err']:.2f}% to "
        f"{final['resnet20']['train_err']:.2f}% (the paper: the gap grows with depth).",
    ]
    report = out / "degradation.md"
    report.write_text("\n".join(lines) + "\n")
    return {
        "final": final,
        "plain_degrades": plain_degrades,
        "resnet_improves": resnet_improves,
        "report": str(report),
        "figure": str(out / "degradation.png"),
    }


# ---------------------------------------------------------------- layer responses (Figure 7)
def _eval_batch(
    dataset: str, data: str | None, n: int, split: str = "test", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images of the dataset, normalised as training normalises them, and their labels."""
    spec = get_dataset(dataset)
    images, labels, _ = spec.tensors(split, data, False)
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return normalizer(spec.mean, spec.std)(images[idx]), labels[idx]


def response_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm after every 3x3 conv, input to output: the stem's, then each block's bn1 and bn2."""
    norms = [model.bn1]
    for name in model.stage_names:
        for block in getattr(model, name):
            if not isinstance(block, BasicBlock):
                raise ResnetsError("layer responses are defined here for the CIFAR nets (basic blocks)")
            norms += [block.bn1, block.bn2]
    return norms


@torch.no_grad()
def layer_stds(model: nn.Module, x: torch.Tensor) -> list[float]:
    """Per layer: the std of the BN output over images and positions, averaged over channels (eval mode)."""
    out: list[float] = []
    hooks = [
        bn.register_forward_hook(lambda m, i, o: out.append(float(o.float().std(dim=(0, 2, 3)).mean())))
        for bn in response_norms(model)
    ]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def layer_responses(setup: Setup) -> dict:
    import matplotlib.pyplot as plt

    from .reports import save_png

    dataset, budget, out = setup.dataset, setup.budget, setup.out
    out.mkdir(parents=True, exist_ok=True)
    runs = {m: r for (m, _), r in setup.run_all([(m, None) for m in DEGRADATION_NETS]).items()}
    x, _ = _eval_batch(dataset, setup.data, 500)
    stds = {m: layer_stds(load(r["model_path"]), x) for m, r in runs.items()}
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 7))
    style = {
        "plain20": ("tab:orange", "--"),
        "plain56": ("tab:red", "--"),
        "resnet20": ("tab:blue", "-"),
        "resnet56": ("tab:green", "-"),
    }
    for m, s in stds.items():
        c, ls = style[m]
        a1.plot(range(1, len(s) + 1), s, ls, color=c, label=m)
        a2.plot(range(1, len(s) + 1), sorted(s, reverse=True), ls, color=c, label=m)
    a1.set_xlabel("layer index (original)"), a2.set_xlabel("layer index (sorted by magnitude)")
    for a in (a1, a2):
        a.set_ylabel("std"), a.grid(alpha=0.3), a.legend()
    a1.set_title(f"Responses of the 3x3 layers (after BN, before addition and ReLU), {dataset} test images")
    save_png(fig, out / "layer_responses.png")
    mean = {m: statistics.mean(s) for m, s in stds.items()}
    smaller = mean["resnet20"] < mean["plain20"] and mean["resnet56"] < mean["plain56"]
    deeper_smaller = mean["resnet56"] < mean["resnet20"]
    lines = [
        f"# Layer responses (Figure 7) on {dataset}",
        "",
        f"The nets of `resnets reproduce degradation --budget {budget}`; std over 500 test images and all positions "
        "of each channel of the BN output, averaged over channels.",
        "",
        "![layer responses](layer_responses.png)",
        "",
        "| net | 3x3 layers | mean std | max std |",
        "|---|---:|---:|---:|",
        *[f"| {m} | {len(s)} | {mean[m]:.3f} | {max(s):.3f} |" for m, s in stds.items()],
        "",
        f"- ResNets' responses are {'smaller' if smaller else 'not smaller'} than their plain counterparts' "
        f"({'as' if smaller else 'unlike'} the paper).",
        f"- The deeper ResNet's responses are {'smaller' if deeper_smaller else 'not smaller'} than the shallower one's "
        f"({'as' if deeper_smaller else 'unlike'} the paper).",
    ]
    (out / "layer_responses.md").write_text("\n".join(lines) + "\n")
    return {
        "stds": stds,
        "resnets_smaller": smaller,
        "deeper_smaller": deeper_smaller,
        "report": str(out / "layer_responses.md"),
        "figure": str(out / "layer_responses.png"),
    }


# ---------------------------------------------------------------- gradient flow
def conv_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """The gradient norm of every conv weight (input to output, shortcut convs aside) for one batch, train mode."""
    model.train()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return [
        float(m.weight.grad.norm())
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and "downsample" not in name
    ]


def gradient_flow(setup: Setup) -> dict:
    import matplotlib.pyplot as plt

    from .reports import save_png

    dataset, budget, out, seed = setup.dataset, setup.budget, setup.out, setup.seed
    out.mkdir(parents=True, exist_ok=True)
    nets = ("plain56", "resnet56")
    runs = {m: r for (m, _), r in setup.run_all([(m, None) for m in nets]).items()}
    x, y = _eval_batch(dataset, setup.data, 256, split="train", seed=seed)
    in_chans = x.shape[1]
    norms: dict[str, dict[str, list[float]]] = {}
    for m in nets:
        torch.manual_seed(seed)
        fresh = create_model(m, num_classes=10, in_chans=in_chans)
        norms[m] = {"init": conv_grad_norms(fresh, x, y), "trained": conv_grad_norms(load(runs[m]["model_path"]), x, y)}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, when in zip(axes, ("init", "trained")):
        for m, c in (("plain56", "tab:red"), ("resnet56", "tab:green")):
            g = norms[m][when]
            ax.semilogy(range(1, len(g) + 1), g, "o-", ms=3, color=c, label=m)
        ax.set_xlabel("conv layer (input -> output)"), ax.set_ylabel("gradient norm"), ax.grid(alpha=0.3, which="both")
        ax.set_title("at initialisation" if when == "init" else f"after {iterations(budget):,} iterations"), ax.legend()
    save_png(fig, out / "gradient_flow.png")

    def ratio(g: list[float]) -> float:  # first layers over last layers: < 1 means gradients fade towards the input
        k = max(len(g) // 10, 1)
        return statistics.mean(g[:k]) / statistics.mean(g[-k:])

    lines = [
        f"# Gradient flow on {dataset}",
        "",
        "Gradient norm of each conv layer's weights for one batch of 256 training images (cross-entropy, train-mode "
        f"BatchNorm), at He initialisation and after the `--budget {budget}` training of the degradation runs.",
        "",
        "![gradient flow](gradient_flow.png)",
        "",
        "| net | when | first 10% / last 10% of layers | smallest | largest |",
        "|---|---|---:|---:|---:|",
    ]
    for m in nets:
        for when in ("init", "trained"):
            g = norms[m][when]
            lines.append(f"| {m} | {when} | {ratio(g):.3g} | {min(g):.3g} | {max(g):.3g} |")

    def trend(g: list[float]) -> str:
        r = ratio(g)
        if r > 10:
            return f"grow towards the input ({r:.3g}x larger in the first 10% of layers than in the last 10%)"
        if r < 0.1:
            return f"fade towards the input ({1 / r:.3g}x smaller in the first 10% of layers than in the last 10%)"
        return f"stay within 10x across depth (first/last 10%: {r:.3g})"

    lines.append("")
    for m in nets:
        for when in ("init", "trained"):
            lines.append(
                f"- {m}, {'at initialisation' if when == 'init' else 'trained'}: gradient norms {trend(norms[m][when])}."
            )
    vanish = any(ratio(norms[m]["init"]) < 0.1 for m in nets)
    lines += [
        "",
        (
            "At initialisation a net's gradients vanish towards the input here. "
            if vanish
            else "At initialisation no net's gradients vanish towards the input: with BatchNorm the plain net's "
            "difficulty is not vanishing gradients, as the paper argues in section 4.1. "
        )
        + (
            "At initialisation the shortcuts keep every layer's gradient norm within a narrow band, while the "
            "plain net's changes geometrically with depth."
            if 0.1 <= ratio(norms["resnet56"]["init"]) <= 10 and not 0.1 <= ratio(norms["plain56"]["init"]) <= 10
            else ""
        ),
    ]
    (out / "gradient_flow.md").write_text("\n".join(lines) + "\n")
    return {"norms": norms, "report": str(out / "gradient_flow.md"), "figure": str(out / "gradient_flow.png")}


# ---------------------------------------------------------------- Table 1 and Table 6
def table1(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    depths = (18, 34, 50, 101, 152)
    sums = {
        d: summarize(create_model(f"resnet{d}", **({"stride_in_1x1": True} if d >= 50 else {})), 224) for d in depths
    }
    lines = [
        "# Table 1 from the model code",
        "",
        "`resnets reproduce table1`: the stage table of each ImageNet net at 224x224 (bottlenecks with the "
        "paper's stride on the first 1x1), as `resnets summary` prints it.",
        "",
        "| layer | output | " + " | ".join(f"{d}-layer" for d in depths) + " |",
        "|---|---|" + "---|" * len(depths),
    ]
    for i, st in enumerate(sums[18]["stages"]):
        hw = st["output"][1:] or [1, 1]
        specs = []
        for d in depths:
            s = sums[d]["stages"][i]
            specs.append(s["spec"] + (f" x{s['blocks']}" if s["name"].endswith("_x") else ""))
        lines.append(f"| {st['name']} | {hw[0]}x{hw[1]} | " + " | ".join(specs) + " |")
    lines.append("| multiply-adds | | " + " | ".join(f"{sums[d]['macs'] / 1e9:.2f} x 10^9" for d in depths) + " |")
    lines.append("| the paper's FLOPs | | " + " | ".join(f"{PAPER_GFLOPS[d]} x 10^9" for d in depths) + " |")
    lines.append("| params | | " + " | ".join(f"{sums[d]['params'] / 1e6:.1f}M" for d in depths) + " |")
    (out / "table1.md").write_text("\n".join(lines) + "\n")
    return {"macs": {d: sums[d]["macs"] for d in depths}, "report": str(out / "table1.md")}


def cifar_table(setup: Setup, depths: list[int], seeds: list[int]) -> dict:
    dataset, budget, out = setup.dataset, setup.budget, setup.out
    bad = [d for d in depths if d not in PAPER_CIFAR10_ERROR]
    if bad:
        raise ResnetsError(f"CIFAR ResNet depths are {', '.join(map(str, PAPER_CIFAR10_ERROR))}; got {bad[0]}")
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    runs = setup.run_all([(f"resnet{d}", s) for d in depths for s in seeds])
    for d in depths:
        errs, params = [], 0
        for s in seeds:
            r = runs[(f"resnet{d}", s)]
            errs.append(100 - r["top1"])
            params = r["params"]
        rows[d] = {
            "params": params,
            "errors": errs,
            "mean": statistics.mean(errs),
            "std": statistics.pstdev(errs) if len(errs) > 1 else None,
        }
    n = iterations(budget)
    lines = [
        f"# Table 6 rows on {dataset}",
        "",
        f"`resnets reproduce cifar-table --dataset {dataset} --budget {budget}`: {n:,} iterations (the paper: "
        f"64,000), seeds {', '.join(map(str, seeds))}. The paper's errors are CIFAR-10's"
        + ("" if dataset == "cifar10" else f"; on {dataset} only the trend over depth compares")
        + ".",
        "",
        f"| net | params | test error % ({dataset}) | the paper's CIFAR-10 error % |",
        "|---|---:|---:|---:|",
    ]
    for d, r in rows.items():
        err = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else "")
        lines.append(f"| ResNet-{d} | {r['params'] / 1e6:.2f}M | {err} | {PAPER_CIFAR10_ERROR.get(d, '')} |")
    (out / "cifar_table.md").write_text("\n".join(lines) + "\n")
    return {"rows": rows, "report": str(out / "cifar_table.md")}
