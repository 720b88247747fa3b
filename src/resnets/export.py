"""Shipping a model: ONNX, TorchScript or a torch.export program, checked against eager PyTorch; and int8 ONNX
through ONNX Runtime's static quantization, refused when it costs more accuracy than allowed.

Every written file is checked before it is kept: the exported model runs on random and real inputs and its
largest difference from eager PyTorch is reported (fp32 must stay within 1e-4).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .data import DATASETS, get_dataset
from .data.datasets import decode
from .data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckFailed, ResnetsError
from .meta import meta_of, preprocessing_for, traits_of
from .models.fold import folded
from .onnx_predict import session as ort_session  # noqa: F401  (resnets.export.ort_session, as before)
from .safe_io import MODEL_NAME, atomic_path

log = logging.getLogger("resnets")
# onnx (1.5 s to import) and onnxruntime are imported in the functions that use them: the factory imports this
# module (through onnx_file) for every model it loads
FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".pth", ".ts"), "exported-program": (".pt2",)}
# an export agrees with eager PyTorch when |exported - eager| <= ATOL + RTOL * |eager| everywhere (the form of
# torch.testing.assert_close): float32 kernels of two runtimes differ by rounding, which grows with the logits
ATOL, RTOL = 1e-4, 1e-4


def example_inputs(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """Random inputs plus real photos (shipped with the package) through the model's own preprocessing."""
    pre = preprocessing_for(model)
    c = len(pre.mean)
    x = torch.randn(batch, c, pre.crop, pre.crop)
    tf, norm = pre.transform(), pre.normalizer()
    real = []
    for name in ("astronaut.jpg", "coffee.jpg"):
        with resources.as_file(resources.files("resnets").joinpath(f"assets/{name}")) as p:
            real.append(norm(tf(decode(p, c))))
    return torch.cat([x, torch.stack(real)])


@dataclass
class Runner:
    """A loaded exported model: `run(x)` -> logits (a float32 CPU tensor, as every runner returns)."""

    run: Callable[[torch.Tensor], torch.Tensor]
    kind: str


def ort_run(sess) -> Callable[[torch.Tensor], torch.Tensor]:
    """An ONNX Runtime session as a function of one input tensor (any device) to its first output (a float32 CPU
    tensor)."""
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.detach().float().cpu().contiguous().numpy()})[0])

    return run


def load_runner(path: str | os.PathLike, fmt: str) -> Runner:
    if fmt == "onnx":
        return Runner(ort_run(ort_session(path)), "onnxruntime")
    if fmt == "torchscript":
        m = torch.jit.load(str(path))
        return Runner(lambda x: m(x).detach().float(), "torchscript")
    ep = torch.export.load(str(path))
    mod = ep.module()
    return Runner(lambda x: mod(x).detach().float(), "exported-program")


def write(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    fmt: str,
    dynamic_batch: bool,
    metadata: dict[str, str] | None = None,
) -> None:
    """The one writer of exported files (atomically): `model` traced on `example` as `fmt`. metadata: ONNX
    metadata_props to record in the file."""
    batch = torch.export.Dim("batch", min=1, max=4096) if dynamic_batch else None
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            import onnx

            kwargs = {"dynamic_shapes": ({0: batch},)} if dynamic_batch else {}
            # the exporter may write weights beside the graph: export into a private folder, then save one file
            with (
                tempfile.TemporaryDirectory() as d,
                contextlib.redirect_stdout(io.StringIO()),
            ):  # it narrates its passes
                torch.onnx.export(
                    model,
                    (example,),
                    f"{d}/model.onnx",
                    input_names=["input"],
                    output_names=["logits"],
                    dynamo=True,
                    verbose=False,
                    **kwargs,
                )
                proto = onnx.load(f"{d}/model.onnx")
                for k, v in (metadata or {}).items():
                    proto.metadata_props.add(key=k, value=v)
                onnx.save_model(proto, str(tmp), save_as_external_data=False)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), str(tmp))
        else:
            ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},) if dynamic_batch else None)
            torch.export.save(ep, str(tmp))


