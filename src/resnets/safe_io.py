"""Writing safely: a file appears whole or not at all (a temporary beside it, fsynced, then renamed), a full disk
is said as such, and an output is checked before anything is computed (its suffix, its folder, never a training
run's own files, nothing replaced unasked). Above only errors.py: every module that writes uses it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ResnetsError

# a served or exported model's name, as a URL path (/v2/models/NAME) and a folder (a Triton repository's) carry it
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's counts as running): what decides that a lock or a
    temporary left under its pid is stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`, on failure remove it.
    Nothing half-written is ever left under the final name."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ResnetsError(f"output directory does not exist: {path.parent}")
    # the temporary name keeps the final suffix: some writers (torch.export, ONNX) look at it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode a plain open() would give
        os.replace(tmp, path)
    except BaseException as e:
        why = _out_of_space(Path(tmp)) if isinstance(e, Exception) else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if why and not isinstance(e, OSError):  # writers that hide the OS error (torch.save: "unexpected pos")
            kept = f"; the previous {path.name} is untouched" if path.exists() else ""
            raise OSError(errno.ENOSPC, f"cannot write {path}: {why}{kept}") from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path` (which must not exist, or be an empty folder); on success rename it
    to `path`, on failure remove it: a folder of outputs appears whole or not at all."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ResnetsError(f"output directory does not exist: {path.parent}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if path.is_dir():
            path.rmdir()  # empty (the caller checked): replaced by the whole folder
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _out_of_space(tmp: Path) -> str | None:
    """Why a write into `tmp` stopped short, when it was space: a full disk or the file-size limit (ulimit -f)."""
    try:
        size = tmp.stat().st_size
        if shutil.disk_usage(tmp.parent).free < 1 << 20:
            return "no space left on the device"
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if soft != resource.RLIM_INFINITY and size + (1 << 16) >= soft:
            return f"the file-size limit of {soft:,} bytes was reached (ulimit -f)"
    except (OSError, ImportError, ValueError):
        pass
    return None


# what a training run keeps in its folder: never replaced by another command's output
RUN_FILES = frozenset(
    {
        "config.json",
        "metrics.jsonl",
        "metrics.csv",
        "curve.jsonl",
        "last.pt",
        "best.pt",
        "model.safetensors",
        "eval.json",
        "confusion.json",
        "confusion.png",
        "curves.png",
        ".lock",
    }
)


def check_output(
    path: str | os.PathLike, suffixes: tuple[str, ...], *, force: bool = False, what: str = "output"
) -> Path:
    """An output file checked before anything is computed: its suffix, its folder, and that it replaces nothing
    a user did not ask to replace (with --force: any file but a training run's own)."""
    path = Path(path)
    if path.is_dir():
        raise ResnetsError(f"{path} is a folder; give the {what} a file name ending in {suffixes[0]}")
    if path.suffix.lower() not in suffixes:
        raise ResnetsError(f"the {what} is a {' or '.join(suffixes)} file; got {path.name}")
    if not path.parent.is_dir():
        raise ResnetsError(f"output directory does not exist: {path.parent}")
    if path.name in RUN_FILES and (path.parent / "config.json").is_file():
        raise ResnetsError(f"{path} belongs to the training run in {path.parent}; write the {what} elsewhere")
    if path.exists() and not force:
        raise ResnetsError(f"{path} exists; pass --force to replace it")
    return path


def is_run_folder(path: str | os.PathLike) -> bool:
    """A training run's folder: its checkpoints, metrics or lock, or a resnets training config.json (which names
    a "model"; timm's config.json names an "architecture")."""
    p = Path(path)
    if any((p / f).exists() for f in ("last.pt", "best.pt", "metrics.jsonl", ".lock")):
        return True
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model" in cfg and "architecture" not in cfg


def check_output_folder(path: str | os.PathLike, *, force: bool = False, what: str = "output") -> Path:
    """An output folder checked before anything is computed, as `check_output` checks a file: never a training
    run's folder (not even with --force: its config and weights are what --resume reads), and a folder with files
    in it only with --force."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ResnetsError(f"{path} is a file; the {what} is a folder")
    if not path.parent.is_dir():
        raise ResnetsError(f"output directory does not exist: {path.parent}")
    if path.is_dir() and is_run_folder(path):
        raise ResnetsError(f"{path} is a training run's folder; write the {what} elsewhere")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ResnetsError(
            f"{path} exists and holds files; give a new folder for the {what}, or --force to replace them"
        )
    return path
