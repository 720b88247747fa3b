"""resnets.engine.optim: the schedules (the paper's CIFAR steps, warmup then cosine, OneCycle over a few steps) and what
weight decay applies to."""

import json

import pytest
import torch
from conftest import TINY_RUN, run_cli

import resnets
from resnets import config as C


def test_paper_cifar_schedule_drops_the_lr_at_32k_and_48k():
    from resnets.engine import make_scheduler

    cfg = C.resolve("paper-cifar")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched, _ = make_scheduler(opt, cfg, cfg.iterations, 390, cfg.lr)
    lrs = {}
    for step in range(1, 64_001):
        opt.step()
        sched.step()
        if step in (31_999, 32_000, 47_999, 48_000, 64_000):
            lrs[step] = opt.param_groups[0]["lr"]
    assert lrs[31_999] == pytest.approx(0.1) and lrs[32_000] == pytest.approx(0.01)
    assert lrs[47_999] == pytest.approx(0.01) and lrs[48_000] == pytest.approx(0.001)


def test_warmup_then_cosine():
    from resnets.engine import make_scheduler

    cfg = C.resolve(overrides=dict(schedule="cosine", warmup_epochs=1, warmup_start=0.1, lr=1.0))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, _ = make_scheduler(opt, cfg, 100, 10, 1.0)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(100):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0) and lrs[100] < 1e-3
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:11])) and all(
        a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:])
    )


def test_no_weight_decay_on_norms_and_biases():
    from resnets.engine.finetune import Plan

    m = resnets.create_model("resnet20")
    groups = Plan(m).param_groups(0.1, 2e-5, 0.0)
    decay = [p for g in groups if g["weight_decay"] == 2e-5 for p in g["params"]]
    no_decay = [p for g in groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert len(decay) + len(no_decay) == len(list(m.parameters()))
    assert any(p is m.bn1.weight for p in no_decay) and any(p is m.fc.bias for p in no_decay)
    assert any(p is m.conv1.weight for p in decay) and not any(p is m.bn1.weight for p in decay)
    assert all(g["lr"] == 0.1 for g in groups)  # one learning rate unless layer_decay < 1


def test_a_one_cycle_run_of_four_steps_trains(tmp_path):
    """OneCycleLR divided by zero when its rise was one step (fashion-mnist's recipe over 512 images: 4 steps)."""
    code, _, err = run_cli(
        "train", *TINY_RUN, "--schedule", "onecycle", "--synthetic-samples", 64, "--out", tmp_path, "--name", "short"
    )
    assert code == 0, err
    assert json.loads((tmp_path / "short" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1
