"""Stress: training killed with SIGKILL at random moments and resumed each time, against the same run
uninterrupted; and every bad input of issue 15 fed through the command line, each in its own process.

    python benchmarks/stress.py                       # 20 kills, all bad inputs
    python benchmarks/stress.py --kills 5 --json stress.json

Kills: a deterministic run (resnet20, synthetic data, random erasing and drop-path, a checkpoint every 2 steps)
is started, killed and resumed until it has been killed --kills times, then resumed to the end. Each kill is
one of three kinds, drawn at random: at a random time after the start (often during start-up, before any
checkpoint), while a checkpoint is being written (a `.last.pt.*.tmp.pt` is seen), or a random moment after 1-3
new checkpoints. After each kill the checkpoint on disk must load; at the end the weights are compared with
the uninterrupted run's, bit for bit, and so are the metrics (loss, accuracy) of every epoch.

Bad inputs: each is a command line and what it must do (the exit code, what must not change on disk). Counted:
tracebacks (goal 0), wrong exit codes, messages of more than one line, files lost or changed (goal 0).

Prints one line per kill and per bad input, and a summary; --json writes the figures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
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

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
RUN = ["--model", "resnet20", "--dataset", "synthetic", "--synthetic-samples", "1024", "--synthetic-classes", "4",
       "--train-crop", "32", "--batch-size", "32", "--epochs", "3", "--workers", "0", "--no-progress", "--device",
       "cpu", "--deterministic", "--random-erasing", "0.25", "--drop-path-rate", "0.1", "--checkpoint-steps", "2"]  # fmt: skip
TINY = ["--model", "resnet20", "--dataset", "synthetic", "--synthetic-samples", "64", "--synthetic-classes", "2",
        "--train-crop", "32", "--batch-size", "16", "--epochs", "1", "--workers", "0", "--no-progress", "--device", "cpu"]  # fmt: skip


def resnets(*args, limit_fsize: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    pre = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))) if limit_fsize else None
    return subprocess.run([sys.executable, "-m", "resnets", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=timeout, preexec_fn=pre)  # fmt: skip


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
        proc = subprocess.Popen([sys.executable, "-m", "resnets", *map(str, cmd)], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
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
        rows.append({"kill": done, "kind": kind, "during_write": in_write, "after_s": round(time.perf_counter() - start, 2),
                     "checkpoint_step": after, "checkpoint_ok": ok})  # fmt: skip
        print(f"kill {done:2d}: {kind:17s} at {rows[-1]['after_s']:5.2f} s  checkpoint step {after}"
              f"{'  (during a checkpoint write)' if in_write else ''}{'' if ok else '  CHECKPOINT LOST'}", flush=True)  # fmt: skip
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
    return {"kills": done, "during_checkpoint_writes": during_write, "resumes": attempts, "checkpoints_lost": lost,
            "weights_bit_identical": identical, "metrics_identical": metrics_identical, "tracebacks": tracebacks,
            "temporaries_left": leftovers, "uninterrupted_s": round(straight_s, 1), "rows": rows}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------- bad inputs
def png_header(path: Path, w: int, h: int) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b""))


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
    R.save(R.create_model("resnet20", num_classes=3).eval(), model, class_names=["a", "b", "c"],
           preprocessing=Preprocessing(36, 32, "bilinear", (0.5,) * 3, (0.25,) * 3).to_dict())  # fmt: skip
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
        "no-crop": ("preprocessing", {"resize": 36}), "negative-crop": ("preprocessing", {"resize": 36, "crop": -3}),
        "std-0": ("preprocessing", {"resize": 36, "crop": 32, "std": [0, 0, 0]}), "options-list": ("options", [1, 2]),
        "classes-number": ("class_names", 7), "evil-classes": ("class_names", ["\x1b[31m", "../../", "x\ny"]),
    }  # fmt: skip
    for name, (field, value) in damaged.items():
        save_file(sd, str(d / f"{name}.safetensors"), metadata={**meta, field: json.dumps(value)})

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
    for flag, value in [("--momentum", -1), ("--label-smoothing", 5), ("--random-erasing", 2), ("--workers", -1),
                        ("--ema-decay", 2), ("--device", "tpu"), ("--synthetic-classes", 0), ("--train-crop", -1),
                        ("--lr", "nan"), ("--iterations", -5), ("--limit-train", -5), ("--mixup", -1),
                        ("--weight-decay", -1), ("--clip-grad", "nan"), ("--warmup-epochs", -1),
                        ("--checkpoint-steps", -1)]:  # fmt: skip
        cases.append((f"train {flag} {value}", ["train", *TINY, "--out", out, flag, value], 2, out))
    cases += [
        ("resume --dataset changed", ["train", "--resume", run, "--dataset", "cifar10"], 2, None),
        ("resume --synthetic-classes changed", ["train", "--resume", run, "--synthetic-classes", 3], 2, None),
        ("resume --optimizer changed", ["train", "--resume", run, "--optimizer", "adamw"], 2, None),
        ("train --name that is a file", ["train", *TINY, "--out", d, "--name", "a-file"], 2, None),
        ("train --out that is a file", ["train", *TINY, "--out", d / "a-file"], 2, None),
        ("train on a binary CSV", ["train", *TINY[:2], "--dataset", "csv", "--data", d / "binary.csv", "--out", out], 2, out),
        ("eval on a malformed CIFAR archive", ["eval", "--weights", m, "--dataset", "cifar10", "--data", d], 2, None),
        ("predict a folder of hostile images", ["predict", imgs, "--weights", m, "--workers", 0], 0, None),
        ("predict --format csv, hostile names", ["predict", imgs, "--weights", m, "--workers", 2, "--format", "csv"], 0, None),
        ("predict --max-pixels 100", ["predict", imgs, "--weights", m, "--workers", 0, "--max-pixels", 100], 0, None),
        ("explain an animated GIF", ["explain", imgs / "animated.gif", "--weights", m, "--out", d / "cam.png"], 0, None),
        ("explain a decompression bomb", ["explain", imgs / "bomb.png", "--weights", m, "--out", d / "bomb-cam.png"], 2, d / "bomb-cam.png"),
        ("explain --layer fc", ["explain", imgs / "portrait.jpg", "--weights", m, "--layer", "fc", "--out", d / "fc.png"], 2, d / "fc.png"),
        ("predict --top-k -3", ["predict", imgs, "--weights", m, "--top-k", -3], 2, None),
        ("predict --batch-size 0", ["predict", imgs, "--weights", m, "--batch-size", 0], 2, None),
        ("predict --workers -1", ["predict", imgs, "--weights", m, "--workers", -1], 2, None),
        ("embed --out RUN/last.pt", ["embed", imgs, "--weights", m, "--out", run / "last.pt"], 2, None),
        ("embed --out RUN/model.safetensors --force", ["embed", imgs, "--weights", m, "--out", run / "model.safetensors", "--force"], 2, None),
        ("embed --out x.npy", ["embed", imgs, "--weights", m, "--out", d / "x.npy"], 2, d / "x.npy"),
        ("embed --out an existing file", ["embed", imgs, "--weights", m, "--out", m], 2, None),
        ("export --out RUN/model.safetensors", ["export", "--weights", m, "--out", run / "model.safetensors"], 2, None),
        ("export --out a folder", ["export", "--weights", m, "--out", d], 2, None),
        ("export --out an existing file", ["export", "--weights", m, "--out", d / "binary.csv"], 2, None),
        ("weights: pickle protocol 4 with code", ["predict", imgs, "--weights", d / "evil-p4.pth"], 2, d / "PWNED"),
        ("resume from a pickle with code", ["train", "--resume", d / "evil-run"], 2, d / "PWNED"),
        ("resume with a damaged config.json", ["train", "--resume", d / "damaged-run"], 2, None),
        ("two runs in one folder at once", ["train", *TINY, "--out", d / "runs", "--name", "busy"], 2, None),
        ("checkpoint write past the file-size limit (a full disk)", ["train", "--resume", d / "full-disk-run", "--epochs", 3], 1, None),
    ]  # fmt: skip
    for name in ("no-crop", "negative-crop", "std-0", "options-list", "classes-number"):
        cases.append((f"model file metadata: {name}", ["predict", imgs, "--weights", d / f"{name}.safetensors"], 2, None))
    cases.append(("class names with escape codes", ["predict", imgs, "--weights", d / "evil-classes.safetensors", "--workers", 0], 0, None))
    return cases


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (outside the folders commands may write to), by content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock" and not str(p.relative_to(root)).startswith(("out", "runs/busy"))}  # fmt: skip


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
            holder = subprocess.Popen([sys.executable, "-m", "resnets", "train", *TINY, "--synthetic-samples", "100000",
                                       "--epochs", "50", "--out", d / "runs", "--name", "busy"], env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
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
        lines = [line for line in p.stderr.splitlines() if line.strip() and not line.startswith(info)
                 and "files could not be read" not in line]  # fmt: skip
        tb = "Traceback" in p.stderr
        ok = p.returncode == want and not tb and not changed and not appeared and (want == 0 or len(lines) == 1)
        tracebacks += tb
        wrong_code += p.returncode != want
        long_msgs += want != 0 and len(lines) != 1
        rows.append({"input": what, "exit": p.returncode, "expected": want, "traceback": tb, "changed": changed,
                     "appeared": str(must_not_exist) if appeared else None, "message": lines[-1] if lines else "",
                     "ok": ok})  # fmt: skip
        msg = (lines[-1] if lines else "").replace(str(d), "D")[:110]
        print(f"{'ok  ' if ok else 'FAIL'} {what:55s} exit {p.returncode}  {msg!r}", flush=True)
        if changed or appeared:
            print(f"     changed: {changed}  appeared: {must_not_exist if appeared else None}")
    # output injection: a header and one line per file in the table, no raw escape code
    table = resnets("predict", made["imgs"], "--weights", d / "evil-classes.safetensors", "--workers", 0).stdout
    injection_ok = "\x1b" not in table and len(table.splitlines()) == 1 + len(list(made["imgs"].iterdir()))
    pipe = subprocess.run(f"{sys.executable} -m resnets list | true", shell=True, capture_output=True, text=True, env=ENV)
    tracebacks += "Traceback" in pipe.stderr
    rows.append({"input": "resnets list | true", "traceback": "Traceback" in pipe.stderr, "ok": "Traceback" not in pipe.stderr})
    files_lost = sum(bool(r.get("changed")) or bool(r.get("appeared")) for r in rows)
    return {"bad_inputs": len(rows), "passed": sum(r["ok"] for r in rows), "tracebacks": tracebacks,
            "wrong_exit_codes": wrong_code, "messages_not_one_line": long_msgs, "files_lost_or_changed": files_lost,
            "escape_codes_in_table": not injection_ok, "rows": rows}  # fmt: skip


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        return f"{name} ({'AVX-512' if 'avx512f' in flags else 'AVX2'}), {os.cpu_count()} CPUs"
    except (OSError, StopIteration):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="which random kill moments")
    ap.add_argument("--skip-kills", action="store_true")
    ap.add_argument("--skip-bad-inputs", action="store_true")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    results = {"machine": cpu(), "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_kills:
            (tmp / "k").mkdir()
            k = kills(tmp / "k", args.kills, random.Random(args.seed))
            results["kills"] = k
            print(f"\n{k['kills']} kills ({k['during_checkpoint_writes']} during a checkpoint write), {k['resumes']} starts; "
                  f"checkpoints lost {k['checkpoints_lost']}; final weights bit-identical: {k['weights_bit_identical']}; "
                  f"metrics identical: {k['metrics_identical']}; tracebacks {k['tracebacks']}; temporaries left "
                  f"{len(k['temporaries_left'])}\n", flush=True)  # fmt: skip
        if not args.skip_bad_inputs:
            (tmp / "b").mkdir()
            b = bad(tmp / "b")
            results["bad_inputs"] = b
            print(f"\n{b['passed']}/{b['bad_inputs']} bad inputs handled; tracebacks {b['tracebacks']}; wrong exit codes "
                  f"{b['wrong_exit_codes']}; messages not one line {b['messages_not_one_line']}; files lost or changed "
                  f"{b['files_lost_or_changed']}; escape codes in table output: {b['escape_codes_in_table']}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
