"""`resnets predict` on a folder of 12-MP phone-sized JPEGs against torchvision's standard pipeline, as whole
processes on the same files, and how much the decode at the model's size changes the answers (issue 36).

Speed: each command is run as a fresh process (imports, model load, decode, resize, forward, output), alternating,
`--runs` times; the statistic is the median wall time. The peer is the pipeline of torchvision's ImageNet
reference and its docs: PIL decode, Resize(256), CenterCrop(224), ToTensor, Normalize, resnet50 eager, batch 16, in
a DataLoader with the same number of worker processes. Ours is `resnets predict DIR --weights W --batch-size 16`
with the same resnet50 (its weights saved with the same preprocessing), default options; `--exact-decode` beside it
shows what the DCT-scaled decode is worth on its own.

Agreement: a resnet14 trained here on Fashion-MNIST (`--run RUN_DIR`, e.g. the run `make run` leaves; without one,
a one-epoch run is trained first) classifies the 10,000 test images saved as 1024x1024 JPEGs (upscaled, quality
90), decoded at full size (`--exact-decode`) and at the model's size (the default): top-1 agreement between the
two and each one's accuracy.

    python benchmarks/decode_speed.py --runs 3 --json benchmarks/results/decode_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_and_threads

PEER = r"""
import sys, torch, torchvision
from pathlib import Path
from PIL import Image
from torchvision import transforms as T
torch.set_num_threads(int(sys.argv[3]))
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
class Files(torch.utils.data.Dataset):
    def __init__(self, root): self.files = sorted(Path(root).glob("*.jpg"))
    def __len__(self): return len(self.files)
    def __getitem__(self, i):
        with Image.open(self.files[i]) as im: return tf(im.convert("RGB"))
model = torchvision.models.resnet50()
model.load_state_dict(torch.load(sys.argv[2], weights_only=True))
model.eval()
loader = torch.utils.data.DataLoader(Files(sys.argv[1]), batch_size=16, num_workers=2)
with torch.no_grad():
    top = [model(x).argmax(1) for x in loader]
print(len(torch.cat(top)))
"""


def phone_photos(folder: Path, n: int) -> None:
    """`n` 4032x3024 JPEGs (quality 90) from scikit-image's photos, upscaled with noise added so that the files
    hold the detail (and the size, 2-4 MB) of a phone's picture."""
    import numpy as np
    from PIL import Image
    from skimage import data as sk

    rng = np.random.default_rng(0)
    sources = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"]
    for i in range(n):
        im = Image.fromarray(getattr(sk, sources[i % len(sources)])()).convert("RGB").resize((4032, 3024))
        a = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (3024, 4032, 3), dtype=np.int16)
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(folder / f"photo-{i:03d}.jpg", quality=90)


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {p.stderr[-2000:]}")
    return time.perf_counter() - t