def onnx_metadata(model: nn.Module) -> dict[str, str]:
    """What an ONNX file carries about its model (metadata_props): the resnets model record (architecture,
    options, class names, preprocessing), so a serving stack can label outputs and feed inputs from the file
    alone. The class names and preprocessing also under plain keys."""
    meta = meta_of(model).replace(preprocessing=preprocessing_for(model))
    record = meta.to_record()
    out = {f"resnets.{k}": v for k, v in record.items()}
    out["class_names"] = record.get("class_names", json.dumps(meta.names(model.num_classes)))
    out["preprocessing"] = record["preprocessing"]
    return out


def export(
    model: nn.Module,
    out: str | os.PathLike,
    fmt: str,
    *,
    dynamic_batch: bool = True,
    fold: bool = False,
    atol: float = ATOL,
    rtol: float = RTOL,
    stamp: dict[str, str] | None = None,
) -> dict:
    """Write `model` as `fmt` to `out`, reload it, and compare with eager PyTorch on random inputs and real photos:
    a file whose outputs differ by more than atol + rtol * |eager| anywhere is removed and CheckFailed raised.
    dynamic_batch: any batch size at run time (else the batch is fixed at 2, the traced example's). ONNX files
    carry the model's metadata (`onnx_metadata`), and `stamp`'s keys beside it (a cache's key)."""
    if fmt not in FORMATS:
        raise ResnetsError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    out = Path(out)
    if not out.parent.is_dir():
        raise ResnetsError(f"output directory does not exist: {out.parent}")
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise ResnetsError(f"a {fmt} file ends in {' or '.join(SUFFIXES[fmt])}; got {out.name}")
    model = model.eval().cpu()
    metadata = {**onnx_metadata(model), **(stamp or {})} if fmt == "onnx" else None
    net = folded(model) if fold else model  # the model itself where there is nothing it can fold
    x = example_inputs(model)
    with torch.no_grad():
        ref = model(x)
        example = x[:2]
        write(net, example, out, fmt, dynamic_batch, metadata)
    try:
        runner = load_runner(out, fmt)
        diffs = {}
        with torch.no_grad():
            if dynamic_batch or fmt == "torchscript":
                got = torch.cat([runner.run(x[:1]), runner.run(x[1:])])
            else:  # a static graph takes exactly the example's batch
                got = torch.cat([runner.run(x[i : i + 2]) for i in range(0, len(x), 2)])
        diffs["random"] = float((got[:2] - ref[:2]).abs().max())
        diffs["real"] = float((got[2:] - ref[2:]).abs().max())
    except Exception:
        out.unlink(missing_ok=True)
        raise
    excess = ((got - ref).abs() - (atol + rtol * ref.abs())).max()
    if not excess <= 0:  # NaN fails too
        out.unlink(missing_ok=True)
        raise CheckFailed(
            f"the exported model differs from eager PyTorch by up to {max(diffs.values()):.2e}, over "
            f"--atol {atol:g} + --rtol {rtol:g} x |eager| ({float(excess):.2e} over); not written"
        )
    shape = ["N" if dynamic_batch else 2, *example.shape[1:]]
    return {
        "path": str(out),
        "format": fmt,
        "max_abs_diff": diffs,
        "dynamic_batch": dynamic_batch,
        "fold_bn": net is not model,  # as written: False where folding was asked but could not be done
        "runtime": runner.kind,
        "bytes": out.stat().st_size,
        "input_shape": shape,
    }


# ---- a Triton model repository


def triton_config(name: str, channels: int, crop: int, classes: int, max_batch: int) -> str:
    """config.pbtxt of a classifier's ONNX file in a Triton model repository: ONNX Runtime's platform, batched up to
    `max_batch` by Triton's dynamic batcher, the normalised (channels, crop, crop) input, the logits out with
    labels.txt beside (Triton's classification extension names the classes from it)."""
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch}\n"
        f'input [\n  {{\n    name: "input"\n    data_type: TYPE_FP32\n    dims: [ {channels}, {crop}, {crop} ]\n  }}\n]\n'
        f'output [\n  {{\n    name: "logits"\n    data_type: TYPE_FP32\n    dims: [ {classes} ]\n'
        '    label_filename: "labels.txt"\n  }\n]\n'
        "dynamic_batching { }\n"
    )


