"""resnets.evaluate: top-1/top-5 as an independent count gives them, and test-time augmentation (flip) reported
beside the plain scores, never instead of them, in `evaluate`, `resnets eval` and a run's final evaluation."""

import pytest
import torch

import resnets
from resnets.data.batching import Batch
from resnets.distributed import Context
from resnets.evaluate import evaluate


def _batches(x, y, size=16):
    return [Batch(x[i : i + size], y[i : i + size], []) for i in range(0, len(x), size)]


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = resnets.create_model("resnet8", num_classes=7).eval()
    x = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 7, (50,))
    return model, x, y


def _reference(model, x, y, flip):
    with torch.no_grad():
        xf = x.float() / 255
        probs = model(xf).softmax(1)
        if flip:
            probs = (probs + model(xf.flip(-1)).softmax(1)) / 2
    top = probs.topk(5, 1).indices
    return 100 * (top[:, 0] == y).float().mean().item(), 100 * (top == y[:, None]).any(1).float().mean().item()


def test_flip_tta_is_the_mirror_averaged_softmax_and_leaves_the_plain_scores(model_and_data):
    model, x, y = model_and_data
    ctx = Context(device=torch.device("cpu"))
    plain = evaluate(model, _batches(x, y), lambda t: t.float() / 255, 7, ctx)
    both = evaluate(model, _batches(x, y), lambda t: t.float() / 255, 7, ctx, tta="flip")
    assert "tta" not in plain
    for key in ("top1", "top5", "loss", "n"):
        assert both[key] == pytest.approx(plain[key])  # the plain scores are the images as given
    assert both["confusion"] == plain["confusion"]
    assert (plain["top1"], plain["top5"]) == pytest.approx(_reference(model, x, y, flip=False))
    assert (both["tta"]["top1"], both["tta"]["top5"]) == pytest.approx(_reference(model, x, y, flip=True))
    assert both["tta"]["kind"] == "flip" and both["tta"]["n"] == 50


def test_a_detectors_file_evaluation_is_its_tasks():
    """`resnets eval` asks the model's task (tasks.task_of(model).evaluate_file); the classifier's evaluation
    refuses a detector in one line rather than keeping a table of the other tasks' (issue 37)."""
    from resnets.errors import ResnetsError
    from resnets.evaluate import evaluate_model_file
    from resnets.factory import create_model
    from resnets.tasks import task_of

    detector = create_model("fasterrcnn_resnet50_fpn", backbone="resnet18", num_classes=3)
    with pytest.raises(ResnetsError, match="d.safetensors is a detector: `resnets eval` scores it"):
        evaluate_model_file("d.safetensors", model=detector)
    room = task_of(detector)
    assert room.name == "detection" and type(room).eval_set.__module__ == "resnets.tasks.detection"
    with pytest.raises(ResnetsError, match="say which COCO or VOC folder to evaluate the detector on"):
        room.evaluate_file(detector, "d.safetensors", None)