def speed(runs: int, n: int, threads: int) -> dict:
    import torch
    import torchvision

    import resnets
    from resnets.data.preprocessing import Preprocessing

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "photos").mkdir()
        (tmp / "one").mkdir()
        phone_photos(tmp / "photos", n)
        os.link(tmp / "photos" / "photo-000.jpg", tmp / "one" / "photo-000.jpg")
        torch.manual_seed(0)
        net = torchvision.models.resnet50().eval()
        torch.save(net.state_dict(), tmp / "tv.pt")
        ours = resnets.create_model("resnet50").eval()
        ours.load_state_dict(net.state_dict())
        resnets.save(ours, tmp / "r50.safetensors", preprocessing=Preprocessing(256, 224).to_dict())
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RESNETS_HOME": str(tmp / "home")}
        predict = [sys.executable, "-m", "resnets", "predict", str(tmp / "photos"), "--weights"]
        predict += [str(tmp / "r50.safetensors"), "--batch-size", "16", "--format", "csv"]
        peer = [sys.executable, "-c", PEER, str(tmp / "photos"), str(tmp / "tv.pt"), str(threads)]
        cmds = {
            "torchvision": peer,
            # the default: ONNX Runtime on the export cached by the first run (timed below), no torch in the process
            "resnets predict": predict,
            "resnets predict --exact-decode": [*predict, "--exact-decode"],
            "resnets predict --backend eager": [*predict, "--backend", "eager"],
        }
        # the same commands on one photo: what a process costs before its images (imports, model, workers)
        one = {k: [a.replace(str(tmp / "photos"), str(tmp / "one")) for a in v] for k, v in cmds.items()}
        cmds.update({f"{k} (1 image)": v for k, v in one.items()})
        first = [*one["resnets predict"], "--backend", "onnxruntime"]  # a fresh cache: the export, once per model
        times: dict[str, list[float]] = {k: [] for k in cmds}
        times["first run, exporting (1 image)"] = []
        for i in range(runs):
            env["RESNETS_HOME"] = str(tmp / f"home-{i}")
            times["first run, exporting (1 image)"].append(timed(first, env))
            for name, cmd in cmds.items():
                times[name].append(timed(cmd, env))
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
        size = sum(p.stat().st_size for p in (tmp / "photos").iterdir()) / n / 1e6
        memory = {k: peak_mb(v, env) for k, v in one.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    ours = [k for k in cmds if not k.endswith("(1 image)")]
    per = {k: (med[k] - med[f"{k} (1 image)"]) / (n - 1) for k in ours}
    return {
        "images": n,
        "mean_file_mb": round(size, 2),
        "runs": times,
        "median_s": med,
        "seconds_per_image_after_start": per,
        "speedup_vs_torchvision": {k: round(med["torchvision"] / med[k], 2) for k in ours},
        "speedup_per_image_vs_torchvision": {k: round(per["torchvision"] / per[k], 2) for k in ours},
        "peak_rss_mb_one_image": memory,
    }


def peak_mb(cmd: list[str], env: dict) -> float:
    """The peak resident memory of the command's own process (VmHWM, read as it exits; getrusage would count the
    parent's pages from before the exec), decoder workers and loader processes not included."""
    wrapped = [cmd[0], "-c", HWM, *cmd[1:]]
    p = subprocess.run(wrapped, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {p.stderr[-2000:]}")
    return float(p.stderr.strip().splitlines()[-1].split()[-1])


# runs `python -m resnets ...` or `python -c CODE ...` as given, then prints the process's VmHWM in MB on stderr
HWM = """
import atexit, runpy, sys
def hwm():
    kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
    sys.stderr.write(f"\\npeak_mb {kb / 1024:.0f}\\n")
atexit.register(hwm)
args = sys.argv[1:]
if args[0] == "-m":
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
else:
    code, sys.argv = args[1], ["-c", *args[2:]]
    exec(compile(code, "<peer>", "exec"), {"__name__": "__main__"})
"""


def agreement(run: str | None, limit: int) -> dict:
    import numpy as np
    from PIL import Image

    from resnets.data.sources import load_fashion_mnist

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if run is None:
            subprocess.run(
                [sys.executable, "-m", "resnets", "train", "--recipe", "fashion-mnist", "--epochs", "1"]
                + ["--out", str(tmp / "runs"), "--name", "fm"],
                check=True,
            )
            run = str(tmp / "runs" / "fm")
        images, labels, _ = load_fashion_mnist("test")
        images, labels = images[:limit, 0].numpy(), labels[:limit].numpy()
        (tmp / "test").mkdir()
        for i, a in enumerate(images):
            Image.fromarray(np.asarray(a)).resize((1024, 1024), Image.BICUBIC).save(
                tmp / "test" / f"{i:05d}.jpg", quality=90
            )
        out = {}
        modes = {"exact": ["--exact-decode"], "fast": [], "onnxruntime": []}
        for mode, extra in modes.items():
            backend = "onnxruntime" if mode == "onnxruntime" else "eager"  # ONNX Runtime: the default's runtime
            p = subprocess.run(
                [sys.executable, "-m", "resnets", "predict", str(tmp / "test"), "--weights", run, "--format", "json"]
                + ["--top-k", "1", "--backend", backend, *extra],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "RESNETS_HOME": str(tmp / "home")},
            )
            rows = sorted(json.loads(p.stdout), key=lambda r: r["path"])
            out[mode] = [r["top"][0]["index"] for r in rows]
        exact, fast, ort = np.array(out["exact"]), np.array(out["fast"]), np.array(out["onnxruntime"])
        return {
            "images": len(labels),
            "top1_agreement": float((exact == fast).mean()),
            "top1_agreement_onnxruntime_vs_pytorch": float((ort == fast).mean()),
            "accuracy_onnxruntime": float((ort == np.asarray(labels)).mean()),
            "accuracy_exact": float((exact == np.asarray(labels)).mean()),
            "accuracy_fast": float((fast == np.asarray(labels)).mean()),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=int, default=48, help="12-MP photos in the folder")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--run", help="a Fashion-MNIST run folder (trained here) for the agreement; default: train one")
    ap.add_argument("--agreement-images", type=int, default=10000)
    ap.add_argument("--skip", default="", help="speed or agreement")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    out = {"machine": cpu_and_threads(), "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    if "speed" not in args.skip:
        out["speed"] = speed(args.runs, args.images, args.threads)
        sp = out["speed"]
        print(
            json.dumps(sp["median_s"]),
            "speed-up",
            sp["speedup_vs_torchvision"],
            "per image",
            sp["speedup_per_image_vs_torchvision"],
        )
    if "agreement" not in args.skip:
        out["agreement"] = agreement(args.run, args.agreement_images)
        print(json.dumps(out["agreement"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