ONNX_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8"}


def triton_io(path: str | os.PathLike) -> str:
    """The input and output blocks of config.pbtxt for an ONNX file taking what its graph says (max_batch_size
    0: the dims are the file's own, a dimension of any size -1): a detector's or segmenter's."""
    sess = ort_session(path)

    def block(kind: str, tensors) -> str:
        rows = []
        for t in tensors:
            if t.type not in ONNX_TO_TRITON:
                raise ResnetsError(f"{t.name} is {t.type}: no Triton type here for it")
            dims = ", ".join(str(d) if isinstance(d, int) and d >= 0 else "-1" for d in t.shape)
            typed = ONNX_TO_TRITON[t.type]
            rows.append(f'  {{\n    name: "{t.name}"\n    data_type: {typed}\n    dims: [ {dims} ]\n  }}')
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"

    return block("input", sess.get_inputs()) + block("output", sess.get_outputs())


def export_triton(model: nn.Module, repo: str | os.PathLike, name: str, *, max_batch: int = 32) -> dict:
    """A Triton model repository's model: REPO/NAME/1/model.onnx (checked against eager PyTorch as `export`
    checks), REPO/NAME/config.pbtxt, labels.txt (a class a line) and preprocessing.json (what an image is made into
    before the input) beside it; written in a temporary folder and moved into place whole. A classifier is batched
    by Triton up to `max_batch` (dynamic batching) on its normalised (C, crop, crop) input; a detector takes one
    [0, 1] image of any size and gives its detections, a segmenter normalised batches and its per-pixel logits
    (export_dense's files: Triton does not batch them, max_batch_size 0)."""
    dense = is_dense(model)
    pre = meta_of(model).preprocessing
    if pre is None and not dense:
        raise ResnetsError("the model records no preprocessing (size, mean, std): a Triton client could not feed it")
    repo = Path(repo)
    names = list(meta_of(model).class_names or []) if dense else meta_of(model).names(model.num_classes)
    if not re.fullmatch(MODEL_NAME, name):
        raise ResnetsError(f"a model's name in Triton is letters, digits, '.', '_' and '-'; got {name[:40]!r}")
    final = repo / name
    if final.exists():
        raise ResnetsError(f"{final} exists: give another --model-name, or remove it")
    repo.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=repo, prefix=f".{name}.") as tmp:
        folder = Path(tmp) / name
        (folder / "1").mkdir(parents=True)
        head = f'name: "{name}"\nplatform: "onnxruntime_onnx"\n'
        if dense:
            r = export_dense(model, folder / "1" / "model.onnx")
            config = head + "max_batch_size: 0\n" + triton_io(folder / "1" / "model.onnx")
            feed = _dense_feed(dense)
            said = {"input": r["input"], "outputs": r["outputs"], "max_batch": 0}
        else:
            r = export(model, folder / "1" / "model.onnx", "onnx")
            config = triton_config(name, len(pre.mean), pre.crop, len(names), max_batch)
            feed = pre.to_dict()
            said = {"input": [len(pre.mean), pre.crop, pre.crop], "max_batch": max_batch}
        (folder / "config.pbtxt").write_text(config)
        (folder / "labels.txt").write_text("".join(f"{c}\n" for c in names))
        (folder / "preprocessing.json").write_text(json.dumps(feed, indent=2))
        folder.rename(final)
    return {"path": str(final), "max_abs_diff": r["max_abs_diff"], "classes": len(names), "task": dense or "classification",
            **said}  # fmt: skip


def _dense_feed(task: str) -> dict:
    """preprocessing.json of a detector's or segmenter's Triton model: what its input is made of."""
    if task == "detection":
        return {"input": "image", "layout": "CHW", "scale": "RGB divided by 255: [0, 1]", "size": "any: the model "
                "resizes and normalises it", "outputs": "boxes (x0, y0, x1, y1 in the image's pixels), labels, scores"}  # fmt: skip
    return {"input": "image", "layout": "NCHW", "scale": "RGB divided by 255, then (x - mean) / std",
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "size": "any", "outputs": "per-pixel logits"}  # fmt: skip


# ---- int8 through ONNX Runtime


