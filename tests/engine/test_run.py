"""Training on real data (a Fashion-MNIST subset): the API, the run directory, exact resumes, DDP, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import SMALL_RUN, run_cli, saved_weights

import resnets
from resnets import config as C
from resnets.data import sources
from resnets.engine import train

pytestmark = pytest.mark.skipif(sources.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")


def test_train_returns_metrics_and_writes_the_run_directory(tmp_path):
    cfg = C.resolve("fashion-mnist", overrides=dict(SMALL_RUN, out=tmp_path, name="run"))
    result = train(cfg)
    run = tmp_path / "run"
    for f in (
        "config.json",
        "metrics.jsonl",
        "last.pt",
        "best.pt",
        "model.safetensors",
        "eval.json",
        "confusion.json",
        "confusion.png",
        "curves.png",
    ):
        assert (run / f).is_file(), f
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result["n"] == 256 and result["top1"] > 40  # 10 classes: chance is 10%
    assert result["channels_last"]  # the recipe leaves it to the device: oneDNN's layout on a CPU too
    assert json.loads((run / "config.json").read_text())["limit_train"] == 1024
    # the final model is self-describing: it loads alone and gives the reported accuracy through `resnets eval`
    model = resnets.load(run / "model.safetensors")
    assert model.meta.class_names[0] == "T-shirt/top" and model.conv1.in_channels == 1
    code, out, err = run_cli(
        "eval",
        "--weights",
        run / "model.safetensors",
        "--dataset",
        "fashion-mnist",
        "--limit",
        256,
        "--amp",
        result["amp"],  # the precision training evaluated at
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(result["top1"])


def test_ddp_on_two_processes_matches_one_process(tmp_path):
    """gloo on CPU: 2 processes x 32 images == 1 process x 64 images, with GroupNorm (batch-independent).

    A small lr and zero-initialised residual branches keep the 8 steps in a stable regime: at lr 0.2 from a random
    start, float rounding differences (kernels pick other algorithms for 32 and 64 images) grow ~100x per step."""
    common = [
        "--recipe",
        "fashion-mnist",
        "--model",
        "resnet20",
        "--limit-train",
        512,
        "--limit-val",
        100,
        "--batch-size",
        64,
        "--epochs",
        1,
        "--norm",
        "group",
        "--amp",
        "none",
        "--no-channels-last",
        "--deterministic",
        "--no-progress",
        "--out",
        tmp_path,
        "--random-erasing",
        0.5,
        "--lr",
        0.002,
        "--zero-init-residual",
        "true",
        "--device",
        "cpu",  # gloo; a one-GPU machine has no cuda:1
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = open(tmp_path / "one.log", "w+")
    one = subprocess.Popen(  # beside the two processes: three single-threaded runs on two cores, same results
        [sys.executable, "-m", "resnets", "train", *map(str, common), "--name", "one"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
        p = subprocess.run(
            [*torchrun, "-m", "resnets", "train", *map(str, common), "--name", "two"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        assert one.wait(600) == 0, (tmp_path / "one.log").read_text()[-3000:]
    finally:
        one.kill()
        log.close()
    a, b = saved_weights(tmp_path / "one" / "model.safetensors"), saved_weights(tmp_path / "two" / "model.safetensors")
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    torch.manual_seed(0)  # the engine builds its model right after seeding with the run's seed (0)
    init = resnets.create_model("resnet20", in_chans=1, norm="group", zero_init_residual=True).state_dict()
    moved = max((a[k].float() - init[k].float()).abs().max().item() for k in a if init[k].is_floating_point())
    assert diff < 1e-5 and moved > 1e-3
    # exact distributed evaluation: both count all 100 validation images once
    ev1 = json.loads((tmp_path / "one" / "eval.json").read_text())
    ev2 = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert ev1["n"] == ev2["n"] == 100 and ev1["top1"] == pytest.approx(ev2["top1"], abs=1.0)
