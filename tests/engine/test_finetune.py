"""Fine-tuning: strategies, BatchNorm policies, layer-wise learning rates, weights of any layout, bad input.

The "pretrained" networks here are made by the tests (random weights with non-trivial BatchNorm statistics, or a
torchvision state dict), and the images are real: Fashion-MNIST written as PNG folders, and scikit-image photos.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import one_line_error, randomize_norms, run_cli
from torch import nn
from torchvision.io import write_png
from torchvision.ops import FrozenBatchNorm2d

import resnets
from resnets import config as C
from resnets.data import sources
from resnets.data.loader import TrainBatches
from resnets.engine import finetune as FT
from resnets.engine import train
from resnets.weights import Preprocessing

needs_fmnist = pytest.mark.skipif(sources.find_fashion_mnist() is None, reason="Fashion-MNIST is not installed")
NEW = ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # Fashion-MNIST classes 5-9
QUIET = dict(progress=False, workers=0, amp="none", channels_last=False, augment="crop-flip", pad=2, random_erasing=0.0)


def _run(*args, env=None):
    """`resnets ARGS` in this process, with `env` as the environment for the call (run_cli restores it after)."""
    from unittest import mock

    with mock.patch.dict(os.environ, env or {}):
        return run_cli(*args)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A resnet20 "pretrained" on Fashion-MNIST classes 0-4: one grey channel, its own normalisation."""
    torch.manual_seed(0)
    m = randomize_norms(resnets.create_model("resnet20", in_chans=1, num_classes=5), seed=1)
    path = tmp_path_factory.mktemp("pre") / "pre.safetensors"
    resnets.save(
        m,
        path,
        class_names=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"],
        preprocessing=Preprocessing(28, 28, "bilinear", (0.2860,), (0.3530,)).to_dict(),
    )
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 real Fashion-MNIST images of each of classes 5-9 as PNG files, one subfolder per class."""
    if sources.find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed")
    images, labels, classes = sources.load_fashion_mnist("train")
    root = tmp_path_factory.mktemp("photos") / "clothes"
    for c in range(5, 10):
        d = root / classes[c].replace("/", "-")
        d.mkdir(parents=True)
        for j, i in enumerate((labels == c).nonzero()[:12, 0].tolist()):
            write_png(images[i], str(d / f"{j:02d}.png"))
    return root


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path))


@needs_fmnist
def test_finetune_cli_new_head_class_names_and_predict(pretrained, folder, tmp_path):
    code, out, err = _run(
        "finetune",
        "--data",
        folder,
        "--weights",
        pretrained,
        "--epochs",
        2,
        "--out",
        tmp_path,
        "--name",
        "ft",
        "--no-progress",
        "--workers",
        0,
    )
    assert code == 0, err
    assert "new head: 5 classes" in err  # same count as the pretrained head, other classes: replaced
    model_path = tmp_path / "ft" / "model.safetensors"
    model = resnets.load(model_path)
    assert (
        model.meta.architecture == "resnet20" and model.conv1.in_channels == 1
    )  # architecture and channels from the weights
    assert model.meta.class_names == sorted(NEW) and model.fc.out_features == 5
    assert (
        model.meta.preprocessing.mean == (0.2860,) and model.meta.preprocessing.crop == 28
    )  # normalisation from the weights
    ev = json.loads((tmp_path / "ft" / "eval.json").read_text())
    assert ev["n"] == 5  # no val/ folder: 10% of each class (1 of 12) held out
    history = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert ev["top1"] == max(h["val_top1"] for h in history)  # early stopping is on: the best epoch's weights
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (
        cfg["strategy"] == "full" and cfg["layer_decay"] == 0.7 and cfg["model"] == "resnet20"
    )  # the weights' architecture, resolved
    code, out, err = _run(
        "predict", folder / "Bag" / "00.png", "--weights", model_path, "--top-k", 5, "--format", "json"
    )
    assert code == 0, err
    assert {t["class"] for t in json.loads(out)[0]["top"]} == set(NEW)


@needs_fmnist
@pytest.mark.parametrize("strategy,trained", [("linear-probe", ("fc.",)), ("partial", ("fc.", "layer3."))])
def test_frozen_parts_keep_weights_and_statistics(pretrained, folder, tmp_path, strategy, trained):
    cfg = C.resolve(
        "finetune",
        overrides=dict(
            QUIET,
            data=folder,
            weights=pretrained,
            epochs=2,
            out=tmp_path,
            name="r",
            strategy=strategy,
            unfreeze_stages=1,
            lr=0.05,
        ),
    )
    result = train(cfg)
    before, after = _state(pretrained), _state(result["model_path"])
    for k, v in after.items():
        if k.startswith(trained):
            if k.startswith("fc.") or k.endswith(("weight", "running_mean")):
                assert k not in before or before[k].shape != v.shape or not torch.equal(before[k], v), (
                    f"{k} did not train"
                )
        else:
            assert torch.equal(before[k], v), f"{k} changed although frozen"


def test_plan_gradual_unfreezing_and_layer_wise_lr():
    from resnets.engine import make_scheduler

    model = resnets.create_model("resnet20", num_classes=3)
    assert [n for n, _ in FT.stages(model)] == ["stem", "layer1", "layer2", "layer3", "head"]
    plan = FT.Plan(model, strategy="gradual", unfreeze_every=2, layer_decay=0.5)

    def trainable():
        return {n for n, mods in plan.groups if all(p.requires_grad for m in mods for p in m.parameters())}

    assert plan.apply(0) and trainable() == {"head"}
    assert not plan.apply(1)  # nothing changes between unfreezing steps
    assert plan.apply(2) and trainable() == {"head", "layer3"}
    plan.apply(9)
    assert trainable() == {"stem", "layer1", "layer2", "layer3", "head"}
    groups = plan.param_groups(0.1, 1e-4, 0.0)
    lr = {}
    for g in groups:
        lr.setdefault(g["stage"], g["lr"])
    assert lr == pytest.approx({"head": 0.1, "layer3": 0.05, "layer2": 0.025, "layer1": 0.0125, "stem": 0.00625})
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))  # every parameter, once
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    cfg = C.resolve(overrides=dict(schedule="onecycle"))
    sched, _ = make_scheduler(opt, cfg, 100, 10, 0.1)
    for _ in range(30):
        opt.step()
        sched.step()
    rates = [g["lr"] for g in opt.param_groups]
    assert rates[0] / rates[-1] == pytest.approx(0.0625)  # the schedule keeps the layer-wise ratios


def test_bn_policies_keep_what_was_learned(tmp_path):
    torch.manual_seed(0)
    ref = randomize_norms(resnets.create_model("resnet20", num_classes=4)).eval()
    x = torch.randn(4, 3, 32, 32)
    frozen = FT.convert_norms(resnets.create_model("resnet20", num_classes=4), "frozen")
    frozen.load_state_dict(ref.state_dict(), strict=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == 19
    frozen.train()  # a FrozenBatchNorm2d is its eval-mode BatchNorm even in training mode
    assert torch.allclose(frozen(x), ref(x), atol=1e-5)
    # freeze: statistics kept in training mode, affine weights still train
    model = randomize_norms(resnets.create_model("resnet20", num_classes=4))
    plan = FT.Plan(model, bn="freeze")
    plan.apply(0)
    stats = model.layer1[0].bn1.running_mean.clone()
    model.train()
    model(x).sum().backward()
    assert torch.equal(model.layer1[0].bn1.running_mean, stats) and model.layer1[0].bn1.weight.grad is not None
    # group: GroupNorm with the BatchNorm's affine weights; the saved file rebuilds it
    gn = FT.convert_norms(randomize_norms(resnets.create_model("resnet20", num_classes=4)), "group")
    assert gn.meta.options["norm"] == "group" and isinstance(gn.layer3[2].bn2, nn.GroupNorm)
    assert torch.equal(gn.layer3[2].bn2.weight, ref.layer3[2].bn2.weight)
    resnets.save(gn.eval(), tmp_path / "gn.safetensors")
    back = resnets.load(tmp_path / "gn.safetensors")
    assert torch.equal(back(x), gn(x))


def test_class_balanced_sampling():
    targets = [0] * 90 + [1] * 10
    plain = TrainBatches(100, 10, seed=0)
    balanced = TrainBatches(100, 10, seed=0, targets=targets)
    share = {}
    for name, s in (("plain", plain), ("balanced", balanced)):
        drawn = [targets[i % 100] for e in range(5) for b in (s.set_epoch(e) or s) for i in b]
        share[name] = sum(drawn) / len(drawn)
    assert share["plain"] == pytest.approx(0.1)
    assert 0.4 < share["balanced"] < 0.6


@needs_fmnist
def test_early_stopping_stops_when_validation_stops_improving(pretrained, folder, tmp_path):
    # a learning rate too small to change anything, and frozen statistics: validation cannot improve after epoch 1
    cfg = C.resolve(
        "finetune",
        overrides=dict(
            QUIET,
            data=folder,
            weights=pretrained,
            epochs=6,
            out=tmp_path,
            name="r",
            lr=1e-12,
            bn="freeze",
            early_stop=2,
            schedule="constant",
            warmup_epochs=0,
        ),
    )
    result = train(cfg)
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert result["kept_epoch"] == 1 and json.loads((tmp_path / "r" / "eval.json").read_text())["kept_epoch"] == 1


def test_the_epoch_whose_weights_are_kept_is_said(pretrained, folder, tmp_path, capsys):
    """A run that ends at its last epoch with an earlier epoch's weights (later ones tied or worse: a 5-image
    validation set ties easily) says so, in the epoch lines and the result's line; eval.json records it."""
    overrides = dict(data=folder, weights=pretrained, epochs=3, out=tmp_path, name="t", lr=1e-12, bn="freeze",
                     early_stop=5, schedule="constant", warmup_epochs=0, workers=0, device="cpu")  # fmt: skip
    code, out, err = run_cli("finetune", *[f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()])
    assert code == 0, err
    assert "keeping epoch 1's weights: later epochs did not beat its val top-1" in out + err
    assert "(the weights of epoch 1 of 3)" in out


