"""Inference speed and int8 accuracy, each compared with its peer in the same run.

1. ResNet-50 at 224. At fp32 on a CPU (batch 16): torchvision's resnet50 in eager PyTorch against our backends
   (eager, eager + channels_last, torch.compile, ONNX Runtime fp32 and int8); targets: fastest fp32 >= 1.6x, int8
   >= 3x torchvision eager. At bf16/fp16 (`--precision`), on a CPU or a GPU (`--device cuda`, batch 256):
   torchvision's resnet50 eager and compiled at that precision in channels_last (bf16 weights on a GPU, bf16
   autocast on a CPU) against our eager and compiled runners at the same precision; target: our best >= 0.95x
   (GPU) / 1.0x (CPU with bf16 units) torchvision compiled.
2. int8 accuracy: the Fashion-MNIST model from training (--fmnist-model), fp32 vs int8 top-1 on the 10,000 test
   images (target: <= 0.5 point drop).
3. `resnets predict` over real JPEGs against the model-only throughput of the same backend and precision (CPU:
   512 JPEGs of 400x300, >= 80%; GPU: 10,240 JPEGs of 500x375, >= 70%).

    python benchmarks/inference_speed.py --fmnist-model runs/.../model.safetensors --runs 3 --json out.json
    python benchmarks/inference_speed.py --device cuda --precision bf16 --batch 256 --skip int8 \
        --predict-images 10240 --predict-backend compile --runs 3 --json out.json
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
import torchvision
from machine import cpu_and_threads

import resnets
from resnets.backends import bench, make_runner, onnx_cache_path
from resnets.export import example_inputs, export_int8


def _torchvision_peer(ref: torch.nn.Module, device: torch.device, precision: str, compiled: bool):
    """torchvision's resnet50 as its users speed it up: channels_last, bf16/fp16 weights on a GPU, autocast on a
    CPU, optionally torch.compile (default mode)."""
    import copy

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    net = copy.deepcopy(ref).to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        net = net.to(dtype)
    fn = torch.compile(net) if compiled else net

    def run(t):
        t = t.to(device, dtype=dtype if device.type == "cuda" else torch.float32).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cpu"):
            return fn(t)

    return run


def speed_case(runs: int, batch: int, seconds: float, device: torch.device, precision: str) -> dict:
    x = torch.randn(batch, 3, 224, 224, device=device)
    ref = torchvision.models.resnet50().eval()
    ours = resnets.create_model("resnet50")
    ours.load_state_dict(ref.state_dict())  # the default preprocessing of a resnet50: 256 -> 224, ImageNet statistics
    if device.type == "cpu" and precision == "fp32":
        calib = [example_inputs(ours, batch=14)]  # 14 random + 2 real photos; speed only, accuracy is case 2
        runners = {"torchvision-eager": lambda t: ref(t)}
        for name, backend, cl in [
            ("eager", "eager", False),
            ("eager-channels-last", "eager", True),
            ("compile", "compile", True),
            ("onnxruntime", "onnxruntime", False),
            ("onnxruntime-int8", "onnxruntime-int8", False),
        ]:
            runners[name] = make_runner(ours, backend, calib=calib, channels_last=cl)
        peer = "torchvision-eager"
    else:
        runners = {
            f"torchvision-eager-{precision}": _torchvision_peer(ref, device, precision, False),
            f"torchvision-compiled-{precision}": _torchvision_peer(ref, device, precision, True),
        }
        for backend in ("eager", "compile"):
            runners[backend] = make_runner(ours, backend, precision=precision, device=device)
        peer = f"torchvision-compiled-{precision}"
    rows = {k: [] for k in runners}
    order = list(runners)
    for r in range(runs):
        for name in order[r % len(order) :] + order[: r % len(order)]:  # each run starts with the next backend
            run = runners[name]
            with torch.inference_mode():
                res = bench(run, x, seconds=seconds, warmup=2)
            rows[name].append(res["images_per_s"])
            print(f"run {r}: {name:<22} {res['images_per_s']:7.1f} img/s  p50 {res['p50_ms']:7.1f} ms", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    base = med[peer]
    best = max((k for k in med if not k.startswith("torchvision") and k != "onnxruntime-int8"), key=med.get)
    out = {
        "batch": batch,
        "device": str(device),
        "precision": precision,
        "peer": peer,
        "median_images_per_s": med,
        "fastest": best,
        "fastest_ratio": med[best] / base,
        "runs": rows,
    }
    if "onnxruntime-int8" in med:
        out["int8_ratio"] = med["onnxruntime-int8"] / base
    return out


def int8_case(model_path: str) -> dict:
    model = resnets.load(model_path)
    with tempfile.TemporaryDirectory() as d:
        r = export_int8(
            model,
            Path(d) / "q.onnx",
            calib="fashion-mnist:train",
            eval_data="fashion-mnist",
            max_drop=100,
            calib_images=1024,
        )
    print(
        f"fashion-mnist int8: fp32 {r['fp32_top1']:.2f}%  int8 {r['int8_top1']:.2f}%  drop {r['drop']:.2f}", flush=True
    )
    return {k: r[k] for k in ("fp32_top1", "int8_top1", "drop")}


def predict_case(
    n: int,
    backend: str,
    runs: int,
    device: torch.device,
    precision: str,
    size: tuple[int, int],
    batch: int,
    workers: int,
) -> dict:
    """Real photos (random crops and scales of scikit-image's colour images) as JPEGs through `predict`."""
    from skimage import data as sk
    from torchvision.io import encode_jpeg
    from torchvision.transforms import v2

    from resnets.inference import predict

    photos = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.retina(), sk.immunohistochemistry()]
    torch.manual_seed(0)  # the crops below draw from the global generator
    model = resnets.create_model("resnet50").eval().to(device)  # default preprocessing: 256 -> 224
    # end to end: `resnets predict` as a user runs it. The first call with a model exports it to ONNX (a few
    # seconds, cached); a repeated call finds the export in the cache. Steady state: the backend passed in.
    out = {
        "images": n,
        "backend": backend,
        "precision": precision,
        "device": str(device),
        "size": size,
        "predict_first": [],
        "predict_repeat": [],
        "predict_steady": [],
        "model_only": [],
    }
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            img = torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1).contiguous()
            crop = v2.RandomResizedCrop(size, scale=(0.3, 1.0), antialias=True)(img)
            (Path(d) / f"{i:05d}.jpg").write_bytes(encode_jpeg(crop, quality=90).numpy().tobytes())
        run = make_runner(model, backend, precision=precision, device=device)
        x = torch.randn(batch, 3, 224, 224, device=device if backend in ("eager", "compile") else "cpu")
        cached = onnx_cache_path(model.cpu(), torch.randn(2, 3, 224, 224))
        model.to(device)

        def timed(**kw) -> float:
            t0 = time.perf_counter()
            res = predict(model, [d], batch_size=batch, workers=workers, backend=backend, precision=precision, **kw)
            return len(res) / (time.perf_counter() - t0)

        for r in range(runs):
            cached.unlink(missing_ok=True)
            out["predict_first"].append(timed())
            out["predict_repeat"].append(timed())
            out["predict_steady"].append(timed(runner=run))
            out["model_only"].append(bench(run, x, seconds=10, warmup=1)["images_per_s"])
            print(
                f"run {r}: predict first call {out['predict_first'][-1]:.1f} img/s, repeated {out['predict_repeat'][-1]:.1f}, "
                f"backend passed in {out['predict_steady'][-1]:.1f}; model only {out['model_only'][-1]:.1f} img/s",
                flush=True,
            )
    base = statistics.median(out["model_only"])
    for k in ("first", "repeat", "steady"):
        out[f"ratio_{k}"] = statistics.median(out[f"predict_{k}"]) / base
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--fmnist-model", help="model.safetensors of a Fashion-MNIST run (case 2)")
    ap.add_argument("--predict-images", type=int, default=512)
    ap.add_argument("--predict-backend", default="onnxruntime")
    ap.add_argument("--predict-size", default="300x400", help="HxW of the JPEGs (GPU: 375x500, ImageNet-like)")
    ap.add_argument("--predict-batch", type=int, default=32)
    ap.add_argument("--predict-workers", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated cases to skip: speed,int8,predict")
    ap.add_argument("--json")
    args = ap.parse_args()
    skip = set(args.skip.split(","))

    def save() -> None:  # after every case, so a failure later keeps what was measured
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))

    device = torch.device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_and_threads()
    result = {"machine": machine, "torch": torch.__version__, "statistic": "median", "runs": args.runs}
    if "speed" not in skip:
        result["speed"] = s = speed_case(args.runs, args.batch, args.seconds, device, args.precision)
        line = f"fastest {s['precision']} ({s['fastest']}) {s['fastest_ratio']:.2f}x {s['peer']}"
        print(line + (f", int8 {s['int8_ratio']:.2f}x" if "int8_ratio" in s else ""))
        save()
    if "int8" not in skip and args.fmnist_model:
        result["int8"] = int8_case(args.fmnist_model)
        save()
    if "predict" not in skip:
        h, w = (int(v) for v in args.predict_size.split("x"))
        result["predict"] = predict_case(
            args.predict_images,
            args.predict_backend,
            args.runs,
            device,
            args.precision,
            (h, w),
            args.predict_batch,
            args.predict_workers,
        )
        p = result["predict"]
        print(
            f"predict reaches {100 * p['ratio_repeat']:.0f}% of the model-only throughput on a repeated call, "
            f"{100 * p['ratio_first']:.0f}% on the first call with a model (its ONNX export included), "
            f"{100 * p['ratio_steady']:.0f}% with the backend passed in"
        )
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
