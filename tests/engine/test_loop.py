"""The loop (engine/loop.py): evaluations when they are due, progress as it goes, and `validate` agreeing with a
plain forward pass over the validation images."""

import json

import torch

from resnets import distributed
from resnets.config import resolve
from resnets.engine import train
from resnets.engine.loop import validate
from resnets.engine.run import build_run

TINY = dict(
    model="resnet8",
    dataset="synthetic",
    synthetic_samples=96,
    synthetic_classes=3,
    train_crop=16,
    batch_size=16,
    workers=0,
    progress=False,
    device="cpu",
    lr=0.05,
)


def test_evaluations_come_when_due_and_at_the_end(tmp_path):
    """eval_every=2 over 3 epochs: validation after epochs 2 and 3 (the last always), every epoch recorded."""
    seen = []
    train(overrides=dict(TINY, epochs=3, eval_every=2, out=tmp_path, name="r"), on_progress=seen.append)
    history = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert ["val_top1" in h for h in history] == [False, True, True]
    steps = [p["step"] for p in seen]
    assert steps == sorted(steps) and steps[-1] == seen[-1]["total_steps"] == 3 * 6  # 96 images / 16 a step
    assert {"epoch", "loss", "acc", "img_s"} <= set(seen[-1])


def test_validate_agrees_with_a_plain_forward_pass(tmp_path):
    cfg = resolve(overrides=dict(TINY, epochs=1, out=tmp_path, name="v", amp="none"))
    run = build_run(cfg, distributed.setup("cpu"))
    try:
        run.core.eval()
        ev = validate(run)
        val = run.bundle.val
        images = torch.stack([val[i][0] for i in range(len(val))]).float() / 255  # native size: no resize or crop
        mean, std = torch.tensor(run.bundle.mean)[:, None, None], torch.tensor(run.bundle.std)[:, None, None]
        with torch.no_grad():
            logits = run.core((images - mean) / std)
        labels = torch.tensor(val.targets)
        assert ev["n"] == len(val) == 12
        assert ev["top1"] == 100.0 * (logits.argmax(1) == labels).float().mean().item()
        loss = torch.nn.functional.cross_entropy(logits, labels).item()
        assert abs(ev["loss"] - loss) < 1e-4
        assert sum(sum(row) for row in ev["confusion"]) == 12
    finally:
        run.lock.release()


def test_accumulation_gives_every_epoch_its_full_count_of_steps(tmp_path):
    """7 batches an epoch with --accum-steps 2: each epoch ends on a step (3 full windows and the last batch), so
    every epoch takes 4 optimizer steps; the total once was 3 x 3, and the third epoch stopped after one."""
    seen = []
    overrides = dict(TINY, synthetic_samples=112, epochs=3, accum_steps=2, out=tmp_path, name="a")
    train(overrides=overrides, on_progress=seen.append)
    history = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [4, 8, 12]
    assert seen[-1]["total_steps"] == 12
