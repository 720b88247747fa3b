"""What every benchmark records about the CPU it ran on: one name, the same in each script's results.

CPU figures depend on more than the model name ("AMD EPYC" covers Zen 3 without AVX-512 and Zen 4 with AVX-512 and
bf16), so the name carries the family and model numbers and the vector units that change PyTorch's kernels.
The scripts are run as `python benchmarks/NAME.py`, which puts this folder on the import path.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# the instruction sets that decide which oneDNN/ATen kernels run, in the order they are named
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name(cpuinfo: str | None = None) -> str:
    """e.g. "AMD EPYC (family 25 model 17; avx2 avx512f avx512_bf16)", from the first processor in /proc/cpuinfo
    (or the text given); where there is none (macOS, Windows), what the platform module knows."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine() or "unknown CPU"
    pairs = (line.split(":", 1) for line in cpuinfo.split("\n\n")[0].splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in pairs}
    if "model name" not in fields:
        return platform.processor() or platform.machine() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"{fields['model name']} (family {family} model {model}; {isa})"


def cpu_and_threads() -> str:
    """The CPU's name with the threads torch computes on and the CPUs this process may use."""
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()}, {torch.get_num_threads()} threads of {cpus} CPUs"
