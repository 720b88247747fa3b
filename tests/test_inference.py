"""Inference on real photos (scikit-image's) with models the tests make: predict, embed, similar, explain."""

import json

import pytest
import torch
from conftest import run_cli

import resnets
from resnets import inference as I


def _reference_probs(model, path):
    """An independent path: Pillow decode, v2 transforms on a PIL image, plain normalisation."""
    from PIL import Image
    from torchvision.transforms import v2

    tf = v2.Compose(
        [
            v2.Resize(84, antialias=True),
            v2.CenterCrop(72),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    with Image.open(path) as im:
        x = tf(im.convert("RGB"))
    with torch.no_grad():
        return model(x[None]).softmax(1)[0]


def test_predict_matches_an_independent_pipeline_and_lists_bad_files(photos, model_file):
    model = resnets.load(model_file)
    results = I.predict(model, [photos], top_k=3, workers=2, batch_size=2)
    by_name = {r["path"].split("/photos")[-1].split("/", 1)[-1]: r for r in results}
    assert set(by_name) == {
        "astronaut.jpg",
        "camera.png",
        "coffee.png",
        "sub/chelsea.jpg",
        "sub/rocket.webp",
        "sub/truncated.jpg",
    }
    assert "error" in by_name["sub/truncated.jpg"]
    for name in ("coffee.png", "sub/chelsea.jpg", "camera.png"):
        top = by_name[name]["top"]
        assert len(top) == 3 and top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]
        ref = _reference_probs(model, photos / name)
        assert top[0]["index"] == int(ref.argmax()) and top[0]["prob"] == pytest.approx(float(ref.max()), abs=2e-3)
        assert top[0]["class"] == ["cat", "coffee", "person", "rocket"][top[0]["index"]]


def test_embed_index_and_similar(photos, model_file, tmp_path):
    model = resnets.load(model_file)
    emb, files, errors = I.embed(model, [photos], workers=0)
    assert emb.shape == (5, 512) and len(files) == 5 and len(errors) == 1
    with torch.no_grad():
        pre = model.meta.preprocessing  # the model's own eval transform and normaliser
        x = torch.stack([pre.normalizer()(pre.transform()(I.decode(f))) for f in files])
        assert torch.allclose(emb, model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-5)
    I.save_index(tmp_path / "idx.safetensors", emb, files, weights=str(model_file), layer=None)
    index, names, _ = I.load_index(tmp_path / "idx.safetensors")
    scores, idx = I.nearest(index[2:3], index, k=3)
    assert idx[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)  # an image is its own nearest neighbour
    maps, _, _ = I.embed(model, [photos / "coffee.png"], layer="layer3", workers=0)
    assert maps.shape == (1, 256, 5, 5)


def test_grad_cam_matches_autograd(model_file):
    model = resnets.load(model_file)
    x = torch.randn(3, 64, 64)
    cam, cls, prob = I.grad_cam(model, x, target=1)
    assert cls == 1 and cam.shape == (64, 64) and float(cam.max()) == pytest.approx(1.0) and float(cam.min()) >= 0
    feats = {}
    h = model.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    logits = model(x[None])
    h.remove()
    (g,) = torch.autograd.grad(logits[0, 1], feats["a"])
    ref = torch.relu((g[0].mean((1, 2))[:, None, None] * feats["a"][0]).sum(0)).detach()
    ref = torch.nn.functional.interpolate(ref[None, None], size=(64, 64), mode="bilinear")[0, 0]
    assert torch.allclose(cam, ref / ref.max(), atol=1e-5)


def test_cli_predict_embed_similar_explain(photos, model_file, tmp_path):
    code, out, err = run_cli("predict", photos, "--weights", model_file, "--format", "json", "--top-k", 2)
    assert code == 1, err  # one file could not be read: the rest are answered, the exit status says so
    rows = json.loads(out)
    assert len(rows) == 6 and sum("error" in r for r in rows) == 1 and "1 of 6 files" in err
    code, out, _ = run_cli("predict", photos / "coffee.png", "--weights", model_file, "--format", "csv")
    assert code == 0 and out.splitlines()[0] == "path,rank,class,index,prob,error" and len(out.splitlines()) == 5
    code, out, err = run_cli("embed", photos, "--weights", model_file, "--out", tmp_path / "idx.safetensors")
    assert code == 1 and "5 embeddings of shape (512,)" in out and "1 of 6 files could not be read" in err, err
    code, out, err = run_cli(
        "similar", photos / "coffee.png", "--index", tmp_path / "idx.safetensors", "-k", 2, "--json"
    )
    assert code == 0, err
    hits = json.loads(out)
    assert hits[0]["path"].endswith("coffee.png") and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
    code, out, err = run_cli(
        "explain",
        photos / "sub" / "chelsea.jpg",
        "--weights",
        model_file,
        "--class",
        "cat",
        "--out",
        tmp_path / "cam.png",
    )
    assert code == 0, err
    from PIL import Image

    with Image.open(tmp_path / "cam.png") as im:
        assert im.format == "PNG" and im.size[0] > 300


@pytest.mark.parametrize(
    "args, needle",
    [
        (["predict", "/nonexistent.jpg"], "no such file"),
        (["explain", "NOTES", "--out", "x.png"], "cannot read"),
        (["explain", "PHOTO", "--out", "/nonexistent/dir/x.png"], "does not exist"),
        (["explain", "PHOTO", "--class", "dog", "--out", "OUT"], "unknown class"),
        (["similar", "PHOTO", "--index", "MODEL"], "not an embedding index"),
    ],
)
def test_cli_bad_input(photos, model_file, tmp_path, args, needle):
    subst = {
        "NOTES": photos / "notes.txt",
        "PHOTO": photos / "coffee.png",
        "MODEL": model_file,
        "OUT": tmp_path / "o.png",
    }
    args = [subst.get(a, a) for a in args]
    if "--weights" not in args and args[0] != "similar":
        args += ["--weights", model_file]
    code, _, err = run_cli(*args)
    assert code == 2 and "Traceback" not in err and needle in err and len(err.strip().splitlines()) == 1, err


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


def test_bench_auto_and_all_backends(model_file):
    from resnets.backends import auto_backend

    assert auto_backend(torch.device("cpu"), "fp32") == "onnxruntime"
    assert auto_backend(torch.device("cpu"), "bf16") == auto_backend(torch.device("cuda"), "fp32") == "compile"
    code, out, err = run_cli(
        "bench", model_file, "--batch-sizes", "2", "--backend", "all", "--seconds", "0.1", "--device", "cpu", "--json"
    )
    assert code == 0, err
    res = json.loads(out)
    assert [r["backend"] for r in res["results"]] == ["eager", "compile", "onnxruntime", "onnxruntime-int8"]
    assert res["best"]["images_per_s"] == max(r["images_per_s"] for r in res["results"])


def test_predict_prints_a_table_goes_on_past_a_missing_path_and_agrees_on_names(photos, model_file, tmp_path, caplog):
    code, out, err = run_cli(
        "predict",
        photos / "coffee.png",
        tmp_path / "gone.jpg",
        photos / "sub" / "chelsea.jpg",
        "--weights",
        model_file,
        "--top-k",
        2,
        "--workers",
        0,
    )
    assert code == 1 and "1 of 3 files could not be read" in err, err
    lines = out.splitlines()
    assert lines[0].split() == ["file", "#1", "#2"] and len(lines) == 4
    assert lines[2].startswith(str(tmp_path / "gone.jpg")) and "ERROR: no such file" in lines[2]
    col = lines[0].index("#1")  # the columns line up
    assert all(line[col - 2 : col] == "  " for line in (lines[1], lines[3]))
    code, out_json, _ = run_cli("predict", photos / "coffee.png", "--weights", model_file, "--json", "--workers", 0)
    code2, out_fmt, _ = run_cli(
        "predict", photos / "coffee.png", "--weights", model_file, "--format", "json", "--workers", 0
    )
    assert code == code2 == 0 and json.loads(out_json) == json.loads(out_fmt)
    code, out, err = run_cli("similar", photos / "coffee.png", "--index", tmp_path / "none.safetensors", "--top-k", 2)
    assert code == 2 and "--top-k" not in err  # the same flag name as predict's
    model = resnets.load(model_file)
    with caplog.at_level("WARNING", logger="resnets"):
        I.predict(model, [photos / "coffee.png"], workers=0, backend="onnxruntime-int8")
    assert "too few for a reliable int8 model" in caplog.text


def test_explain_suggests_close_class_names(photos, model_file, tmp_path):
    code, _, err = run_cli(
        "explain", photos / "coffee.png", "--weights", model_file, "--class", "cofee", "--out", tmp_path / "c.png"
    )
    assert code == 2 and "did you mean 'coffee'" in err and not (tmp_path / "c.png").exists()
    code, _, err = run_cli(
        "explain", photos / "coffee.png", "--weights", model_file, "--class", 9, "--out", tmp_path / "c.png"
    )
    assert code == 2 and "out of range: the model has 4 classes" in err


def test_predict_takes_pil_images_and_tensors_as_well_as_paths(photos, model_file):
    from PIL import Image
    from torchvision.io import read_image

    model = resnets.load(model_file)
    by_path = I.predict(model, [photos / "coffee.png", photos / "camera.png"], workers=0, top_k=3)
    with Image.open(photos / "coffee.png") as a, Image.open(photos / "camera.png") as b:
        by_pil = I.predict(model, [a.copy(), b.copy()], top_k=3)
    by_tensor = I.predict(
        model, [read_image(str(photos / "coffee.png")), read_image(str(photos / "camera.png"))], top_k=3
    )
    for got in (by_pil, by_tensor):
        assert [r["input"] for r in got] == [0, 1]
        for r, ref in zip(got, by_path):
            assert [t["index"] for t in r["top"]] == [t["index"] for t in ref["top"]]
            assert r["top"][0]["prob"] == pytest.approx(ref["top"][0]["prob"], abs=1e-4)
    with pytest.raises(resnets.ResnetsError, match="paths, PIL images or"):
        I.predict(model, [torch.zeros(2, 2)])
    with pytest.raises(resnets.ResnetsError, match="input 1: "):  # its position among all inputs, not in its batch
        I.predict(model, [read_image(str(photos / "coffee.png")), "not an image"], batch_size=1)


def test_similar_with_another_models_index_names_both(photos, model_file, tmp_path):
    """An index made by one model queried with another was a matrix-shape traceback."""
    code, _, err = run_cli(
        "embed", photos / "coffee.png", "--weights", model_file, "--out", tmp_path / "idx.safetensors", "--workers", 0
    )
    assert code == 0, err
    other = resnets.save(resnets.create_model("resnet20", num_classes=3), tmp_path / "r20.safetensors")
    code, _, err = run_cli(
        "similar", photos / "coffee.png", "--index", tmp_path / "idx.safetensors", "--weights", other
    )
    assert code == 2 and "holds embeddings of shape (512,)" in err and "gives (64,)" in err, err
    assert str(model_file) in err and len(err.strip().splitlines()) == 1
