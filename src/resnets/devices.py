"""Where and at what precision a model runs: the device asked for (checked against this machine), whether it
computes bf16 natively, "auto" mixed precision resolved, autocast, and the precisions inference can run at; and the
host memory freed tensors leave, kept for the next step to reuse. Training, evaluation, inference, serving and the
config's device rule all read these."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from contextlib import nullcontext
from functools import lru_cache

import torch

from .choices import PRECISIONS
from .errors import ResnetsError

# glibc's mallopt parameters (malloc.h) and what keep_host_memory sets them to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_BLOCKS_UP_TO = 32 << 20  # glibc's ceiling for the mmap threshold on 64-bit systems
_FREE_HEAP_KEPT = 256 << 20


@lru_cache(maxsize=None)  # once per process: later calls return the first answer
def keep_host_memory() -> bool:
    """Let this process keep the memory its CPU tensors free, for the next step to reuse, instead of giving it back
    to the system and faulting it in again, zeroed by the kernel, at the next allocation: glibc's malloc (through
    mallopt) takes blocks of up to 32 MiB from its heap and keeps up to 256 MiB of the heap free before trimming it.
    Without it a training step of resnet14 at batch 128 on 2 cores takes 4,000-19,000 page faults; with it, none,
    and the step runs 1.11-1.23x as fast (benchmarks/host_memory.py); tcmalloc and jemalloc, which PyTorch's CPU
    launcher preloads for the same reason, keep freed memory by design. Once per process; Linux with glibc only;
    RESNETS_KEEP_HOST_MEMORY=0 leaves malloc as it is. Returns whether the setting is in effect."""
    if os.environ.get("RESNETS_KEEP_HOST_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt answers 1 when it took the value; fixing the thresholds ends glibc's own moving of them
    return mallopt(_M_MMAP_THRESHOLD, _HEAP_BLOCKS_UP_TO) == 1 and mallopt(_M_TRIM_THRESHOLD, _FREE_HEAP_KEPT) == 1


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """The device `pref` names (auto: this process's GPU under torchrun, else the first, else the CPU), or one
    line saying why this machine cannot give it. The process is about to compute: its freed host memory is kept
    for reuse from here on (keep_host_memory)."""
    keep_host_memory()
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(pref)
    except (RuntimeError, ValueError, TypeError):
        raise ResnetsError(f"unknown device {str(pref)[:40]!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ResnetsError(f"device {pref} was asked for, but no GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ResnetsError(f"device {pref} was asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ResnetsError("device mps was asked for, but no Apple GPU (MPS) is available here")
    elif dev.type != "cpu":
        raise ResnetsError(f"device {pref} is not one resnets runs on; use auto, cpu, cuda, cuda:N or mps")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (GPUs from Ampere on; CPUs with AVX-512 or AMX, as oneDNN sees
    them). Elsewhere bf16 is emulated and far slower than fp32 (70x for resnet20 on an AVX2-only CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")
    return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """ "auto": bf16 where the device computes it natively, else none (fp32). Other values stay as they are."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "none"


def autocast(device: torch.device, amp: str, *, cache: bool = True):
    """Mixed precision ("bf16", "fp16") on `device`, or nothing ("none"). cache=False inside CUDA graph captures."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16, cache_enabled=cache)


def check_precision(precision: str, device: torch.device) -> None:
    """One clear error for a precision the device cannot run; a warning where it runs but slowly."""
    if precision not in PRECISIONS:
        raise ResnetsError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if device.type == "cpu" and precision == "fp16":
        try:
            ok = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
        except (AttributeError, RuntimeError):
            ok = False
        if not ok:
            raise ResnetsError(
                "fp16 inference needs a GPU or a CPU with fp16 units (AMX-FP16); this CPU has none: "
                "use --precision bf16 or fp32"
            )
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ResnetsError("this GPU has no bf16 support; use --precision fp16 or fp32")
    if device.type == "cpu" and precision == "bf16" and not native_bf16(device):
        logging.getLogger("resnets").warning("this CPU has no bf16 units: bf16 is emulated and slower than fp32")
