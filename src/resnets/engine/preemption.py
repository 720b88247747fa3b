"""The stops a scheduler asks for: SIGTERM (SLURM's preemption, `scancel` and the end of `--time`, a Kubernetes
eviction or rolling update, `timeout`) and SIGUSR1 (what SLURM's `--signal=B:USR1@SECONDS` sends ahead of the time
limit). Before a run's first step a stop ends it at once (a folder made for it is removed, as after Ctrl-C, so the
same command starts it again); from the first step the run finishes the optimizer step in flight, every process
agreeing on the step, writes a checkpoint (rank 0) and exits with 128 + the signal's number (143 for SIGTERM, 138
for SIGUSR1), the status a shell gives a process the signal ended. The same command with `--resume auto` continues
it exactly (docs/cluster.md)."""

from __future__ import annotations

import os
import signal
import threading

import torch

from .. import distributed
from ..data.batching import STOPS as SIGNALS  # the signals the loader's workers leave to the run
from ..errors import Stopped


class Preemption:
    """The signal handlers of one run, installed by `install` and given back by `restore`. `eager` until the run's
    first step: a signal raises Stopped where the run stands; after it, it is noted and `asked` tells the loop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.eager = True
        self.pid = os.getpid()
        self.previous: dict[int, object] = {}

    def install(self) -> "Preemption":
        """Handle SIGTERM and SIGUSR1 in this process (only the main thread may: train() called from another
        thread keeps the handlers it has)."""
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self.previous[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self.pid:  # a data-loading worker forked from the run: the run decides for it
            return
        self.signum = signum
        if self.eager:
            raise Stopped(signum, f"stopped by {signal.Signals(signum).name} before the first step")

    def asked(self, ctx: distributed.Context) -> int | None:
        """The signal every process stops for, or None: under torchrun a signal any rank received stops them all at
        the same step (a collective: called by every rank at the same points)."""
        if not ctx.distributed:
            return self.signum
        mine = torch.tensor([float(self.signum is not None)], device=ctx.device)
        if distributed.all_reduce_sum(mine, ctx).item() == 0:
            return None
        return self.signum or int(signal.SIGTERM)
