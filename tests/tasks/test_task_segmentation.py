"""The segmentation room: torchvision's reference loss by name (cross-entropy of "out", half of that of "aux"),
images of one size a batch, and the record and line of mIoU."""

import pytest
import torch
import torch.nn.functional as F

from resnets.errors import ResnetsError
from resnets.factory import create_model
from resnets.tasks import segmentation, task_of


def test_the_loss_by_name_is_torchvisions_reference():
    net = create_model("fcn_resnet50", num_classes=3, backbone="resnet18")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
    targets = [torch.randint(0, 3, (32, 32), generator=g) for _ in range(2)]
    targets[0][:4] = 255  # left out
    named = segmentation.losses(net.eval(), images, targets, torch.device("cpu"))
    assert set(named) == {"out", "aux"}
    with torch.no_grad():
        out = net(torch.stack(images))
    y = torch.stack(targets)
    assert named["out"].item() == pytest.approx(F.cross_entropy(out["out"], y, ignore_index=255).item(), rel=1e-6)
    assert named["aux"].item() == pytest.approx(0.5 * F.cross_entropy(out["aux"], y, ignore_index=255).item(), rel=1e-6)
    with pytest.raises(ResnetsError, match="differ in size"):
        segmentation.losses(net, [images[0], torch.rand(3, 32, 30)], targets, torch.device("cpu"))


def test_the_record_the_line_and_the_background_counted():
    task = task_of("deeplabv3_resnet50")
    assert task.score == "miou" and not task.background
    record = task.record({"miou": 60.0, "pixel_acc": 90.0})
    assert record == {"val_miou": 60.0, "val_pixel_acc": 90.0}
    line = task.epoch_line(None, {"epoch": 3, "train_loss": 0.25, "images_per_s": 4.0, **record})
    assert line == "epoch 3: train loss 0.2500, val mIoU 60.00 (pixel accuracy 90.00), 4.0 img/s"
