"""hf-hub: names and timm folders, through a real huggingface_hub cache laid out on disk (no network here)."""

import json

import pytest
import torch
from conftest import randomize_norms, run_cli

import resnets

timm = pytest.importorskip("timm")
SHA = "0123456789abcdef0123456789abcdef01234567"
LABELS = ["ant", "bee", "cat", "dog", "eel"]


def _lay_out(cache, repo_id: str, model, cfg: dict):
    """A cached Hub repo as huggingface_hub lays it out: refs/main -> snapshots/<commit>/{config.json, weights}."""
    from safetensors.torch import save_file

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snap / "model.safetensors"))
    (snap / "config.json").write_text(json.dumps(cfg))
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    ref = randomize_norms(timm.create_model("resnet18", num_classes=5, pretrained=False)).eval()
    cfg = {
        "architecture": "resnet18",
        "num_classes": 5,
        "label_names": LABELS,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "interpolation": "bicubic",
            "crop_pct": 0.95,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
    }
    snap = _lay_out(tmp_path / "hub", "timm/resnet18.test", ref, cfg)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ref, snap


def test_timm_registrations_are_timms_own_configs_and_architectures():
    """Every timm weight in `resnets list --weights`: the eval preprocessing timm's pretrained_cfg gives, and an
    architecture of ours with timm's parameter names and shapes."""
    import math

    from timm.models import get_pretrained_cfg

    from resnets.factory import apply_state_dict
    from resnets.weights import get_weights, list_weights

    names = [n for n in list_weights() if get_weights(n).source == "timm"]
    assert len(names) > 50 and {
        "resnet50.a1_in1k",
        "resnet50.a1h_in1k",
        "resnet50.b1k_in1k",
        "resnet50.c1_in1k",
        "resnet50.d_in1k",
        "resnet50d.ra2_in1k",
        "resnext50_32x4d.a1h_in1k",
        "wide_resnet50_2.racm_in1k",
        "resnetv2_50.a1h_in1k",
    } <= set(names)
    for name in names:
        spec, cfg = get_weights(name), get_pretrained_cfg(name)
        size = (cfg.test_input_size or cfg.input_size)[-1]
        crop_pct = cfg.test_crop_pct or cfg.crop_pct
        assert spec.preprocessing == resnets.Preprocessing(
            math.floor(size / crop_pct), size, cfg.interpolation, tuple(cfg.mean), tuple(cfg.std)
        ), name
        assert spec.url == f"hf-hub:{cfg.hf_hub_id}" and cfg.num_classes == 1000 and 60 < spec.metrics["top1"] < 90
    for arch in sorted({n.split(".")[0] for n in names}):
        with torch.device("meta"):
            theirs = timm.create_model(arch, pretrained=False)
            ours = resnets.create_model(arch)
        apply_state_dict(ours, theirs.state_dict(), arch)  # raises on any missing, extra or misshapen key


def test_registered_timm_weights_load_offline_from_the_hub_cache(tmp_path, monkeypatch):
    from resnets.weights import class_list, get_weights

    ref = randomize_norms(timm.create_model("resnet18", pretrained=False)).eval()
    cfg = {
        "architecture": "resnet18",
        "num_classes": 1000,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "test_input_size": [3, 288, 288],
            "crop_pct": 0.95,
            "test_crop_pct": 1.0,
            "interpolation": "bicubic",
        },
    }
    _lay_out(tmp_path / "hub", "timm/resnet18.a1_in1k", ref, cfg)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = resnets.load("resnet18.a1_in1k")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)
    assert model.meta.preprocessing == get_weights("resnet18.a1_in1k").preprocessing
    assert model.meta.preprocessing.resize == model.meta.preprocessing.crop == 288  # timm's test size, crop_pct 1
    assert model.meta.class_names == class_list("imagenet") and model.meta.source == "resnet18.a1_in1k"
    code, out, _ = run_cli("list", "--weights", "resnet18.*", "--json")
    listed = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and listed["resnet18.a1_in1k"]["source"] == "timm"
    assert listed["resnet18.a1_in1k"]["top1"] == get_weights("resnet18.a1_in1k").metrics["top1"]
    # one that is not cached: one line naming the repo and how to get it
    code, _, err = run_cli("summary", "resnet50", "--weights", "resnet50.a1_in1k")
    assert code == 2 and "hf download timm/resnet50.a1_in1k" in err and len(err.strip().splitlines()) == 1, err


