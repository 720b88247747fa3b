"""`resnets reproduce`: the runs, reports and figures, on a tiny CIFAR-10 archive in the official format (what a
user with the archive runs) and on Fashion-MNIST; the measurements checked against direct computations."""

import json

import pytest
import torch
from conftest import cifar_archive, run_cli

import resnets
from resnets import reproduce as R
from resnets.data import sources


@pytest.fixture(scope="module")
def cifar_runs(tmp_path_factory):
    """Degradation, layer responses and gradient flow on a 100-image CIFAR-10 archive (20 test images), 12 iterations
    of batch 16: what is checked is the runs' bookkeeping and the measurements against direct computations, which
    do not depend on how many images (the gradient flow's batch is the whole training set here, 100 images)."""
    root = tmp_path_factory.mktemp("repro")
    archive = root / "cifar-10-python.tar.gz"
    cifar_archive(archive, n_per_batch=20)
    setup = R.Setup("cifar10", 12, root / "out", data=str(archive), progress=False, extra={"batch_size": 16})
    return setup, R.degradation(setup)


def test_degradation_report_figure_and_curves(cifar_runs):
    setup, result = cifar_runs
    out = setup.out
    assert (out / "degradation.png").stat().st_size > 10_000
    report = (out / "degradation.md").read_text()
    for m in R.DEGRADATION_NETS:
        done = json.loads((out / "runs" / f"{m}-cifar10-12it-seed0" / "reproduce.json").read_text())
        assert [p["step"] for p in done["curve"]] == list(range(1, 13))  # a curve point every 12 // 12 steps
        assert result["final"][m]["test_err"] == pytest.approx(100 - done["top1"])
        assert (
            f"| {m} | {done['params']:,} | {done['curve'][-1]['train_err']:.2f} | {100 - done['top1']:.2f} |" in report
        )
        cfg = json.loads((out / "runs" / f"{m}-cifar10-12it-seed0" / "config.json").read_text())
        assert (
            cfg["milestones"] == [6, 9] and cfg["weight_decay"] == 1e-4 and cfg["lr"] == 0.1 and cfg["batch_size"] == 16
        )
    # the plain and residual nets of a depth have the same parameters (option A shortcuts), as in the paper
    assert result["final"]["plain56"]["params"] == result["final"]["resnet56"]["params"] == 853_018
    verdict = "higher" if result["plain_degrades"] else "lower"
    assert f"plain-56 ends with {verdict} training error than plain-20" in report


def test_runs_are_reused_not_retrained(cifar_runs):
    setup, _ = cifar_runs
    model = setup.out / "runs" / "resnet56-cifar10-12it-seed0" / "model.safetensors"
    before = model.stat().st_mtime_ns
    r = R.gradient_flow(setup)
    assert model.stat().st_mtime_ns == before
    g = r["norms"]
    assert len(g["plain56"]["init"]) == len(g["resnet56"]["trained"]) == 55  # 1 + 54 convs, input to output
    assert all(v > 0 for v in g["plain56"]["init"])
    assert (setup.out / "gradient_flow.png").is_file() and "| plain56 | init |" in (
        setup.out / "gradient_flow.md"
    ).read_text()


def test_layer_responses_are_the_bn_outputs(cifar_runs):
    setup, _ = cifar_runs
    r = R.layer_responses(setup)
    assert [len(r["stds"][m]) for m in R.DEGRADATION_NETS] == [19, 55, 19, 55]
    # an independent computation for one layer: layer2[0].bn2 of resnet20 (its 3x3 response before the addition)
    model = resnets.load(setup.out / "runs" / "resnet20-cifar10-12it-seed0" / "model.safetensors")
    x, _ = R._eval_batch("cifar10", setup.data, 500)
    with torch.no_grad():
        h = model.stem(x)
        h = model.layer1(h)
        blk = model.layer2[0]
        resp = blk.bn2(blk.conv2(torch.relu(blk.bn1(blk.conv1(h)))))
    expected = float(resp.std(dim=(0, 2, 3)).mean())
    assert r["stds"]["resnet20"][1 + 2 * 3 + 1] == pytest.approx(expected, rel=1e-4)
    assert (setup.out / "layer_responses.png").is_file()


