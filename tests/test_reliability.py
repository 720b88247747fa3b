"""Nothing lost, nothing crashes: run-directory locking, every config key checked before anything is written,
resumes that keep their overrides, and runs that stop before their first checkpoint leave nothing behind."""

import json
import math
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli

from resnets import config as C
from resnets.errors import ResnetsError

S = [
    "--model",
    "resnet20",
    "--dataset",
    "synthetic",
    "--synthetic-samples",
    "256",
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


def _one_line(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_every_config_key_has_one_rule():
    import dataclasses

    assert {f.name for f in dataclasses.fields(C.TrainConfig)} == set(C.RULES)


def _outside_cases():
    hints = C._fields()
    for key, rule in C.RULES.items():
        for v in rule.outside():
            if hints[key] in (int, int | None) and isinstance(v, float) and not math.isfinite(v):
                v = "nan"  # an int key: not a number at all
            yield key, v


@pytest.mark.parametrize("key, value", list(_outside_cases()))
def test_a_value_just_outside_its_range_is_one_line_and_writes_nothing(tmp_path, key, value):
    flag = "--" + key.replace("_", "-")
    code, _, err = run_cli("train", *S, "--out", tmp_path / "runs", flag, value)
    assert code == 2, f"{flag} {value!r} was accepted: {err}"
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # not even the --out folder


def _slow_run(out, name) -> tuple[subprocess.Popen, list]:
    """A training run in a process of its own, returned once it holds its folder's lock (with its arguments)."""
    slow = [*S, "--synthetic-samples", "4096", "--epochs", "3", "--out", out, "--name", name]
    p = subprocess.Popen(
        [sys.executable, "-m", "resnets", "train", *slow], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lock = out / name / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (lock.is_file() and lock.read_text()):
        time.sleep(0.05)
    return p, slow


def test_two_runs_cannot_share_a_folder_and_auto_names_do_not_collide(tmp_path):
    p, slow = _slow_run(tmp_path, "same")
    try:
        assert p.poll() is None, p.stderr.read().decode()
        code, _, err = run_cli("train", *slow)
        _one_line(code, err, f"in use by a run that is still going (pid {p.pid} on")
        code, _, err = run_cli("train", "--resume", tmp_path / "same")
        assert code == 2 and "in use" in err, err
    finally:
        p.kill()
        p.wait()
    # two runs named automatically within the same second get two folders
    from resnets.engine.rundir import claim

    cfg = C.resolve(overrides=dict(model="resnet20", dataset="synthetic", out=str(tmp_path / "auto")))
    (a, la, _), (b, lb, _) = claim(cfg, None), claim(cfg, None)
    assert a != b and a.parent == b.parent and b.name.startswith(a.name)
    la.release(), lb.release()


def test_resume_keeps_its_overrides_and_refuses_incompatible_ones(tmp_path):
    code, _, err = run_cli("train", *S, "--out", tmp_path, "--name", "r", "--checkpoint-steps", "4")
    assert code == 0, err
    run = tmp_path / "r"
    code, _, err = run_cli("train", "--resume", run, "--epochs", "2", "--no-progress")
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    code, _, err = run_cli("train", "--resume", run, "--optimizer", "adamw")
    _one_line(code, err, "--optimizer cannot change when resuming")
    code, _, err = run_cli("train", "--resume", run, "--synthetic-classes", "3")
    _one_line(code, err, "--synthetic-classes cannot change when resuming")
    (run / "config.json").write_text('{"epochs": 2,')
    code, _, err = run_cli("train", "--resume", run)
    _one_line(code, err, "config.json is damaged")
    code, _, err = run_cli("train", "--resume", tmp_path / "nothing-here")
    _one_line(code, err, "is not a run directory")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    from resnets.engine import TrainingError, train

    cfg = C.resolve(
        overrides=dict(
            model="resnet20",
            dataset="synthetic",
            synthetic_samples=256,
            synthetic_classes=2,
            train_crop=32,
            batch_size=16,
            epochs=1,
            workers=0,
            progress=False,
            device="cpu",
            out=str(tmp_path),
            name="blowup",
            lr=1e6,
            schedule="constant",
            amp="none",
        )
    )
    with pytest.raises(TrainingError, match="No checkpoint had been written yet"):
        train(cfg)
    assert not (tmp_path / "blowup").exists()
    with pytest.raises(ResnetsError, match="must be > 0 and <= 1,000,000; got nan"):
        C.resolve(overrides=dict(lr="nan"))


def test_a_resume_removes_the_temporaries_of_a_killed_write(tmp_path):
    code, _, err = run_cli("train", *S, "--out", tmp_path, "--name", "r", "--epochs", 1)
    assert code == 0, err
    run = tmp_path / "r"
    (run / ".last.pt.k3j2.tmp.pt").write_bytes(b"half a checkpoint")  # what a SIGKILL during a write leaves
    (run / ".model.safetensors.x9.tmp.safetensors").write_bytes(b"half a model")
    (run / ".mine.tmp").write_bytes(b"not ours: kept")
    code, _, err = run_cli("train", "--resume", run, "--epochs", 2, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in run.glob(".*")) == [".lock", ".mine.tmp"]


def test_a_run_killed_before_its_first_checkpoint_is_begun_again_by_resume(tmp_path):
    code, _, err = run_cli("train", *S, "--out", tmp_path, "--name", "r", "--deterministic")
    assert code == 0, err
    run = tmp_path / "r"
    first = (run / "model.safetensors").read_bytes()
    for p in run.iterdir():  # what a SIGKILL during the first epoch leaves: config.json (and the lock file)
        if p.name not in ("config.json", ".lock"):
            p.unlink()
    code, _, err = run_cli("train", "--resume", run)
    assert code == 0 and "stopped before its first checkpoint" in err, err
    assert (run / "last.pt").is_file() and (run / "model.safetensors").read_bytes() != b""
    from safetensors.torch import load

    a, b = load(first), load((run / "model.safetensors").read_bytes())
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed: the same run


def test_the_epochs_are_also_a_csv_and_tensorboard_scalars(tmp_path):
    import csv

    code, _, err = run_cli("train", *S, "--out", tmp_path, "--name", "r", "--epochs", 2, "--tensorboard")
    assert code == 0, err
    jsonl = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    with open(tmp_path / "r" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(jsonl) == 2
    for row, rec in zip(rows, jsonl):
        assert {k: float(v) for k, v in row.items() if v} == pytest.approx({k: float(v) for k, v in rec.items()})
    # TensorBoard's own reader finds every number of every epoch, at the epoch as its step
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {k for k in jsonl[0] if k != "epoch"}
    for key in acc.Tags()["scalars"]:
        events = acc.Scalars(key)
        assert [e.step for e in events] == [r["epoch"] for r in jsonl]
        assert [e.value for e in events] == pytest.approx([r[key] for r in jsonl], rel=1e-6)


@pytest.mark.parametrize(
    "flag, value",
    [
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
        ("--device", "cuda:x"),
        ("--mixup", "1e-320"),
        ("--cutmix", "1e-320"),
        ("--batch-size", "1e30"),
        ("--in-chans", "100000"),
    ],
)
def test_values_that_cannot_run_are_refused_before_anything_is_written(tmp_path, flag, value):
    """The values a hostile review found to be tracebacks (some after config.json was written, so the folder
    stayed and resume repeated the traceback), or to allocate tens of gigabytes."""
    if value == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    code, _, err = run_cli("train", *S, "--out", tmp_path / "runs", flag, value)
    assert code == 2 and len([line for line in err.splitlines() if line.strip()]) == 1 and "Traceback" not in err, (
        flag,
        err,
    )
    assert not (tmp_path / "runs").exists()


def test_synthetic_data_is_bounded_by_its_memory_and_inference_devices_are_checked(tmp_path):
    code, _, err = run_cli("train", *S, "--out", tmp_path, "--synthetic-samples", "1000000", "--train-crop", "512")
    _one_line(code, err, "GiB; at most 8 GiB")
    for device in ("cuda:x", "cuda:7", "tpu"):
        if (
            device.startswith("cuda")
            and torch.cuda.is_available()
            and device == "cuda:7"
            and torch.cuda.device_count() > 7
        ):
            continue
        code, _, err = run_cli("predict", "x.png", "--weights", "resnet18", "--device", device)
        assert code == 2 and "device" in err and len(err.strip().splitlines()) == 1, err


def test_a_run_killed_while_writing_its_first_config_is_begun_again(tmp_path):
    """A SIGKILL during the first config.json write leaves the lock file and a temporary: `train --name` said the
    folder held a run and `--resume` that it was not one; a folder with no config and no checkpoint never began."""
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text("pid 1 on gone since then")
    (run / ".config.json.a8f3.tmp.json").write_text('{"model": "resn')
    code, _, err = run_cli("train", "--resume", run)
    _one_line(code, err, "a run killed before it wrote its config")
    code, _, err = run_cli("train", *S, "--out", tmp_path, "--name", "r")
    assert code == 0, err
    assert (run / "last.pt").is_file() and not list(run.glob(".config.json.*"))


def test_a_one_cycle_run_of_four_steps_trains(tmp_path):
    """OneCycleLR divided by zero when its rise was one step (fashion-mnist's recipe over 512 images: 4 steps)."""
    code, _, err = run_cli(
        "train", *S, "--schedule", "onecycle", "--synthetic-samples", 64, "--out", tmp_path, "--name", "short"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "short" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_kept(tmp_path):
    import signal

    p, _ = _slow_run(tmp_path, "stopped")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1].decode()
    assert p.returncode == 130, err
    assert "nothing was kept" in err and not (tmp_path / "stopped").exists(), err
