"""Keras' ResNet50 / ResNet101 / ResNet152 (`keras.applications`) as our resnet50/101/152 with the paper's v1
bottleneck (stride in the first 1x1), fed as Keras feeds them.

Keras' nets differ from ours in four places, each absorbed into the weights or the preprocessing:
- every conv has a bias, and a BatchNorm follows it: the bias moves into the BatchNorm's running mean
  (BN(z + b) with mean m is BN(z) with mean m - b);
- Keras' BatchNorm epsilon is 1.001e-5, ours 1e-5: the difference moves into the running variance;
- "caffe" preprocessing: BGR channel order, 0-255 pixels with the ImageNet means subtracted, no std: the channel
  swap moves into the first conv (its input channels reversed), the rest is our Preprocessing (mean/255, std
  1/255), with Keras' `load_img(target_size=(224, 224))` resize: both sides, Pillow's nearest;
- kernels are (kh, kw, in, out), dense (in, out): transposed.
Padding needs nothing: Keras pads the 7x7 conv by 3 and the max pool by 1 (zeros after a ReLU act as -inf), and
its 3x3 "same" convs at stride 1 pad by 1, as ours do.

Reads the three files Keras writes: `.keras` (a zip of config.json and model.weights.h5), Keras 3's
`.weights.h5` (layers named by class and order), and the legacy HDF5 weights of Keras 2 (layers by name: the
`resnet50_weights_tf_dim_ordering_tf_kernels.h5` that `ResNet50(weights="imagenet")` downloads).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..home import class_list
from ..meta import ModelMeta, Preprocessing

KERAS_EPS = 1.001e-5  # keras.applications.resnet's BatchNormalization epsilon
TORCH_EPS = 1e-5
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)  # Keras subtracts these from B, G, R = 103.939, 116.779, 123.68
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

PREPROCESSING = Preprocessing(
    resize=224,
    crop=224,
    interpolation="nearest",
    crop_mode="squash",
    mean=tuple(m / 255 for m in CAFFE_MEAN_RGB),
    std=(1 / 255,) * 3,
)


def layer_order(layers: tuple[int, ...]) -> list[str]:
    """The names of the conv layers of keras.applications.ResNet{50,101,152} in the order of `model.layers`
    (Keras' topological order: in a stage's first block the shortcut conv _0 comes after _1 and _2). The
    BatchNorms follow the same order with `_bn` for `_conv`."""
    names = ["conv1_conv"]
    for stage, n in enumerate(layers, start=2):
        for b in range(1, n + 1):
            p = f"conv{stage}_block{b}"
            names += [f"{p}_1_conv", f"{p}_2_conv"] + ([f"{p}_0_conv"] if b == 1 else []) + [f"{p}_3_conv"]
    return names


def _h5py():
    try:
        import h5py
    except ImportError:
        raise WeightsError("reading Keras files needs h5py: pip install 'resnets[keras]'") from None
    return h5py


def _legacy(f) -> dict[str, list[np.ndarray]]:
    """Keras 2's HDF5 weights: root (or model_weights/) attribute layer_names, each layer's weight_names."""
    g = f["model_weights"] if "model_weights" in f else f
    out = {}
    for name in g.attrs["layer_names"]:
        name = name.decode() if isinstance(name, bytes) else str(name)
        layer = g[name]
        wnames = [w.decode() if isinstance(w, bytes) else str(w) for w in layer.attrs.get("weight_names", [])]
        if wnames:
            out[name] = [np.asarray(layer[w]) for w in wnames]
    return out


def _keras3(f, order: list[tuple[str, str]]) -> dict[str, list[np.ndarray]]:
    """Keras 3's weights file: layers/<class name in snake case>[_k]/vars/<i>, k counting that class's layers in
    the model's order. `order`: (layer name, class name) of the layers with weights, in that order."""
    snake = {"Conv2D": "conv2d", "BatchNormalization": "batch_normalization", "Dense": "dense"}
    count: dict[str, int] = {}
    out = {}
    for name, cls in order:
        key = snake[cls]
        k = count.get(key, 0)
        count[key] = k + 1
        path = f"layers/{key}" + (f"_{k}" if k else "") + "/vars"
        if path not in f:
            raise WeightsError(f"the Keras weights have no {path} (for layer {name}); not a keras.applications ResNet")
        group = f[path]
        out[name] = [np.asarray(group[str(i)]) for i in range(len(group))]
    return out


