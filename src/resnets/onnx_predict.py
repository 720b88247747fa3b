"""Classifying image files through ONNX Runtime with no torch in the process: what `resnets predict` runs on a
CPU at fp32 (its `auto` backend) when the model is an ONNX file `resnets export` wrote, or a model file whose
verified export is in the cache (made by the first such run). A process that imports only numpy, Pillow and
onnxruntime starts in a fraction of a second and stays far below torch's half a gigabyte (benchmarks/RESULTS.md).

Images are read and decoded as everywhere else (data/images.py: the sandbox's capped workers, decoded no larger
than twice the model's resize), then resized and centre-cropped with Pillow as the model's preprocessing says, the
same steps as torchvision's `Resize(antialias=True)` and `CenterCrop` (their outputs agree to a grey level or so),
normalised in float32 and classified a batch at a time while the next images decode.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .data.images import IMAGE_SUFFIXES, BadSample, decode_array, read_image_file
from .data.preprocessing import Preprocessing
from .errors import ResnetsError, UnknownModelError, WeightsError
from .home import onnx_cache_dir
from .meta import ModelMeta
from .models.registry import TaskTraits, get_entry
from .version import __version__

FILE_PREFIX = "file-"  # cached exports keyed by the bytes of the model file they were made from


def session(path: str | os.PathLike, threads: int = 0):
    """An ONNX Runtime session on the CPU; no busy-waiting between runs (spinning threads would take the CPU from
    image decoding, and from whatever runs next)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def open_onnx(path: str | os.PathLike):
    """(session, meta, num_classes) of an ONNX file that `resnets export` wrote, checked: its record (as a model
    file's), its input of the recorded channels and crop, a classifier of the recorded size; or one WeightsError
    saying why not."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        sess = session(path)
    except Exception as e:  # onnxruntime's own error types for files that are not ONNX, or broken ones
        raise WeightsError(f"cannot read {path} as ONNX ({(str(e).splitlines() or [''])[0][:160]})") from None
    props = sess.get_modelmeta().custom_metadata_map
    record = {k[len("resnets.") :]: v for k, v in props.items() if k.startswith("resnets.")}
    meta = ModelMeta.from_record(record, str(path))
    if meta is None:
        raise WeightsError(
            f"{path} is an ONNX file that records no resnets model (its classes and preprocessing); "
            "predict, bench and serve take the ONNX files `resnets export` writes"
        )
    task = _task(meta.architecture)
    if task is not None and task.dense:
        raise WeightsError(
            f"{path} is the ONNX export of a {task.name} model ({meta.architecture}), for ONNX Runtime or Triton in "
            f"your own stack; `resnets {task.command}` and `resnets serve` run the model file it was exported from"
        )
    pre = meta.preprocessing
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if pre is None or len(inputs) != 1 or len(outputs) != 1:
        raise WeightsError(f"{path} is not a resnets export: one input, one output and a recorded preprocessing")
    shape = inputs[0].shape  # [batch, C, H, W], the batch a name when dynamic
    want = [len(pre.mean), pre.crop, pre.crop]
    if len(shape) != 4 or any(isinstance(s, int) and s != w for s, w in zip(shape[1:], want)):
        raise WeightsError(f"{path}: its input is {shape}, its record says {['N', *want]} (a damaged file)")
    n = meta.options.get("num_classes")
    out = outputs[0].shape
    if not isinstance(n, int) or (len(out) == 2 and isinstance(out[1], int) and out[1] != n):
        raise WeightsError(f"{path}: its output is {out}, its record says {n} classes (a damaged file)")
    if meta.class_names is not None and len(meta.class_names) != n:
        raise WeightsError(f"{path} is damaged: it names {len(meta.class_names)} classes for a classifier of {n}")
    return sess, meta.replace(source=str(path)), n


def _task(architecture: str) -> TaskTraits | None:
    """The task of an architecture's name (None: a name not registered here)."""
    try:
        return get_entry(architecture).task
    except UnknownModelError:
        return None


# ---- the cache of exports keyed by model file


