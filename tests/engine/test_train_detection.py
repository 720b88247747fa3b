"""Training a detector through the engine (engine/detection.py): the run folder's files, COCO scores per epoch, an
exact resume from a mid-epoch checkpoint, --resume auto, a backbone from classification weights, new class layers
for other classes, and bad set-ups refused in one line before anything is written."""

import json

import pytest
import torch
from conftest import TINY_DETECTOR, run_cli

from resnets import engine
from resnets.config import from_dict, resolve
from resnets.data import coco
from resnets.engine import detection
from resnets.errors import ResnetsError
from resnets.factory import load
from resnets.weights.files import load_checkpoint


def _cfg(shapes_set, out, **kw):
    keys = dict(zip((k[2:].replace("-", "_") for k in TINY_DETECTOR[::2]), TINY_DETECTOR[1::2]))
    keys.pop("no_progress", None)
    over = {k: v for k, v in keys.items()} | dict(data=str(shapes_set), out=str(out), progress=False) | kw
    return resolve(None, None, over)


def test_the_run_folder_holds_what_a_classification_run_holds(tiny_detector):
    names = {p.name for p in tiny_detector.iterdir()}
    assert {
        "config.json",
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "metrics.csv",
        "model.safetensors",
        "eval.json",
    } <= names
    history = [json.loads(line) for line in (tiny_detector / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["val_map"] <= 100 for h in history)
    assert history[-1]["step"] == 8
    ev = json.loads((tiny_detector / "eval.json").read_text())
    assert ev["map"] == history[-1]["val_map"] and ev["n"] == 6 and ev["classes"] == ["circle", "square", "triangle"]
    model = load(tiny_detector)
    assert type(model).__name__ == "FasterRCNN"
    assert model.meta.class_names == ["__background__", "circle", "square", "triangle"]
    assert model.meta.options["backbone"] == "resnet18" and model.meta.options["min_size"] == 64
    # trained from nothing: BatchNorm that trains and every stage trained (torchvision's choice without weights)
    assert model.meta.options["norm"] == "batch" and model.meta.options["trainable_layers"] == 5
    state = load_checkpoint(tiny_detector / "last.pt")
    assert state["resnets"]["architecture"] == "fasterrcnn_resnet50_fpn" and state["epoch"] == 2


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(shapes_set, tmp_path):
    cfg = _cfg(shapes_set, tmp_path, epochs=2, deterministic=True, augment="ssd")
    whole = engine.train(cfg)  # checkpoints at the epochs' ends only: how often does not change the weights

    class Stop(Exception):
        pass

    def stop_at_step_6(p):
        if p["step"] == 6:  # mid-epoch 2 (4 steps an epoch), after its checkpoint
            raise Stop

    cut = resolve(None, None, cfg.to_dict() | {"name": "cut", "checkpoint_steps": 2})
    with pytest.raises(Stop):
        engine.train(cut, on_progress=stop_at_step_6)
    state = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (state["epoch"], state["batch"], state["step"]) == (1, 2, 6)
    again = engine.train(resume=tmp_path / "cut")
    a, b = load(whole["run_dir"]).state_dict(), load(again["run_dir"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["history"][-1]["train_loss"] == pytest.approx(whole["history"][-1]["train_loss"], rel=1e-9)


def test_resume_auto_starts_then_continues(shapes_set, tmp_path):
    cfg = _cfg(shapes_set, tmp_path, epochs=1, name="auto", limit_train=8)
    first = engine.train(cfg, resume="auto")
    assert first["history"][-1]["step"] == 2
    longer = resolve(None, None, cfg.to_dict() | {"epochs": 2})
    second = engine.train(longer, resume="auto")
    assert [h["epoch"] for h in second["history"]] == [1, 2] and second["run_dir"] == first["run_dir"]


def test_the_backbone_starts_from_classification_weights(shapes_set, r18_file):
    cfg = resolve(
        None, None, dict(model="fasterrcnn_resnet50_fpn", dataset="coco", data=str(shapes_set), weights=str(r18_file))
    )
    model = detection._model(cfg, ["a", "b"])
    assert model.meta.options["backbone"] == "resnet18"
    assert model.meta.options.get("norm") is None  # the model's default: frozen statistics, as pretrained
    source = load(r18_file).state_dict()
    body = model.backbone.body.state_dict()
    for k, v in body.items():
        assert torch.equal(v, source[k]), k
    bad = resolve(None, None, cfg.to_dict() | {"backbone": "resnet34"})
    with pytest.raises(ResnetsError, match="--weights are a resnet18's; --backbone says resnet34"):
        detection._model(bad, ["a", "b"])


def test_a_detectors_weights_get_new_class_layers_for_other_classes(tiny_detector, shapes_set, caplog):
    cfg = resolve(
        None,
        None,
        dict(
            model="fasterrcnn_resnet50_fpn",
            dataset="coco",
            data=str(shapes_set),
            weights=str(tiny_detector / "model.safetensors"),
        ),
    )
    same = detection._model(cfg, ["circle", "square", "triangle"])
    old = load(tiny_detector).state_dict()
    assert all(torch.equal(v, old[k]) for k, v in same.state_dict().items())
    with caplog.at_level("WARNING", logger="resnets"):
        other = detection._model(cfg, ["cat", "dog"])
    assert "new class layers: 2 classes" in caplog.text
    sd = other.state_dict()
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3
    assert torch.equal(sd["backbone.fpn.layer_blocks.0.0.weight"], old["backbone.fpn.layer_blocks.0.0.weight"])
    assert other.meta.class_names == ["__background__", "cat", "dog"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "resnet18", "--dataset", "coco"], "--dataset coco holds boxes: train a detector on it"),
        (["--model", "resnet18", "--dataset", "voc"], "--dataset voc holds boxes: train a detector on it"),
        (
            ["--model", "fasterrcnn_resnet50_fpn", "--dataset", "imagefolder"],
            "is a detector: train it on --dataset coco",
        ),
        (["--model", "fasterrcnn_resnet50_fpn", "--dataset", "coco", "--augment", "rrc"], "--augment for a detector"),
        (  # the config's own default, said: was taken as unsaid and trained with flips
            ["--model", "fasterrcnn_resnet50_fpn", "--dataset", "coco", "--augment", "paper-cifar"],
            "--augment for a detector is one of none, hflip, ssd; got paper-cifar",
        ),
        (
            ["--model", "fasterrcnn_resnet50_fpn", "--dataset", "coco", "--mixup", "0.2", "--tta", "flip"],
            "--mixup, --tta: a classifier's option; fasterrcnn_resnet50_fpn is a detector",
        ),
        (
            ["--model", "retinanet_resnet50_fpn", "--dataset", "coco", "--box-batch-size-per-image", "8"],
            "does not take option 'box_batch_size_per_image'",
        ),
        (["--model", "fasterrcnn_resnet50_fpn", "--dataset", "coco", "--min-size", "8"], "min_size"),
        (
            ["--model", "fasterrcnn_resnet50_fpn", "--dataset", "coco", "--batch-size", "64"],
            "smaller than one batch (64)",
        ),
    ],
)
def test_bad_set_ups_are_one_line_before_anything_is_written(shapes_set, tmp_path, args, needle):
    code, _, err = run_cli(
        "train", *args, "--data", shapes_set, "--backbone", "resnet18", "--out", tmp_path / "runs", "--no-progress"
    )
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_folder_without_validation_images_holds_some_out(shapes_set, tmp_path):
    cfg = _cfg(shapes_set / "train", tmp_path)
    with pytest.raises(ResnetsError, match="--val-split 0.1"):
        detection._data(cfg, masks=False)
    train, val = detection._data(resolve(None, None, cfg.to_dict() | {"val_split": 0.25}), masks=False)
    assert (len(train), len(val)) == (12, 4)
    assert not {r.image_id for r in train.records} & {r.image_id for r in val.records}
    assert isinstance(train, coco.CocoDetection) and train.augment == "hflip"  # the config's default for detectors


