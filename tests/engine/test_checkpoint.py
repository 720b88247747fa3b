"""resnets.engine.checkpoint: resuming gives the uninterrupted run's weights, keeps its overrides, refuses what cannot
continue, and never keeps a non-finite state."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import SMALL_RUN, TINY_RUN, one_line_error, run_cli, saved_weights

from resnets import config as C
from resnets.data import sources
from resnets.engine import TrainingError, train

pytestmark = pytest.mark.skipif(sources.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")


def test_resume_after_sigkill_mid_epoch_gives_exactly_the_uninterrupted_weights(tmp_path):
    common = [
        "train",
        "--recipe",
        "fashion-mnist",
        "--limit-train",
        1024,
        "--limit-val",
        128,
        "--batch-size",
        32,
        "--epochs",
        2,
        "--deterministic",
        "--no-progress",
        "--out",
        tmp_path,
        "--random-erasing",
        0.5,
        "--drop-path-rate",
        0.1,
    ]
    code, _, err = run_cli(*common, "--name", "straight")
    assert code == 0, err
    # the same run, killed with SIGKILL after a mid-epoch checkpoint of the second epoch, then resumed
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [sys.executable, "-m", "resnets", *map(str, common), "--name", "killed", "--checkpoint-steps", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    ckpt = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and p.poll() is None:
        if ckpt.is_file():
            try:
                s = torch.load(ckpt, weights_only=True, map_location="cpu")
            except Exception:
                s = None  # being replaced right now
            if s and s["epoch"] == 1 and s["batch"] >= 12:
                p.send_signal(signal.SIGKILL)
                killed_at = (s["epoch"], s["batch"])
                break
        time.sleep(0.02)
    p.wait()
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    code, _, err = run_cli("train", "--resume", tmp_path / "killed", "--no-progress")
    assert code == 0, err
    a, b = (
        saved_weights(tmp_path / "straight" / "model.safetensors"),
        saved_weights(tmp_path / "killed" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    hist = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2
    for k in ("train_loss", "train_acc", "val_top1"):  # the resumed epoch counts the batches before the kill too
        assert hist[1][k] == pytest.approx(straight[1][k], rel=1e-9), k


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path):
    cfg = C.resolve(
        "fashion-mnist",
        overrides=dict(
            SMALL_RUN,
            out=tmp_path,
            name="nan",
            lr=1e6,
            amp="none",
            schedule="constant",
            checkpoint_steps=1,
            epochs=1,
            limit_train=1024,
        ),
    )
    with pytest.raises(TrainingError, match="non-finite"):
        train(cfg)
    last = tmp_path / "nan" / "last.pt"
    if last.exists():
        state = torch.load(last, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_refuses_another_architecture_and_overwrites_nothing(tmp_path):
    train(C.resolve("fashion-mnist", overrides=dict(SMALL_RUN, epochs=1, out=tmp_path, name="r")))
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    code, _, err = run_cli("train", "--resume", tmp_path / "r", "--model", "resnet32")
    one_line_error(code, err, "not resnet32")
    code, _, err = run_cli("train", "--recipe", "fashion-mnist", "--out", tmp_path, "--name", "r")
    one_line_error(code, err, "already holds a run")
    from PIL import Image

    for c in ("a", "b"):  # a folder without val/: its held-out line came first, then the refusal
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 30), (60 * i, 10, 10)).save(tmp_path / "photos" / c / f"{i}.png")
    code, _, err = run_cli("train", "--model", "resnet8", "--dataset", "imagefolder", "--data", tmp_path / "photos",
                           "--out", tmp_path, "--name", "r")  # fmt: skip
    one_line_error(code, err, "already holds a run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before


def _one_line(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_resume_keeps_its_overrides_and_refuses_incompatible_ones(tmp_path):
    code, _, err = run_cli("train", *TINY_RUN, "--out", tmp_path, "--name", "r", "--checkpoint-steps", "4")
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


def test_a_resume_removes_the_temporaries_of_a_killed_write(tmp_path):
    code, _, err = run_cli("train", *TINY_RUN, "--out", tmp_path, "--name", "r", "--epochs", 1)
    assert code == 0, err
    run = tmp_path / "r"
    (run / ".last.pt.k3j2.tmp.pt").write_bytes(b"half a checkpoint")  # what a SIGKILL during a write leaves
    (run / ".model.safetensors.x9.tmp.safetensors").write_bytes(b"half a model")
    (run / ".mine.tmp").write_bytes(b"not ours: kept")
    code, _, err = run_cli("train", "--resume", run, "--epochs", 2, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in run.glob(".*")) == [".lock", ".mine.tmp"]


def test_a_run_killed_before_its_first_checkpoint_is_begun_again_by_resume(tmp_path):
    code, _, err = run_cli("train", *TINY_RUN, "--out", tmp_path, "--name", "r", "--deterministic")
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


def test_a_dense_checkpoint_from_before_one_engine_reads_as_the_loops_sums():
    """Detection runs once kept [loss x n, n] mid-epoch under "best_score"; the one loop keeps [loss x n, hits, n]
    (a resume of such a file was checked to give the uninterrupted run's weights bit for bit)."""
    from resnets.engine.checkpoint import _partial

    assert _partial([12.5, 8.0]) == {"epoch": [12.5, 0.0, 8.0], "window": [0.0, 0.0, 0.0]}
    new = {"epoch": [1.0, 2.0, 3.0], "window": [0.0, 0.0, 0.0]}
    assert _partial(new) is new and _partial(None) is None


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_resume_for_more_epochs_follows_the_longer_schedule(tmp_path, schedule):
    """`--resume RUN --epochs 3` on a finished 1-epoch run: from the checkpoint's step on, the schedule is the
    3-epoch run's (the saved one-cycle ended at the old last step and failed on the next, 'Tried to step 17 times';
    the saved cosine rose again, back to the peak at twice the old length), so epochs 2 and 3 end at the learning
    rates of a run planned for 3 epochs from the start."""
    args = ("train", *TINY_RUN, "--synthetic-samples", 64, "--schedule", schedule, "--out", tmp_path)
    assert run_cli(*args, "--name", "short", "--epochs", "1")[0] == 0
    code, _, err = run_cli("train", "--resume", tmp_path / "short", "--epochs", "3", "--no-progress")
    assert code == 0, err
    assert run_cli(*args, "--name", "planned", "--epochs", "3")[0] == 0

    def lrs(name):
        return [json.loads(line)["lr"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert len(lrs("short")) == 3 and lrs("short")[1:] == pytest.approx(lrs("planned")[1:])
    assert lrs("planned")[1] > 1e-3  # mid-schedule: a rate that tells the two schedules apart
