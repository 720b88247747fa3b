"""resnets.devices: the device asked for is checked against the machine, and auto precision is bf16 only where the
device computes it."""

import os
import platform
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

from resnets.errors import ResnetsError


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    from resnets import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(
        ResnetsError, match="started 2 processes on this machine, which has 1 GPU: use --nproc_per_node 1"
    ):
        distributed.setup("auto")


def test_auto_precision_is_bf16_only_where_the_device_computes_it():
    from resnets.devices import native_bf16, resolve_amp

    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == ("bf16" if native_bf16(cpu) else "none")
    assert resolve_amp("fp16", cpu) == "fp16" and resolve_amp("none", cpu) == "none"


def _fp16_cpu() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False


def test_precision_and_device_errors_are_one_line(model_file, photos):
    code, _, err = run_cli("bench", "resnet20", "--device", "cuda", "--seconds", "0.1")
    if not torch.cuda.is_available():
        assert code == 2 and "no GPU" in err and len(err.strip().splitlines()) == 1, err
    if not _fp16_cpu():
        code, _, err = run_cli(
            "predict", photos / "coffee.png", "--weights", model_file, "--precision", "fp16", "--device", "cpu"
        )
        assert code == 2 and "fp16" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("bench", "resnet20", "--device", "cpu", "--backend", "onnxruntime", "--precision", "bf16")
    assert code == 2 and "runs on the CPU at fp32" in err, err


_STEP_FAULTS = """
import resource, torch
import resnets
from resnets.devices import keep_host_memory, pick_device
pick_device("cpu")  # where every command comes to its device, and the thresholds are set
torch.manual_seed(0)
model = resnets.create_model("resnet14", num_classes=10, in_chans=1)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad()
for _ in range(3):
    step()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    step()
print(keep_host_memory(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 8)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)
def test_a_cpu_training_step_reuses_the_memory_it_freed():
    """A fresh process that picks its device keeps the memory its tensors free: a training step of resnet14 takes
    a small part of the page faults it takes with glibc's malloc as it comes (RESNETS_KEEP_HOST_MEMORY=0), which
    gives the steps' blocks back to the system and faults them in again, thousands of pages a step."""

    def faults(keep: str) -> tuple[str, float]:
        env = dict(os.environ, RESNETS_KEEP_HOST_MEMORY=keep, OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", _STEP_FAULTS], env=env, capture_output=True, text=True, check=True)
        kept, per_step = out.stdout.split()
        return kept, float(per_step)

    (kept, with_it), (_, again) = faults("1"), faults("1")
    with_it = min(with_it, again)  # the quieter of two: a busy machine (the suite's other workers) adds odd faults
    left, without = faults("0")
    assert (kept, left) == ("True", "False")
    assert without > 1000, without  # the step's blocks come back from the system each time
    # kept: 0-600 a step here (the odd block still comes from the system), against 6,000-12,000 without
    assert with_it < without / 5, (with_it, without)
