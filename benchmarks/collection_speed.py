"""Collections over processes (issue 40): `resnets embed --data SHARDS` in one process against the same command
under `torchrun --nproc-per-node 2`, on the same sharded set, whole commands (start-up, the model's load, every
part, the merge), alternating which goes first. One process takes every core (OMP threads = cores); each of N
processes its share (cores / N), as torchrun's workers would be set on a node. The two indexes must agree (the same
files in the same order, rows within 1e-4).

    python benchmarks/collection_speed.py [--images 512] [--model resnet50] [--runs 3] [--backend eager] [--json PATH]

Writes benchmarks/results/collection_speed.json (or --json); RESULTS.md's "Collections" section quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import cpu_name
from shards import make_jpegs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "collection_speed.json"


def build(work: Path, images: int, model: str) -> tuple[Path, Path, int]:
    """A sharded set of `images` JPEGs (16 shards or so) and a model file: (shards, weights, shard count)."""
    import resnets
    from resnets.data import shards
    from resnets.data.datasets import image_folder
    from resnets.weights import Preprocessing

    make_jpegs(work / "photos", images)
    ds = image_folder(work / "photos")
    size = sum(p.stat().st_size for p in (work / "photos").rglob("*.jpg"))
    shards.write({"train": ds}, work / "shards", shard_bytes=max(64 << 10, size // 16), progress=False)
    torch.manual_seed(0)
    net = resnets.create_model(model, num_classes=10).eval()
    weights = work / "model.safetensors"
    resnets.save(net, weights, class_names=[f"class{i}" for i in range(10)], preprocessing=Preprocessing(256, 224))
    return work / "shards", weights, len(list((work / "shards").glob("*.tar")))


def timed(processes: int, shards_dir: Path, weights: Path, out: Path, backend: str) -> float:
    cores = len(os.sched_getaffinity(0))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // processes)))
    launch = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       "--nproc-per-node", str(processes)]  # fmt: skip
    cmd = launch + ["-m", "resnets", "embed", "--data", str(shards_dir), "--weights", str(weights), "--out", str(out),
                    "--workers", "0", "--backend", backend]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return took


def agree(a: Path, b: Path) -> float:
    from resnets.inference import load_index

    (x, fx, _), (y, fy, _) = load_index(a), load_index(b)
    if fx != fy:
        raise SystemExit("the two indexes hold other files or another order")
    return float((x - y).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backend", default="eager", help="eager (default) or onnxruntime (exported once a process)")
    ap.add_argument("--json", type=Path, default=RESULTS, help=f"where the record goes (default {RESULTS.name})")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="collection-speed-"))
    try:
        shards_dir, weights, count = build(work, args.images, args.model)
        times: dict[int, list[float]] = {1: [], 2: []}
        worst = 0.0
        for run in range(args.runs):
            for n in (1, 2) if run % 2 == 0 else (2, 1):
                times[n].append(timed(n, shards_dir, weights, work / f"out-{n}-{run}", args.backend))
                print(f"run {run + 1}: {n} process{'es' if n > 1 else ''} {times[n][-1]:.1f} s", flush=True)
            worst = max(worst, agree(work / f"out-1-{run}" / "embeddings.safetensors",
                                     work / f"out-2-{run}" / "embeddings.safetensors"))  # fmt: skip
        one, two = statistics.median(times[1]), statistics.median(times[2])
        record = {
            "command": f"python benchmarks/collection_speed.py --images {args.images} --model {args.model} "
            f"--runs {args.runs} --backend {args.backend}" + (f" --json {args.json}" if args.json != RESULTS else ""),
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "date": time.strftime("%Y-%m-%d"),
            "images": args.images,
            "shards": count,
            "model": args.model,
            "backend": args.backend,
            "runs": args.runs,
            "statistic": "median of whole commands",
            "one_process_s": times[1],
            "two_processes_s": times[2],
            "one_process_median_s": one,
            "two_processes_median_s": two,
            "speedup": one / two,
            "images_per_s": {"1": args.images / one, "2": args.images / two},
            "max_abs_diff": worst,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"1 process {one:.1f} s, 2 processes {two:.1f} s: {one / two:.2f}x; rows agree to {worst:.1e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
