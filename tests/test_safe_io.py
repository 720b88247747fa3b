"""resnets.safe_io: writes land whole or not at all, with the mode a plain open() gives, and outputs are checked
before anything is computed: never a training run's own files, nothing replaced unasked."""

import os
import stat

import pytest

from resnets.errors import ResnetsError
from resnets.safe_io import RUN_FILES, atomic_path, check_output, check_output_folder, is_run_folder


def test_a_write_lands_whole_with_the_usual_mode_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.bin"]  # no temporary left
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".bin" and tmp != target
        tmp.write_bytes(b"new")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(ResnetsError, match="output directory does not exist"):
        with atomic_path(tmp_path / "nope" / "x.bin"):
            pass


def test_an_output_file_is_checked_before_anything_is_computed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "resnet20"}')
    with pytest.raises(ResnetsError, match="belongs to the training run"):
        check_output(run / "model.safetensors", (".safetensors",), force=True)  # not even with --force
    with pytest.raises(ResnetsError, match="is a .onnx file"):
        check_output(tmp_path / "m.pt", (".onnx",))
    with pytest.raises(ResnetsError, match="is a folder"):
        check_output(run, (".onnx",))
    (tmp_path / "m.onnx").write_bytes(b"mine")
    with pytest.raises(ResnetsError, match="exists; pass --force"):
        check_output(tmp_path / "m.onnx", (".onnx",))
    assert check_output(tmp_path / "m.onnx", (".onnx",), force=True) == tmp_path / "m.onnx"
    assert "model.safetensors" in RUN_FILES and "last.pt" in RUN_FILES


def test_an_output_folder_is_never_a_runs_and_not_full_unless_forced(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    assert is_run_folder(run)
    timm = tmp_path / "timm"
    timm.mkdir()
    (timm / "config.json").write_text('{"architecture": "resnet50", "model": "x"}')
    assert not is_run_folder(timm)  # timm's config.json names an architecture
    with pytest.raises(ResnetsError, match="training run's folder"):
        check_output_folder(run, force=True)
    with pytest.raises(ResnetsError, match="holds files"):
        check_output_folder(timm)
    assert check_output_folder(timm, force=True) == timm
    assert check_output_folder(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "f").write_text("")
    with pytest.raises(ResnetsError, match="is a file"):
        check_output_folder(tmp_path / "f")


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path):
    from resnets.safe_io import atomic_dir

    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "failed") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("stopped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no folder, no temporary left
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:
        (tmp / "b.txt").write_text("b")
    assert (tmp_path / "empty" / "b.txt").is_file()


def test_process_alive_tells_a_running_process_from_a_gone_one():
    """The one liveness check behind every stale lock and temporary (shard cache, shard writer, run folder)."""
    import os
    import subprocess
    import sys

    from resnets.safe_io import process_alive

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert process_alive(os.getpid()) and not process_alive(int(done.stdout))  # reaped: its pid is free
