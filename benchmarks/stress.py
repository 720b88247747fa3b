"""Stress: training killed with SIGKILL at random moments and resumed each time, against the same run
uninterrupted; every bad input of issues 15 and 22 fed through the command line, each in its own process; and a
real `resnets serve` fed decode bombs and concurrent batches that mix good and bad uploads.

    python benchmarks/stress.py                       # 20 kills, all bad inputs, the server
    python benchmarks/stress.py --kills 5 --json stress.json

Kills: a deterministic run (resnet20, synthetic data, random erasing and drop-path, a checkpoint every 2 steps)
is started, killed and resumed until it has been killed --kills times, then resumed to the end. Each kill is
one of three kinds, drawn at random: at a random time after the start (often during start-up, before any
checkpoint), while a checkpoint is being written (a `.last.pt.*.tmp.pt` is seen), or a random moment after 1-3
new checkpoints. After each kill the checkpoint on disk must load; at the end the weights are compared with
the uninterrupted run's, bit for bit, and so are the metrics (loss, accuracy) of every epoch.

Bad inputs: each is a command line and what it must do (the exit code, what must not change on disk). Counted:
tracebacks (goal 0), wrong exit codes, messages of more than one line, files lost or changed (goal 0).

Server: a 1-channel model (Fashion-MNIST's kind) behind `resnets serve`. Each upload kind (decode bombs: a PNG
whose header Pillow cannot read over 20000x20000 pixels, a GIF of 60 frames on a 4000x4000 canvas, a header-only
20000x20000 PNG; GIF, WebP, animated WebP, 16-bit PNG; text, empty, truncated) is sent 8 times at once, the
server's peak resident memory measured around it (its high-water mark reset through /proc/PID/clear_refs). Then
rounds of 32 concurrent requests, a quarter of them bad, into the same dynamic batches: every good one must be
answered 200, every bad one 4xx, nothing 5xx. Counted: 5xx (goal 0), good requests not answered, peak memory per
kind against the bound the pixel limit sets.

Prints one line per kill and per bad input, and a summary; --json writes the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(
    os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1"
)
RUN = [
    "--model",
    "resnet20",
    "--dataset",
    "synthetic",
    "--synthetic-samples",
    "1024",
    "--synthetic-classes",
    "4",
    "--train-crop",
    "32",
    "--batch-size",
    "32",
    "--epochs",
    "3",
    "--workers",
    "0",
    "--no-progress",
    "--device",
    "cpu",
    "--deterministic",
    "--random-erasing",
    "0.25",
    "--drop-path-rate",
    "0.1",
    "--checkpoint-steps",
    "2",
]
TINY = [
    "--model",
    "resnet20",
    "--dataset",
    "synthetic",
    "--synthetic-samples",
    "64",
    "--synthetic-classes",
    "2",
    "--train-crop",
    "32",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--workers",
    "0",
    "--no-progress",
    "--device",
    "cpu",
]


def resnets(*args, limit_fsize: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    pre = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))) if limit_fsize else None
    return subprocess.run(
        [sys.executable, "-m", "resnets", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
        preexec_fn=pre,
    )


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def checkpoint_ok(path: Path) -> bool:
    import torch

    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
        return isinstance(s, dict) and "model" in s
    except Exception:
        return False


def ckpt_step(path: Path) -> int | None:
    """The step of the checkpoint at `path`, or None while there is none (or it is being replaced)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------------- kills
