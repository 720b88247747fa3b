"""resnets.evaluate: top-1/top-5 as an independent count gives them, and test-time augmentation (flip) reported
beside the plain scores, never instead of them, in `evaluate`, `resnets eval` and a run's final evaluation."""

import json

import pytest
import torch
from conftest import TINY_RUN, run_cli

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


def test_eval_and_train_report_tta_beside_the_plain_top1(tmp_path):
    code, out, err = run_cli(
        "train", *TINY_RUN, "--model", "resnet8", "--out", tmp_path, "--name", "r", "--tta", "flip"
    )
    assert code == 0, err
    assert "(with flip TTA: top-1" in out
    saved = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert saved["tta"]["kind"] == "flip" and 0 <= saved["tta"]["top1"] <= 100 and "top1" in saved
    folder = tmp_path / "imgs"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
    from torchvision.io import write_png

    for i in range(6):
        write_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), str(folder / "ab"[i % 2] / f"{i}.png"))
    model = resnets.create_model("resnet8", num_classes=2)
    resnets.save(model, tmp_path / "m.safetensors", class_names=["a", "b"])
    args = ("eval", "--weights", tmp_path / "m.safetensors", "--data", folder, "--workers", 0, "--json")
    code, out, err = run_cli(*args, "--tta", "flip")
    assert code == 0, err
    res = json.loads(out)
    code, out_plain, err = run_cli(*args)
    plain = json.loads(out_plain)
    assert res["top1"] == plain["top1"] and "tta" not in plain and res["tta"]["n"] == 6
    code, out, err = run_cli(*args[:-1], "--tta", "flip")
    assert code == 0 and "with flip TTA: top-1" in out, err
