"""resnets.engine.preemption (issue 39): SIGTERM or SIGUSR1 mid-run writes a checkpoint at the next optimizer step and
exits 128 + the signal, and the same command with --resume auto ends with exactly the uninterrupted run's weights
(a classifier, a detector); a signal before the first step leaves nothing, and the same command starts again."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY_DETECTOR, TINY_RUN, run_cli, saved_weights

from resnets import engine
from resnets.config import resolve
from resnets.engine import loop, preemption
from resnets.errors import Stopped
from resnets.factory import load
from resnets.weights.files import load_checkpoint

RUN = [a for a in TINY_RUN if a not in ("--epochs", "1", "--no-progress")] + ["--epochs", "3", "--deterministic"]


def _signal_at_step(monkeypatch, step: int, signum=signal.SIGTERM) -> None:
    """The process signals itself once, right after optimizer step `step` (a scheduler's SIGTERM at that moment)."""
    after = loop._after_step

    def _after(run, *a):
        after(run, *a)
        if run.step == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(loop, "_after_step", _after)


def test_sigterm_mid_epoch_checkpoints_and_resume_auto_gives_the_uninterrupted_weights(tmp_path, monkeypatch):
    args = [*RUN, "--no-progress", "--out", tmp_path]
    code, _, err = run_cli("train", *args, "--name", "whole")
    assert code == 0, err
    _signal_at_step(monkeypatch, 21)  # 16 steps an epoch: the 5th of the second
    code, _, err = run_cli("train", *args, "--name", "cut", "--resume", "auto")
    assert code == 143 and err.count("\n") == 1, err
    assert "stopped by SIGTERM at step 21 of 48 (in epoch 2)" in err and "--resume auto" in err
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 5, 21)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    monkeypatch.undo()
    code, _, err = run_cli("train", *args, "--name", "cut", "--resume", "auto")
    assert code == 0, err
    a, b = (
        saved_weights(tmp_path / "whole" / "model.safetensors"),
        saved_weights(tmp_path / "cut" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers given back after the run


def test_a_signal_at_an_epochs_last_step_stops_before_its_evaluation(tmp_path, monkeypatch):
    """A stop must fit in a scheduler's grace period: the epoch's evaluation (minutes on ImageNet) is left to the
    resumed run, which then writes the same history as the uninterrupted one."""
    args = [*RUN, "--no-progress", "--out", tmp_path]
    _signal_at_step(monkeypatch, 16, signal.SIGUSR1)  # the last step of epoch 1: SLURM's warning before --time
    evaluated = []
    monkeypatch.setattr(loop, "evaluated", lambda run, passes=1: evaluated.append(passes))
    code, _, err = run_cli("train", *args, "--name", "r", "--resume", "auto")
    assert code == 138 and "stopped by SIGUSR1 at step 16 of 48 (in epoch 1)" in err, err
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (0, 16, 16) and state["history"] == []
    assert evaluated == []  # no evaluation ran before the stop
    monkeypatch.undo()
    code, _, err = run_cli("train", *args, "--name", "r", "--resume", "auto")
    assert code == 0, err
    code, _, err = run_cli("train", *args, "--name", "whole")
    assert code == 0, err
    a, b = saved_weights(tmp_path / "whole" / "model.safetensors"), saved_weights(tmp_path / "r" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [(tmp_path / n / "metrics.jsonl").read_text().splitlines() for n in ("whole", "r")]
    strip = [
        [{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "time_s")} for x in n] for n in lines
    ]
    assert strip[0] == strip[1]  # the stopped epoch's loss, accuracy and evaluation as the uninterrupted run's


def test_a_signal_before_the_first_step_leaves_nothing_and_the_same_command_starts(tmp_path, monkeypatch):
    opened = loop.open_outputs

    def signalled(run):  # the run folder is made, no step taken (a scheduler's stop while the data loads)
        opened(run)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "open_outputs", signalled)
    args = ["train", *RUN, "--no-progress", "--out", tmp_path, "--name", "early", "--resume", "auto", "--epochs", "1"]
    code, _, err = run_cli(*args)
    assert code == 143 and "stopped by SIGTERM before the first step" in err, err
    assert "nothing was kept" in err and not (tmp_path / "early").exists()
    monkeypatch.undo()
    code, _, err = run_cli(*args)
    assert code == 0 and (tmp_path / "early" / "model.safetensors").is_file(), err


def test_a_detector_stopped_by_sigterm_resumes_to_the_same_weights(shapes_set, tmp_path, monkeypatch):
    keys = dict(zip((k[2:].replace("-", "_") for k in TINY_DETECTOR[::2]), TINY_DETECTOR[1::2]))
    keys.pop("no_progress", None)
    over = keys | dict(data=str(shapes_set), out=str(tmp_path), progress=False, epochs=2, deterministic=True)
    whole = engine.train(resolve(None, None, over))
    _signal_at_step(monkeypatch, 6)  # 4 steps an epoch: mid-epoch 2
    with pytest.raises(Stopped, match="at step 6 of 8 .in epoch 2."):
        engine.train(resolve(None, None, over | {"name": "cut"}))
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 6
    monkeypatch.undo()
    again = engine.train(resume=tmp_path / "cut")
    a, b = load(whole["run_dir"]).state_dict(), load(again["run_dir"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _image_folder(root):
    """train/ and val/ of two classes of small PNGs: read through the loader's workers and the decoders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("val", 16)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((40, 48, 3)) * 120 + (100 if c == "b" else 0)).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_sigterm_to_the_whole_process_group_as_a_scheduler_sends_it(tmp_path):
    """A real signal from outside, to the run, its loader workers and its image decoders at once (as `scancel`
    and a preemption send it): the workers and decoders leave the decision to the run (they once died of it: the
    run failed, or trained on without an image), which checkpoints and exits 143; resumed, the same weights."""
    data = _image_folder(tmp_path / "images")
    args = ["--model", "resnet8", "--dataset", "imagefolder", "--data", str(data), "--train-crop", "32",
            "--batch-size", "16", "--epochs", "3", "--device", "cpu", "--deterministic", "--workers", "2",
            "--checkpoint-steps", "2", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    p = subprocess.Popen(
        [sys.executable, "-m", "resnets", "train", *args, "--name", "r"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    deadline = time.time() + 90
    while time.time() < deadline and p.poll() is None and not (tmp_path / "r" / "last.pt").exists():
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=90)
    text = err.decode()
    assert p.returncode == 143 and text.count("\n") == 1 and "stopped by SIGTERM at step" in text, text[-2000:]
    assert 2 <= load_checkpoint(tmp_path / "r" / "last.pt")["step"] < 36
    code, _, err = run_cli("train", *args, "--name", "r", "--resume", "auto")
    assert code == 0 and "skipped" not in err, err
    code, _, err = run_cli("train", *args, "--name", "whole")
    assert code == 0, err
    a, b = saved_weights(tmp_path / "whole" / "model.safetensors"), saved_weights(tmp_path / "r" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_worker_process_leaves_the_decision_to_the_run(monkeypatch):
    stop = preemption.Preemption()
    monkeypatch.setattr(stop, "pid", os.getpid() + 1)  # as a forked data-loading worker sees it
    stop._handle(signal.SIGTERM, None)
    assert stop.signum is None
    stop.pid = os.getpid()
    with pytest.raises(Stopped) as e:
        stop._handle(signal.SIGUSR1, None)
    assert e.value.signum == signal.SIGUSR1 and stop.signum == signal.SIGUSR1


def test_resume_auto_after_the_end_says_the_run_is_finished_and_rewrites_nothing(tmp_path):
    """A requeue or a rerun after the run ended: the same command says so and changes nothing (it re-evaluated and
    rewrote the model before)."""
    args = ["train", *RUN, "--no-progress", "--out", tmp_path, "--name", "r", "--resume", "auto", "--epochs", "1"]
    code, first, err = run_cli(*args)
    assert code == 0, err
    model = tmp_path / "r" / "model.safetensors"
    stamp = (model.stat().st_mtime_ns, model.read_bytes())
    code, again, err = run_cli(*args)
    assert code == 0 and "is finished (step 16 of 16): nothing to train" in again, (again, err)
    assert (model.stat().st_mtime_ns, model.read_bytes()) == stamp
    top1 = [line for line in first.splitlines() if line.startswith("top-1")]
    assert top1 and top1[0] in again  # the run's own result, as it was printed
    for damaged in ("garbage", "[1, 2]", "{}"):  # its scores evaluated and written again (were tracebacks)
        (tmp_path / "r" / "eval.json").write_text(damaged)
        code, out, err = run_cli(*args)
        assert code == 0 and top1[0] in out and "Traceback" not in err, (out, err)
        assert json.loads((tmp_path / "r" / "eval.json").read_text())["top1"] > 0


def test_validation_held_out_of_the_training_images_is_said_recorded_and_resumable(tmp_path):
    """Images with no validation split: a tenth of each class is held out, said in a line and recorded in
    config.json (val_split 0.1; it said 0.0), and the same command still continues the run (the default means what
    the run resolved)."""
    data = _image_folder(tmp_path / "images")
    shutil.rmtree(data / "val")
    args = ["train", "--model", "resnet8", "--dataset", "imagefolder", "--data", data, "--train-crop", "32",
            "--batch-size", "16", "--device", "cpu", "--workers", "0", "--out", tmp_path, "--name", "r",
            "--resume", "auto", "--no-progress"]  # fmt: skip
    code, _, err = run_cli(*args, "--epochs", "1")
    assert code == 0 and "has no validation split: validating on 20 training images held out (10% of each" in err, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["val_split"] == 0.1
    code, _, err = run_cli(*args, "--epochs", "2")  # the same command, one more epoch
    assert code == 0 and "resuming" in err, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["val_split"] == 0.1
    code, _, err = run_cli(*args, "--epochs", "2", "--val-split", "0.2")  # another fraction is another run
    assert code == 2 and "--val-split cannot change when resuming" in err
