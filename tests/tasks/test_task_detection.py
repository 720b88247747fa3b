"""The detection room: torchvision's losses by name from a batch it put on the device, a random probe batch the
model trains on (the expected time printed before training), the record and line of COCO's mAP, and a header that
names the backbone and counts the background apart."""

from conftest import TINY_DETECTOR

from resnets import distributed
from resnets.config import resolve
from resnets.engine import estimate
from resnets.engine.run import build_run
from resnets.tasks import task_of


def _cfg(shapes_set, out):
    keys = dict(zip((k[2:].replace("-", "_") for k in TINY_DETECTOR[::2]), TINY_DETECTOR[1::2]))
    keys.pop("no_progress", None)
    return resolve(None, None, keys | dict(data=str(shapes_set), out=str(out), name="d", progress=False, epochs=1))


def test_losses_by_name_a_probe_and_a_true_header(shapes_set, tmp_path):
    run = build_run(_cfg(shapes_set, tmp_path), distributed.setup("cpu"))
    try:
        task = run.task
        assert task is task_of("fasterrcnn_resnet50_fpn") and not task.accuracy and task.score == "map"
        batch = task.batch(run, next(iter(run.train_loader)))
        assert batch.n == 4 and batch.labels is None
        named, hits = task.forward(run, run.core.train(), batch.inputs, batch.targets, batch.labels)
        assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} == set(named)
        assert hits.item() == 0
        images, targets, _ = task.probe(run, 2)
        assert set(task.forward(run, run.core, images, targets, None)[0]) == set(named)
        header = (
            "fasterrcnn_resnet50_fpn (backbone resnet18) on 16 images (3 classes + background, 6 to validate): "
            "4 steps of 4, fp32"
        )
        assert task.header(run) == header
        lines = estimate.describe(run)  # what a dense run printed none of before one engine served every task
        assert lines[0] == header and lines[1].startswith("expected on this machine: about")
    finally:
        run.lock.release()


def test_the_record_and_the_line():
    task = task_of("maskrcnn_resnet50_fpn")
    ev = {"map": 50.0, "map_50": 70.0, "map_75": 40.0, "segm": {"map": 45.0}}
    record = task.record(ev)
    assert record == {"val_map": 50.0, "val_map_50": 70.0, "val_map_75": 40.0, "val_mask_map": 45.0}
    line = task.epoch_line(None, {"epoch": 1, "train_loss": 1.5, "images_per_s": 2.25, **record})
    assert line == "epoch 1: train loss 1.5000, val mAP 50.00 (AP50 70.00), 2.2 img/s"
