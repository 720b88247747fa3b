"""Two processes under torchrun (gloo on the CPU) train a classifier and a detector with BatchNorm: DDP
trains them (it raises if a trainable tensor gets no gradient in a step, as detection heads can), rank 0 alone writes
the run folder, each validation image is scored exactly once across the ranks, and the distributed scores are those
of the model rank 0 saves: BatchNorm's running statistics, which each rank updates from its own batches, are averaged
over the ranks before every evaluation (else each rank scored its share with statistics of its own). Segmenters
train and are scored by the detectors' engine (engine/detection.py), through the same two steps."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import TINY_DETECTOR, run_cli

CLASSIFIER = [
    *("--recipe", "fashion-mnist", "--model", "resnet8", "--limit-train", 256, "--limit-val", 100),
    *("--batch-size", 64, "--no-channels-last", "--no-progress", "--workers", 0),
]
# (training flags, scoring flags, the score, a port, steps, validation images): one epoch; the detector on the
# 16 + 6 images of shapes_set
KINDS = {
    "classifier": (CLASSIFIER, ["--dataset", "fashion-mnist", "--limit", "100"], "top1", 29561, 4, 100),
    "detector": (TINY_DETECTOR, ["--data", "SHAPES"], "map", 29562, 4, 6),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_two_processes_train_and_score_the_model_rank_0_saves(kind, shapes_set, tmp_path):
    args, scoring, score, port, steps, n = KINDS[kind]
    scoring = [str(shapes_set) if a == "SHAPES" else a for a in scoring]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    train = ["-m", "resnets", "train", *map(str, args), *scoring[:2], "--epochs", "1"]
    train += ["--amp", "none", "--device", "cpu", "--out", str(tmp_path), "--name", "two"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([*cmd, *train], capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "two"
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and history[0]["step"] == steps  # the global batch split in two
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # one run folder: rank 1 wrote none of its own
    assert math.isfinite(history[0]["train_loss"]) and history[0]["train_loss"] > 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n"] == n  # half the validation images a rank, gathered
    # the two ranks' shares gathered are one process's scores of the saved model
    code, _, err = run_cli(
        "eval", "--weights", run / "model.safetensors", *scoring, "--amp", "none", "--out", tmp_path / "ev"
    )
    assert code == 0, err
    alone = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert alone["n"] == n and alone[score] == pytest.approx(ev[score], abs=1e-3)
    if kind == "classifier":  # the mean loss moves with any difference in the statistics
        assert alone["loss"] == pytest.approx(ev["loss"], rel=1e-5)
    else:
        assert alone["per_class"] == pytest.approx(ev["per_class"], abs=1e-3)