@needs_fmnist
def test_class_selection_and_images_per_class():
    from resnets import data as D

    cfg = C.resolve("fashion-mnist", overrides=dict(classes="Sandal,6", per_class=7))
    bundle = D.build(cfg)
    assert bundle.classes == ["Sandal", "Shirt"]
    assert sorted(bundle.train.targets) == [0] * 7 + [1] * 7
    assert len(bundle.val) == 2000 and set(bundle.val.targets) == {0, 1}  # all test images of the two classes
    with pytest.raises(resnets.ResnetsError, match="not in the data"):
        D.build(C.resolve("fashion-mnist", overrides=dict(classes="Sandal,Hat")))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two classes of real photos (random crops of scikit-image's cat and coffee), six JPEGs each."""
    from skimage import data as sk
    from torchvision.io import encode_jpeg
    from torchvision.transforms import v2

    root = tmp_path_factory.mktemp("photos")
    for name, img in (("cat", sk.chelsea()), ("coffee", sk.coffee())):
        (root / name).mkdir()
        t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        for i in range(6):
            crop = v2.RandomResizedCrop(96, scale=(0.3, 1.0), antialias=True)(t)
            (root / name / f"{i}.jpg").write_bytes(encode_jpeg(crop).numpy().tobytes())
    return root


def test_torchvision_and_timm_state_dicts_name_their_architecture(tmp_path, photos):
    import timm
    import torchvision

    from resnets.factory import infer_architecture

    tv = torchvision.models.resnet18(num_classes=7).state_dict()
    torch.save(tv, tmp_path / "tv.pth")
    assert infer_architecture(tv) == "resnet18"
    assert infer_architecture(timm.create_model("resnetv2_50").state_dict()) == "resnetv2_50"
    assert infer_architecture(timm.create_model("resnet50d").state_dict()) == "resnet50d"
    # a torchvision file fine-tuned without naming its architecture
    code, out, err = _run(
        "finetune",
        "--data",
        photos,
        "--weights",
        tmp_path / "tv.pth",
        "--epochs",
        1,
        "--train-crop",
        64,
        "--eval-crop",
        64,
        "--eval-resize",
        72,
        "--out",
        tmp_path,
        "--name",
        "tv",
        "--no-progress",
        "--workers",
        0,
        "--early-stop",
        0,
    )
    assert code == 0, err
    model = resnets.load(tmp_path / "tv" / "model.safetensors")
    assert model.meta.architecture == "resnet18" and model.meta.class_names == ["cat", "coffee"]
    # weights whose architecture is not --model
    code, out, err = _run(
        "finetune",
        "--data",
        photos,
        "--weights",
        tmp_path / "tv.pth",
        "--model",
        "resnet34",
        "--out",
        tmp_path,
        "--name",
        "bad",
    )
    one_line_error(code, err, "do not fit resnet34")
    assert not (tmp_path / "bad").exists()


def test_registered_weights_from_the_cache_and_offline(tmp_path, photos):
    """A registered name: the file from the cache (where the offline error says to put it), the architecture and the
    ImageNet preprocessing from the registry."""
    import torchvision

    from resnets import weights as W

    env = dict(os.environ, RESNETS_HOME=str(tmp_path / "home"), TORCH_HOME=str(tmp_path / "t"), RESNETS_OFFLINE="1")
    args = (
        "finetune",
        "--data",
        photos,
        "--weights",
        "resnet18.tv_in1k",
        "--epochs",
        1,
        "--train-crop",
        64,
        "--eval-crop",
        64,
        "--eval-resize",
        72,
        "--out",
        tmp_path,
        "--name",
        "reg",
        "--no-progress",
        "--workers",
        0,
    )
    code, _, err = _run(*args, env=env)
    one_line_error(code, err, "resnet18-f37072fd.pth")
    assert not (tmp_path / "reg").exists()
    dest = tmp_path / "home" / "weights" / Path(W.get_weights("resnet18.tv_in1k").url).name
    dest.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), dest)
    code, _, err = _run(*args, env=env)
    assert code == 0, err
    model = resnets.load(tmp_path / "reg" / "model.safetensors")
    assert model.meta.architecture == "resnet18" and model.meta.class_names == ["cat", "coffee"]
    assert model.meta.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_finetune_bad_input(tmp_path, photos, pretrained):
    code, _, err = _run("finetune", "--weights", pretrained)
    one_line_error(code, err, "finetune needs --data (--data: a folder of images, one subfolder per class)")
    code, _, err = _run("finetune", "--data", tmp_path)  # each missing flag described as itself
    one_line_error(code, err, "finetune needs --weights (--weights: a registered weights name or file)")
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    (one / "cat" / "a.jpg").write_bytes((photos / "cat" / "0.jpg").read_bytes())
    code, _, err = _run("finetune", "--data", one, "--weights", pretrained, "--out", tmp_path)
    one_line_error(code, err, "at least 2 are needed")
    (one / "empty").mkdir()
    code, _, err = _run("finetune", "--data", one, "--weights", pretrained, "--out", tmp_path)
    one_line_error(code, err, "has no images")
    (one / "empty" / "b.jpg").write_bytes((photos / "coffee" / "0.jpg").read_bytes())
    code, _, err = _run("finetune", "--data", one, "--weights", pretrained, "--out", tmp_path)  # 2 classes, 2 images
    one_line_error(code, err, "only 2 images")
    code, _, err = _run("finetune", "--data", photos, "--weights", pretrained, "--model", "resnet32", "--out", tmp_path)
    one_line_error(code, err, "are for resnet20, not resnet32")
    code, _, err = _run("finetune", "--data", photos, "--weights", pretrained, "--strategy", "probe", "--out", tmp_path)
    one_line_error(code, err, "strategy must be one of")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]  # no run directory was started


