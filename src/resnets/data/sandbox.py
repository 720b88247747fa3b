"""Decoding in a sandbox: a pool of worker processes (`python -m resnets.data.decoder`: Pillow and numpy, no
torch), each under an address-space limit set to what the image in hand needs (RLIMIT_AS), unable to write files,
and under a time cap enforced from here: a worker that overruns it is killed and replaced, and so is one that hit
its memory cap or died. That image gets one BadSample; no other image is affected.

One pool per process (a loader worker gets its own), one worker per core by default ($RESNETS_DECODE_WORKERS), so
a process's images are decoded in parallel; threads share it (the server's decode threads). Workers start when
first needed and stop with the process (or when their pipe closes). $RESNETS_DECODE_TIMEOUT (seconds, default 20)
sets the time cap.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..home import setting

DEFAULT_TIMEOUT = 20.0


def decode_timeout() -> float:
    """$RESNETS_DECODE_TIMEOUT in seconds (default 20); a value that is not a number of seconds from 0.1 to 3600
    is refused in one line."""
    return setting(
        "RESNETS_DECODE_TIMEOUT", DEFAULT_TIMEOUT, "give seconds from 0.1 to 3600", low=0.1, high=3600, low_ok=True
    )


class Failed(Exception):
    """The worker did not answer: `kind` (datasets.BAD_KINDS) and `reason` for the image it was decoding."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the resnets package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


class Worker:
    """One decoder process and its pipes."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resnets.data.decoder"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_env(),
            close_fds=True,
        )

    def call(self, req: dict, data: bytes, timeout: float) -> tuple[dict, bytearray]:
        head = json.dumps(req).encode()
        self.timeout, deadline = timeout, time.monotonic() + timeout
        try:
            self.proc.stdin.write(struct.pack("<I", len(head)) + head + struct.pack("<Q", len(data)))
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise Failed("corrupt_image", self._death()) from None
        (n,) = struct.unpack("<I", self._read(4, deadline))
        reply = json.loads(self._read(n, deadline))
        (m,) = struct.unpack("<Q", self._read(8, deadline))
        return reply, self._read(m, deadline)

    def _read(self, n: int, deadline: float) -> bytearray:
        """`n` bytes from the worker, read into one buffer (the pixels are not copied again: a tensor takes it)."""
        fd, out, got = self.proc.stdout.fileno(), bytearray(n), 0
        view = memoryview(out)
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise Failed(
                    "too_slow", f"decoding took longer than the time cap of {self.timeout:g} s (RESNETS_DECODE_TIMEOUT)"
                )
            k = os.readv(fd, [view[got : min(n, got + (1 << 22))]])
            if not k:
                raise Failed("corrupt_image", self._death())
            got += k
        return out

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "the decoder stopped answering"
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            return f"the decoder was stopped by {name} (a cap, or a crash in the image's decoder)"
        return f"the decoder exited ({code})"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class Pool:
    """Decoder workers for one process: `decode(req, data)` takes an idle worker (starting one while fewer than
    `size` run), and gives it back unless it failed."""

    def __init__(self, size: int):
        self.size, self.pid = max(1, size), os.getpid()
        self.idle: list[Worker] = []
        self.running = 0
        self.peak_mb = 0  # the largest resident memory any worker reported (its VmHWM)
        self.cond = threading.Condition()

    def _take(self) -> Worker:
        with self.cond:
            while not self.idle and self.running >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.running += 1
        try:
            return Worker()
        except BaseException:
            with self.cond:
                self.running -= 1
                self.cond.notify()
            raise

    def _give_back(self, worker: Worker, keep: bool) -> None:
        if not keep:
            worker.stop()
        with self.cond:
            if keep:
                self.idle.append(worker)
            else:
                self.running -= 1
            self.cond.notify()

    def decode(self, req: dict, data: bytes, timeout: float | None = None) -> tuple[dict, bytearray]:
        """(reply, pixels) for one image, or Failed. The worker that failed is replaced."""
        worker = self._take()
        keep = False
        try:
            reply, pixels = worker.call(req, data, decode_timeout() if timeout is None else timeout)
            self.peak_mb = max(self.peak_mb, int(reply.get("peak_mb") or 0))
            keep = worker.alive() and not reply.get("exit")  # it exits after a cap: never handed out again
            return reply, pixels
        finally:
            self._give_back(worker, keep)

    def close(self) -> None:
        with self.cond:
            idle, self.idle = self.idle, []
            self.running -= len(idle)
        for w in idle:
            w.stop()


_POOL: Pool | None = None
_LOCK = threading.Lock()


def workers_default() -> int:
    """$RESNETS_DECODE_WORKERS, else one per core (one in a loader worker process: the loader runs several)."""
    try:
        n = int(os.environ.get("RESNETS_DECODE_WORKERS", "0"))
    except ValueError:
        n = 0
    if n > 0:
        return n
    if "torch" in sys.modules:
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None:
            return 1
    return usable_cores()


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pool() -> Pool:
    """This process's pool (a forked child makes its own: the parent's pipes are not its to use)."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = Pool(workers_default())
        return _POOL


@atexit.register
def _close() -> None:
    if _POOL is not None and _POOL.pid == os.getpid():
        _POOL.close()
