"""How fast this CPU is against the CPU of earlier results, on the two kinds of work the package's CPU figures come
from, so that a time measured on one CPU can be carried to another with a stated factor (issue 23: `make run`'s
time on an AVX2-only CPU, estimated from runs on a faster one limited to AVX2).

Probes, each in a fresh process, the two alternating, `--runs` times each (median):
- step: the small-net training step, the `fashion-mnist` recipe's kind of work: the paper's ResNet-20 on a batch
  of 128 Fashion-MNIST-sized images (1x28x28) held in memory, channels_last, fp32, SGD; images/s over 40 steps
  after 10 (exactly benchmarks/train_throughput.py's "step alone" ceiling);
- infer: the big-net forward: torchvision's resnet50 in eval mode, fp32, NCHW, batch 16 at 224 px; images/s over
  8 batches after 3 (train_throughput's and inference_speed.py's "torchvision-eager" peer).
Both run as glibc's malloc comes (no `resnets.devices.keep_host_memory`, which the reference runs predate).

The reference is read from the stored results (the step from results/train_fashion_mnist_cpu_2threads.json, the
forward from results/inference_cpu_avx2.json: both an AMD EPYC Zen 3 with AVX2 only, 2 threads, 2026-11-23), and
the `fashion-mnist` recipe's whole-command times on this CPU under this ISA from results/time_to_accuracy.json are
carried over with the step's factor. Run on a Zen 3 itself, it says how far one machine of the same model is from
another (results/cpu_probe_native_zen3.json: 0.84x and 0.72x, a week apart).

    python benchmarks/cpu_probe.py --isa avx2 --runs 5 --json benchmarks/results/cpu_probe_avx2.json
    python benchmarks/cpu_probe.py --isa native --runs 5 --json benchmarks/results/cpu_probe_native_zen3.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name
from time_to_accuracy import isa_env

RESULTS = Path(__file__).resolve().parent / "results"


def probe_step() -> float:
    import torch
    from train_throughput import resident_loop

    import resnets

    torch.manual_seed(0)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    model = resnets.create_model("resnet20", num_classes=10, in_chans=1).to(memory_format=torch.channels_last)
    return resident_loop(model, x, y, 40, compiled=False, amp="none")


def probe_infer() -> float:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(16, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        t0 = time.perf_counter()
        for _ in range(8):
            model(x)
    return 8 * len(x) / (time.perf_counter() - t0)


PROBES = {"step": probe_step, "infer": probe_infer}


def reference() -> dict:
    """The stored results this CPU is compared with: their medians, machine and date."""
    train = json.loads((RESULTS / "train_fashion_mnist_cpu_2threads.json").read_text())
    infer = json.loads((RESULTS / "inference_cpu_avx2.json").read_text())
    return {
        "step": {"img_s": train["median"]["step_only_img_s"], "machine": train["device"], "date": train["date"]},
        "infer": {
            "img_s": infer["speed"]["median_images_per_s"]["torchvision-eager"],
            "machine": infer["machine"],
            "date": "2026-11-23",
        },
    }


def recipe_walls(isa: str, cpu: str) -> list[float]:
    """The whole `resnets train --recipe fashion-mnist` command's seconds in the time-to-accuracy study's runs on
    this CPU under this ISA (the study holds runs of several CPUs)."""
    records = json.loads((RESULTS / "time_to_accuracy.json").read_text())
    return [r["wall_s"] for r in records if r["name"] == "recipe" and r.get("isa") == isa and r.get("cpu") == cpu]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", choices=["avx2", "native"], default="avx2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", choices=list(PROBES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(PROBES[args.child]()))
        return
    rates: dict[str, list[float]] = {k: [] for k in PROBES}
    for r in range(args.runs):
        for name in list(PROBES)[r % 2 :] + list(PROBES)[: r % 2]:  # alternating which goes first
            cmd = [sys.executable, __file__, "--child", name]
            p = subprocess.run(cmd, env=isa_env(args.isa), capture_output=True, text=True, check=True)
            rates[name].append(json.loads(p.stdout.splitlines()[-1]))
            print(f"run {r}: {name:<5} {rates[name][-1]:7.1f} img/s", flush=True)
    ref = reference()
    out = {
        "command": f"python benchmarks/cpu_probe.py --isa {args.isa} --runs {args.runs}",
        "cpu": cpu_name(),
        "isa": args.isa,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "statistic": "median",
        "runs": rates,
        "reference": ref,
    }
    print(f"{cpu_name()}, {args.isa}, 2 threads; the reference: {ref['step']['machine']} ({ref['step']['date']})")
    for name in PROBES:
        med = statistics.median(rates[name])
        out[name] = {"median_img_s": med, "reference_img_s": ref[name]["img_s"], "factor": med / ref[name]["img_s"]}
        print(
            f"{name:<5} {med:7.1f} img/s here, {ref[name]['img_s']:7.1f} there: the reference takes "
            f"{out[name]['factor']:.2f}x the time"
        )
    walls = recipe_walls(args.isa, cpu_name())
    if walls:
        f = out["step"]["factor"]
        out["recipe_command_s"] = {"here": walls, "carried_to_reference": [w * f for w in walls]}
        print(
            f"the fashion-mnist recipe's whole command: {min(walls):.0f}-{max(walls):.0f} s here (time_to_accuracy, "
            f"{args.isa}), about {min(walls) * f:.0f}-{max(walls) * f:.0f} s on the reference at the step's factor"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
