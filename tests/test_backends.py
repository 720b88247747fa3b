"""resnets.backends: each runner (eager, channels-last, reduced precision, ONNX Runtime and its cache) answers as eager
fp32 does and leaves the model as it was."""

import pytest
import torch
from conftest import count_batch_norms, needs_cuda, randomize_norms, run_cli

import resnets
from resnets import inference as I


@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime-int8"])
def test_predict_and_embed_on_onnxruntime_agree_with_eager(photos, model_file, backend):
    model = resnets.load(model_file)
    eager = I.predict(model, [photos], top_k=4, workers=0)
    other = I.predict(model, [photos], top_k=4, workers=0, backend=backend)
    tol = 1e-4 if backend == "onnxruntime" else 0.15  # int8 (calibrated on these 5 photos) is approximate
    for a, b in zip(eager, other):
        assert a["path"] == b["path"] and ("error" in a) == ("error" in b)
        if "top" in a:
            pa = {t["index"]: t["prob"] for t in a["top"]}
            pb = {t["index"]: t["prob"] for t in b["top"]}
            assert max(abs(pa[k] - pb[k]) for k in pa) <= tol
    e1, _, _ = I.embed(model, [photos], workers=0)
    e2, _, _ = I.embed(model, [photos], workers=0, backend=backend)
    cos = torch.nn.functional.cosine_similarity(e1, e2)
    assert cos.min() > (0.99999 if backend == "onnxruntime" else 0.95)


def test_channels_last_runner_leaves_the_model_as_it_was():
    from resnets.backends import make_runner

    model = resnets.create_model("resnet18", num_classes=3).eval()
    run = make_runner(model, "eager", channels_last=True)
    assert model.conv1.weight.is_contiguous()  # still NCHW: other runners of this model are not changed
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(run(x), model(x), atol=1e-4)


def test_the_torch_runners_fold_batch_norm_and_answer_as_the_model(monkeypatch):
    """eager (and compile, the same copy) run each batch norm inside its convolution: no batch norm runs, the
    logits and the pooled features are the model's, whatever the layout."""
    from resnets.backends import make_runner

    torch.manual_seed(0)
    model = randomize_norms(resnets.create_model("resnet18", num_classes=3)).eval()  # not the identity they start as
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, features = model(x), model.forward_head(model.forward_features(x), pre_logits=True)
    calls = count_batch_norms(monkeypatch)
    for cl in (False, True):
        assert torch.allclose(make_runner(model, "eager", channels_last=cl)(x), want, rtol=1e-4, atol=1e-4)
        got = make_runner(model, "eager", output="features", channels_last=cl)(x)
        assert torch.allclose(got, features, rtol=1e-4, atol=1e-4)
    assert calls == []


def test_onnx_export_is_cached_between_calls(photos, model_file, monkeypatch):
    import resnets.export as E
    from resnets.backends import onnx_cache_path

    calls = []
    real = E.write
    monkeypatch.setattr(E, "write", lambda *a, **k: (calls.append(a[2]), real(*a, **k)))
    model = resnets.load(model_file)
    x = torch.randn(2, 3, 72, 72)
    cached = onnx_cache_path(model, x)
    if cached.exists():
        cached.unlink()  # an earlier test of this module exported the same model
    first = I.predict(model, [photos], workers=0, backend="onnxruntime")
    assert calls == [cached] and cached.is_file()  # exported once, into the cache
    second = I.predict(model, [photos], workers=0, backend="onnxruntime")
    assert calls == [cached]  # not again
    assert [r.get("top") for r in first] == [r.get("top") for r in second]
    other = resnets.load(model_file)
    with torch.no_grad():
        other.fc.bias.add_(1.0)  # other weights: another file
    assert onnx_cache_path(other, x) != cached


def test_reduced_precision_runners_agree_with_fp32_and_keep_the_model():
    """bf16 on a CPU is autocast (emulated where the CPU has no bf16 units: slow, still right); the compiled
    backend runs at every precision; the caller's model keeps its dtype."""
    from resnets.backends import make_runner

    torch.manual_seed(0)
    model = resnets.create_model("resnet20", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    for backend in ("eager", "compile"):
        run = make_runner(model, backend, precision="bf16")
        out = run(x)
        assert out.dtype == torch.float32 and run.precision == "bf16"
        assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 0.05
        assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
    assert model.conv1.weight.dtype == torch.float32 and model.conv1.weight.is_contiguous()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@needs_cuda
def test_gpu_runners_at_reduced_precision(photos, model_file, precision):
    model = resnets.load(model_file)
    eager = I.predict(model, [photos], top_k=4, workers=0)
    on_gpu = I.predict(model.cuda(), [photos], top_k=4, workers=0, precision=precision)
    for a, b in zip(eager, on_gpu):
        assert a["path"] == b["path"] and ("error" in a) == ("error" in b)
        if "top" in a:
            assert a["top"][0]["index"] == b["top"][0]["index"]


def test_a_backend_is_one_entry_of_the_table(model_file, monkeypatch):
    import resnets.backends as B
    from resnets.cli import build_parser

    seen = []

    def make(net, dev, precision, channels_last, calib, size):
        seen.append((dev.type, precision, size))
        return lambda x: net(x) * 0 + 1

    monkeypatch.setitem(B.BACKENDS, "ones", B.Backend("ones", "every logit 1", make, devices=("cpu",)))
    model = resnets.load(model_file)
    out = B.make_runner(model, "ones", device="cpu")(torch.randn(2, 3, 72, 72))
    assert torch.equal(out, torch.ones(2, 4)) and seen == [("cpu", "fp32", 72)]
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]
    choices = next(a for a in predict._actions if a.dest == "backend").choices
    assert list(choices) == ["auto", *B.BACKENDS]  # the command line's choices come from the table
    with pytest.raises(resnets.ResnetsError, match="runs on the CPU at fp32"):
        B.make_runner(model, "onnxruntime", precision="bf16", device="cpu")


def test_the_onnx_cache_is_reused_capped_listed_and_cleared(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_HOME", str(tmp_path))
    onnx = tmp_path / "onnx"
    for _ in range(2):  # the same random weights each time: one export, reused
        code, out, err = run_cli("bench", "resnet20", "--backend", "onnxruntime", "--batch-sizes", 1, "--seconds", 0.2)
        assert code == 0, err
    assert len(list(onnx.glob("*.onnx"))) == 1
    first = next(onnx.glob("*.onnx"))
    monkeypatch.setenv("RESNETS_ONNX_CACHE_MB", "0.5")  # room for one file of resnet32
    code, _, err = run_cli("bench", "resnet32", "--backend", "onnxruntime", "--batch-sizes", 1, "--seconds", 0.2)
    assert code == 0, err
    left = list(onnx.glob("*.onnx"))
    assert len(left) == 1 and left[0] != first and not first.with_suffix(".sha256").exists()  # the older one went
    code, out, _ = run_cli("cache")
    assert code == 0 and f"onnx: {onnx} (1 files" in out and left[0].name in out
    code, out, _ = run_cli("cache", "--clear", "onnx")
    assert code == 0 and "removed 1 ONNX exports" in out and not list(onnx.glob("*"))
