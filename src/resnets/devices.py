"""Where and at what precision a model runs: the device asked for (checked against this machine), whether it
computes bf16 natively, "auto" mixed precision resolved, autocast, and the precisions inference can run at.
Training, evaluation, inference, serving and the config's device rule all read these."""

from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from .choices import PRECISIONS
from .errors import ResnetsError


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """The device `pref` names (auto: this process's GPU under torchrun, else the first, else the CPU), or one
    line saying why this machine cannot give it."""
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