def test_a_run_begun_with_relative_paths_resumes_from_another_folder(pretrained, folder, tmp_path, monkeypatch):
    """`finetune --data photos --weights pre.safetensors` from the folder holding them records absolute paths, so
    `--resume RUN` from elsewhere (a cluster job's working folder) reads the same files ('weights file not found');
    the same command again with --resume auto, from where it began, still continues it (the relative paths name
    the recorded files)."""
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(pretrained, work / "pre.safetensors")
    shutil.copytree(folder, work / "photos")
    monkeypatch.chdir(work)
    args = ["finetune", "--data", "photos", "--weights", "pre.safetensors", "--name", "ft", "--workers", "0",
            "--no-progress", "--resume", "auto"]  # fmt: skip
    code, _, err = run_cli(*args, "--epochs", "1")
    assert code == 0, err
    saved = json.loads((work / "runs" / "ft" / "config.json").read_text())
    assert (saved["weights"], saved["data"]) == (str(work / "pre.safetensors"), str(work / "photos"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("finetune", "--resume", work / "runs" / "ft", "--epochs", "2", "--no-progress")
    assert code == 0, err
    monkeypatch.chdir(work)
    code, _, err = run_cli(*args, "--epochs", "3")
    assert code == 0 and "resuming" in err, err
    assert len((work / "runs" / "ft" / "metrics.jsonl").read_text().splitlines()) == 3
