"""Classifying through ONNX Runtime with no torch in the process (onnx_predict.py): the same answers as the
PyTorch path, the preprocessing as torchvision's, the cache keyed by the model file, and what the process costs."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from torchvision.transforms import v2

from resnets.data.preprocessing import Preprocessing
from resnets.errors import WeightsError
from resnets.onnx_predict import cached, classify, open_onnx, prepared

# runs a resnets command in a fresh process and says, on its last line, whether torch was imported and the peak RSS
PROBE = textwrap.dedent(
    """
    import json, sys
    from resnets.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:
        code = e.code
    # this process's own peak (VmHWM): getrusage's would count the parent's pages from before the exec
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    print(json.dumps({"code": code, "torch": "torch" in sys.modules, "peak_mb": peak}))
    """
)


def probe(*args, env=None) -> tuple[dict, str]:
    p = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    lines = p.stdout.strip().splitlines()
    return json.loads(lines[-1]), p.stderr


@pytest.fixture(scope="module")
def exported(r18_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "r18.onnx"
    code, _, err = run_cli("export", "--weights", r18_file, "--out", out)
    assert code == 0, err
    return out


def torchvision_input(array: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """The reference: torchvision.transforms.v2 on the uint8 tensor, as the PyTorch path's host loader does."""
    modes = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
    size = (pre.resize, pre.resize) if pre.crop_mode == "squash" else pre.resize
    t = torch.from_numpy(array.copy()).permute(2, 0, 1)
    t = v2.CenterCrop(pre.crop)(v2.Resize(size, interpolation=modes[pre.interpolation], antialias=True)(t))
    x = t.float() / 255
    return ((x - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(pre.std)[:, None, None]).numpy()


@pytest.mark.parametrize(
    "shape, pre",
    [
        ((512, 384, 3), Preprocessing(256, 224)),  # portrait, the usual
        ((300, 451, 3), Preprocessing(256, 224, "bicubic")),  # landscape, odd sizes
        ((300, 451, 3), Preprocessing(240, 224, crop_mode="squash")),
        ((100, 150, 3), Preprocessing(256, 224)),  # upsampled
        ((64, 64, 3), Preprocessing(64, 64)),  # already the size: unchanged
    ],
)
def test_prepared_is_torchvisions_resize_and_centre_crop(shape, pre):
    """The crops agree with torchvision's to a grey level or two (Pillow's resampling against torchvision's
    antialiased one: the same filters), in shape and placement (a shifted crop would differ by far more)."""
    from skimage import data as sk

    photo = Image.fromarray(sk.astronaut()).resize(shape[1::-1], Image.BICUBIC)
    array = np.asarray(photo)
    ours, ref = prepared(array, pre), torchvision_input(array, pre)
    assert ours.shape == ref.shape == (3, pre.crop, pre.crop) and ours.dtype == np.float32
    step = 1 / 255 / min(pre.std)  # one grey level, normalised
    assert np.abs(ours - ref).max() <= 3 * step
    assert np.abs(ours - ref).mean() <= 0.25 * step


def test_a_small_image_is_padded_as_torchvisions_centre_crop():
    """A squashed image smaller than the crop is padded with zeros (before normalising), as CenterCrop pads."""
    pre = Preprocessing(20, 24, crop_mode="squash", mean=(0.0,) * 3, std=(1.0,) * 3)
    array = np.full((10, 10, 3), 255, np.uint8)
    x = prepared(array, pre)
    assert x.shape == (3, 24, 24)
    assert np.allclose(x[:, 2:22, 2:22], 1.0) and x[:, :2].max() == 0 and x[:, :, 22:].max() == 0


def test_classify_answers_as_the_pytorch_model(r18_file, exported, photos):
    """The same top classes and probabilities (within 1e-3) as `inference.predict` in PyTorch, file by file, the
    unreadable ones (a truncated JPEG, a text file) reported in their places."""
    import resnets
    from resnets.inference import predict
    from resnets.onnx_predict import find_images

    files = find_images([photos])
    ours = classify(exported, files, top_k=3, batch_size=2)
    ref = predict(resnets.load(r18_file), files, top_k=3, workers=0, batch_size=2)
    assert [r["path"] for r in ours] == files == [r["path"] for r in ref]
    assert ["error" in r for r in ours] == ["error" in r for r in ref] and sum("error" in r for r in ours) == 1
    for a, b in zip(ours, ref):
        if "top" in b:
            assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
            assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"])) < 1e-3


def test_open_onnx_takes_only_our_exports(tmp_path, exported):
    """A file that is not ONNX, or an ONNX file with no resnets record, is one WeightsError naming it."""
    import onnx

    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match="cannot read"):
        open_onnx(tmp_path / "x.onnx")
    proto = onnx.load(str(exported))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(WeightsError, match="records no resnets model"):
        open_onnx(tmp_path / "bare.onnx")
    _, meta, n = open_onnx(exported)
    assert n == 5 and meta.class_names == list("abcde")


