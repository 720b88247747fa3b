"""Inference speed and int8 accuracy, each compared with its peer in the same run.

1. ResNet-50 at 224, batch 16: torchvision's resnet50 in eager PyTorch (fp32) against our backends
   (eager, eager + channels_last, torch.compile, ONNX Runtime fp32 and int8). Targets: fastest fp32 >= 1.6x,
   int8 >= 3x torchvision eager.
2. int8 accuracy: the Fashion-MNIST model from training (--fmnist-model), fp32 vs int8 top-1 on the 10,000 test
   images (target: <= 0.5 point drop).
3. `resnets predict` over >= 500 real JPEGs against the model-only throughput of the same backend (>= 80%).

    python benchmarks/inference_speed.py --fmnist-model runs/.../model.safetensors --runs 3 --json out.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import resnets
from resnets.backends import bench, make_runner, onnx_cache_path
from resnets.export import check_inputs, export_int8
from resnets.weights import Preprocessing


def speed_case(runs: int, batch: int, seconds: float) -> dict:
    x = torch.randn(batch, 3, 224, 224)
    ref = torchvision.models.resnet50().eval()
    ours = resnets.create_model("resnet50")
    ours.load_state_dict(ref.state_dict())
    ours.preprocessing = Preprocessing(256, 224)
    calib = [check_inputs(ours, batch=14)]  # 14 random + 2 real photos; speed only, accuracy is case 2
    runners = {"torchvision-eager": lambda t: ref(t)}
    for name, backend, cl in [("eager", "eager", False), ("eager-channels-last", "eager", True),
                              ("compile", "compile", True), ("onnxruntime", "onnxruntime", False),
                              ("onnxruntime-int8", "onnxruntime-int8", False)]:  # fmt: skip
        runners[name] = make_runner(ours, backend, calib=calib, channels_last=cl)
    rows = {k: [] for k in runners}
    order = list(runners)
    for r in range(runs):
        for name in order[r % len(order):] + order[: r % len(order)]:  # each run starts with the next backend
            run = runners[name]
            with torch.inference_mode():
                res = bench(run, x, seconds=seconds, warmup=2)
            rows[name].append(res["images_per_s"])
            print(f"run {r}: {name:<22} {res['images_per_s']:7.1f} img/s  p50 {res['p50_ms']:7.1f} ms", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    base = med["torchvision-eager"]
    fp32 = max((k for k in med if k not in ("torchvision-eager", "onnxruntime-int8")), key=med.get)
    return {"batch": batch, "median_images_per_s": med, "fastest_fp32": fp32, "fastest_fp32_ratio": med[fp32] / base,
            "int8_ratio": med["onnxruntime-int8"] / base, "runs": rows}  # fmt: skip


def int8_case(model_path: str) -> dict:
    model = resnets.load(model_path)
    with tempfile.TemporaryDirectory() as d:
        r = export_int8(model, Path(d) / "q.onnx", calib="fashion-mnist:train", eval_data="fashion-mnist",
                        max_drop=100, calib_images=1024)  # fmt: skip
    print(f"fashion-mnist int8: fp32 {r['fp32_top1']:.2f}%  int8 {r['int8_top1']:.2f}%  drop {r['drop']:.2f}", flush=True)
    return {k: r[k] for k in ("fp32_top1", "int8_top1", "drop")}


def predict_case(n: int, backend: str, runs: int) -> dict:
    """Real photos (random crops and scales of scikit-image's colour images) as JPEGs through `predict`."""
    from skimage import data as sk
    from torchvision.io import encode_jpeg
    from torchvision.transforms import v2

    from resnets.inference import predict

    photos = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(), sk.retina(), sk.immunohistochemistry()]
    g = torch.Generator().manual_seed(0)
    model = resnets.create_model("resnet50").eval()
    model.preprocessing = Preprocessing(256, 224)
    model.class_names = [str(i) for i in range(1000)]
    # end to end: `resnets predict` as a user runs it. The first call with a model exports it to ONNX (a few
    # seconds, cached); a repeated call finds the export in the cache. Steady state: the backend passed in.
    out = {"images": n, "backend": backend, "predict_first": [], "predict_repeat": [], "predict_steady": [], "model_only": []}
    with tempfile.TemporaryDirectory() as d:
        for i in range(n):
            img = torch.from_numpy(photos[i % len(photos)]).permute(2, 0, 1).contiguous()
            crop = v2.RandomResizedCrop((300, 400), scale=(0.3, 1.0), antialias=True)(img)
            (Path(d) / f"{i:04d}.jpg").write_bytes(encode_jpeg(crop, quality=90).numpy().tobytes())
        run = make_runner(model, backend)
        x = torch.randn(32, 3, 224, 224)
        cached = onnx_cache_path(model, torch.randn(2, 3, 224, 224))

        def timed(**kw) -> float:
            t0 = time.perf_counter()
            res = predict(model, [d], batch_size=32, workers=2, backend=backend, **kw)
            return len(res) / (time.perf_counter() - t0)

        for r in range(runs):
            cached.unlink(missing_ok=True)
            out["predict_first"].append(timed())
            out["predict_repeat"].append(timed())
            out["predict_steady"].append(timed(runner=run))
            out["model_only"].append(bench(run, x, seconds=10, warmup=1)["images_per_s"])
            print(f"run {r}: predict first call {out['predict_first'][-1]:.1f} img/s, repeated {out['predict_repeat'][-1]:.1f}, "
                  f"backend passed in {out['predict_steady'][-1]:.1f}; model only {out['model_only'][-1]:.1f} img/s", flush=True)
    base = statistics.median(out["model_only"])
    for k in ("first", "repeat", "steady"):
        out[f"ratio_{k}"] = statistics.median(out[f"predict_{k}"]) / base
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fmnist-model", help="model.safetensors of a Fashion-MNIST run (case 2)")
    ap.add_argument("--predict-images", type=int, default=512)
    ap.add_argument("--predict-backend", default="onnxruntime")
    ap.add_argument("--skip", default="", help="comma-separated cases to skip: speed,int8,predict")
    ap.add_argument("--json")
    args = ap.parse_args()
    skip = set(args.skip.split(","))

    def save() -> None:  # after every case, so a failure later keeps what was measured
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))

    result = {"machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
              "torch": torch.__version__, "statistic": "median", "runs": args.runs}  # fmt: skip
    if "speed" not in skip:
        result["speed"] = speed_case(args.runs, args.batch, args.seconds)
        s = result["speed"]
        print(f"fastest fp32 ({s['fastest_fp32']}) {s['fastest_fp32_ratio']:.2f}x, int8 {s['int8_ratio']:.2f}x torchvision eager")
        save()
    if "int8" not in skip and args.fmnist_model:
        result["int8"] = int8_case(args.fmnist_model)
        save()
    if "predict" not in skip:
        result["predict"] = predict_case(args.predict_images, args.predict_backend, args.runs)
        p = result["predict"]
        print(f"predict reaches {100 * p['ratio_repeat']:.0f}% of the model-only throughput on a repeated call, "
              f"{100 * p['ratio_first']:.0f}% on the first call with a model (its ONNX export included), "
              f"{100 * p['ratio_steady']:.0f}% with the backend passed in")
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
