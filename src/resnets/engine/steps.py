"""One training step: forward, loss, backward and (every `accum_steps` batches) the optimizer step.

- `EagerStep`: the step as PyTorch runs it, with DDP's no_sync between accumulated batches, gradient clipping
  and fp16 loss scaling.
- `GraphStep` (CUDA): the same step captured once as a CUDA graph and replayed for every batch. The paper's CIFAR
  nets at batch 128 launch thousands of small kernels a step and leave a GPU mostly idle; a replay launches them
  all at once. It needs static shapes and no host synchronisation inside the step, so it is used where those hold
  (one process, no accumulation, no fp16 scaler, no stochastic depth) and the eager step elsewhere.

The loss is the task's (tasks/: its named losses, summed). Both return the batch's statistics as one float64
tensor on the device: [loss x n, top-1 hits (0 where the task counts none), n].
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..devices import autocast
from ..errors import ResnetsError

if TYPE_CHECKING:
    from .state import Run

log = logging.getLogger("resnets")


def _stats(loss: torch.Tensor, hits: torch.Tensor, n: int) -> torch.Tensor:
    count = torch.full((), n, dtype=torch.float64, device=loss.device)
    return torch.stack([loss.detach().double() * count, hits.to(loss.device).double(), count])


def _loss(run: "Run", net: nn.Module, x, target, y) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's named losses summed, and the batch's top-1 hits."""
    named, hits = run.task.forward(run, net, x, target, y)
    return sum(named.values()), hits


def make_optimizer(groups: list[dict], cfg, device: torch.device, *, capturable: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over `groups`. capturable: every step's work stays on the GPU
    (the learning rate a device tensor the schedule writes into), as a CUDA graph needs."""
    if cfg.optimizer == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        extra = {"fused": True} if capturable else {}
        opt = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=cfg.momentum, nesterov=nesterov, **extra)
    else:
        extra = {"capturable": True} if capturable else {}
        opt = torch.optim.AdamW(groups, lr=groups[0]["lr"], **extra)
    if capturable:
        lr_on_device(opt, device)
    return opt


def lr_on_device(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's learning rate as a 0-d tensor on `device` (the schedulers fill it in place)."""
    for g in opt.param_groups:
        g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=device)


def lr_as_float(state: dict) -> dict:
    """An optimizer state dict with plain float learning rates (a checkpoint resumable anywhere)."""
    for g in state["param_groups"]:
        for k in ("lr", "initial_lr", "max_lr", "min_lr"):
            if isinstance(g.get(k), torch.Tensor):
                g[k] = float(g[k])
    return state


def graph_blockers(cfg, device: torch.device, world: int, amp: str) -> list[str]:
    """Why the whole step cannot be one CUDA graph here (empty: it can)."""
    why = []
    if device.type != "cuda":
        why.append("the device is not a GPU")
    if world > 1:
        why.append("DDP's gradient all-reduce runs outside a graph")
    if cfg.accum_steps > 1:
        why.append("gradient accumulation")
    if amp == "fp16":
        why.append("fp16 loss scaling checks for overflow on the host (use bf16)")
    if cfg.drop_path_rate:
        why.append("stochastic depth draws from a generator that a replay cannot reseed per step")
    if cfg.compile:
        why.append("--compile (choose one of compile and CUDA graphs)")
    return why


def use_graph(cfg, device: torch.device, world: int, amp: str) -> bool:
    if cfg.cuda_graph == "off":
        return False
    why = graph_blockers(cfg, device, world, amp)
    if why and cfg.cuda_graph == "on":
        raise ResnetsError(f"--cuda-graph on cannot be used here: {'; '.join(why)}")
    return not why


class EagerStep:
    def __init__(self, run: "Run"):
        self.run = run

    def __call__(
        self, x: torch.Tensor, target: torch.Tensor, y: torch.Tensor, sync: bool, *, keep_grads: bool = False
    ) -> torch.Tensor:
        """keep_grads: zero the gradients in place after the step instead of dropping them."""
        r, cfg = self.run, self.run.cfg
        net = r.net
        no_sync = net.no_sync() if r.ctx.distributed and not sync and hasattr(net, "no_sync") else nullcontext()
        with no_sync:
            with autocast(r.ctx.device, r.amp):
                loss, hits = _loss(r, net, x, target, y)
            r.scaler.scale(loss / cfg.accum_steps).backward()
        if sync:
            if cfg.clip_grad > 0:
                r.scaler.unscale_(r.opt)
                nn.utils.clip_grad_norm_(r.core.parameters(), cfg.clip_grad)
            r.scaler.step(r.opt)
            r.scaler.update()
            r.opt.zero_grad(set_to_none=not keep_grads)
        return _stats(loss, hits, len(x))


class GraphStep:
    """Warm-up steps run eagerly on a side stream (real batches: they train), then the step is captured with
    static input buffers and replayed; each batch is copied into the buffers first. A batch of another shape
    (images skipped as unreadable) takes the eager step, on the same parameters and optimizer state."""

    warmup = 3

    def __init__(self, run: "Run"):
        self.run, self.eager = run, EagerStep(run)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def _body(self, x: torch.Tensor, target: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = self.run
        with autocast(r.ctx.device, r.amp, cache=False):  # autocast's weight cache must not outlive a capture
            loss, hits = _loss(r, r.net, x, target, y)
        loss.backward()
        if r.cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(r.core.parameters(), r.cfg.clip_grad, foreach=True)
        r.opt.step()
        return _stats(loss, hits, len(x))

    def __call__(self, x: torch.Tensor, target: torch.Tensor, y: torch.Tensor, sync: bool) -> torch.Tensor:
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                stats = self.eager(x, target, y, sync)
            torch.cuda.current_stream().wait_stream(side)
            return stats
        if self.graph is None:
            try:
                self._capture(x, target, y)
            except RuntimeError as e:  # a model or op that cannot be captured: go on eagerly
                log.warning(
                    "the training step could not be captured as a CUDA graph (%s); running it eagerly",
                    str(e).splitlines()[0][:200],
                )
                self.run.opt.zero_grad(set_to_none=True)
                self.graph, self.warmup = None, 10**18
                return self.eager(x, target, y, sync)
        if x.shape != self.x.shape or target.shape != self.target.shape:
            # the graph owns the gradient tensors (holding the last replay's): zeroed and kept, never dropped
            self.run.opt.zero_grad(set_to_none=False)
            return self.eager(x, target, y, True, keep_grads=True)
        self.x.copy_(x)
        self.target.copy_(target)
        self.y.copy_(y)
        self.graph.replay()
        return self.stats.clone()

    def _capture(self, x: torch.Tensor, target: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.target, self.y = x.clone(), target.clone(), y.clone()
        self.run.opt.zero_grad(set_to_none=True)  # the backward inside the graph allocates (not accumulates) them
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread may call CUDA while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.stats = self._body(self.x, self.target, self.y)
        self.graph = graph
        log.info("training step captured as a CUDA graph (batch %s)", tuple(x.shape))


def make_step(run: "Run"):
    return GraphStep(run) if run.graph else EagerStep(run)
