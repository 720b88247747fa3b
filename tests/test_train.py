"""Training on real data (a Fashion-MNIST subset): the API, the run directory, exact resumes, DDP, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli

import resnets
from resnets import config as C
from resnets.data import sources
from resnets.engine import TrainingError, train

pytestmark = pytest.mark.skipif(sources.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")

SMALL = dict(limit_train=1024, limit_val=256, batch_size=64, epochs=2, lr=0.05, progress=False, workers=0)


def _run(*args, env=None, timeout=600):
    if env is None:
        return run_cli(*args)
    p = subprocess.run(
        [sys.executable, "-m", "resnets", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )
    return p.returncode, p.stdout, p.stderr


def _one_line_error(code, err, needle):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], err


def test_train_returns_metrics_and_writes_the_run_directory(tmp_path):
    cfg = C.resolve("fashion-mnist", overrides=dict(SMALL, out=tmp_path, name="run"))
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
    code, out, err = _run(
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


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_after_sigkill_mid_epoch_gives_exactly_the_uninterrupted_weights(tmp_path):
    common = [
        "train",
        "--recipe",
        "fashion-mnist",
        "--limit-train",
        1024,
        "--limit-val",
        128,
        "--batch-size",
        32,
        "--epochs",
        2,
        "--deterministic",
        "--no-progress",
        "--out",
        tmp_path,
        "--random-erasing",
        0.5,
        "--drop-path-rate",
        0.1,
    ]
    code, _, err = _run(*common, "--name", "straight")
    assert code == 0, err
    # the same run, killed with SIGKILL after a mid-epoch checkpoint of the second epoch, then resumed
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [sys.executable, "-m", "resnets", *map(str, common), "--name", "killed", "--checkpoint-steps", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    ckpt = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and p.poll() is None:
        if ckpt.is_file():
            try:
                s = torch.load(ckpt, weights_only=True, map_location="cpu")
            except Exception:
                s = None  # being replaced right now
            if s and s["epoch"] == 1 and s["batch"] >= 12:
                p.send_signal(signal.SIGKILL)
                killed_at = (s["epoch"], s["batch"])
                break
        time.sleep(0.02)
    p.wait()
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    code, _, err = _run("train", "--resume", tmp_path / "killed", "--no-progress")
    assert code == 0, err
    a, b = _weights(tmp_path / "straight" / "model.safetensors"), _weights(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    hist = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2
    for k in ("train_loss", "train_acc", "val_top1"):  # the resumed epoch counts the batches before the kill too
        assert hist[1][k] == pytest.approx(straight[1][k], rel=1e-9), k


def test_ddp_on_two_processes_matches_one_process(tmp_path):
    """gloo on CPU: 2 processes x 32 images == 1 process x 64 images, with GroupNorm (batch-independent).

    A small lr and zero-initialised residual branches keep the 8 steps in a stable regime: at lr 0.2 from a random
    start, float rounding differences (kernels pick other algorithms for 32 and 64 images) grow ~100x per step."""
    common = [
        "--recipe",
        "fashion-mnist",
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
    code, _, err = _run("train", *common, "--name", "one", env=env)
    assert code == 0, err
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "resnets",
            "train",
            *map(str, common),
            "--name",
            "two",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _weights(tmp_path / "one" / "model.safetensors"), _weights(tmp_path / "two" / "model.safetensors")
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    torch.manual_seed(0)  # the engine builds its model right after seeding with the run's seed (0)
    init = resnets.create_model("resnet20", in_chans=1, norm="group", zero_init_residual=True).state_dict()
    moved = max((a[k].float() - init[k].float()).abs().max().item() for k in a if init[k].is_floating_point())
    assert diff < 1e-5 and moved > 1e-3
    # exact distributed evaluation: both count all 100 validation images once
    ev1 = json.loads((tmp_path / "one" / "eval.json").read_text())
    ev2 = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert ev1["n"] == ev2["n"] == 100 and ev1["top1"] == pytest.approx(ev2["top1"], abs=1.0)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path):
    cfg = C.resolve(
        "fashion-mnist",
        overrides=dict(
            SMALL,
            out=tmp_path,
            name="nan",
            lr=1e6,
            amp="none",
            schedule="constant",
            checkpoint_steps=1,
            epochs=1,
            limit_train=1024,
        ),
    )
    with pytest.raises(TrainingError, match="non-finite"):
        train(cfg)
    last = tmp_path / "nan" / "last.pt"
    if last.exists():
        state = torch.load(last, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_config_files_and_precedence(tmp_path):
    (tmp_path / "c.toml").write_text("epochs = 7\nlr = 0.05\nmilestones = [10, 20]\n")
    (tmp_path / "c.yaml").write_text("epochs: 9\nmixup: 0.2\n")
    cfg = C.resolve("paper-cifar", tmp_path / "c.toml", {"lr": "0.3"})
    assert (cfg.epochs, cfg.lr, cfg.milestones, cfg.weight_decay) == (7, 0.3, [10, 20], 1e-4)
    assert C.resolve(None, tmp_path / "c.yaml").mixup == 0.2
    (tmp_path / "bad.toml").write_text("epoks = 3\n")
    with pytest.raises(resnets.ResnetsError, match="unknown config key 'epoks'.*epochs"):
        C.resolve(None, tmp_path / "bad.toml")
    tv2 = C.resolve("tv2-imagenet", overrides={"data": "imagenet"})
    assert (tv2.train_crop, tv2.eval_resize, tv2.label_smoothing, tv2.mixup, tv2.cutmix, tv2.ema) == (
        176,
        232,
        0.1,
        0.2,
        1.0,
        True,
    )


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    code, _, err = _run("train", "--dataset", "imagefolder", "--data", tmp_path / "nope")
    _one_line_error(code, err, "not found")
    code, _, err = _run("train", "--recipe", "imagenet-fast")
    _one_line_error(code, err, "unknown recipe")
    code, _, err = _run("train", "--set", "epoks=3")
    _one_line_error(code, err, "unknown config key")
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "dog").mkdir(parents=True)
    code, _, err = _run("train", "--dataset", "imagefolder", "--data", tmp_path / "imgs")
    _one_line_error(code, err, "has no images")


def test_resume_refuses_another_architecture_and_overwrites_nothing(tmp_path):
    train(C.resolve("fashion-mnist", overrides=dict(SMALL, epochs=1, out=tmp_path, name="r")))
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    code, _, err = _run("train", "--resume", tmp_path / "r", "--model", "resnet32")
    _one_line_error(code, err, "not resnet32")
    code, _, err = _run("train", "--recipe", "fashion-mnist", "--out", tmp_path, "--name", "r")
    _one_line_error(code, err, "already holds a run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
