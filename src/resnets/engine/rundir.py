"""The run directory: claimed by one run at a time, named uniquely, resumed with its overrides kept.

- A lock (`RUN/.lock`, an advisory `flock` the operating system drops when the process ends, even by SIGKILL; on a
  filesystem without flock, the file's text and a heartbeat) is held for the whole run; a second writer is refused
  with the holder's pid and host, a dead holder's lock taken over.
- A run without --name gets `<model>-<dataset>-<time>`, with `-2`, `-3`, ... when that folder is taken (claimed by
  an atomic mkdir, so two runs started in the same second get two folders).
- A resume may change only the keys in RESUMABLE (how long, where and how it runs); what it changes is written to
  config.json, so the next resume keeps it. A command or a URL in config.json (a `pipe:` or https:// --data) is
  used only when the command line gives it again (config.only_from_command_line).
- A run that stops before its first checkpoint leaves nothing behind: its folder is removed. One killed before it
  (SIGKILL: no chance to clean up) is begun again by --resume, from its config.json.
- `--resume auto` continues the run named by --out/--name if it is there and starts it if not, so one command line
  serves the first start and every restart (torchrun --max-restarts, a SLURM requeue, a Kubernetes restart); the
  command's config must be the run's, but for the keys a resume may change.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .. import distributed, safe_io
from ..config import TrainConfig, apply, from_dict, only_from_command_line, refuse_foreign_augment
from ..errors import ResnetsError, Stopped
from ..weights.files import load_checkpoint

log = logging.getLogger("resnets")
LOCK = ".lock"
# keys a resume may change: the length of the run and how, where and how visibly it runs
# keys whose default is resolved when a run starts and recorded resolved in config.json: the default on a resume's
# command line (the same command again) means what the run resolved. val_split 0: hold out 10% of each class when the
# data has no validation set (the run records 0.1); model "": the architecture the weights are for
RESOLVED = {"val_split": 0.0, "model": ""}

RESUMABLE = frozenset(
    {
        "epochs",
        "iterations",
        "progress",
        "device",
        "workers",
        "loader",
        "cuda_graph",
        "compile",
        "tensorboard",
        "checkpoint_steps",
        "eval_every",
        "curve_steps",
        "strict_data",
        "ten_crop",
        "tta",
        "data",
        "val_data",
        "download",
        "amp",
        "channels_last",
        "early_stop",
    }
)


HEARTBEAT_S = 30.0  # without flock, the holder touches the lock file this often
STALE_S = 180.0  # ... and a holder on another host whose touch is older than this is taken for dead


class RunLock:
    """An exclusive lock on RUN/.lock, which holds "pid N on HOST since TIME"; released by `release()` or when the
    process ends in any way.

    Where the filesystem has flock (local disks, NFSv4, Lustre, GPFS), the operating system holds it and drops it
    when the holder ends, even by SIGKILL. Where it has none (some network and FUSE mounts), the lock is the file's
    text and a heartbeat: the holder touches the file every HEARTBEAT_S; a holder on this host whose process is
    gone, or one on another host silent for STALE_S, is taken over (and said so); a live one never is."""

    def __init__(self, run_dir: Path, mark: bool = True):
        """mark: write who holds it now (else call `mark()` once the folder is known to be ours to use)."""
        self.fd: int | None = None
        self.path = run_dir / LOCK
        self._beat: threading.Event | None = None
        try:
            import fcntl
        except ImportError:  # no flock on this platform: the heartbeat
            fcntl = None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ResnetsError(f"cannot write in {run_dir}: {e.strerror}") from None
        try:
            if fcntl is None:
                raise OSError(errno.ENOLCK, "no flock")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                self._refuse(_holder(self.path) or "another process")
            self._beat = threading.Event()  # no locks on this filesystem: the text and its heartbeat are the lock
            holder = _holder(self.path)
            why = _dead(holder, self.path) if holder else None
            if holder and why is None:
                os.close(fd)
                self._refuse(holder)
            if holder:
                log.warning("%s: taking over the lock of %s (%s)", self.path.parent, holder, why)
        self.fd = fd
        if mark:
            self.mark()

    def _refuse(self, holder: str) -> None:
        raise ResnetsError(
            f"{self.path.parent} is in use by a run that is still going ({holder}); wait for it to end, "
            "or pick another --name"
        )

    def mark(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.write(self.fd, _me().encode())
            if self._beat is not None and not self._beat.is_set():
                threading.Thread(target=self._heartbeat, name="resnets-lock", daemon=True).start()

    def _heartbeat(self) -> None:
        while not self._beat.wait(HEARTBEAT_S):
            try:
                os.utime(self.fd)
            except OSError:
                pass

    def release(self) -> None:
        if self.fd is not None:
            if self._beat is not None:  # the text is the lock: cleared, as the last thing written
                self._beat.set()
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _holder(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:200]
    except OSError:
        return ""


def _dead(holder: str, path: Path) -> str | None:
    """Why the holder written in a lock file without flock is gone (its process, on this host; its heartbeat, on
    another), or None while it runs (unknown text is taken as running)."""
    import re

    m = re.match(r"pid (\d+) on (\S+) since", holder)
    if m is None:
        return None
    if m[2] == socket.gethostname():
        return None if safe_io.process_alive(int(m[1])) else "its process is gone"
    silent = time.time() - path.stat().st_mtime
    return f"no heartbeat for {silent:.0f} s" if silent >= STALE_S else None


def _mkdir(path: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if exist_ok or not path.is_dir():
            raise ResnetsError(f"{path} exists and is not a folder") from None
        raise
    except OSError as e:
        raise ResnetsError(f"cannot create {path}: {e.strerror}") from None


PATH_KEYS = ("weights", "data", "val_data")  # keys that may name local files or folders


def absolute_paths(cfg: TrainConfig) -> dict[str, str]:
    """The path keys that name an existing local file or folder, made absolute (a registered name, a Hub name, a
    URL or a pipe: are kept as they are)."""
    return {k: os.path.abspath(v) for k in PATH_KEYS if (v := getattr(cfg, k)) and os.path.exists(v)}


def _same_place(a: Any, b: Any) -> bool:
    """Two values of a path key that name the same existing file or folder (relative from here, absolute)."""
    try:
        return bool(a and b) and os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _name_the_writer(run_dir: Path) -> None:
    """A run still writing in `run_dir` named in one line (RunLock's refusal), before anything else is said."""
    if (run_dir / LOCK).is_file():
        RunLock(run_dir, mark=False).release()


def _holds_a_run(run_dir: Path) -> ResnetsError:
    return ResnetsError(
        f"run directory {run_dir} already holds a run; resume it with --resume {run_dir} or pick another --name"
    )


def check_name_free(cfg: TrainConfig, resume: Path | None) -> None:
    """A new run's --name that holds another run, refused before the data and the model are read (claim refuses
    it again, under the lock; this says it before the run's first lines), a run still writing there named first."""
    run_dir = Path(cfg.out) / cfg.name if cfg.name else None
    if resume is None and run_dir is not None and (run_dir / "config.json").exists():
        _name_the_writer(run_dir)
        raise _holds_a_run(run_dir)


def claim(cfg: TrainConfig, resume: Path | None) -> tuple[Path, RunLock, bool]:
    """(run directory, its lock, whether this run made the folder). Refuses a folder that holds another run or
    that another process is writing."""
    if resume is not None:
        lock = RunLock(resume)
        sweep(resume)
        return resume, lock, False
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ResnetsError(f"--out {out} is a file, not a folder")
    if cfg.name:
        run_dir = out / cfg.name
        fresh = not run_dir.exists()
        _mkdir(run_dir, exist_ok=True)
        lock = RunLock(run_dir, mark=False)
        sweep(run_dir)  # a run killed while writing its first config.json left only a temporary: it never began
        if any(p.name != LOCK for p in run_dir.iterdir()):
            lock.release()
            raise _holds_a_run(run_dir)
        lock.mark()
        return run_dir, lock, fresh
    base = f"{cfg.model or 'model'}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        run_dir = out / (base if k == 1 else f"{base}-{k}")
        try:
            _mkdir(run_dir, exist_ok=False)
        except FileExistsError:
            continue
        return run_dir, RunLock(run_dir), True
    raise ResnetsError(f"no free run name under {out} for {base}")


def sweep(run_dir: Path) -> list[str]:
    """Remove the temporaries of writes a killed run never finished (`.last.pt.XXXX.tmp.pt`): called with the lock
    held, so no writer of ours is using them. Returns their names."""
    gone = []
    for p in run_dir.glob(".*.tmp*"):
        if p.is_file() and p.name.split(".")[1] in {n.split(".")[0] for n in safe_io.RUN_FILES}:
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def discard(run_dir: Path, why: BaseException | None = None) -> bool:
    """Remove a run folder that never got a checkpoint (only what a run writes is in it); a stop asked for (Ctrl-C)
    is told that nothing was kept. Returns whether it was removed."""
    if (run_dir / "last.pt").exists():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    if isinstance(why, (KeyboardInterrupt, Stopped)):
        log.warning(
            "stopped before the first checkpoint: nothing was kept (%s removed); start it again to train", run_dir
        )
    return True


def existing(cfg: TrainConfig) -> Path | None:
    """`--resume auto`: the folder `out/name` when it holds a run to continue (its config.json), else None: the run
    is started there. The same command can so be run again by a scheduler's restart, and always continues."""
    if not cfg.name:
        raise ResnetsError("--resume auto needs --name: the run to continue, or to start when it is not there yet")
    run_dir = Path(cfg.out) / cfg.name
    return run_dir if (run_dir / "config.json").is_file() else None


def load_resume(resume: Path, overrides: dict[str, Any]) -> tuple[TrainConfig, dict | None, dict[str, Any]]:
    """(the config to go on with, the checkpoint (None: there is none yet), the overrides that change it). Only
    RESUMABLE keys may change."""
    if not resume.is_dir():
        raise ResnetsError(f"{resume} is not a run directory")
    _name_the_writer(resume)
    if not (resume / "config.json").is_file():
        began = (
            " (a run killed before it wrote its config: start it again with --name)" if (resume / LOCK).exists() else ""
        )
        raise ResnetsError(f"{resume} is not a run directory (no config.json){began}")
    try:
        saved = json.loads((resume / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a table")
    except (ValueError, UnicodeDecodeError) as e:
        raise ResnetsError(
            f"{resume}/config.json is damaged ({str(e).splitlines()[0][:80]}); the run cannot be resumed"
        ) from None
    # a command or a URL the file holds is used only when the command line says it (again); its `out` is not used:
    # the run folder is `resume`
    only_from_command_line({k: v for k, v in saved.items() if k != "out"}, f"{resume}/config.json", overrides)
    cfg = from_dict(saved)
    state = None
    if (resume / "last.pt").is_file():
        state = load_checkpoint(resume / "last.pt")
        arch = state.get("resnets", {}).get("architecture")
        wanted = overrides.get("model") or cfg.model  # "": the weights' (recorded as the run resolved it, or not)
        if wanted and arch != wanted:
            raise ResnetsError(
                f"the checkpoint in {resume} is a {arch} model, not {wanted}; it cannot be resumed as {wanted}"
            )
    else:  # killed before its first checkpoint (a SIGKILL leaves no chance to clean up): begin it again
        log.warning("%s was stopped before its first checkpoint; training it from the beginning", resume)
    new = apply(TrainConfig(**cfg.to_dict()), overrides, "the command line")
    if "augment" in overrides:  # said again: a detector's paper-cifar is refused, not read as the default
        refuse_foreign_augment(new)
    new = new.validate()
    changed = {}
    for k in overrides:
        key = k.replace("-", "_")
        if key in RESOLVED and getattr(new, key) == RESOLVED[key]:  # the default, which the run resolved and recorded
            setattr(new, key, getattr(cfg, key))
        if key in PATH_KEYS and _same_place(getattr(new, key), getattr(cfg, key)):  # the recorded path, said again
            setattr(new, key, getattr(cfg, key))
        if getattr(new, key) != getattr(cfg, key):
            changed[key] = getattr(new, key)
    refused = sorted(k for k in changed if k not in RESUMABLE)
    if refused:
        k = refused[0]
        raise ResnetsError(
            f"--{k.replace('_', '-')} cannot change when resuming (the run was trained with "
            f"{getattr(cfg, k)!r}); start a new run to change it"
        )
    return new, state, changed


def record(run_dir: Path, cfg: TrainConfig) -> None:
    """config.json: the resolved config (after a resume, with what the resume changed)."""
    with safe_io.atomic_path(run_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2))


def _claim_run_dir(cfg: TrainConfig, ctx: distributed.Context, resume: Path | None) -> tuple[Path, Any, bool]:
    """Rank 0 claims the run directory (its lock, a unique name); all ranks follow. (path, lock, fresh)."""
    decision: tuple[str, str | None, bool] = ("", None, False)
    lock = None
    if ctx.is_main:
        try:
            path, lock, fresh = claim(cfg, resume)
            decision = (str(path), None, fresh)
        except ResnetsError as err:
            decision = ("", str(err), False)
    decision = distributed.broadcast_object(decision, ctx)
    if decision[1] is not None:
        raise ResnetsError(decision[1])
    return Path(decision[0]), lock, decision[2]


def claim_and_record(cfg: TrainConfig, ctx: distributed.Context, resume: Path | None, changed: Any):
    """The first write: the run directory, claimed with its lock, and config.json (on a resume, again when
    the resume changed keys), every process past it; a failure here (or a stop, Ctrl-C or SIGTERM, while the others
    catch up) releases the lock and discards a folder this call made."""
    run_dir, lock, fresh = _claim_run_dir(cfg, ctx, resume)
    try:
        if ctx.is_main and (resume is None or changed):
            record(run_dir, cfg)
        distributed.barrier(ctx)
    except BaseException as e:
        if lock is not None:
            lock.release()
        if fresh and ctx.is_main:
            discard(run_dir, e)
        raise
    return run_dir, lock, fresh
