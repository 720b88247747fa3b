"""The training step and its GPU-only pieces: what of them can be checked on a CPU is checked here; the CUDA graph
itself is exercised by tests marked `cuda`, which run where a GPU is (see benchmarks/RESULTS.md)."""

import copy
from types import SimpleNamespace

import pytest
import torch
from conftest import needs_cuda as cuda

import resnets
from resnets import config as C
from resnets.engine.steps import graph_blockers, lr_as_float, make_optimizer, use_graph
from resnets.errors import ResnetsError


def _groups(m, lr):
    decay = [p for p in m.parameters() if p.ndim > 1]
    rest = [p for p in m.parameters() if p.ndim <= 1]
    return [{"params": decay, "lr": lr, "weight_decay": 5e-4}, {"params": rest, "lr": lr, "weight_decay": 0.0}]


def test_capturable_optimizer_follows_the_schedule_like_the_plain_one():
    """A CUDA graph replays the optimizer step with the learning rate read from a device tensor that the schedule
    fills in place (fused SGD); on a CPU the same optimizer must give the plain SGD's weights."""
    from resnets.engine import make_scheduler

    torch.manual_seed(0)
    cfg = SimpleNamespace(
        optimizer="sgd",
        nesterov=True,
        momentum=0.9,
        schedule="onecycle",
        warmup_epochs=0,
        warmup_start=0.01,
        milestones=[],
        gamma=0.1,
        plateau_patience=3,
    )
    m1 = resnets.create_model("resnet20", in_chans=1)
    m2 = copy.deepcopy(m1)
    o1 = make_optimizer(_groups(m1, 0.01), cfg, torch.device("cpu"))
    o2 = make_optimizer(_groups(m2, 0.01), cfg, torch.device("cpu"), capturable=True)
    assert all(isinstance(g["lr"], torch.Tensor) for g in o2.param_groups) and o2.defaults["fused"]
    s1, _ = make_scheduler(o1, cfg, 20, 10, 0.01)
    s2, _ = make_scheduler(o2, cfg, 20, 10, 0.01)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for step in range(3):
        for m, o, s in ((m1, o1, s1), (m2, o2, s2)):
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
            o.zero_grad()
            s.step()
        assert float(o2.param_groups[0]["lr"]) == pytest.approx(o1.param_groups[0]["lr"], rel=1e-6)
    diff = max((a - b).abs().max().item() for a, b in zip(m1.parameters(), m2.parameters()))
    assert diff < 1e-5
    # a checkpoint keeps plain floats, so it resumes on any device and with either optimizer
    state = lr_as_float(o2.state_dict())
    assert all(isinstance(g["lr"], float) for g in state["param_groups"])
    o1.load_state_dict(state)


def test_graph_step_is_used_only_where_it_can_run():
    cfg = C.resolve("paper-cifar")
    assert not use_graph(cfg, torch.device("cpu"), 1, "bf16")
    why = graph_blockers(
        C.resolve(overrides=dict(accum_steps=2, drop_path_rate=0.1, compile=True)), torch.device("cuda"), 2, "fp16"
    )
    assert len(why) == 5 and any("fp16" in w for w in why) and any("DDP" in w for w in why)
    with pytest.raises(ResnetsError, match="cannot be used here: the device is not a GPU"):
        use_graph(C.resolve(overrides=dict(cuda_graph="on")), torch.device("cpu"), 1, "none")
    assert not use_graph(C.resolve(overrides=dict(cuda_graph="off")), torch.device("cuda"), 1, "bf16")
    assert use_graph(C.resolve("paper-cifar"), torch.device("cuda"), 1, "bf16")


def _tiny_run(tmp_path, name, **extra):
    from resnets.engine import train

    cfg = C.resolve(
        "paper-cifar",
        overrides=dict(
            dataset="synthetic",
            synthetic_samples=512,
            synthetic_classes=10,
            train_crop=32,
            batch_size=32,
            iterations=12,
            milestones=[6, 9],
            curve_steps=0,
            progress=False,
            out=str(tmp_path),
            name=name,
            **extra,
        ),
    )
    return train(cfg)


@cuda
def test_cuda_graph_step_trains_like_the_eager_step(tmp_path):
    """The captured step computes what the eager step computes: same weights after the same batches (to float
    rounding: kernels may differ between a capture and eager runs)."""
    g = _tiny_run(tmp_path, "graph", cuda_graph="on", amp="none", deterministic=True)
    e = _tiny_run(tmp_path, "eager", cuda_graph="off", amp="none", deterministic=True)
    assert g["cuda_graph"] and not e["cuda_graph"]
    assert _same_weights(g["model_path"], e["model_path"]) < 1e-3


class _Stop(Exception):
    pass


def _interrupted_then_resumed(tmp_path, monkeypatch, name, **extra):
    """Train until the first mid-epoch checkpoint is written, stop there (as a kill would), resume from it."""
    from resnets import engine
    from resnets.engine import loop

    saved = loop.save_state  # where the loop looks it up

    def save_then_stop(run, path, epoch, batch):
        saved(run, path, epoch, batch)
        if batch:  # a mid-epoch checkpoint
            raise _Stop

    monkeypatch.setattr(loop, "save_state", save_then_stop)
    with pytest.raises(_Stop):
        _tiny_run(tmp_path, name, checkpoint_steps=5, **extra)
    monkeypatch.setattr(loop, "save_state", saved)
    return engine.train(resume=tmp_path / name, overrides={"progress": False})


def _same_weights(a_path, b_path):
    from safetensors.torch import load_file

    a, b = load_file(a_path), load_file(b_path)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_device_loader_run_resumes_bit_exactly_on_cpu(tmp_path, monkeypatch):
    extra = dict(loader="device", random_erasing=0.5, mixup=0.2, deterministic=True, amp="none")
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    straight = _tiny_run(tmp_path, "straight", **extra)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before  # given back
    resumed = _interrupted_then_resumed(tmp_path, monkeypatch, "resumed", **extra)
    assert straight["loader"] == resumed["loader"] == "device"
    assert _same_weights(straight["model_path"], resumed["model_path"]) == 0


@cuda
def test_cuda_graph_run_resumes(tmp_path, monkeypatch):
    """A resumed graph run warms up eagerly and captures again: the same weights as the straight run, to float
    rounding."""
    extra = dict(cuda_graph="on", amp="bf16", deterministic=True)
    straight = _tiny_run(tmp_path, "straight", **extra)
    resumed = _interrupted_then_resumed(tmp_path, monkeypatch, "resumed", **extra)
    assert straight["cuda_graph"] and resumed["cuda_graph"]
    assert _same_weights(straight["model_path"], resumed["model_path"]) < 1e-2
