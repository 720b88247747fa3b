"""Keras' ResNet50 (keras.applications, Keras 3 on its torch backend) read into our resnet50 v1: the network's
outputs and, end to end, `resnets predict` against Keras' own load_img + preprocess_input + predict."""

import json
import os
import re

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported; torch is the backend we have
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from conftest import run_cli  # noqa: E402

import resnets  # noqa: E402
from resnets.errors import WeightsError  # noqa: E402
from resnets.weights import class_list  # noqa: E402
from resnets.weights.keras import layer_order  # noqa: E402

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket"]


def _randomise(model, seed=0):
    """Random conv biases and BatchNorm statistics: an untrained net has zero biases, unit variances and zero
    means, which would hide a wrong fold."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, g.shape),
                    rng.normal(0, 0.1, b.shape),
                    rng.normal(0, 0.1, m.shape),
                    rng.uniform(0.5, 2.0, v.shape),
                ]
            )
        elif isinstance(layer, keras.layers.Conv2D):
            k, b = layer.get_weights()
            layer.set_weights([k, rng.normal(0, 0.1, b.shape)])


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """A ResNet50 with random weights in Keras' three file formats, and the real photos as PNG files."""
    from keras.src.legacy.saving import legacy_h5_format
    from PIL import Image
    from skimage import data as sk

    d = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, classifier_activation=None)
    _randomise(model)
    files = {
        "keras": d / "resnet50.keras",
        "weights.h5": d / "resnet50.weights.h5",
        "legacy.h5": d / "resnet50_legacy.h5",
    }
    model.save(files["keras"])
    model.save_weights(files["weights.h5"])
    with h5py.File(files["legacy.h5"], "w") as f:  # Keras 2's layout: what ResNet50(weights="imagenet") downloads
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    photos = []
    for name in PHOTOS:
        p = d / f"{name}.png"
        Image.fromarray(getattr(sk, name)()).save(p)
        photos.append(p)
    return model, files, photos


def _keras_pipeline(model, photos):
    """What a Keras user writes: load_img to 224x224, preprocess_input ("caffe"), predict."""
    from keras.applications.resnet50 import preprocess_input

    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in photos])
    return np.asarray(model.predict(preprocess_input(x), verbose=0))


