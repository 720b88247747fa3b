"""The classification room: its step's loss is cross-entropy by name with the batch's top-1 hits, its batch is
normalised on the device, and its record and line show top-1 (top-5 only above five classes)."""

import torch
import torch.nn.functional as F

from resnets import distributed
from resnets.config import resolve
from resnets.engine.run import build_run
from resnets.tasks import task_of

TINY = dict(
    model="resnet8", dataset="synthetic", synthetic_samples=32, synthetic_classes=3, train_crop=16, batch_size=8,
    workers=0, progress=False, device="cpu", epochs=1, amp="none",
)  # fmt: skip


def test_the_step_is_cross_entropy_by_name_and_counts_hits(tmp_path):
    run = build_run(resolve(overrides=dict(TINY, out=tmp_path, name="c")), distributed.setup("cpu"))
    try:
        task = run.task
        assert task is task_of("resnet8") and task.accuracy and task.score == "top1"
        raw = next(iter(run.train_loader))
        batch = task.batch(run, raw)
        assert batch.n == len(raw.labels) == 8 and batch.inputs.dtype == torch.float32
        assert torch.equal(batch.inputs, run.normalize(raw.images)) and torch.equal(batch.labels, raw.labels)
        with torch.no_grad():
            named, hits = task.forward(run, run.core.eval(), batch.inputs, batch.targets, batch.labels)
            logits = run.core(batch.inputs)
        assert list(named) == ["classification"]
        assert named["classification"].item() == F.cross_entropy(logits, batch.labels).item()
        assert hits.item() == (logits.argmax(1) == batch.labels).sum().item()
        x, target, y = task.probe(run, 4)
        assert x.shape == (4, 3, 16, 16) and torch.equal(target, y)
    finally:
        run.lock.release()


def test_the_record_and_the_line():
    task = task_of("resnet18")
    assert task.record({"loss": 0.5, "top1": 90.0, "top5": 99.0}) == {
        "val_loss": 0.5, "val_top1": 90.0, "val_top5": 99.0,
    }  # fmt: skip

    class Run:
        classes = ["a", "b", "c"]

    line = task.epoch_line(
        Run, {"epoch": 2, "train_loss": 0.1, "train_acc": 97.5, "val_top1": 90.0, "val_top5": 100, "images_per_s": 50}
    )
    assert line == "epoch 2: train loss 0.1000 acc 97.50%, val top-1 90.00%, 50 img/s"
