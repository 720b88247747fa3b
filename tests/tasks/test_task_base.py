"""The table of tasks: `task_of` answers for a model, a config and a name; a family is one task's; a toy task is one
module (its traits, model and room); printed names say the backbone and where the background is."""

import pytest
import torch
from torch import nn

from resnets import config, meta, tasks
from resnets.cli.options import check_classifier, refuse_dense
from resnets.config import resolve
from resnets.errors import ResnetsError
from resnets.factory import create_model
from resnets.models import registry as mreg
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


def test_every_family_has_one_task_and_a_toy_task_is_one_module(monkeypatch):
    """Issue 37: a new task is one module: its traits, its model, its room, each registered; then every floor
    that asks which task a model is (the config's checks, the commands' refusals, task_of) answers for it."""
    assert [t.name for t in tasks.tasks()] == ["classification", "detection", "segmentation"]
    monkeypatch.setattr(base, "TASKS", dict(base.TASKS))
    monkeypatch.setattr(tasks, "TASKS", base.TASKS)
    monkeypatch.setattr(mreg, "TASK_TRAITS", dict(mreg.TASK_TRAITS))
    monkeypatch.setattr(mreg, "_TASK_OF_FAMILY", dict(mreg._TASK_OF_FAMILY))
    monkeypatch.setattr(base, "TASK_TRAITS", mreg.TASK_TRAITS)
    monkeypatch.setattr(meta, "TASK_TRAITS", mreg.TASK_TRAITS)
    monkeypatch.setattr(config, "TASK_TRAITS", mreg.TASK_TRAITS)
    models = mreg.Registry("model", mreg.UnknownModelError)
    models.update(mreg._MODELS)
    monkeypatch.setattr(mreg, "_MODELS", models)  # the tables as they are, the toy's entries dropped after the test

    # ---- the toy module: what a new task writes
    traits = mreg.add_task(mreg.TaskTraits("counting", ("counting",), "counter", "count", "counts", ("none",), 1))

    @mreg.register_model(options=("num_classes",), family="counting")
    def toy_counter(num_classes: int = 1):
        return nn.Linear(4, num_classes)

    class Counting(base.Task):
        traits = mreg.TASK_TRAITS["counting"]
        score = "mae"

        def forward(self, run, net, inputs, targets, labels):
            return {"l1": (net(inputs) - targets).abs().mean()}, torch.zeros(())

    toy = base.register(Counting())
    # ---- what every floor now says of it
    assert tasks.task_of("toy_counter") is toy and toy in tasks.tasks() and toy.name == "counting"
    model = nn.Linear(4, 1)
    model.meta = meta.ModelMeta("toy_counter", {})
    assert meta.traits_of(model) is traits and tasks.task_of(model) is toy
    with pytest.raises(ResnetsError, match="toy_counter is a counter: this command takes classifiers"):
        check_classifier("toy_counter")
    with pytest.raises(ResnetsError, match="is a counter: this command takes classifiers .`resnets count` runs it"):
        refuse_dense(model, "toy.safetensors")
    with pytest.raises(ResnetsError, match="toy_counter is a counter: no registered dataset holds counts"):
        resolve(overrides={"model": "toy_counter", "dataset": "fashion-mnist"})
    with pytest.raises(ResnetsError, match="the counting task already has its room"):
        base.register(Counting())
    with pytest.raises(ValueError, match="already registered"):
        mreg.add_task(traits)
    with pytest.raises(ValueError, match="belongs to no task"):
        mreg.register_model(options=(), family="juggling")


def test_printed_names_say_the_backbone_and_where_the_background_is():
    assert base.shown_name("fasterrcnn_resnet50_fpn", {"backbone": "resnet18"}) == (
        "fasterrcnn_resnet50_fpn (backbone resnet18)"
    )
    assert base.shown_name("fasterrcnn_resnet50_fpn", {"backbone": "resnet50"}) == "fasterrcnn_resnet50_fpn"
    assert base.shown_name("fasterrcnn_resnet50_fpn", {}) == "fasterrcnn_resnet50_fpn"
    assert base.shown_name("resnet18", {}) == "resnet18"
    assert base.class_count(3, True) == "3 classes + background"
    assert base.class_count(4, False) == "4 classes, background counted"
