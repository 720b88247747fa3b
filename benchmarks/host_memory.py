"""What keeping freed host memory (resnets.devices.keep_host_memory) is worth to a CPU training step.

Each run is a fresh process: the training step of `make run`'s net (resnet14 on 28x28 grey images, batch 128,
channels_last, SGD with nesterov, label smoothing; bf16 autocast with --amp bf16; --model, --size, --channels and
--batch change it), then forward passes in evaluation mode at batch 500 (--eval-batch), once with glibc's malloc as it comes (RESNETS_KEEP_HOST_MEMORY=0) and once with
the thresholds resnets sets; the two alternate, so a slow spell of a shared machine falls on both. Per run: images
per second, minor page faults and kernel (sys) time per step. Prints the medians and the ratio; --json writes all.

    python benchmarks/host_memory.py --runs 5
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/host_memory.py --runs 5   # an AVX2-only CPU
    python benchmarks/host_memory.py --runs 5 --amp bf16                                         # bf16 units
    python benchmarks/host_memory.py --runs 3 --model resnet50 --size 224 --channels 3 --batch 16 --eval-batch 16 \
        --steps 4 --warmup 2                                                                   # ImageNet's shape
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name


def _measure(steps: int, fn) -> dict:
    """Rate, minor faults and sys seconds per call of fn over `steps` calls."""
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        fn()
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "s_per_step": dt / steps,
        "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
        "sys_ms_per_step": 1000 * (r1.ru_stime - r0.ru_stime) / steps,
    }


def child(args: argparse.Namespace) -> dict:
    """One run in this process: the training step, then evaluation forward passes."""
    import torch
    from torch import nn

    import resnets
    from resnets.devices import autocast, pick_device

    dev = pick_device("cpu")  # as every command does: this is where the thresholds are set (or left)
    torch.manual_seed(0)
    model = resnets.create_model(args.model, num_classes=10, in_chans=args.channels)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss(label_smoothing=0.05)
    x = torch.randn(args.batch, args.channels, args.size, args.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(dev, args.amp):
            loss = crit(model(x), y)
        loss.backward()
        opt.step()

    xe = torch.randn(args.eval_batch, args.channels, args.size, args.size).contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.inference_mode(), autocast(dev, args.amp):
            model(xe)

    for _ in range(args.warmup):
        step()
    train = _measure(args.steps, step)
    model.eval()
    forward()
    evaluation = _measure(max(args.steps // 4, 3), forward)
    train["img_s"], evaluation["img_s"] = args.batch / train["s_per_step"], args.eval_batch / evaluation["s_per_step"]
    return {"train": train, "eval": evaluation, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per setting, alternating (default 5)")
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per run (default 40)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=500)
    ap.add_argument("--model", default="resnet14")
    ap.add_argument("--size", type=int, default=28, help="image side (default 28, Fashion-MNIST's)")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--json", type=Path, help="write every run and the medians here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    settings = {"malloc as it comes": "0", "kept (resnets)": "1"}
    runs: dict[str, list[dict]] = {k: [] for k in settings}
    argv = [sys.argv[0], "--child", "--model", args.model, "--amp", args.amp]
    for k in ("steps", "warmup", "batch", "eval_batch", "size", "channels"):
        argv += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    for i in range(args.runs):
        for name, flag in settings.items():
            env = dict(os.environ, RESNETS_KEEP_HOST_MEMORY=flag)
            out = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"run failed: {out.stderr.strip()[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(r)
            t, e = r["train"], r["eval"]
            print(
                f"run {i + 1} {name:20s} train {t['img_s']:7.1f} img/s, {t['faults_per_step']:7.0f} faults "
                f"and {t['sys_ms_per_step']:5.1f} ms sys a step; eval {e['img_s']:7.1f} img/s, "
                f"{e['faults_per_step']:6.0f} faults a batch",
                flush=True,
            )
    med = {
        name: {part: statistics.median(r[part]["img_s"] for r in rs) for part in ("train", "eval")}
        for name, rs in runs.items()
    }
    base, kept = med["malloc as it comes"], med["kept (resnets)"]
    for part in ("train", "eval"):
        print(
            f"median {part}: {base[part]:.1f} -> {kept[part]:.1f} img/s ({kept[part] / base[part]:.2f}x), "
            f"{args.model} at {args.size} px, batch {args.batch if part == 'train' else args.eval_batch}, amp {args.amp}"
        )
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    print(f"machine: {cpu_name()}, {runs['kept (resnets)'][0]['threads']} threads, oneDNN ISA {isa}")
    if args.json:
        record = {
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": cpu_name(),
            "onednn_isa": isa,
            "args": {k: str(v) for k, v in vars(args).items() if k != "child"},
            "runs": runs,
            "median_img_s": med,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