def _batches(model: nn.Module, source: str, limit: int, batch: int = 32) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised images, labels) from "fashion-mnist", "cifar10", or an image folder (class subfolders named like
    the model's classes), through the model's preprocessing."""
    # the loader imports torchvision's transforms (and torch._dynamo with them, 1-2 s): the factory imports this
    # module for every model it loads, so it is loaded here, where calibration needs it
    from .data.loader import Augmented, EvalBatches, make_loader

    pre = preprocessing_for(model)
    classes = list(meta_of(model).class_names or [])
    name, _, split = source.partition(":")
    if name in DATASETS and DATASETS[name].kind == "tensors":  # "fashion-mnist", "cifar10:train", ...
        ds = get_dataset(name).load(split or "test")
    else:  # an image folder, its class subfolders named like the model's classes
        ds = get_dataset("imagefolder").evaluation(source, channels=len(pre.mean), classes=classes or None)
    if classes and ds.classes != classes:
        raise ResnetsError(f"{source}: its classes do not match the model's")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds), generator=g)[: limit or len(ds)].tolist()
    ds = ds.subset(sorted(idx))
    tf, norm = pre.transform(), pre.normalizer()
    for b in make_loader(Augmented(ds, tf, 0), EvalBatches(len(ds), batch), workers=0):
        if b.images.numel():
            yield norm(b.images), b.labels


def ort_top1(path: str | os.PathLike, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    hits = n = 0
    for x, y in batches:
        pred = sess.run(None, {name: x.numpy()})[0].argmax(1)
        hits += int((torch.from_numpy(pred) == y).sum())
        n += len(y)
    return 100.0 * hits / max(n, 1)


def quantize_int8(fp32: Path, out: Path, calib: Iterable[torch.Tensor]) -> None:
    """The one int8 quantizer: ONNX Runtime static quantization of the fp32 ONNX file `fp32` into `out` (QDQ,
    per-channel int8 weights, uint8 activations), calibrated on the normalised batches `calib` (real images)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b.cpu().numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def export_int8(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    calib: str,
    eval_data: str,
    max_drop: float = 1.0,
    calib_images: int = 512,
    eval_images: int = 0,
) -> dict:
    """Static post-training quantization (QDQ, per-channel int8 weights, uint8 activations) calibrated on real
    images; top-1 of fp32 and int8 compared on `eval_data`. Over `max_drop` points: nothing written, error."""
    out = Path(out)
    if not out.parent.is_dir():
        raise ResnetsError(f"output directory does not exist: {out.parent}")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export(model, fp32, "onnx", dynamic_batch=True)
        q = Path(tmp) / "int8.onnx"
        quantize_int8(fp32, q, (x for x, _ in _batches(model, calib, calib_images)))
        top_fp32 = ort_top1(fp32, _batches(model, eval_data, eval_images))
        top_int8 = ort_top1(q, _batches(model, eval_data, eval_images))
        drop = top_fp32 - top_int8
        result = {
            "path": str(out),
            "format": "onnx-int8",
            "fp32_top1": top_fp32,
            "int8_top1": top_int8,
            "drop": drop,
            "max_drop": max_drop,
            "accepted": drop <= max_drop,
        }
        if drop > max_drop:
            return result
        with atomic_path(out) as final:
            final.write_bytes(q.read_bytes())
        result["bytes"] = out.stat().st_size
    return result


# ---- detectors and segmenters: torchvision's ONNX path

DENSE_OPSET = 17


def is_dense(model: nn.Module) -> str | None:
    """The task of a dense model ("detection": torchvision's detectors, "segmentation": FCN and DeepLabV3), None
    for a classifier."""
    task = traits_of(model)
    return task.name if task.dense else None


def _dense_inputs(images_in: bool) -> list[torch.Tensor]:
    """The two photos shipped with the package (of different sizes) and a random image, as the model is called
    (models.registry.TaskTraits.calling): [0, 1] images for a model that takes a list of images (a detector
    normalises itself), ImageNet-normalised batches of one for a model that takes a batch (a segmenter)."""
    images = []
    for name in ("astronaut.jpg", "coffee.jpg"):
        with resources.as_file(resources.files("resnets").joinpath(f"assets/{name}")) as p:
            images.append(decode(p, 3).float() / 255)
    images.append(torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)))
    if images_in:
        return images
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return [((im - mean) / std)[None] for im in images]


