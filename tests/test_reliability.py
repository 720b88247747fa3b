"""Nothing lost, nothing crashes: run-directory locking, every config key checked before anything is written,
resumes that keep their overrides, and runs that stop before their first checkpoint leave nothing behind."""
import json
import math
import subprocess
import sys
import time

import pytest
import torch

from resnets import config as C
from resnets.errors import ResnetsError

from conftest import run_cli

S = ["--model", "resnet20", "--dataset", "synthetic", "--synthetic-samples", "256", "--synthetic-classes", "2",
     "--train-crop", "32", "--batch-size", "16", "--epochs", "1", "--workers", "0", "--no-progress", "--device", "cpu"]  # fmt: skip


def _one_line(code, err, needle):
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
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
    assert len([l for l in err.splitlines() if l.strip()]) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # not even the --out folder


def test_two_runs_cannot_share_a_folder_and_auto_names_do_not_collide(tmp_path):
    slow = [*S, "--synthetic-samples", "4096", "--epochs", "3", "--out", tmp_path, "--name", "same"]
    p = subprocess.Popen([sys.executable, "-m", "resnets", "train", *slow], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = tmp_path / "same" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (lock.is_file() and lock.read_text()):
        time.sleep(0.05)
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
    from resnets.rundir import claim

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
    assert [json.loads(l)["epoch"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
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

    cfg = C.resolve(overrides=dict(model="resnet20", dataset="synthetic", synthetic_samples=256, synthetic_classes=2,
                                   train_crop=32, batch_size=16, epochs=1, workers=0, progress=False, device="cpu",
                                   out=str(tmp_path), name="blowup", lr=1e30, schedule="constant", amp="none"))  # fmt: skip
    with pytest.raises(TrainingError, match="No checkpoint had been written yet"):
        train(cfg)
    assert not (tmp_path / "blowup").exists()
    with pytest.raises(ResnetsError, match="must be > 0; got nan"):
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
    jsonl = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
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
