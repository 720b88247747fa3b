"""Batch norm folded into the convolutions for inference (resnets.models.fold), against the same model running its
batch norms: evaluation's and the eager runner's speed on this CPU.

Cases (the two forms alternating in one process, each timed for --seconds per run, medians of --runs):
- eval: `make run`'s evaluation: resnet14 on batches of 500 Fashion-MNIST-sized images (1x28x28), channels_last;
- resnet50: ResNet-50 at 224 px, batch 16, channels_last (the eager runner's layout for classify and serve).
Both at fp32 by default (--amp bf16 autocasts, as the engine and the runners do on a CPU with bf16 units;
--compile puts both forms through torch.compile, as the compiled runner does: its first call is untimed), with
freed memory kept as every resnets command keeps it. Set ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 to run
as an AVX2-only CPU.

    python benchmarks/fold_norms.py --runs 5 --json benchmarks/results/fold_norms_avx2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from machine import cpu_and_threads

import resnets
from resnets.devices import keep_host_memory
from resnets.models.fold import folded

CASES = {"eval": ("resnet14", 1, 28, 500), "resnet50": ("resnet50", 3, 224, 16)}


def rate(net, x: torch.Tensor, seconds: float, amp: str) -> float:
    dtype = torch.bfloat16 if amp == "bf16" else torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=amp == "bf16"):
        net(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            net(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def case(name: str, runs: int, seconds: float, amp: str, compiled: bool) -> dict:
    arch, chans, size, batch = CASES[name]
    torch.manual_seed(0)
    model = resnets.create_model(arch, num_classes=10, in_chans=chans)
    model.train()
    with torch.no_grad():  # statistics of its own, not the identity the norms start at
        for _ in range(2):
            model(torch.randn(8, chans, size, size))
    model = model.eval().to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    forms = {"batch norms": model, "folded": folded(model)}
    fold_s = time.perf_counter() - t0
    if compiled:  # the compiled runner's way (torch.compile's default mode on a CPU)
        forms = {k: torch.compile(v) for k, v in forms.items()}
    x = torch.randn(batch, chans, size, size).contiguous(memory_format=torch.channels_last)
    rows: dict[str, list[float]] = {k: [] for k in forms}
    for r in range(runs):
        for form in list(forms)[r % 2 :] + list(forms)[: r % 2]:
            rows[form].append(rate(forms[form], x, seconds, amp))
        print(f"run {r}: {name} " + "  ".join(f"{k} {v[-1]:8.1f} img/s" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    ratio = med["folded"] / med["batch norms"]
    print(f"{name}: {med['batch norms']:.1f} -> {med['folded']:.1f} img/s ({ratio:.2f}x; folding took {fold_s:.2f} s)")
    return {"model": arch, "batch": batch, "size": size, "runs": rows, "median": med, "ratio": ratio, "fold_s": fold_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--compile", action="store_true", help="both forms through torch.compile")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    keep_host_memory()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(f"{cpu_and_threads()}, oneDNN ISA {isa}, {args.amp}", flush=True)
    out = {
        "command": "python benchmarks/fold_norms.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "json"
        ),  # fmt: skip
        "machine": cpu_and_threads(),
        "isa": isa,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "statistic": "median",
        "cases": {name: case(name, args.runs, args.seconds, args.amp, args.compile) for name in args.cases},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
