"""Export: every format reloads and matches eager PyTorch; int8 is gated on real accuracy."""

import pytest
import torch
from conftest import run_cli

import resnets
from resnets import config as C
from resnets.data import sources
from resnets.export import export, export_int8, load_runner


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


def test_fold_bn_exports_the_folded_net_and_says_whether_it_was(r18_file, tmp_path, monkeypatch):
    """--fold-bn hands the writer a net without batch norms (resnets.models.fold), checked against the model
    like any export; the record says it was folded only where it was."""
    import resnets.export as E

    written = []
    real = E.write
    monkeypatch.setattr(E, "write", lambda net, *a: written.append(net) or real(net, *a))
    model = resnets.load(r18_file)
    r = export(model, tmp_path / "f.onnx", "onnx", fold=True)
    assert r["fold_bn"] is True and max(r["max_abs_diff"].values()) <= 1e-3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in written[-1].modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the model as it was
    r = export(model, tmp_path / "p.onnx", "onnx")
    assert r["fold_bn"] is False and written[-1] is model


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


def test_a_detector_and_a_segmenter_export_to_onnx_and_answer_as_eager(
    tiny_detector, tiny_segmenter, shapes_set, tmp_path
):
    """torchvision's ONNX path: a detector's file takes one image of any size and gives the eager model's boxes,
    labels and scores; a segmenter's gives its logits; both carry the model record; a failed check leaves nothing.
    The detector's is written as a model of a Triton repository (issue 40): its config.pbtxt, read by Triton's own
    ModelConfig protobuf, names the file's input and outputs with their types and dims, unbatched by Triton."""
    import json

    import onnxruntime as ort
    from google.protobuf import text_format

    from resnets.data.datasets import decode
    from resnets.factory import load

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    code, out, err = run_cli("export", "--weights", tiny_detector, "--format", "triton", "--out", tmp_path / "repo",
                             "--model-name", "shapes")  # fmt: skip
    assert code == 0 and "one [0, 1] image (3, H, W) of any size; outputs boxes, labels, scores" in out, err
    folder = tmp_path / "repo" / "shapes"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "labels.txt", "preprocessing.json"]
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("shapes", "onnxruntime_onnx", 0)
    T = model_config_pb2
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("image", T.TYPE_FP32, [3, -1, -1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("boxes", T.TYPE_FP32, [-1, 4]),
        ("labels", T.TYPE_INT64, [-1]),
        ("scores", T.TYPE_FP32, [-1]),
    ]
    assert (folder / "labels.txt").read_text().split() == ["__background__", "circle", "square", "triangle"]
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["resnets.class_names"]) == ["__background__", "circle", "square", "triangle"]
    model = load(tiny_detector).eval()
    img = decode(shapes_set / "val" / "images" / "000003.jpg", 3).float() / 255
    img = torch.nn.functional.interpolate(img[None], size=(80, 100))[0]  # another size than any traced
    boxes, labels, scores = sess.run(None, {"image": img.numpy()})
    with torch.no_grad():
        want = model([img])[0]
    assert labels.tolist() == want["labels"].tolist()
    assert abs(boxes - want["boxes"].numpy()).max() < 1e-2 and abs(scores - want["scores"].numpy()).max() < 1e-4
    code, out, err = run_cli("export", "--weights", tiny_segmenter, "--format", "onnx", "--out", tmp_path / "seg.onnx")
    assert code == 0 and "outputs out" in out, err  # named as the model names them
    seg = load(tiny_segmenter).eval()
    x = torch.randn(2, 3, 48, 72)
    got = ort.InferenceSession(str(tmp_path / "seg.onnx")).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - seg(x)["out"].numpy()).max() < 1e-3
    code, _, err = run_cli("export", "--weights", tiny_detector, "--format", "torchscript", "--out", tmp_path / "d.pt")
    assert code == 2 and "exports to ONNX" in err


def test_a_dense_export_that_differs_is_removed(tiny_segmenter, tmp_path, monkeypatch):
    from resnets import export as ex
    from resnets.errors import CheckFailed
    from resnets.factory import load

    def differs(*a, **k):
        raise CheckFailed("the exported out differ")

    monkeypatch.setattr(ex, "_check_dense", differs)
    with pytest.raises(CheckFailed):
        ex.export_dense(load(tiny_segmenter), tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def test_a_triton_model_repository_parses_with_tritons_own_config_and_runs(tmp_path):
    """`export --format triton --out REPO`: REPO/NAME/1/model.onnx, config.pbtxt as Triton's own ModelConfig
    protobuf (shipped in tritonclient) reads it, labels.txt and preprocessing.json beside; the file runs a batch in
    ONNX Runtime as the eager model does; a name already in the repository is refused before anything is written."""
    import json

    import numpy as np
    import onnxruntime as ort
    from google.protobuf import text_format

    import resnets

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    model = resnets.create_model("resnet8", num_classes=3).eval()
    resnets.save(model, tmp_path / "pets.safetensors", class_names=["cat", "dog", "fox"])
    code, out, err = run_cli("export", "--weights", tmp_path / "pets.safetensors", "--format", "triton",
                             "--out", tmp_path / "repo", "--max-batch", 8)  # fmt: skip
    assert code == 0 and "tritonserver --model-repository" in out, err
    folder = tmp_path / "repo" / "pets"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "labels.txt", "preprocessing.json"]
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("pets", "onnxruntime_onnx", 8)
    assert config.HasField("dynamic_batching")
    pre = json.loads((folder / "preprocessing.json").read_text())
    (inp,), (outp,) = config.input, config.output
    assert list(inp.dims) == [3, pre["crop"], pre["crop"]] and inp.data_type == model_config_pb2.TYPE_FP32
    assert list(outp.dims) == [3] and outp.label_filename == "labels.txt"
    assert (folder / "labels.txt").read_text().split() == ["cat", "dog", "fox"]
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    assert [i.name for i in sess.get_inputs()] == [inp.name] and [o.name for o in sess.get_outputs()] == [outp.name]
    x = torch.randn(5, 3, pre["crop"], pre["crop"])
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(sess.run(None, {inp.name: x.numpy()})[0] - want).max() < 1e-4
    code, _, err = run_cli("export", "--weights", tmp_path / "pets.safetensors", "--format", "triton",
                           "--out", tmp_path / "repo")  # fmt: skip
    assert code == 2 and "exists" in err and not list((tmp_path / "repo").glob(".pets.*"))