def test_cifar_table_and_table1(cifar_runs, tmp_path):
    setup, _ = cifar_runs
    r = R.cifar_table(setup, depths=[20, 32], seeds=[0, 1])
    assert r["rows"][20]["params"] == 269_722 and len(r["rows"][32]["errors"]) == 2
    text = (setup.out / "cifar_table.md").read_text()
    assert "| ResNet-20 | 0.27M |" in text and "| 8.75 |" in text
    t = R.table1(tmp_path)
    assert t["macs"][50] / 1e9 == pytest.approx(3.8, rel=0.02) and t["macs"][152] / 1e9 == pytest.approx(11.3, rel=0.02)
    assert "conv4_x | 14x14 |" in (tmp_path / "table1.md").read_text()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sources.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")
def test_jobs_run_in_parallel_resume_after_a_kill_and_reuse_finished_runs(tmp_path):
    """`--jobs 2`: two runs at once, each in its own process. The command is killed (SIGKILL) once a run has a
    checkpoint: its workers stop by themselves; running the command again resumes the unfinished runs from their
    checkpoints and reuses the finished ones; the report comes from the runs on disk."""
    import re
    import signal
    import subprocess
    import sys
    import time

    args = [
        "reproduce",
        "cifar-table",
        "--depths",
        "20",
        "--seeds",
        "0,1",
        "--jobs",
        "2",
        "--budget",
        "16",
        "--set",
        "limit_train=512",
        "--set",
        "limit_val=64",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    runs = tmp_path / "runs"
    names = [f"resnet20-fashion-mnist-16it-seed{s}" for s in (0, 1)]
    p = subprocess.Popen([sys.executable, "-m", "resnets", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not any((runs / n / "last.pt").is_file() for n in names):
        time.sleep(0.05)
    assert p.poll() is None, "the command ended before any run had a checkpoint"
    p.send_signal(signal.SIGKILL)
    p.wait()
    pids = [
        int(m)
        for n in names
        if (runs / f"{n}.log").is_file()
        for m in re.findall(r"worker pid (\d+)", (runs / f"{n}.log").read_text())
    ]
    assert pids, "no worker started"
    deadline = time.time() + 60
    while time.time() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids), "workers outlived the killed command"
    done_before = {n for n in names if (runs / n / "reproduce.json").is_file()}
    assert len(done_before) < 2
    # again: the unfinished runs resume, the finished ones are kept
    mtimes = {n: (runs / n / "model.safetensors").stat().st_mtime_ns for n in done_before}
    code, out, err = run_cli(*args)
    assert code == 0, err
    for n in names:
        log = (runs / f"{n}.log").read_text()
        if n in done_before:
            assert (runs / n / "model.safetensors").stat().st_mtime_ns == mtimes[n]
        elif (runs / n / "last.pt").is_file() and "resuming" in log:
            assert re.search(r"resuming .* at epoch [2-9]", log), log
        assert json.loads((runs / n / "reproduce.json").read_text())["curve"][-1]["step"] == 16
    resumed = [n for n in names if n not in done_before and "resuming" in (runs / f"{n}.log").read_text()]
    assert resumed, "no run was resumed from its checkpoint"
    # once more: everything is reused, nothing trains, and the report is rewritten from the runs on disk
    mtimes = {n: (runs / n / "model.safetensors").stat().st_mtime_ns for n in names}
    (tmp_path / "cifar_table.md").unlink()
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert {n: (runs / n / "model.safetensors").stat().st_mtime_ns for n in names} == mtimes
    assert "| ResNet-20 |" in (tmp_path / "cifar_table.md").read_text() and "done" not in out