def test_a_detectors_config_says_the_augmentation_it_trains_with(shapes_set, tmp_path):
    """Unsaid, --augment is the task's own in the resolved config (and so in config.json and --print-config), not
    the classifier's paper-cifar that the detector's data quietly replaced; a config made in Python or recorded
    before says the same."""
    cfg = resolve(None, None, {"model": "fasterrcnn_resnet50_fpn", "dataset": "coco", "data": str(shapes_set)})
    assert cfg.augment == "hflip"
    assert from_dict(cfg.to_dict() | {"augment": "paper-cifar"}).augment == "hflip"  # a record from before
    code, out, err = run_cli("train", "--model", "fasterrcnn_resnet50_fpn", "--dataset", "coco", "--data", shapes_set,
                             "--print-config")  # fmt: skip
    assert code == 0 and 'augment = "hflip"' in out, err


def test_a_resume_refuses_a_classifiers_augmentation_too(tiny_detector):
    """`--resume RUN --augment paper-cifar` on a detector's run: refused as on a new run (it was read as the default
    and the run went on with flips)."""
    code, _, err = run_cli("train", "--resume", tiny_detector, "--augment", "paper-cifar", "--print-config")
    assert code == 2 and "--augment for a detector is one of none, hflip, ssd; got paper-cifar" in err, err


def test_a_model_taken_from_detector_weights_is_checked_as_a_detector(tiny_detector, tmp_path):
    """--model "" (the weights say which): the task check the config could not make is made once the weights are
    read, in one line, before anything is written (was a traceback, or a classifier's run on a detector)."""
    weights = tiny_detector / "model.safetensors"
    code, _, err = run_cli("train", "--model=", "--weights", weights, "--dataset", "synthetic", "--out", tmp_path)
    assert code == 2 and "fasterrcnn_resnet50_fpn is a detector: train it on --dataset coco or voc" in err, err
    assert err.count("\n") == 1 and not any(tmp_path.iterdir())


def test_a_detector_trains_from_weights_that_name_it_and_resumes(tiny_detector, shapes_set, tmp_path):
    """--model "" on a detector's weights trains that detector (it was 'unknown model'); the run records the
    architecture it resolved, and the same command with --resume auto and more epochs continues it (a --model ""
    run could not be resumed: 'is a ... model, not ')."""
    args = ["train", "--model=", "--weights", tiny_detector, "--dataset", "coco", "--data", shapes_set, "--min-size",
            "64", "--max-size", "64", "--batch-size", "4", "--workers", "0", "--no-progress", "--out", tmp_path,
            "--name", "again", "--resume", "auto"]  # fmt: skip
    code, _, err = run_cli(*args, "--epochs", "1")
    assert code == 0, err
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model"] == "fasterrcnn_resnet50_fpn"
    code, _, err = run_cli(*args, "--epochs", "2")
    assert code == 0 and "resuming" in err, err
    assert [json.loads(line)["epoch"] for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]
