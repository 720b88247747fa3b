"""The table of tasks: `task_of` answers for a model, a config and a name; a family is one task's; a toy task is one
class and its `register` line; printed names say the backbone and where the background is."""

import pytest
import torch
from torch import nn

from resnets import tasks
from resnets.config import resolve
from resnets.errors import ResnetsError
from resnets.factory import create_model
from resnets.tasks import base


@pytest.mark.parametrize(
    "name, task",
    [
        ("resnet18", "classification"),
        ("resnet20", "classification"),
        ("fasterrcnn_resnet50_fpn", "detection"),
        ("maskrcnn_resnet50_fpn", "detection"),
        ("deeplabv3_resnet50", "segmentation"),
        ("", "classification"),  # the architecture comes from --weights: the config's checks have it a classifier
    ],
)
def test_task_of_a_name_and_a_config(name, task):
    assert tasks.task_of(name).name == task
    dataset = {"detection": "coco", "segmentation": "masks"}.get(task, "synthetic")
    if name:
        assert tasks.task_of(resolve(overrides={"model": name, "dataset": dataset, "data": "d"})).name == task


def test_task_of_a_model_by_its_record_or_its_kind():
    assert tasks.task_of(create_model("resnet8", num_classes=3)).name == "classification"
    from torchvision.models.segmentation import fcn_resnet50

    plain = fcn_resnet50(weights=None, weights_backbone=None, num_classes=2, aux_loss=False)  # no record: its kind
    assert tasks.task_of(plain).name == "segmentation"
    assert tasks.task_of(nn.Linear(2, 2)).name == "classification"


def test_every_family_has_one_task_and_a_toy_task_is_one_registration(monkeypatch):
    assert [t.name for t in tasks.tasks()] == ["classification", "detection", "segmentation"]
    monkeypatch.setattr(base, "TASKS", dict(base.TASKS))
    monkeypatch.setattr(tasks, "TASKS", base.TASKS)

    class Toy(base.Task):
        name, families, score = "toy", ("toy",), "hits"

        def forward(self, run, net, inputs, targets, labels):
            return {"toy": net(inputs).sum()}, torch.zeros(())

    toy = base.register(Toy())
    assert base.TASKS["toy"] is toy and toy in tasks.tasks()
    with pytest.raises(ResnetsError, match="the toy family is already toy's"):
        base.register(Toy())


def test_printed_names_say_the_backbone_and_where_the_background_is():
    assert base.shown_name("fasterrcnn_resnet50_fpn", {"backbone": "resnet18"}) == (
        "fasterrcnn_resnet50_fpn (backbone resnet18)"
    )
    assert base.shown_name("fasterrcnn_resnet50_fpn", {"backbone": "resnet50"}) == "fasterrcnn_resnet50_fpn"
    assert base.shown_name("fasterrcnn_resnet50_fpn", {}) == "fasterrcnn_resnet50_fpn"
    assert base.shown_name("resnet18", {}) == "resnet18"
    assert base.class_count(3, True) == "3 classes + background"
    assert base.class_count(4, False) == "4 classes, background counted"
