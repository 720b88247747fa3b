"""Each task's hooks on the one Service (serve/tasks.py): a classifier, a detector and a segmenter, each its own
small subclass of Service (none a kind of another), answering /v1/model as before, with one constant per threshold."""

import asyncio
import inspect

import pytest
import torch
from conftest import in_process

import resnets

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

SETTINGS = dict(device="cpu", max_batch=2, max_wait_ms=0.0, decode_workers=1, token=None)


@pytest.fixture(scope="module")
def dense_models():
    """A detector and a segmenter of random weights (nothing trained: their hooks are what is tested)."""
    detector = resnets.create_model(
        "fasterrcnn_resnet50_fpn", backbone="resnet18", num_classes=3, min_size=64, max_size=64
    )
    segmenter = resnets.create_model("deeplabv3_resnet50", backbone="resnet18", num_classes=3)
    return detector, segmenter


def test_one_service_and_a_small_subclass_per_task(serve_files, dense_models):
    from resnets.serve import ClassifierService, DetectorService, Limits, SegmenterService, Service
    from resnets.serve.tasks import service_for

    tasks = (ClassifierService, DetectorService, SegmenterService)
    for kind in tasks:
        assert kind.__bases__ == (Service,) and kind.task
        for hook in ("class_names", "decode", "decode_size", "model_pixels", "forward"):
            assert getattr(kind, hook) is not getattr(Service, hook), (kind, hook)
        if "__init__" in vars(kind):  # an __init__ of its own calls Service's
            assert "super().__init__(" in inspect.getsource(kind.__init__)
    classifier = resnets.load(serve_files[0])
    detector, segmenter = dense_models
    assert [service_for(m) for m in (classifier, detector, segmenter)] == list(tasks)
    for kind, model in zip(tasks, (classifier, detector, segmenter)):
        svc = kind(model, backend="auto", precision="fp32", limits=Limits(), **SETTINGS)
        assert svc.batcher.run == svc.run and svc.admission.max_pixels == Limits().max_pixels_in_flight
        image = svc.warm_image()
        rows = svc.run(svc.collate([image, image]))
        assert len(rows) == 2, kind
    with pytest.raises(resnets.ResnetsError, match="a segmenter is served by the eager backend"):
        SegmenterService(segmenter, backend="onnxruntime", precision="fp32", limits=Limits(), **SETTINGS)


def test_v1_model_answers_as_before(serve_files, dense_models):
    """The keys of /v1/model, in their order, for a classifier and a detector (a segmenter's are a detector's)."""
    from resnets.serve import DetectorService, Limits, app

    (m,) = asyncio.run(in_process(app(resnets.load(serve_files[0]), device="cpu"), [("GET", "/v1/model", {})]))
    assert list(m.json()) == [
        "architecture", "name", "num_classes", "classes", "num_features", "preprocessing", "precision", "backend", "device",
        "source", "batching", "limits",
    ]  # fmt: skip
    svc = DetectorService(dense_models[0], backend="eager", precision="fp32", limits=Limits(), **SETTINGS)
    described = svc.describe()
    assert list(described) == [
        "architecture", "name", "task", "num_classes", "classes", "options", "input", "precision", "backend", "device",
        "source", "batching", "limits",
    ]  # fmt: skip
    assert described["task"] == "detection" and described["input"] == {"min_size": [64], "max_size": 64}


def test_names_and_class_counts_say_the_backbone_and_the_background(serve_files, dense_models):
    """A detector built on a resnet18 is not called fasterrcnn_resnet50_fpn alone, and its 3 outputs are 2
    classes + background; a segmenter's 3 are 3 classes, the background one of them; a classifier is as named. The
    same text in /v1/model's name, the banner and the page (which shows `name`)."""
    from resnets.serve import ClassifierService, DetectorService, Limits, SegmenterService

    detector, segmenter = dense_models
    said = {
        kind: kind(model, backend="eager", precision="fp32", limits=Limits(), **SETTINGS).describe()["name"]
        for kind, model in (
            (ClassifierService, resnets.load(serve_files[0])),
            (DetectorService, detector),
            (SegmenterService, segmenter),
        )
    }
    assert said[DetectorService] == "fasterrcnn_resnet50_fpn (backbone resnet18) (2 classes + background)"
    assert said[SegmenterService] == "deeplabv3_resnet50 (backbone resnet18) (3 classes, background counted)"
    assert said[ClassifierService].startswith("resnet") and "backbone" not in said[ClassifierService]


def test_the_thresholds_are_one_constant_each(serve_files):
    """A detector's masks are cut at MASK_THRESHOLD; /v1/detect keeps boxes at SCORE_THRESHOLD by default."""
    from resnets.serve import DetectorService, app
    from resnets.serve.tasks import MASK_THRESHOLD, SCORE_THRESHOLD

    out = {
        "boxes": torch.zeros(2, 4, dtype=torch.float16),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.2]),
        "masks": torch.tensor([MASK_THRESHOLD - 0.01, MASK_THRESHOLD + 0.01]).view(2, 1, 1, 1),
    }
    (row,) = DetectorService.rows(object.__new__(DetectorService), [out])
    assert row["masks"].tolist() == [[[False]], [[True]]] and row["boxes"].dtype == torch.float32
    spec = app(resnets.load(serve_files[0]), device="cpu").openapi()
    (score,) = [p for p in spec["paths"]["/v1/detect"]["post"]["parameters"] if p["name"] == "score"]
    assert score["schema"]["default"] == SCORE_THRESHOLD
