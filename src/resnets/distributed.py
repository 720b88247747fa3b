"""DistributedDataParallel from torchrun's environment: a few explicit lines and one `is_main` gate.

torchrun --nproc_per_node N -m resnets train ...   (NCCL on GPUs, gloo on CPU)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .devices import pick_device  # noqa: F401  (resnets.distributed.pick_device, as before)
from .errors import ResnetsError


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str = "auto", *, collectives: str | None = None, timeout_s: float | None = 1800.0) -> Context:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single-process context.
    Each process of a machine takes its own GPU (cuda:LOCAL_RANK); more processes than GPUs is an error.
    collectives: the group's backend (default NCCL on GPUs, gloo on CPUs); timeout_s: how long a collective
    waits for the slowest rank (None: as long as it takes, for ranks whose shares of work differ)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world <= 1:
        return Context(device=dev)
    if dev.type == "cuda":
        gpus = torch.cuda.device_count()
        if local >= gpus:
            per_node = os.environ.get("LOCAL_WORLD_SIZE", str(world))
            raise ResnetsError(
                f"torchrun started {per_node} processes on this machine, which has {gpus} GPU"
                f"{'s' if gpus != 1 else ''}: use --nproc_per_node {gpus}, or --device cpu"
            )
        if dev.index is None:
            dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        backend = collectives or ("nccl" if dev.type == "cuda" else "gloo")
        wait = timedelta(days=365) if timeout_s is None else timedelta(seconds=timeout_s)
        dist.init_process_group(backend, timeout=wait)
    ctx = Context(dist.get_rank(), dist.get_world_size(), local, dev)
    note = restart_hazard(os.environ)
    if note and ctx.is_main and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        print(f"resnets: note: {note}", file=sys.stderr, flush=True)
    return ctx


def restart_hazard(env) -> str | None:
    """What to change when torchrun's agents on several nodes may restart their workers in place (--max-restarts)
    while the workers share the agents' rendezvous store (torchrun's default): after a restart the agents' restart
    counts can differ (the agent whose worker died counts one; another may restart its workers for the new
    membership without counting), the new workers look up their peers under different keys, and the group fails
    to form (pytorch/pytorch#135712; two agents on one host: 6 of 9 restarts failed here, with the store not
    shared 10 of 10 re-formed). None where nothing can go wrong."""
    agents = int(env.get("GROUP_WORLD_SIZE", "1"))
    restarts = int(env.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if agents > 1 and restarts > 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return (
            f"torchrun may restart these {agents} nodes' workers (--max-restarts {restarts}), but a restarted group "
            "can fail to connect while they share the agents' store: export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
            "before torchrun (pytorch/pytorch#135712)"
        )
    return None


def all_reduce_sum(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, ctx: Context):
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_norm_statistics(model: torch.nn.Module, ctx: Context) -> None:
    """BatchNorm's running means and variances averaged over the ranks, in place, before an evaluation: DDP keeps
    the parameters equal, but each rank updates its running statistics from its own batches after DDP last
    broadcast rank 0's, so without this each rank would score its share of the validation set with statistics of
    its own, and none of them would be the model rank 0 saves (timm's distribute_bn, its default 'reduce')."""
    if not ctx.distributed:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats and m.running_mean is not None:
            for t in (m.running_mean, m.running_var):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                t.div_(ctx.world)


def gather_objects(obj, world: int) -> list:
    """Every rank's `obj`, in rank order, under torchrun with `world` > 1 (else [obj]): what a rank counted on its
    share of an evaluation (images, unreadable files) that a metric's own gathering does not carry."""
    if world <= 1 or not dist.is_initialized():
        return [obj]
    shares = [None] * world
    dist.all_gather_object(shares, obj)
    return shares


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def cleanup(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