def test_predict_on_an_onnx_file_imports_no_torch(exported, photos):
    """`resnets predict --weights m.onnx` on a CPU: no torch in the process, far below the PyTorch path's memory
    (issue 36: at most 600 MB), the same answers as the PyTorch model's."""
    img = photos / "astronaut.jpg"
    out, err = probe("predict", img, "--weights", exported, "--device", "cpu", "--format", "json")
    assert out == {"code": 0, "torch": False, "peak_mb": out["peak_mb"]}, err
    assert out["peak_mb"] < 600


def test_the_cache_keyed_by_the_model_file(r18_file, tmp_path, photos, monkeypatch):
    """`--backend onnxruntime` with a model file exports it once into the cache; the next default run classifies
    with that file and no torch. A cached file whose bytes changed is not used (the PyTorch path runs), nor one
    of another model file."""
    env = {"RESNETS_HOME": str(tmp_path / "home")}
    monkeypatch.setenv("RESNETS_HOME", env["RESNETS_HOME"])
    img = photos / "coffee.png"
    code, first, err = run_cli("predict", img, "--weights", r18_file, "--backend", "onnxruntime", "--json")
    assert code == 0 and "exporting" in err, err
    path = cached(r18_file)
    assert path is not None and path.name.startswith("file-")
    out, err = probe("predict", img, "--weights", r18_file, "--device", "cpu", "--json", env=env)
    assert out["code"] == 0 and out["torch"] is False, err
    code, again, _ = run_cli("predict", img, "--weights", r18_file, "--json")
    assert json.loads(again)[0]["top"] == json.loads(first)[0]["top"]

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cached(r18_file) is None
    out, err = probe("predict", img, "--weights", r18_file, "--device", "cpu", "--json", env=env)
    assert out["code"] == 0 and out["torch"] is True, err  # PyTorch, not the damaged file

    other = tmp_path / "other.safetensors"
    other.write_bytes(r18_file.read_bytes() + b" ")  # another file's bytes: another key
    assert cached(other) is None


def test_the_cache_key_counts_a_folders_config_json(r18_file, tmp_path):
    """A folder's class names and preprocessing may come from its config.json (timm's, the Hub's): the key of its
    cached export counts that file too, so an edited config.json is never answered with the old export."""
    from resnets.onnx_predict import cache_key, model_files

    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(r18_file.read_bytes())
    alone = cache_key(model_files(folder))
    (folder / "config.json").write_text('{"label_names": ["a", "b"]}')
    first = cache_key(model_files(folder))
    (folder / "config.json").write_text('{"label_names": ["b", "a"]}')
    assert len({alone, first, cache_key(model_files(folder))}) == 3


def test_a_graph_that_answers_other_than_its_record_is_one_line(exported, tmp_path, photos):
    """An ONNX file whose graph returns another shape than it declares (and its record says), or not finite
    scores: one line naming the file (exit 2), or that image's error; never a traceback."""
    import onnx
    from onnx import TensorProto, helper

    record = onnx.load(str(exported)).metadata_props
    flat = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["logits"])],
        "liar",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
    )
    nan = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("Div", ["m", "zero"], ["q"]),
            helper.make_node("Sub", ["q", "q"], ["r"]),  # inf - inf: NaN
            helper.make_node("Concat", ["r", "r"], ["c"], axis=1),
            helper.make_node("Slice", ["c", "s", "e", "a"], ["logits"]),
        ],
        "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("s", TensorProto.INT64, [1], [0]),
            helper.make_tensor("e", TensorProto.INT64, [1], [5]),
            helper.make_tensor("a", TensorProto.INT64, [1], [1]),
        ],
    )
    for name, graph in (("liar", flat), ("nan", nan)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        model.metadata_props.extend(record)
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
    code, _, err = run_cli("predict", photos / "coffee.png", "--weights", tmp_path / "liar.onnx")
    assert code == 2 and "liar.onnx: its output is [1, 12288]" in err and "Traceback" not in err, err
    code, out, err = run_cli("predict", photos / "coffee.png", "--weights", tmp_path / "nan.onnx", "--json")
    assert code == 1 and "not finite" in json.loads(out)[0]["error"], err


def test_a_dense_models_onnx_export_is_named_for_what_it_is(exported, tmp_path):
    """A detector's or segmenter's ONNX export (for the user's own stack) is not "not a resnets export": the line
    says what it is and which command runs the model file instead."""
    import onnx

    proto = onnx.load(str(exported))
    for prop in proto.metadata_props:
        if prop.key == "resnets.architecture":
            prop.value = "deeplabv3_resnet50"
    onnx.save(proto, str(tmp_path / "seg.onnx"))
    with pytest.raises(WeightsError, match="export of a segmentation model .* `resnets segment`"):
        open_onnx(tmp_path / "seg.onnx")


def test_a_cached_export_must_carry_its_own_key(exported, photos):
    """A file in the cache under another model's name (copied there with its hash file, say) is refused in one
    line, not answered with another model's classes."""
    with pytest.raises(WeightsError, match="not the export its name says"):
        classify(exported, [str(photos / "coffee.png")], stamp="file-0123")