def _depth_of(names) -> tuple[int, ...]:
    blocks: dict[int, int] = {}
    for name in names:
        m = re.fullmatch(r"conv(\d)_block(\d+)_\d_conv", name)
        if m:
            s, b = int(m[1]), int(m[2])
            blocks[s] = max(blocks.get(s, 0), b)
    layers = tuple(blocks.get(s, 0) for s in (2, 3, 4, 5))
    if layers not in DEPTHS.values():
        raise WeightsError(
            f"these Keras weights are not a keras.applications ResNet50/101/152 (blocks per stage: {layers})"
        )
    return layers


def _from_config(cfg) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """(layers with weights in order, BatchNorm epsilons) from a .keras file's config.json, checked: the
    model's config a table, its layers a list of tables, names text, epsilons small positive numbers."""

    def bad(what: str) -> WeightsError:
        return WeightsError(f"the .keras file's config.json is not a Keras model's: {what}")

    model = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(model, dict):
        raise bad("no model config (a table under 'config')")
    layers = model.get("layers")
    if not isinstance(layers, list):
        raise bad("'layers' is not a list")
    order, eps = [], {}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("config", {}), dict):
            raise bad("a layer that is not a table")
        cls, conf = layer.get("class_name"), layer.get("config") or {}
        if cls in ("Conv2D", "BatchNormalization", "Dense"):
            name = conf.get("name")
            if not isinstance(name, str):
                raise bad(f"a {cls} layer without a name")
            order.append((name, cls))
            if cls == "BatchNormalization":
                e = conf.get("epsilon", KERAS_EPS)
                if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e < 1:
                    raise bad(f"layer {name}'s epsilon is {json.dumps(e)[:40]}, not a small positive number")
                eps[name] = float(e)
    return order, eps


# what a .keras archive's members may hold: ResNet152's config.json is ~0.3 MB, its weights ~240 MB
MAX_CONFIG_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 2 << 30


def _member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A .keras archive's member, refused from the archive's directory when it is larger than `limit` (zipfile
    stops reading at the size the directory states, so a lying directory cannot make it read more)."""
    size = z.getinfo(name).file_size
    if size > limit:
        raise WeightsError(f"the .keras file's {name} is {size:,} bytes unpacked; at most {limit:,} are read")
    return z.read(name)


# the number of dimensions each kind of Keras layer's weights have: kernel and bias
_NDIMS = {"conv": (4, 1), "bn": (1, 1, 1, 1), "predictions": (2, 1)}


def _check_arrays(arrays: dict[str, list[np.ndarray]]) -> None:
    """Every array a float array of the shape its layer's kind has (a 1-D kernel, string weights: refused)."""
    for name, ws in arrays.items():
        kind = (
            "predictions"
            if name == "predictions"
            else "conv"
            if name.endswith("_conv")
            else "bn"
            if name.endswith("_bn")
            else None
        )
        if kind is None:
            continue
        want = _NDIMS[kind]
        if not 1 <= len(ws) <= len(want) or (kind != "conv" and len(ws) != len(want)):
            raise WeightsError(f"Keras layer {name} has {len(ws)} weights; a {kind} layer has {len(want)}")
        for w, ndim in zip(ws, want):
            if w.dtype.kind != "f" or w.ndim != ndim or 0 in w.shape:
                raise WeightsError(
                    f"Keras layer {name} holds a {w.dtype} array of shape {w.shape}; a {kind} layer's "
                    f"weights are float arrays of {ndim} dimensions"
                )
        if len({w.shape[-1] for w in ws}) != 1:  # kernel out = bias; a BatchNorm's four vectors alike
            raise WeightsError(f"Keras layer {name}'s weights disagree in size: {[w.shape for w in ws]}")


