"""resnets.engine.rundir: a run's folder is claimed once, named without collisions, and never left half-made."""

import signal
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
        [sys.executable, "-m", "resnets", "train", *slow],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # Ctrl-C as a terminal sends it: a suite started in the background (nohup, `&` in a script) has SIGINT
        # ignored, which its children inherit, and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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
    p, _ = _slow_run(tmp_path, "stopped")
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1].decode()
    assert p.returncode == 130, err
    assert "nothing was kept" in err and not (tmp_path / "stopped").exists(), err


def test_resume_auto_starts_the_run_then_continues_it_with_the_same_command(tmp_path):
    """One command line for the first start and every restart: the run is begun when its folder is not there,
    continued when it is; a key a resume may not change is refused in one line, and --name is needed."""
    import json

    same = [*TINY_RUN, "--out", tmp_path, "--name", "r", "--resume", "auto"]
    code, _, err = run_cli("train", *same)
    assert code == 0 and "resuming" not in err, err
    epochs = lambda: [json.loads(line)["epoch"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert epochs() == [1]
    code, _, err = run_cli("train", *same, "--epochs", 2)  # a longer run asked for: continued, not begun again
    assert code == 0 and "resuming" in err and epochs() == [1, 2], err
    code, _, err = run_cli("train", *same, "--epochs", 2)  # a requeue of a finished run: nothing trained again
    assert code == 0 and epochs() == [1, 2], err
    code, _, err = run_cli("train", *same, "--epochs", 2, "--lr", 0.5)
    _one_line(code, err, "--lr cannot change when resuming")
    code, _, err = run_cli("train", *TINY_RUN, "--out", tmp_path, "--resume", "auto")
    _one_line(code, err, "--resume auto needs --name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_without_flock_the_lock_is_a_heartbeat_taken_over_only_from_the_dead(tmp_path, monkeypatch, caplog):
    """A filesystem without flock (ENOLCK): a live holder is refused, on this host (its process runs) or on
    another (its heartbeat is fresh); a holder whose process is gone, or another host's silent for STALE_S, is
    taken over and said so; the holder's heartbeat keeps the file's time fresh, and release clears the text."""
    import errno
    import fcntl
    import os
    import socket

    from resnets.engine import rundir

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(rundir, "HEARTBEAT_S", 0.05)
    lock_file = tmp_path / ".lock"
    held = rundir.RunLock(tmp_path)
    assert lock_file.read_text().startswith(f"pid {os.getpid()} on {socket.gethostname()}")
    with pytest.raises(ResnetsError, match=f"in use by a run that is still going \\(pid {os.getpid()} on"):
        rundir.RunLock(tmp_path)
    os.utime(lock_file, (0, 0))
    time.sleep(0.3)
    assert time.time() - lock_file.stat().st_mtime < 5  # the heartbeat touched it again
    held.release()
    assert lock_file.read_text() == ""
    rundir.RunLock(tmp_path).release()  # released: free again

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file.write_text(f"pid {dead.stdout.strip()} on {socket.gethostname()} since 2026-01-01 00:00:00")
    with caplog.at_level("WARNING", logger="resnets"):
        rundir.RunLock(tmp_path).release()
    assert "taking over the lock of pid" in caplog.text and "its process is gone" in caplog.text

    lock_file.write_text("pid 1 on another-node since 2026-01-01 00:00:00")
    with pytest.raises(ResnetsError, match="pid 1 on another-node"):  # its heartbeat is fresh: alive
        rundir.RunLock(tmp_path)
    old = time.time() - rundir.STALE_S - 5
    os.utime(lock_file, (old, old))
    caplog.clear()
    with caplog.at_level("WARNING", logger="resnets"):
        taken = rundir.RunLock(tmp_path)
    assert "no heartbeat for" in caplog.text and lock_file.read_text().startswith(f"pid {os.getpid()}")
    taken.release()


def test_with_flock_a_killed_holders_lock_is_free_and_a_live_one_refused(tmp_path):
    """flock: the operating system drops a SIGKILLed holder's lock, so the next run takes it without a word; while
    the holder lives, it is refused with its pid."""
    from resnets.engine import rundir

    code = "import sys, time; from pathlib import Path; from resnets.engine.rundir import RunLock; "
    code += "RunLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ResnetsError, match=f"pid {holder.pid} on"):
            rundir.RunLock(tmp_path)
        holder.kill()
        holder.wait(30)
        rundir.RunLock(tmp_path).release()
    finally:
        holder.kill()


@pytest.mark.parametrize(
    "key, value, what",
    [
        ("data", "pipe:touch {marker}; cat train-000000.tar", "runs a command"),
        ("val_data", "pipe:touch {marker}; cat val-000000.tar", "runs a command"),
        ("data", "https://127.0.0.1:9/train-{{000000..000003}}.tar", "fetches a URL"),
    ],
)
def test_a_run_folders_config_never_runs_or_fetches_on_resume(tmp_path, key, value, what):
    """Issue 36: a run's config.json is a file like any other: a command or a URL in it is used on --resume only
    when the command line gives it again; else one line, and nothing ran (no marker file). Its `out` is not used
    (the run folder is the one resumed), so an absolute one is no reason to refuse."""
    import json

    from resnets.engine.rundir import load_resume

    marker = tmp_path / "PWNED"
    value = value.format(marker=marker)
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    saved = C.resolve(overrides=dict(model="resnet20", dataset="wds", data="shards", out=str(tmp_path / "runs")))
    (run / "config.json").write_text(json.dumps(saved.to_dict() | {key: value}))
    code, _, err = run_cli("train", "--resume", run)
    _one_line(code, err, f"config.json's {key} {what}")
    assert f"give --{key.replace('_', '-')} there" in err and not marker.exists()
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing written either
    # given again on the command line: resumed with it (nothing is run by reading the config)
    cfg, state, _ = load_resume(run, {key: value})
    assert getattr(cfg, key) == value and state is None and not marker.exists()
