"""resnets.engine.rundir: a run's folder is claimed once, named without collisions, and never left half-made."""

import subprocess
import sys
import time

import pytest
from conftest import TINY_RUN, run_cli

from resnets import config as C
from resnets.errors import ResnetsError


def _one_line(code, err, needle):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def _slow_run(out, name) -> tuple[subprocess.Popen, list]:
    """A training run in a process of its own, returned once it holds its folder's lock (with its arguments)."""
    slow = [*TINY_RUN, "--synthetic-samples", "4096", "--epochs", "3", "--out", out, "--name", name]
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


def test_a_run_killed_while_writing_its_first_config_is_begun_again(tmp_path):
    """A SIGKILL during the first config.json write leaves the lock file and a temporary: `train --name` said the
    folder held a run and `--resume` that it was not one; a folder with no config and no checkpoint never began."""
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text("pid 1 on gone since then")
    (run / ".config.json.a8f3.tmp.json").write_text('{"model": "resn')
    code, _, err = run_cli("train", "--resume", run)
    _one_line(code, err, "a run killed before it wrote its config")
    code, _, err = run_cli("train", *TINY_RUN, "--out", tmp_path, "--name", "r")
    assert code == 0, err
    assert (run / "last.pt").is_file() and not list(run.glob(".config.json.*"))


def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_kept(tmp_path):
    import signal

    p, _ = _slow_run(tmp_path, "stopped")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1].decode()
    assert p.returncode == 130, err
    assert "nothing was kept" in err and not (tmp_path / "stopped").exists(), err
