"""Export: every format reloads and matches eager PyTorch; int8 is gated on real accuracy."""

import numpy as np
import pytest
import torch
from conftest import randomize_norms, run_cli

import resnets
from resnets import config as C
from resnets.data import sources
from resnets.export import export, export_int8, fold_bn, load_runner
from resnets.weights import Preprocessing


@pytest.fixture(scope="module")
def r18_file(tmp_path_factory):
    torch.manual_seed(0)
    m = randomize_norms(resnets.create_model("resnet18", num_classes=5))
    path = tmp_path_factory.mktemp("exp") / "r18.safetensors"
    resnets.save(m, path, class_names=list("abcde"), preprocessing=Preprocessing(72, 64).to_dict())
    return path


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("torchscript", ".pt"), ("exported-program", ".pt2")])
@pytest.mark.parametrize("dynamic", [False, True])
def test_export_formats_match_eager(r18_file, tmp_path, fmt, suffix, dynamic):
    model = resnets.load(r18_file)
    r = export(model, tmp_path / f"m{suffix}", fmt, dynamic_batch=dynamic)
    assert max(r["max_abs_diff"].values()) <= 1e-4
    if dynamic:  # any batch size runs
        runner = load_runner(tmp_path / f"m{suffix}", fmt)
        for b in (1, 3, 7):
            x = torch.randn(b, 3, 64, 64)
            with torch.no_grad():
                assert (runner.run(x) - model(x)).abs().max() <= 1e-4


def test_fold_bn_keeps_the_function_and_removes_the_norms(r18_file):
    model = resnets.load(r18_file)
    folded = fold_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() <= 1e-4


def test_export_refuses_bad_output_paths(r18_file, tmp_path):
    model = resnets.load(r18_file)
    with pytest.raises(resnets.ResnetsError, match="does not exist"):
        export(model, tmp_path / "missing" / "m.onnx", "onnx")
    with pytest.raises(resnets.ResnetsError, match="ends in .pt2"):
        export(model, tmp_path / "m.onnx", "exported-program")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def fmnist_model(tmp_path_factory):
    if sources.find_fashion_mnist() is None:
        pytest.skip("Fashion-MNIST is not installed")
    from resnets.engine import train

    out = tmp_path_factory.mktemp("fm")
    r = train(
        C.resolve(
            "fashion-mnist",
            overrides=dict(
                limit_train=2048,
                limit_val=500,
                epochs=2,
                batch_size=64,
                lr=0.05,
                progress=False,
                out=str(out),
                name="m",
            ),
        )
    )
    return out / "m" / "model.safetensors", r["top1"]


def test_int8_keeps_accuracy_on_real_data_and_the_gate_refuses(fmnist_model, tmp_path):
    path, fp32_top1 = fmnist_model
    model = resnets.load(path)
    r = export_int8(
        model,
        tmp_path / "q.onnx",
        calib="fashion-mnist:train",
        eval_data="fashion-mnist",
        max_drop=100,
        calib_images=256,
        eval_images=500,
    )
    assert r["accepted"] and (tmp_path / "q.onnx").is_file()
    assert r["fp32_top1"] > 60 and abs(r["drop"]) < 3  # 500 real test images
    fp32_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert r["bytes"] < 0.5 * fp32_bytes  # int8 weights: about a quarter of an fp32 file's
    # an impossible gate: the command refuses, exits non-zero and leaves nothing behind
    code, _, err = run_cli(
        "export",
        "--weights",
        path,
        "--precision",
        "int8",
        "--calib",
        "fashion-mnist:train",
        "--eval",
        "fashion-mnist",
        "--calib-images",
        128,
        "--eval-images",
        200,
        "--max-drop",
        -50,
        "--out",
        tmp_path / "refused.onnx",
    )
    assert code == 1 and "refused" in err and "Traceback" not in err
    assert not (tmp_path / "refused.onnx").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["q.onnx"]


