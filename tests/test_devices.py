"""resnets.devices: the device asked for is checked against the machine, and auto precision is bf16 only where the
device computes it."""

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