def test_the_conv_order_is_keras_own(keras_files):
    model, _, _ = keras_files
    assert layer_order((3, 4, 6, 3)) == [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


@pytest.mark.parametrize("fmt", ["keras", "weights.h5", "legacy.h5"])
def test_outputs_equal_keras_on_real_photos(keras_files, fmt):
    model, files, photos = keras_files
    from PIL import Image

    # the same 224x224 pixels into both nets: the network alone
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224))) for p in photos])
    from keras.applications.resnet50 import preprocess_input

    ref = np.asarray(model.predict(preprocess_input(pixels.astype("float32")), verbose=0))
    net = resnets.load(files[fmt])
    assert net.meta.architecture == "resnet50" and net.meta.options["stride_in_1x1"] is True
    assert net.num_classes == 1000 and net.meta.class_names[0] == class_list("imagenet")[0]
    x = net.meta.preprocessing.normalizer()(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    with torch.no_grad():
        out = net(x).numpy()
    assert np.abs(out - ref).max() < 1e-4, np.abs(out - ref).max()
    assert (out.argmax(1) == ref.argmax(1)).all()


def test_predict_on_photos_gives_keras_answer(keras_files, tmp_path):
    model, files, photos = keras_files
    ref = torch.softmax(torch.from_numpy(_keras_pipeline(model, photos)), 1)
    code, out, err = run_cli(
        "predict", "--weights", files["keras"], *photos, "--json", "--top-k", "5", "--workers", "0"
    )
    assert code == 0, err
    rows = {r["path"]: r for r in json.loads(out)}
    names = class_list("imagenet")
    for i, p in enumerate(photos):
        top = ref[i].topk(5)
        got = rows[str(p)]["top"]
        assert [t["class"] for t in got] == [names[j] for j in top.indices.tolist()]
        assert np.allclose([t["prob"] for t in got], top.values.numpy(), atol=1e-4)


def test_resnet101_without_top_is_a_feature_extractor(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.applications.ResNet101(weights=None, include_top=False, pooling="avg", input_shape=(96, 96, 3))
    _randomise(model, 1)
    path = tmp_path / "resnet101_notop.weights.h5"
    model.save_weights(path)
    net = resnets.load(path)
    assert net.meta.architecture == "resnet101" and net.num_classes == 0
    pixels = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype("float32")
    from keras.applications.resnet import preprocess_input

    ref = np.asarray(model.predict(preprocess_input(pixels.copy()), verbose=0))
    with torch.no_grad():
        feats = net(
            net.meta.preprocessing.normalizer()(torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.uint8))
        ).numpy()
    assert feats.shape == (2, 2048) and np.abs(feats - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_files_that_are_not_keras_resnets_are_one_line(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    small = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()])
    small_file = tmp_path / "small.weights.h5"
    small.save_weights(small_file)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not a zip")
    for path, words in [(other, "without Keras weights"), (small_file, "conv layers"), (broken, "cannot read")]:
        with pytest.raises(WeightsError, match=words):
            resnets.load(path)
        code, out, err = run_cli("predict", "--weights", path, str(path))
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def _keras_zip(path, config, weights: bytes = b"", compress=True):
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("config.json", config if isinstance(config, (str, bytes)) else json.dumps(config))
        z.writestr("model.weights.h5", weights)
    return path


def test_keras_files_from_elsewhere_are_checked_and_bounded(keras_files, tmp_path):
    """A .keras whose config.json is not a model's, a BatchNorm epsilon that is not a number, a config.json of
    20 MB packed into 20 KB, an .h5 with a 1-D kernel or text BatchNorm weights: each one line, exit 2."""
    import shutil

    _, files, photos = keras_files
    cases = {
        "list.keras": (_keras_zip(tmp_path / "list.keras", []), "no model config"),
        "str.keras": (_keras_zip(tmp_path / "str.keras", {"config": "abc"}), "no model config"),
        "layers.keras": (
            _keras_zip(tmp_path / "layers.keras", {"config": {"layers": "abc"}}),
            "'layers' is not a list",
        ),
        "eps.keras": (
            _keras_zip(
                tmp_path / "eps.keras",
                {
                    "config": {
                        "layers": [{"class_name": "BatchNormalization", "config": {"name": "bn", "epsilon": [1]}}]
                    }
                },
            ),
            "epsilon is [1]",
        ),
        "layer.keras": (
            _keras_zip(tmp_path / "layer.keras", {"config": {"layers": ["x"]}}),
            "a layer that is not a table",
        ),
        "big.keras": (_keras_zip(tmp_path / "big.keras", " " * (20 << 20)), "at most 16,777,216 are read"),
    }
    assert (tmp_path / "big.keras").stat().st_size < 100_000
    for kind, replace in (("flat", lambda a: a.reshape(-1)), ("text", lambda a: np.array([b"x"] * a.shape[-1]))):
        path = tmp_path / f"{kind}.h5"
        shutil.copy(files["legacy.h5"], path)
        with h5py.File(path, "r+") as f:
            layer = "conv1_conv" if kind == "flat" else "conv1_bn"
            group = f["model_weights"][layer] if "model_weights" in f else f[layer]
            wname = group.attrs["weight_names"][0]
            wname = wname.decode() if isinstance(wname, bytes) else wname
            data = replace(np.asarray(group[wname]))
            del group[wname]
            group[wname] = data
        cases[path.name] = (path, f"Keras layer {layer} holds a")
    for name, (path, words) in cases.items():
        with pytest.raises(WeightsError, match=re.escape(words)):
            resnets.load(path)
        code, _, err = run_cli("predict", photos[0], "--weights", path, "--workers", 0)
        assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, (name, err)