def test_a_cached_hub_repo_loads_offline_with_timms_preprocessing(hub_cache):
    ref, snap = hub_cache
    for name in ("hf-hub:timm/resnet18.test", f"hf-hub:timm/resnet18.test@{SHA}"):
        model = resnets.create_model(name).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(model(x), ref(x), atol=1e-5)
        meta = model.meta
        assert meta.architecture == "resnet18" and meta.class_names == LABELS and meta.source == name
        # timm's eval transform: floor(224 / 0.95) = 235, bicubic, its own statistics
        assert meta.preprocessing == resnets.Preprocessing(235, 224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert resnets.load(snap).meta.preprocessing.resize == 235  # the folder itself, as timm writes it


def test_an_export_of_a_hub_name_lands_in_the_working_directory_named_after_it(hub_cache, tmp_path, monkeypatch):
    """Without --out, a file made from a Hub name has no folder of the user's to go beside: it is written here
    (it was refused as "output directory does not exist: hf-hub:timm")."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, _, err = run_cli("export", "--weights", f"hf-hub:timm/resnet18.test@{SHA}", "--format", "onnx")
    assert code == 0, err
    assert sorted(f.name for f in here.iterdir()) == ["resnet18.test.onnx"]


def test_hub_names_work_on_the_command_line_and_fail_in_one_line(hub_cache, tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 240), (200, 10, 10)).save(tmp_path / "red.png")
    code, out, err = run_cli(
        "predict", tmp_path / "red.png", "--weights", "hf-hub:timm/resnet18.test", "--workers", 0, "--json"
    )
    assert code == 0, err
    assert json.loads(out)[0]["top"][0]["class"] in LABELS
    code, _, err = run_cli("predict", tmp_path / "red.png", "--weights", "hf-hub:timm/nothing-here")
    assert code == 2 and "not in the Hugging Face cache and downloads are off" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli("predict", tmp_path / "red.png", "--weights", "hf-hub:no-slash")
    assert code == 2 and "hf-hub:ORG/NAME[@REVISION]" in err


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    from safetensors.torch import save_file

    ref = timm.create_model("resnet18", num_classes=5, pretrained=False).eval()
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return path


GOOD_CFG = {
    "architecture": "resnet18",
    "num_classes": 5,
    "label_names": LABELS,
    "pretrained_cfg": {
        "input_size": [3, 224, 224],
        "interpolation": "bicubic",
        "crop_pct": 0.95,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("pretrained_cfg", "x", "pretrained_cfg must be a table"),
        ("num_classes", "abc", "num_classes must be a whole number"),
        ("num_classes", [1], "num_classes must be a whole number"),
        ("num_classes", 1e12, "num_classes must be a whole number"),
        ("num_classes", 1_000_000, "from 0 to 100,000"),
        ("num_classes", 10.7, "num_classes must be a whole number"),
        ("num_classes", True, "num_classes must be a whole number"),
        ("num_classes", 6, "config.json names 5 classes for num_classes 6"),
        ("label_names", 5, "label_names must be a list of class names"),
        ("label_names", ["a", 2, "c", "d", "e"], "label_names must be a list of class names"),
        ("pretrained_cfg.input_size", "abc", "input_size must be [channels, height, width]"),
        ("pretrained_cfg.input_size", 224, "input_size must be [channels, height, width]"),
        ("pretrained_cfg.input_size", [3, 224, float("nan")], "input_size must be a whole number"),
        ("pretrained_cfg.input_size", [3, 5000, 5000], "from 8 to 1,024"),
        ("pretrained_cfg.test_input_size", [3, 224], "test_input_size must be [channels, height, width]"),
        ("pretrained_cfg.crop_pct", "nan", "crop_pct must be a number"),
        ("pretrained_cfg.crop_pct", 0, "crop_pct must be a number"),
        ("pretrained_cfg.mean", 5, "mean must be a list of 3 finite numbers"),
        ("pretrained_cfg.mean", [0.5, 0.5], "mean must be a list of 3 finite numbers"),
        ("pretrained_cfg.std", [0, 1, 1], "std must be positive"),
        ("pretrained_cfg.interpolation", "lanczos", "interpolation must be bilinear or bicubic or nearest"),
        ("pretrained_cfg.crop_mode", "border", "crop_mode must be center or squash"),
        ("pretrained_cfg.num_classes", "five", "pretrained_cfg.num_classes must be a whole number"),
    ],
)
def test_a_foreign_timm_config_is_checked_before_anything_is_built(tmp_path, timm_weights, key, value, needle):
    """Each malformed value of a timm config.json (13 of 33 used to be tracebacks, 1,000,000 classes loaded at
    3 GB, 10.7 was truncated to 10) is one line naming the key, from the Python API and the command line."""
    import copy
    import shutil

    cfg = copy.deepcopy(GOOD_CFG)
    table, _, leaf = key.rpartition(".")
    (cfg[table] if table else cfg)[leaf] = value
    folder = tmp_path / "timm-folder"
    folder.mkdir()
    shutil.copy(timm_weights, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(resnets.ResnetsError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        resnets.load(folder)
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    code, _, err = run_cli("predict", tmp_path / "x.png", "--weights", folder, "--workers", 0)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_a_good_foreign_timm_config_still_loads_and_a_huge_one_is_not_read(tmp_path, timm_weights):
    import shutil

    folder = tmp_path / "timm-folder"
    folder.mkdir()
    shutil.copy(timm_weights, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(GOOD_CFG))
    model = resnets.load(folder)
    assert model.num_classes == 5 and model.meta.names(5) == LABELS and model.meta.preprocessing.crop == 224
    (folder / "config.json").write_text(json.dumps({**GOOD_CFG, "padding": " " * (5 << 20)}))
    with pytest.raises(resnets.WeightsError, match="a timm config.json is a few kilobytes"):
        resnets.load(folder)