def digest(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read a megabyte at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_files(weights: str | os.PathLike) -> list[Path] | None:
    """The local files `--weights` names that the loader reads: a model file, or a folder's model.safetensors and
    its config.json (a run's; or timm's and the Hub's, whose class names and preprocessing the loader takes from
    it); None for anything else (a registered name, hf-hub:, a missing path): only files' bytes can key the
    cache."""
    p = Path(weights)
    if p.is_dir():
        if not (p / "model.safetensors").is_file():
            return None
        return [p / "model.safetensors"] + ([p / "config.json"] if (p / "config.json").is_file() else [])
    return [p] if p.is_file() else None


def cache_key(files: list[Path]) -> str:
    """The name of the export of the model that `files` make, in the cache: their names and bytes' hashes, and
    this version of resnets (whose export and preprocessing record it holds)."""
    h = hashlib.sha256(__version__.encode())
    for f in files:
        h.update(f"|{f.name}|{digest(f)}".encode())
    return FILE_PREFIX + h.hexdigest()[:32]


def export_path(files: list[Path]) -> Path:
    """Where the verified ONNX export of the model that `files` make is cached."""
    return onnx_cache_dir() / f"{cache_key(files)}.onnx"


def cached(weights: str | os.PathLike) -> Path | None:
    """The cached export of the model file `weights` names, when there is one that can be trusted (its bytes match
    the hash recorded beside it when it was written, and its stamp names its key), touched as recently used; else
    None."""
    files = model_files(weights)
    if files is None or files[0].suffix.lower() == ".onnx":
        return None
    path = export_path(files)
    try:
        if not path.is_file() or path.with_suffix(".sha256").read_text().strip() != digest(path):
            return None
    except OSError:  # no record beside it, or unreadable
        return None
    path.touch()  # the last to be trimmed
    return path  # its stamp is checked by `classify`, on the session it runs (one session: 0.2-0.3 s each)


# ---- preprocessing with Pillow and numpy


def prepared(array, pre: Preprocessing):
    """A decoded image (H, W, C uint8 numpy) as the model's input (C, crop, crop) float32: the shorter side (or,
    "squash", both sides) resized to `pre.resize` with antialiasing, the centre crop (zero-padded when the image is
    smaller, as torchvision's CenterCrop pads), scaled to [0, 1] and normalised."""
    import numpy as np
    from PIL import Image

    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[pre.interpolation]
    im = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    w, h = im.size
    if pre.crop_mode == "squash":
        size = (pre.resize, pre.resize)
    elif w <= h:  # torchvision's Resize(int): the shorter side to it, the longer in proportion, rounded down
        size = (pre.resize, int(pre.resize * h / w))
    else:
        size = (int(pre.resize * w / h), pre.resize)
    if size != (w, h):
        im = im.resize(size, resample)
    x = np.asarray(im, dtype=np.uint8)
    x = x[:, :, None] if x.ndim == 2 else x
    x = _centre_crop(x, pre.crop)
    mean = np.asarray(pre.mean, np.float32) * 255
    scale = 1 / (np.asarray(pre.std, np.float32) * 255)
    return ((x.astype(np.float32) - mean) * scale).transpose(2, 0, 1)


def _centre_crop(x, crop: int):
    """torchvision's CenterCrop on an (H, W, C) array: zero padding first where a side is shorter than `crop`."""
    import numpy as np

    h, w = x.shape[:2]
    if h < crop or w < crop:
        ph, pw = max(crop - h, 0), max(crop - w, 0)
        x = np.pad(x, ((ph // 2, (ph + 1) // 2), (pw // 2, (pw + 1) // 2), (0, 0)))
        h, w = x.shape[:2]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return x[top : top + crop, left : left + crop]


# ---- classifying


def _softmax_top(logits, k: int, names: list[str]) -> list[list[dict]]:
    import numpy as np

    z = np.nan_to_num(logits.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # those rows are errors
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return [[{"class": names[j], "index": int(j), "prob": float(row[j])} for j in idx] for row, idx in zip(p, order)]


NOT_FINITE = "the model gave scores that are not finite numbers (NaN or infinity) for this image"


def _run(sess, name: str, x, n: int, path):
    """The session's logits for the batch `x`, checked to be what the file's record promised ((batch, n)): a graph
    that fails or answers another shape is one ResnetsError naming the file, not a traceback."""
    try:
        logits = sess.run(None, {name: x})[0]
    except Exception as e:  # onnxruntime's own error types: a graph that fails on real input, or asks too much
        raise ResnetsError(f"{path}: ONNX Runtime failed on it ({(str(e).splitlines() or [''])[0][:160]})") from None
    if logits.shape != (len(x), n):
        raise ResnetsError(f"{path}: its output is {list(logits.shape)} for {len(x)} images of a {n}-class model")
    return logits


def _load(file: str, pre: Preprocessing, channels: int):
    """One file read, decoded in the sandbox at twice the resize and prepared, or its BadSample."""
    return prepared(decode_array(read_image_file(file), file, channels, size=pre.resize)[0], pre)


def _stream(files: Sequence[str], pre: Preprocessing, channels: int, workers: int, ahead: int) -> Iterator:
    """(index, input or BadSample) in file order, at most `ahead` files decoding at once in `workers` threads (each
    waits on a sandbox worker, so the decoding itself runs in those processes)."""
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        pending: deque = deque()
        for i, f in enumerate(files):
            pending.append((i, pool.submit(_load, f, pre, channels)))
            if len(pending) >= ahead:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())


def _result(i: int, future):
    try:
        return i, future.result()
    except BadSample as e:
        return i, e


def classify(
    onnx: str | os.PathLike,
    files: Sequence[str],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    stamp: str | None = None,
) -> list[dict]:
    """[{"input", "path", "top": [{"class", "index", "prob"}...]} or {"input", "path", "error"}] for `files` (paths,
    in order; "input" a file's position, as inference.predict answers), by
    the ONNX file `onnx` (`resnets export`'s, or the cache's). workers: decoding threads (default: the sandbox's
    worker count). progress: called with the number of files done after each batch. stamp: the cache key the
    file must carry (a cached export: one that is not its own is refused in one line)."""
    import numpy as np

    from .data.sandbox import workers_default

    sess, meta, n = open_onnx(onnx)
    if stamp is not None and sess.get_modelmeta().custom_metadata_map.get("resnets.cache_key") != stamp:
        raise WeightsError(f"{onnx} is not the export its name says (`resnets cache --clear onnx` removes it)")
    pre, names, k = meta.preprocessing, meta.names(n), min(top_k, n)
    name = sess.get_inputs()[0].name
    workers = workers or workers_default()
    out: list[dict] = []
    batch: list[tuple[int, object]] = []

    def flush():
        if batch:
            logits = _run(sess, name, np.stack([x for _, x in batch]), n, onnx)
            for (i, _), row, top in zip(batch, logits, _softmax_top(logits, k, names)):
                finite = bool(np.isfinite(row).all())
                out[i] = {"input": i, "path": files[i]} | ({"top": top} if finite else {"error": NOT_FINITE})
            if progress:
                progress(len(batch))
            batch.clear()

    out = [None] * len(files)  # type: ignore[list-item]
    for i, x in _stream(files, pre, len(pre.mean), workers, ahead=batch_size + 2 * workers):
        if isinstance(x, BadSample):
            out[i] = {"input": i, "path": files[i], "error": x.reason}
            if progress:
                progress(1)
            continue
        batch.append((i, x))
        if len(batch) == batch_size:
            flush()
    flush()
    return out


def find_images(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Files as given, and image files in folders (recursively, sorted). A missing path is kept, to be reported
    with the unreadable files while the rest go on; only when nothing given exists is it an error."""
    found: list[str] = []
    if paths and not any(Path(p).exists() for p in paths):
        raise ResnetsError(f"no such file or folder: {paths[0]}")
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(str(p))
    if not found:
        raise ResnetsError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return found