def kills(out: Path, n: int, rng: random.Random) -> dict:
    t0 = time.perf_counter()
    p = resnets("train", *RUN, "--out", out, "--name", "straight")
    straight_s = time.perf_counter() - t0
    if p.returncode:
        sys.exit(f"the uninterrupted run failed:\n{p.stderr}")
    run = out / "killed"
    done, lost, during_write, tracebacks, attempts = 0, 0, 0, 0, 0
    rows = []
    while done < n:
        attempts += 1
        first = not run.exists()
        cmd = ["train", *RUN, "--out", out, "--name", "killed"] if first else ["train", "--resume", run]
        proc = subprocess.Popen(
            [sys.executable, "-m", "resnets", *map(str, cmd)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        kind = rng.choice(["time", "write", "after-checkpoints"])
        start = time.perf_counter()
        stale = set(os.listdir(run)) if run.is_dir() else set()  # a killed write's temporary, swept by the resume

        def writing() -> bool:
            return run.is_dir() and any(n.startswith(".last.pt.") and n not in stale for n in os.listdir(run))

        before = ckpt_step(run / "last.pt") if run.exists() else None
        deadline = start + 120
        killed, in_write = False, False
        if kind == "time":
            at = start + rng.uniform(0.2, 6.0)
            while proc.poll() is None and time.perf_counter() < at:
                time.sleep(0.005)
        elif kind == "write":
            while proc.poll() is None and time.perf_counter() < deadline:
                if writing():
                    break
                time.sleep(0.0005)
        else:
            want, seen, last = rng.randint(1, 3), 0, before
            while proc.poll() is None and time.perf_counter() < deadline and seen < want:
                step = ckpt_step(run / "last.pt") if (run / "last.pt").is_file() else None
                if step is not None and step != last:
                    seen, last = seen + 1, step
                time.sleep(0.01)
            end = time.perf_counter() + rng.uniform(0.0, 0.3)
            while proc.poll() is None and time.perf_counter() < end:
                time.sleep(0.005)
        if proc.poll() is None:
            in_write = writing()
            proc.send_signal(signal.SIGKILL)
            killed = True
        proc.wait()
        err = proc.stderr.read()
        tracebacks += "Traceback" in err
        if not killed:  # it ended first: finished, or failed
            if proc.returncode != 0:
                sys.exit(f"a resumed run failed (exit {proc.returncode}):\n{err}")
            break
        done += 1
        during_write += in_write
        after = ckpt_step(run / "last.pt") if (run / "last.pt").is_file() else None
        ok = not (run / "last.pt").exists() or checkpoint_ok(run / "last.pt")
        if before is not None and (after is None or after < before):
            ok = False  # a checkpoint that was there is gone or older
        lost += not ok
        rows.append(
            {
                "kill": done,
                "kind": kind,
                "during_write": in_write,
                "after_s": round(time.perf_counter() - start, 2),
                "checkpoint_step": after,
                "checkpoint_ok": ok,
            }
        )
        print(
            f"kill {done:2d}: {kind:17s} at {rows[-1]['after_s']:5.2f} s  checkpoint step {after}"
            f"{'  (during a checkpoint write)' if in_write else ''}{'' if ok else '  CHECKPOINT LOST'}",
            flush=True,
        )
    p = resnets("train", "--resume", run)  # to the end
    tracebacks += "Traceback" in p.stderr
    if p.returncode:
        sys.exit(f"the final resume failed:\n{p.stderr}")
    a, b = weights(out / "straight" / "model.safetensors"), weights(run / "model.safetensors")
    identical = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    ma = [json.loads(line) for line in (out / "straight" / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "train_loss", "train_acc", "val_top1", "val_loss")
    metrics_identical = [{k: r.get(k) for k in keys} for r in ma] == [{k: r.get(k) for k in keys} for r in mb]
    leftovers = sorted(p.name for p in run.glob(".*.tmp*"))
    return {
        "kills": done,
        "during_checkpoint_writes": during_write,
        "resumes": attempts,
        "checkpoints_lost": lost,
        "weights_bit_identical": identical,
        "metrics_identical": metrics_identical,
        "tracebacks": tracebacks,
        "temporaries_left": leftovers,
        "uninterrupted_s": round(straight_s, 1),
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------------------- bad inputs
def png_header(path: Path, w: int, h: int) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")
    )


def make_inputs(d: Path) -> dict:
    """The files the bad inputs use: a model, a finished run, hostile images, damaged model files."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import save_file

    import resnets as R
    from resnets.weights import Preprocessing

    torch.manual_seed(0)
    model = d / "model.safetensors"
    R.save(
        R.create_model("resnet20", num_classes=3).eval(),
        model,
        class_names=["a", "b", "c"],
        preprocessing=Preprocessing(36, 32, "bilinear", (0.5,) * 3, (0.25,) * 3).to_dict(),
    )
    imgs = d / "images"
    imgs.mkdir()
    frames = [Image.new("RGB", (24, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(imgs / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    Image.fromarray(np.full((16, 24), 40000, dtype=np.uint16)).save(imgs / "deep16.png")
    png_header(imgs / "bomb.png", 20000, 20000)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (200, 10, 10)).save(imgs / "portrait.jpg", exif=exif.tobytes())
    Image.new("RGB", (40, 40), (0, 0, 200)).save(imgs / "evil\n\x1b[31mname.png")
    (imgs / "truncated.jpg").write_bytes((imgs / "portrait.jpg").read_bytes()[:200])
    with safe_open(str(model), framework="pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    damaged = {
        "no-crop": ("preprocessing", {"resize": 36}),
        "negative-crop": ("preprocessing", {"resize": 36, "crop": -3}),
        "std-0": ("preprocessing", {"resize": 36, "crop": 32, "std": [0, 0, 0]}),
        "options-list": ("options", [1, 2]),
        "classes-number": ("class_names", 7),
        "evil-classes": ("class_names", ["\x1b[31m", "../../", "x\ny"]),
    }
    for name, (field, value) in damaged.items():
        save_file(sd, str(d / f"{name}.safetensors"), metadata={**meta, field: json.dumps(value)})
    options = json.loads(meta["options"])
    for name, field, value in (
        ("record-11-classes", "options", {**options, "num_classes": 11}),
        ("record-in-chans-100000", "options", {**options, "in_chans": 100000}),
        ("crop-5000", "preprocessing", {"resize": 5000, "crop": 5000}),
    ):
        save_file(sd, str(d / f"{name}.safetensors"), metadata={**meta, field: json.dumps(value)})
    save_file({**sd, "fc.weight": sd["fc.weight"].to(torch.int8)}, str(d / "tensor-int8.safetensors"), metadata=meta)
    # timm folders whose config.json holds a malformed value (issue 22: 13 of 33 were tracebacks)
    import timm

    ref = timm.create_model("resnet18", num_classes=5, pretrained=False)
    good = {
        "architecture": "resnet18",
        "num_classes": 5,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "crop_pct": 0.9,
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "interpolation": "bicubic",
        },
    }
    malformed = {
        "pretrained_cfg-x": ("pretrained_cfg", "x"),
        "num_classes-abc": ("num_classes", "abc"),
        "num_classes-list": ("num_classes", [1]),
        "num_classes-1e12": ("num_classes", 1e12),
        "num_classes-1000000": ("num_classes", 1_000_000),
        "num_classes-10.7": ("num_classes", 10.7),
        "input_size-abc": ("pretrained_cfg.input_size", "abc"),
        "input_size-224": ("pretrained_cfg.input_size", 224),
        "crop_pct-nan": ("pretrained_cfg.crop_pct", "nan"),
        "mean-5": ("pretrained_cfg.mean", 5),
        "label_names-5": ("label_names", 5),
        "std-0": ("pretrained_cfg.std", [0, 0, 0]),
    }
    for name, (key, value) in malformed.items():
        folder = d / f"timm-{name}"
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "model.safetensors"))
        cfg = json.loads(json.dumps(good))
        table, _, leaf = key.rpartition(".")
        (cfg[table] if table else cfg)[leaf] = value
        (folder / "config.json").write_text(json.dumps(cfg))
    import zipfile

    for name, config in (
        ("config-list", []),
        ("config-str", {"config": "abc"}),
        ("layers-str", {"config": {"layers": "abc"}}),
        (
            "epsilon-list",
            {"config": {"layers": [{"class_name": "BatchNormalization", "config": {"name": "bn", "epsilon": [1]}}]}},
        ),
        ("config-20MB", " " * (20 << 20)),
    ):
        with zipfile.ZipFile(d / f"keras-{name}.keras", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
            z.writestr("model.weights.h5", b"")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'PWNED'}",))

    import pickle

    (d / "evil-p4.pth").write_bytes(pickle.dumps({"fc.weight": Evil()}, protocol=4))
    (d / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (d / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 this is not a tar.gz at all")
    (d / "a-file").write_text("a file where a folder should be")
    p = resnets("train", *TINY, "--out", d / "runs", "--name", "run")
    if p.returncode:
        sys.exit(f"could not make a run to protect:\n{p.stderr}")
    return {"model": model, "imgs": imgs, "run": d / "runs" / "run"}


def bad_inputs(d: Path) -> list[tuple[str, list, int, Path | None]]:
    """(what, argv, expected exit code, a path that must not appear). Nothing on disk may change, but for the
    full-disk resume's config.json (it records --epochs 3 before training on)."""
    m, run, imgs, out = d / "model.safetensors", d / "runs" / "run", d / "images", d / "out"
    cases: list[tuple[str, list, int, Path | None]] = []
    for flag, value in [
        ("--momentum", -1),
        ("--label-smoothing", 5),
        ("--random-erasing", 2),
        ("--workers", -1),
        ("--ema-decay", 2),
        ("--device", "tpu"),
        ("--synthetic-classes", 0),
        ("--train-crop", -1),
        ("--lr", "nan"),
        ("--iterations", -5),
        ("--limit-train", -5),
        ("--mixup", -1),
        ("--weight-decay", -1),
        ("--clip-grad", "nan"),
        ("--warmup-epochs", -1),
        ("--checkpoint-steps", -1),
    ]:
        cases.append((f"train {flag} {value}", ["train", *TINY, "--out", out, flag, value], 2, out))
    cases += [
        ("resume --dataset changed", ["train", "--resume", run, "--dataset", "cifar10"], 2, None),
        ("resume --synthetic-classes changed", ["train", "--resume", run, "--synthetic-classes", 3], 2, None),
        ("resume --optimizer changed", ["train", "--resume", run, "--optimizer", "adamw"], 2, None),
        ("train --name that is a file", ["train", *TINY, "--out", d, "--name", "a-file"], 2, None),
        ("train --out that is a file", ["train", *TINY, "--out", d / "a-file"], 2, None),
        (
            "train on a binary CSV",
            ["train", *TINY[:2], "--dataset", "csv", "--data", d / "binary.csv", "--out", out],
            2,
            out,
        ),
        ("eval on a malformed CIFAR archive", ["eval", "--weights", m, "--dataset", "cifar10", "--data", d], 2, None),
        ("predict a folder of hostile images", ["predict", imgs, "--weights", m, "--workers", 0], 1, None),
        (
            "predict --format csv, hostile names",
            ["predict", imgs, "--weights", m, "--workers", 2, "--format", "csv"],
            1,
            None,
        ),
        ("predict --max-pixels 100", ["predict", imgs, "--weights", m, "--workers", 0, "--max-pixels", 100], 1, None),
        (
            "explain an animated GIF",
            ["explain", imgs / "animated.gif", "--weights", m, "--out", d / "cam.png"],
            0,
            None,
        ),
        (
            "explain a decompression bomb",
            ["explain", imgs / "bomb.png", "--weights", m, "--out", d / "bomb-cam.png"],
            2,
            d / "bomb-cam.png",
        ),
        (
            "explain --layer fc",
            ["explain", imgs / "portrait.jpg", "--weights", m, "--layer", "fc", "--out", d / "fc.png"],
            2,
            d / "fc.png",
        ),
        ("predict --top-k -3", ["predict", imgs, "--weights", m, "--top-k", -3], 2, None),
        ("predict --batch-size 0", ["predict", imgs, "--weights", m, "--batch-size", 0], 2, None),
        ("predict --workers -1", ["predict", imgs, "--weights", m, "--workers", -1], 2, None),
        ("embed --out RUN/last.pt", ["embed", imgs, "--weights", m, "--out", run / "last.pt"], 2, None),
        (
            "embed --out RUN/model.safetensors --force",
            ["embed", imgs, "--weights", m, "--out", run / "model.safetensors", "--force"],
            2,
            None,
        ),
        ("embed --out x.npy", ["embed", imgs, "--weights", m, "--out", d / "x.npy"], 2, d / "x.npy"),
        ("embed --out an existing file", ["embed", imgs, "--weights", m, "--out", m], 2, None),
        ("export --out RUN/model.safetensors", ["export", "--weights", m, "--out", run / "model.safetensors"], 2, None),
        ("export --out a folder", ["export", "--weights", m, "--out", d], 2, None),
        ("export --out an existing file", ["export", "--weights", m, "--out", d / "binary.csv"], 2, None),
        ("weights: pickle protocol 4 with code", ["predict", imgs, "--weights", d / "evil-p4.pth"], 2, d / "PWNED"),
        ("resume from a pickle with code", ["train", "--resume", d / "evil-run"], 2, d / "PWNED"),
        ("resume with a damaged config.json", ["train", "--resume", d / "damaged-run"], 2, None),
        ("two runs in one folder at once", ["train", *TINY, "--out", d / "runs", "--name", "busy"], 2, None),
        (
            "checkpoint write past the file-size limit (a full disk)",
            ["train", "--resume", d / "full-disk-run", "--epochs", 3],
            1,
            None,
        ),
    ]
    for name in ("no-crop", "negative-crop", "std-0", "options-list", "classes-number"):
        cases.append(
            (f"model file metadata: {name}", ["predict", imgs, "--weights", d / f"{name}.safetensors"], 2, None)
        )
    cases.append(
        (
            "class names with escape codes",
            ["predict", imgs, "--weights", d / "evil-classes.safetensors", "--workers", 0],
            1,
            None,
        )
    )
    # issue 22: values that cannot run, foreign files, folder outputs, devices
    for flag, value in [
        ("--epochs", "1e400"),
        ("--seed", "1e20"),
        ("--lr", "1e308"),
        ("--weight-decay", "1e308"),
        ("--gamma", "1e308"),
        ("--warmup-epochs", "1e308"),
        ("--pad", "1e9"),
        ("--train-crop", "1e6"),
        ("--synthetic-samples", "1e12"),
        ("--synthetic-classes", "1e9"),
        ("--device", "mps"),
        ("--mixup", "1e-320"),
        ("--cutmix", "1e-320"),
        ("--in-chans", "100000"),
    ]:
        cases.append((f"train {flag} {value}", ["train", *TINY, "--out", out, flag, value], 2, out))
    for name in sorted(p.name for p in d.glob("timm-*")):
        cases.append(
            (f"timm config.json: {name[5:]}", ["predict", imgs / "portrait.jpg", "--weights", d / name], 2, None)
        )
    for name in sorted(p.name for p in d.glob("keras-*")):
        cases.append((f"Keras file: {name[6:]}", ["predict", imgs / "portrait.jpg", "--weights", d / name], 2, None))
    for name in ("record-11-classes", "record-in-chans-100000", "tensor-int8", "crop-5000"):
        cases.append((f"model file: {name}", ["predict", imgs, "--weights", d / f"{name}.safetensors"], 2, None))
    cases += [
        (
            "export --format hub --out RUN --force",
            ["export", "--weights", m, "--format", "hub", "--out", run, "--force"],
            2,
            None,
        ),
        ("predict --device cuda:x", ["predict", imgs, "--weights", m, "--device", "cuda:x"], 2, None),
        ("serve --port 70000", ["serve", "--weights", m, "--port", 70000], 2, None),
        ("serve --max-upload-mb 1e308", ["serve", "--weights", m, "--max-upload-mb", "1e308"], 2, None),
        ("serve --token ''", ["serve", "--weights", m, "--token", ""], 2, None),
        (
            "explain --class a Unicode digit",
            ["explain", imgs / "portrait.jpg", "--weights", m, "--class", "\u00b2", "--out", d / "u.png"],
            2,
            d / "u.png",
        ),
        (
            "export: check failed (--atol 0 --rtol 0)",
            ["export", "--weights", m, "--fold-bn", "--atol", 0, "--rtol", 0, "--out", d / "z.onnx"],
            1,
            d / "z.onnx",
        ),
    ]
    return cases


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (outside the folders commands may write to), by content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock" and not str(p.relative_to(root)).startswith(("out", "runs/busy"))
    }


def bad(d: Path) -> dict:
    made = make_inputs(d)
    run = made["run"]
    # a run directory whose checkpoint holds code, one with a damaged config.json, one for the file-size limit
    for name in ("evil-run", "damaged-run", "full-disk-run"):
        shutil.copytree(run, d / name, ignore=shutil.ignore_patterns(".lock"))
    shutil.copy(d / "evil-p4.pth", d / "evil-run" / "last.pt")
    (d / "damaged-run" / "config.json").write_text('{"model": "resnet20", "epochs": ')
    rows, tracebacks, wrong_code, long_msgs = [], 0, 0, 0
    holder = None
    for what, argv, want, must_not_exist in bad_inputs(d):
        if what.startswith("two runs"):  # hold the folder with a long run, then try a second one
            holder = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "resnets",
                    "train",
                    *TINY,
                    "--synthetic-samples",
                    "100000",
                    "--epochs",
                    "50",
                    "--out",
                    d / "runs",
                    "--name",
                    "busy",
                ],
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            lock = d / "runs" / "busy" / ".lock"
            while holder.poll() is None and not (lock.is_file() and lock.read_text()):
                time.sleep(0.05)
        before = snapshot(d)
        fsize = 200_000 if "file-size" in what else None
        p = resnets(*argv, limit_fsize=fsize)
        if holder is not None:
            holder.kill()
            holder.wait()
            holder = None
        after = snapshot(d)
        changed = sorted(k for k in before if after.get(k) != before[k] and k != "full-disk-run/config.json")
        appeared = must_not_exist is not None and must_not_exist.exists()
        info = ("resnets: skipped", "resnets: resuming")  # log lines that come before the error
        lines = [
            line
            for line in p.stderr.splitlines()
            if line.strip() and not line.startswith(info) and "files could not be read" not in line
        ]
        tb = "Traceback" in p.stderr
        partial = want == 1 and "files could not be read" in p.stderr  # the rest answered, the bad ones named
        one_line = want == 0 or partial or len(lines) == 1
        ok = p.returncode == want and not tb and not changed and not appeared and one_line
        tracebacks += tb
        wrong_code += p.returncode != want
        long_msgs += not one_line
        rows.append(
            {
                "input": what,
                "exit": p.returncode,
                "expected": want,
                "traceback": tb,
                "changed": changed,
                "appeared": str(must_not_exist) if appeared else None,
                "message": lines[-1] if lines else "",
                "ok": ok,
            }
        )
        msg = (lines[-1] if lines else "").replace(str(d), "D")[:110]
        print(f"{'ok  ' if ok else 'FAIL'} {what:55s} exit {p.returncode}  {msg!r}", flush=True)
        if changed or appeared:
            print(f"     changed: {changed}  appeared: {must_not_exist if appeared else None}")
    # output injection: a header and one line per file in the table, no raw escape code
    table = resnets("predict", made["imgs"], "--weights", d / "evil-classes.safetensors", "--workers", 0).stdout
    injection_ok = "\x1b" not in table and len(table.splitlines()) == 1 + len(list(made["imgs"].iterdir()))
    pipe = subprocess.run(
        f"{sys.executable} -m resnets list | true", shell=True, capture_output=True, text=True, env=ENV
    )
    tracebacks += "Traceback" in pipe.stderr
    rows.append(
        {"input": "resnets list | true", "traceback": "Traceback" in pipe.stderr, "ok": "Traceback" not in pipe.stderr}
    )
    files_lost = sum(bool(r.get("changed")) or bool(r.get("appeared")) for r in rows)
    return {
        "bad_inputs": len(rows),
        "passed": sum(r["ok"] for r in rows),
        "tracebacks": tracebacks,
        "wrong_exit_codes": wrong_code,
        "messages_not_one_line": long_msgs,
        "files_lost_or_changed": files_lost,
        "escape_codes_in_table": not injection_ok,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------------------------- serve
def _gif_frames(frames: int, width: int, height: int) -> bytes:
    """An animated GIF of one-pixel frames on a width x height canvas (a decoder of every frame at the canvas
    size turns 1.4 KB into frames x width x height x 3 bytes)."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x21\xf9\x04\x00\x01\x00\x00\x00\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * frames + b"\x3b"


def _uploads() -> dict[str, tuple[bytes, str]]:
    """Each upload kind: (bytes, "good" or "bad")."""
    import io

    import numpy as np
    from PIL import Image

    def enc(im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        return buf.getvalue()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    rows = b"".join(z.compress(bytes(20001)) for _ in range(20000)) + z.flush()  # 20000 rows of zeros: ~400 KB
    ztxt = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
        + chunk(b"zTXt", b"k\x00\x01junk")
        + chunk(b"IDAT", rows)
        + chunk(b"IEND", b"")
    )
    header_bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    frames = [Image.new("RGB", (64, 64), c) for c in ((200, 0, 0), (0, 0, 200))]
    jpeg = enc(photo, "JPEG")
    return {
        "png-ztxt-20000x20000": (ztxt, "bad"),
        "gif-60-frames-4000x4000": (_gif_frames(60, 4000, 4000), "good"),
        "png-header-20000x20000": (header_bomb, "bad"),
        "jpeg": (jpeg, "good"),
        "png": (enc(photo, "PNG"), "good"),
        "gif": (enc(photo, "GIF"), "good"),
        "webp": (enc(photo, "WEBP"), "good"),
        "webp-animated": (enc(frames[0], "WEBP", save_all=True, append_images=frames[1:]), "good"),
        "png-16-bit": (enc(Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)), "PNG"), "good"),
        "text": (b"not an image at all", "bad"),
        "empty": (b"", "bad"),
        "jpeg-truncated": (jpeg[: len(jpeg) // 2], "bad"),
        "jpeg-cut-in-header": (jpeg[:40], "bad"),
    }


def _rss(pid: int, key: str = "VmRSS") -> int:
    """The process's resident memory (VmRSS) or its high-water mark (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def serve_stress(d: Path, rounds: int = 10) -> dict:
    import asyncio
    import socket

    import httpx
    import torch

    import resnets as R

    torch.manual_seed(0)
    model = R.save(
        R.create_model("resnet20", num_classes=10, in_chans=1),
        d / "grey.safetensors",
        preprocessing=R.Preprocessing(32, 28, mean=(0.29,), std=(0.35,)),
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(d / "serve.log", "w+")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resnets",
            "serve",
            "--weights",
            model,
            "--port",
            str(port),
            "--device",
            "cpu",
            "--max-batch",
            "16",
            "--max-wait-ms",
            "20",
            "--log-level",
            "warning",
        ],
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        uploads = _uploads()
        idle = _rss(server.pid)

        async def send(items):
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(c.post(url + "/v1/predict", files={"files": (n, b)}) for n, b in items))

        kinds, fivexx, unanswered, wrong = {}, 0, 0, 0
        for name, (data, want) in uploads.items():
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # the high-water mark starts again from now
            before = _rss(server.pid)
            answers = asyncio.run(send([(name, data)] * 8))
            codes = sorted({a.status_code for a in answers})
            peak = _rss(server.pid, "VmHWM") - before
            fivexx += sum(a.status_code >= 500 for a in answers)
            wrong += sum((a.status_code == 200) != (want == "good") for a in answers)
            kinds[name] = {"bytes": len(data), "status": codes, "peak_mb_over_before": round(peak / 2**20, 1)}
            print(f"serve  {name:28s} {len(data):>9,} B  status {codes}  peak +{peak / 2**20:7.1f} MB", flush=True)
        # mixed batches: a quarter of each round bad, all at once
        good = [(n, b) for n, (b, w) in uploads.items() if w == "good" and "4000" not in n]
        bads = [(n, b) for n, (b, w) in uploads.items() if w == "bad"]
        rng = random.Random(0)
        sent = 0
        for _ in range(rounds):
            items = [rng.choice(good) for _ in range(24)] + [rng.choice(bads) for _ in range(8)]
            rng.shuffle(items)
            answers = asyncio.run(send(items))
            sent += len(items)
            for (n, _), a in zip(items, answers):
                fivexx += a.status_code >= 500
                is_good = any(n == g for g, _ in good)
                unanswered += is_good and a.status_code != 200
                wrong += (not is_good) and not 400 <= a.status_code < 500
        metrics = httpx.get(url + "/metrics").text
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.seek(0)
        output = log.read()
    counted_5xx = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("resnets_requests_total") and 'code="5' in line
    )
    return {
        "idle_rss_mb": round(idle / 2**20, 1),
        "kinds": kinds,
        "mixed_requests": sent,
        "status_5xx": fivexx,
        "good_not_answered": unanswered,
        "wrong_status": wrong,
        "metrics_5xx": counted_5xx,
        "tracebacks_in_log": output.count("Traceback"),
        "exit_code": server.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="which random kill moments")
    ap.add_argument("--skip-kills", action="store_true")
    ap.add_argument("--skip-bad-inputs", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    results = {
        "machine": f"{cpu_name()}, {os.cpu_count()} CPUs",
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_kills:
            (tmp / "k").mkdir()
            k = kills(tmp / "k", args.kills, random.Random(args.seed))
            results["kills"] = k
            print(
                f"\n{k['kills']} kills ({k['during_checkpoint_writes']} during a checkpoint write), {k['resumes']} starts; "
                f"checkpoints lost {k['checkpoints_lost']}; final weights bit-identical: {k['weights_bit_identical']}; "
                f"metrics identical: {k['metrics_identical']}; tracebacks {k['tracebacks']}; temporaries left "
                f"{len(k['temporaries_left'])}\n",
                flush=True,
            )
        if not args.skip_bad_inputs:
            (tmp / "b").mkdir()
            b = bad(tmp / "b")
            results["bad_inputs"] = b
            print(
                f"\n{b['passed']}/{b['bad_inputs']} bad inputs handled; tracebacks {b['tracebacks']}; wrong exit codes "
                f"{b['wrong_exit_codes']}; messages not one line {b['messages_not_one_line']}; files lost or changed "
                f"{b['files_lost_or_changed']}; escape codes in table output: {b['escape_codes_in_table']}"
            )
        if not args.skip_serve:
            (tmp / "s").mkdir()
            s = serve_stress(tmp / "s")
            results["serve"] = s
            worst = max(k["peak_mb_over_before"] for k in s["kinds"].values())
            print(
                f"\nserve: {len(s['kinds'])} upload kinds x 8 at once, worst peak +{worst} MB over an idle {s['idle_rss_mb']} MB; "
                f"{s['mixed_requests']} mixed requests: 5xx {s['status_5xx']}, good not answered {s['good_not_answered']}, "
                f"wrong status {s['wrong_status']}, 5xx in /metrics {s['metrics_5xx']}, tracebacks in the log "
                f"{s['tracebacks_in_log']}, exit {s['exit_code']}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
