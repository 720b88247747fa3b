"""`resnets export` and `resnets bench` on the command line (cli/exporting.py)."""

import json

import torch
from conftest import randomize_norms, run_cli

import resnets
from resnets.weights import Preprocessing


def test_bench_cli_reports_each_backend_and_batch(model_file):
    code, out, err = run_cli(
        "bench", model_file, "--batch-sizes", "1,4", "--backend", "eager,onnxruntime", "--seconds", "0.2", "--json"
    )
    assert code == 0, err
    rows = json.loads(out)["results"]
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("eager", 1),
        ("eager", 4),
        ("onnxruntime", 1),
        ("onnxruntime", 4),
    ]
    assert all(r["images_per_s"] > 0 and r["p95_ms"] >= r["p50_ms"] > 0 for r in rows)
    code, _, err = run_cli("bench", "resnet20", "--backend", "tensorrt")
    assert code == 2 and "unknown backend" in err


def test_bench_auto_and_all_backends():
    """Every backend, on the smallest net (torch.compile's and the int8 quantizer's time grows with the layers)."""
    from resnets.backends import auto_backend

    assert auto_backend(torch.device("cpu"), "fp32") == "onnxruntime"
    assert auto_backend(torch.device("cpu"), "bf16") == auto_backend(torch.device("cuda"), "fp32") == "compile"
    code, out, err = run_cli(
        "bench", "resnet8", "--batch-sizes", "2", "--backend", "all", "--seconds", "0.1", "--device", "cpu", "--json"
    )
    assert code == 0, err
    res = json.loads(out)
    assert [r["backend"] for r in res["results"]] == ["eager", "compile", "onnxruntime", "onnxruntime-int8"]
    assert res["best"]["images_per_s"] == max(r["images_per_s"] for r in res["results"])


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