def test_cli_export_prints_the_difference(r18_file, tmp_path):
    code, out, err = run_cli(
        "export", "--weights", r18_file, "--format", "onnx", "--fold-bn", "--out", tmp_path / "m.onnx"
    )
    assert code == 0, err
    assert "max abs difference from eager PyTorch" in out and (tmp_path / "m.onnx").is_file()
    assert "input N x 3 x 64 x 64 float32" in out  # a dynamic batch by default, and said
    import json

    from resnets.export import ort_session

    sess = ort_session(tmp_path / "m.onnx")
    props = sess.get_modelmeta().custom_metadata_map
    model = resnets.load(r18_file)
    assert json.loads(props["class_names"]) == model.meta.class_names
    assert Preprocessing.from_dict(json.loads(props["preprocessing"])) == model.meta.preprocessing
    assert props["resnets.architecture"] == "resnet18"
    x = torch.randn(5, 3, 64, 64)  # any batch
    assert sess.run(None, {"input": x.numpy()})[0].shape == (5, model.num_classes)
    code, out, err = run_cli("export", "--weights", r18_file, "--out", tmp_path / "s.onnx", "--static-batch")
    assert code == 0 and "input 2 x 3 x 64 x 64" in out, err
    code, _, err = run_cli(
        "export", "--weights", r18_file, "--format", "exported-program", "--out", tmp_path / "m.onnx"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_the_export_check_is_relative_to_the_logits_and_a_failure_exits_1(tmp_path):
    """A model with large logits (a trained one's are ~13; here ~100) passes the default check, whose tolerance
    grows with |eager| as torch.testing.assert_close's does (an absolute 1e-4 refused a trained Fashion-MNIST
    model); a tolerance of zero fails it, and a failed check exits 1, not 2."""
    torch.manual_seed(0)
    model = randomize_norms(resnets.create_model("resnet20", num_classes=10)).eval()
    with torch.no_grad():
        model.fc.weight.mul_(200)
    path = resnets.save(model, tmp_path / "big.safetensors", preprocessing=resnets.Preprocessing(32, 32))
    with torch.no_grad():
        assert model(torch.randn(4, 3, 32, 32)).abs().max() > 50
    code, out, err = run_cli("export", "--weights", path, "--fold-bn", "--out", tmp_path / "ok.onnx")
    assert code == 0 and (tmp_path / "ok.onnx").is_file(), err
    code, out, err = run_cli(
        "export", "--weights", path, "--fold-bn", "--atol", 0, "--rtol", 0, "--out", tmp_path / "no.onnx"
    )
    assert code == 1 and "over --atol 0 + --rtol 0" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no.onnx").exists()


def test_our_onnx_files_run_in_predict_bench_and_serve(r18_file, tmp_path):
    """An ONNX file `resnets export` wrote carries its classes and preprocessing: predict, bench and serve take it
    (predict answers as the PyTorch model does); a foreign or damaged ONNX file is one line."""
    import asyncio
    import json

    import httpx
    import onnx
    from PIL import Image

    code, _, err = run_cli("export", "--weights", r18_file, "--out", tmp_path / "m.onnx")
    assert code == 0, err
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    answers = {}
    for w in (r18_file, tmp_path / "m.onnx"):
        code, out, err = run_cli(
            "predict", *[tmp_path / f"p{i}.png" for i in range(3)], "--weights", w, "--workers", 0, "--format", "json"
        )
        assert code == 0, err
        answers[str(w)] = json.loads(out)
    ours, onnx_rows = answers[str(r18_file)], answers[str(tmp_path / "m.onnx")]
    for a, b in zip(ours, onnx_rows):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert all(abs(x["prob"] - y["prob"]) < 1e-4 for x, y in zip(a["top"], b["top"]))
    code, out, err = run_cli("bench", "--weights", tmp_path / "m.onnx", "--seconds", 0.1, "--batch-size", 2)
    assert code == 0 and "onnxruntime" in out, err
    code, _, err = run_cli("bench", "--weights", tmp_path / "m.onnx", "--backend", "compile", "--seconds", 0.1)
    assert code == 2 and "ONNX Runtime at fp32 on the CPU" in err

    from resnets.serve import app

    api = app(tmp_path / "m.onnx", device="cpu")
    png = (tmp_path / "p0.png").read_bytes()

    async def ask():
        async with api.router.lifespan_context(api):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as c:
                return [await c.post(u, files={"files": ("p0.png", png)}) for u in ("/v1/predict", "/v1/embed")] + [
                    await c.get("/v1/model")
                ]

    predicted, embedded, described = asyncio.run(ask())
    assert (
        predicted.status_code == 200 and predicted.json()["results"][0]["top"][0]["class"] == ours[0]["top"][0]["class"]
    )
    assert embedded.status_code == 400 and "ONNX file" in embedded.json()["detail"]
    assert described.json()["backend"] == "onnxruntime"

    proto = onnx.load(str(tmp_path / "m.onnx"))
    for kind in ("foreign", "damaged"):
        bad = onnx.ModelProto()
        bad.CopyFrom(proto)
        props = {p.key: p.value for p in bad.metadata_props}
        del bad.metadata_props[:]
        if kind == "damaged":
            opts = json.loads(props["resnets.options"])
            props["resnets.options"] = json.dumps({**opts, "num_classes": opts["num_classes"] + 1})
            for k, v in props.items():
                bad.metadata_props.add(key=k, value=v)
        onnx.save(bad, str(tmp_path / f"{kind}.onnx"))
        code, _, err = run_cli("predict", tmp_path / "p0.png", "--weights", tmp_path / f"{kind}.onnx", "--workers", 0)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert ("records no resnets model" if kind == "foreign" else "a damaged file") in err, err
