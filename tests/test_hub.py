"""hf-hub: names and timm folders, through a real huggingface_hub cache laid out on disk (no network here)."""
import json

import pytest
import torch

import resnets

from conftest import randomize_norms, run_cli

timm = pytest.importorskip("timm")
SHA = "0123456789abcdef0123456789abcdef01234567"
LABELS = ["ant", "bee", "cat", "dog", "eel"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A cached timm repo as huggingface_hub lays it out: refs/main -> snapshots/<commit>/{config.json, weights}."""
    from safetensors.torch import save_file

    ref = randomize_norms(timm.create_model("resnet18", num_classes=5, pretrained=False)).eval()
    repo = tmp_path / "hub" / "models--timm--resnet18.test"
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(snap / "model.safetensors"))
    cfg = {"architecture": "resnet18", "num_classes": 5, "label_names": LABELS,
           "pretrained_cfg": {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.95,
                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}  # fmt: skip
    (snap / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return ref, snap


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


def test_hub_names_work_on_the_command_line_and_fail_in_one_line(hub_cache, tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 240), (200, 10, 10)).save(tmp_path / "red.png")
    code, out, err = run_cli("predict", tmp_path / "red.png", "--weights", "hf-hub:timm/resnet18.test", "--workers", 0,
                             "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)[0]["top"][0]["class"] in LABELS
    code, _, err = run_cli("predict", tmp_path / "red.png", "--weights", "hf-hub:timm/nothing-here")
    assert code == 2 and "not in the Hugging Face cache and downloads are off" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli("predict", tmp_path / "red.png", "--weights", "hf-hub:no-slash")
    assert code == 2 and "hf-hub:ORG/NAME[@REVISION]" in err


def test_export_hub_writes_a_folder_timm_loads_with_a_model_card(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    for c in ("ant", "bee"):
        for split in ("train", "val"):
            (data / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 200 if c == "ant" else 20, 90)).save(data / split / c / f"{i}.png")
    code, _, err = run_cli("train", "--model", "resnet18", "--dataset", "imagefolder", "--data", data, "--epochs", 1,
                           "--batch-size", 4, "--train-crop", 32, "--eval-resize", 36, "--eval-crop", 32, "--workers", 0,
                           "--no-progress", "--device", "cpu", "--out", tmp_path / "runs", "--name", "r")  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli("export", "--weights", tmp_path / "runs" / "r", "--format", "hub", "--out", tmp_path / "hubdir")
    assert code == 0 and "local-dir:" in out, err
    folder = tmp_path / "hubdir"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert "library_name: timm" in card and "Validation top-1: " in card and "ant, bee" in card and "imagefolder" in card
    ours = resnets.load(tmp_path / "runs" / "r")
    theirs = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # timm's own route to a folder
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours(x), atol=1e-5)
    again = resnets.load(folder)  # and back: the same metadata
    assert again.meta.class_names == ["ant", "bee"] and again.meta.preprocessing == ours.meta.preprocessing
    code, _, err = run_cli("export", "--weights", tmp_path / "runs" / "r", "--format", "hub", "--out", folder)
    assert code == 2 and "--force" in err  # nothing replaced unasked
    code, _, err = run_cli("export", "--weights", tmp_path / "runs" / "r", "--format", "hub")
    assert code == 2 and "--out DIR" in err