def _dense_call(model: nn.Module, x: torch.Tensor, images_in: bool) -> dict[str, torch.Tensor]:
    """The model's outputs by name for one input of `_dense_inputs`, eagerly."""
    with torch.no_grad():
        return model([x])[0] if images_in else model(x)


def export_dense(model: nn.Module, out: str | os.PathLike, *, atol: float = 1e-3) -> dict:
    """A detector or segmenter as ONNX through torchvision's ONNX path (the TorchScript-based exporter its own tests
    use, opset 17), its inputs and outputs as its task calls its model (models.registry.TaskTraits.calling): a
    model of images (a detector) takes one [0, 1] image (3, H, W) of any size and gives its outputs per detection
    (boxes, labels, scores, and masks), its post-processing in the graph; a model of batches (a segmenter) takes
    normalised (N, 3, H, W) and gives its outputs per pixel ("out" logits, and "aux"). The outputs are named as
    the model names them. Checked with ONNX Runtime against eager PyTorch on two photos and a random image of other
    sizes than the one traced (the same detections, boxes within `atol` x 100 pixels, scores and logits within
    `atol`); a file that differs is removed and CheckFailed raised."""
    import onnx

    task = traits_of(model)
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ResnetsError(f"detectors and segmenters export to ONNX (.onnx); got {out.name}")
    model = model.eval().cpu()
    images_in = task.calling == "images"
    inputs = _dense_inputs(images_in)
    names = list(_dense_call(model, inputs[0], images_in))  # boxes, labels, scores (masks) or out (aux)
    per = {0: "detections"} if images_in else {0: "batch", 2: "height", 3: "width"}
    axes = {"image": {1: "height", 2: "width"} if images_in else {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: per for n in names})
    with atomic_path(out) as tmp, warnings.catch_warnings(), tempfile.TemporaryDirectory() as d:
        warnings.simplefilter("ignore")
        example = ([inputs[0]],) if images_in else (inputs[0],)
        torch.onnx.export(model, example, f"{d}/m.onnx", dynamo=False, opset_version=DENSE_OPSET, input_names=["image"],
                          output_names=names, dynamic_axes=axes)  # fmt: skip
        proto = onnx.load(f"{d}/m.onnx")
        for k, v in meta_of(model).to_record().items():
            proto.metadata_props.add(key=f"resnets.{k}", value=v)
        onnx.save_model(proto, str(tmp))
        diff = _check_dense(tmp, model, inputs[1:], images_in, names, atol)
    said = (
        f"one [0, 1] image (3, H, W) of any size; outputs {', '.join(names)}"
        if images_in
        else f"normalised images (N, 3, H, W); outputs {', '.join(names)}"
    )
    return {"path": str(out), "format": "onnx", "task": task.name, "max_abs_diff": diff, "outputs": names,
            "input": said, "bytes": out.stat().st_size, "runtime": "onnxruntime"}  # fmt: skip


def _check_dense(path: Path, model: nn.Module, inputs: list[torch.Tensor], images_in: bool, names: list[str],
                 atol: float):  # fmt: skip
    sess = ort_session(path)
    worst = 0.0
    for x in inputs:
        got = sess.run(None, {"image": x.numpy()})
        ref = _dense_call(model, x, images_in)
        for name, g in zip(names, got):
            want = ref[name].float()
            g = torch.from_numpy(g).to(want.dtype)
            if g.shape != want.shape:
                raise CheckFailed(
                    f"the exported {name} have shape {tuple(g.shape)}, eager PyTorch's {tuple(want.shape)}; not written"
                )
            diff = float((g - want).abs().max()) if g.numel() else 0.0
            allowed = atol * 100 if name == "boxes" else atol
            if not diff <= allowed:
                raise CheckFailed(
                    f"the exported {name} differ from eager PyTorch by {diff:.2e} (over {allowed:g}); not written"
                )
            worst = max(worst, diff if name != "boxes" else diff / 100)
    return worst