def read_arrays(path: Path) -> tuple[dict[str, list[np.ndarray]], dict[str, float]]:
    """{Keras layer name: [its weights]} and the BatchNorm epsilons recorded (none: Keras' 1.001e-5)."""
    h5py = _h5py()
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as z:
                cfg = json.loads(_member(z, "config.json", MAX_CONFIG_BYTES))
                blob = io.BytesIO(_member(z, "model.weights.h5", MAX_WEIGHTS_BYTES))
            order, eps = _from_config(cfg)
            with h5py.File(blob, "r") as f:
                return _keras3(f, order), eps
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or "model_weights" in f:
                return _legacy(f), {}
            if "layers" not in f:
                raise WeightsError(f"{path} is an HDF5 file without Keras weights")
            n_conv = sum(1 for k in f["layers"] if re.fullmatch(r"conv2d(_\d+)?", k))
            depth = {53: DEPTHS[50], 104: DEPTHS[101], 155: DEPTHS[152]}.get(n_conv)
            if depth is None:
                raise WeightsError(
                    f"{path} holds {n_conv} conv layers; a keras.applications ResNet50/101/152 has 53/104/155"
                )
            convs = layer_order(depth)
            order = [(c, "Conv2D") for c in convs] + [(c[:-5] + "_bn", "BatchNormalization") for c in convs]
            if "dense" in f["layers"]:
                order.append(("predictions", "Dense"))
            return _keras3(f, order), {}
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as e:  # h5py's and zipfile's own errors
        raise WeightsError(
            f"cannot read {path} as Keras weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None


def _ours(name: str) -> str:
    """Keras layer name -> our parameter prefix: conv1_conv -> conv1, conv3_block2_1_bn -> layer2.1.bn1,
    conv2_block1_0_conv -> layer1.0.downsample.0, predictions -> fc."""
    if name == "predictions":
        return "fc"
    if name in ("conv1_conv", "conv1_bn"):
        return "conv1" if name.endswith("conv") else "bn1"
    m = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
    if not m:
        raise WeightsError(f"unexpected Keras layer {name!r}: not a keras.applications ResNet")
    stage, block, k, kind = int(m[1]) - 1, int(m[2]) - 1, m[3], m[4]
    if k == "0":
        return f"layer{stage}.{block}.downsample.{0 if kind == 'conv' else 1}"
    return f"layer{stage}.{block}.{kind}{k}"


def convert(arrays: dict[str, list[np.ndarray]], eps: dict[str, float]) -> dict[str, torch.Tensor]:
    """Keras arrays -> our state_dict, with the conv biases and Keras' epsilon folded into the BatchNorms and the
    first conv taking RGB."""
    sd: dict[str, torch.Tensor] = {}
    biases: dict[str, np.ndarray] = {}
    for name, ws in arrays.items():
        if name.endswith("_conv"):
            kernel = torch.from_numpy(np.ascontiguousarray(ws[0].transpose(3, 2, 0, 1)))  # (out, in, kh, kw)
            if name == "conv1_conv":
                kernel = kernel.flip(1)  # Keras' input is BGR, ours RGB
            sd[_ours(name) + ".weight"] = kernel.float().contiguous()
            if len(ws) > 1:
                biases[name[: -len("_conv")] + "_bn"] = ws[1].astype(np.float64)
        elif name == "predictions":
            sd["fc.weight"] = torch.from_numpy(np.ascontiguousarray(ws[0].T)).float()
            sd["fc.bias"] = torch.from_numpy(ws[1]).float()
    for name, ws in arrays.items():
        if not name.endswith("_bn"):
            continue
        if len(ws) != 4:
            raise WeightsError(f"Keras layer {name} has {len(ws)} weights; a BatchNorm with scale and centre has 4")
        gamma, beta, mean, var = (w.astype(np.float64) for w in ws)
        if name in biases and biases[name].shape != mean.shape:
            raise WeightsError(
                f"Keras layer {name} has {mean.shape[0]} channels, its conv's bias {biases[name].shape[0]}"
            )
        mean = mean - biases.get(name, 0.0)
        var = var + (eps.get(name, KERAS_EPS) - TORCH_EPS)
        p = _ours(name)
        for key, value in (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)):
            sd[f"{p}.{key}"] = torch.from_numpy(value).float()
        sd[f"{p}.num_batches_tracked"] = torch.tensor(0)
    return sd


def read_keras(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """(state_dict, metadata) of a Keras ResNet50/101/152 file: our resnet50/101/152 with stride_in_1x1=True,
    Keras' caffe preprocessing, and the ImageNet class names when it has the 1000-class head."""
    path = Path(path)
    arrays, eps = read_arrays(path)
    _check_arrays(arrays)
    depth = _depth_of(arrays)
    arch = {v: f"resnet{k}" for k, v in DEPTHS.items()}[depth]
    sd = convert(arrays, eps)
    num_classes = int(sd["fc.weight"].shape[0]) if "fc.weight" in sd else 0
    options = {"stride_in_1x1": True, "num_classes": num_classes}
    names = class_list("imagenet") if num_classes == 1000 else None
    return sd, ModelMeta(arch, options, names, PREPROCESSING, str(path))
