"""Using a trained model: classify, embed, find similar images, explain with Grad-CAM.

Preprocessing always comes from the model file's metadata (resize, crop, interpolation, mean, std), never from
a guess. Images are decoded in worker processes (JPEGs on the GPU when the model is there) while the model runs
on the previous batch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data.batching import Loader
from .data.datasets import BadSample, FileDataset, decode, image_tensor
from .data.loader import make_eval_loader
from .errors import ResnetsError, Unreadable, printable
from .home import home_dir
from .meta import meta_of, preprocessing_for
from .onnx_predict import NOT_FINITE, digest, find_images, model_files
from .safe_io import atomic_path


@dataclass
class Batches:
    """(normalised images on the device, their indices in `files`, [(path, reason)] of unreadable files) per batch."""

    files: list[str]
    loader: Loader
    normalize: object
    device: torch.device

    def __iter__(self) -> Iterator[tuple[torch.Tensor | None, list[int], list[tuple[str, str]]]]:
        # iter(loader) starts the decode workers now, so they prefetch while the caller builds its backend
        return self._normalized(iter(self.loader))

    def _normalized(self, batches) -> Iterator[tuple[torch.Tensor | None, list[int], list[tuple[str, str]]]]:
        for batch in batches:
            images = None
            if batch.images.numel():
                images = self.normalize(batch.images.to(self.device, non_blocking=True))
            yield images, batch.labels.tolist(), batch.bad


def batches(
    model: nn.Module,
    files: list[str] | FileDataset,
    *,
    batch_size: int = 32,
    workers: int = 2,
    device: str | torch.device | None = None,
    loader: str = "auto",
) -> Batches:
    """The files (or the images of a dataset: a shard's, shards.ShardDataset) decoded, resized and centre-cropped
    as the model's preprocessing says, in batches on `device` (default: the model's). On a GPU the JPEGs are
    decoded there (nvJPEG); on a CPU in `workers` processes."""
    pre = preprocessing_for(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(files, FileDataset):
        ds, files = files.numbered(len(pre.mean)), [name for name, _ in files.samples]
    else:
        ds = FileDataset([(f, i) for i, f in enumerate(files)], [], channels=len(pre.mean))
    workers = min(workers, max(len(files) // batch_size, 0)) if len(files) < 4 * batch_size else workers
    stream = make_eval_loader(
        ds,
        kind=loader,
        device=device,
        batch_size=batch_size,
        resize=pre.resize,
        crop=pre.crop,
        interpolation=pre.interpolation,
        crop_mode=pre.crop_mode,
        workers=workers,
    )
    return Batches(files, stream, pre.normalizer(), device)


def calibration_batches(model: nn.Module, files: list[str] | FileDataset, batch_size: int = 32) -> list[torch.Tensor]:
    """The model's inputs (normalised, on the CPU) for up to 256 of `files` (or a dataset's images), to calibrate
    int8 on; a warning when fewer than 64 images could be read."""
    first = files.subset(range(min(256, len(files)))) if isinstance(files, FileDataset) else files[:256]
    calib = [
        b.cpu() for b, _, _ in batches(model, first, batch_size=batch_size, workers=0, device="cpu") if b is not None
    ]
    n = sum(len(b) for b in calib)
    if n < 64:
        import logging

        logging.getLogger("resnets").warning(
            "onnxruntime-int8 calibrates on the images given: only %d here, too few for a reliable int8 model; "
            "give more images, or make one with `resnets export --precision int8 --calib DATA --eval DATA`",
            n,
        )
    return calib


def runner_for(
    model: nn.Module,
    backend: str,
    files: list[str] | FileDataset,
    output: str,
    batch_size: int,
    precision: str = "fp32",
    device: torch.device | None = None,
    calib: list[torch.Tensor] | None = None,
):
    """`backends.make_runner`'s runner of `model` for `backend` (`output`: logits or features); onnxruntime-int8
    is calibrated on the first of `files` (or a dataset's images)."""
    from .backends import make_runner

    if backend == "onnxruntime-int8" and calib is None:  # calibrate on the images themselves
        calib = calibration_batches(model, files, batch_size)
    return make_runner(model, backend, output=output, calib=calib, precision=precision, device=device)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled or total < 64, dynamic_ncols=True, leave=False)


def _in_memory(model: nn.Module, pre, images: Sequence, first: int = 0) -> torch.Tensor:
    """PIL images and image tensors (uint8 (C, H, W), or float in [0, 1]) through the preprocessing `pre`: a
    normalised batch on the model's device. `first`: the position of images[0] among all the inputs."""
    tf, channels = pre.transform(), len(pre.mean)
    out = []
    for i, im in enumerate(images, start=first):
        taken = f"input {i}: predict takes paths, PIL images or (C, H, W) image tensors of 1-4 channels"
        x = image_tensor(im, channels, taken=taken)
        if 0 in x.shape[-2:]:
            raise ResnetsError(f"input {i} is an empty image ({x.shape[-1]}x{x.shape[-2]} pixels)")
        out.append(tf(x))
    return pre.normalizer()(torch.stack(out).to(next(model.parameters()).device))


def _images(paths) -> tuple[list[str], list[str] | FileDataset]:
    """(the names, what `batches` reads) of image files and folders, or of a dataset's images (a shard's)."""
    if isinstance(paths, FileDataset):
        return [name for name, _ in paths.samples], paths
    files = find_images(_inputs(paths))
    return files, files


def _inputs(paths) -> list:
    """One input (a path, a PIL image, an image tensor (C, H, W)) or a batch tensor (N, C, H, W) as a list, so a
    single path is never taken for a sequence of one-letter paths."""
    from PIL import Image

    if isinstance(paths, (str, os.PathLike, Image.Image)):
        return [paths]
    if isinstance(paths, torch.Tensor):
        return [paths] if paths.ndim == 3 else list(paths) if paths.ndim == 4 else [paths]
    return list(paths)


def top_classes(probs: torch.Tensor, k: int, names: list[str]) -> list[list[dict]]:
    """Each row of class probabilities as its `k` best: [{"class", "index", "prob"}...], best first."""
    p, c = probs.topk(k, dim=1)
    return [
        [{"class": names[j], "index": int(j), "prob": float(q)} for q, j in zip(pr, cr)]
        for pr, cr in zip(p.tolist(), c.tolist())
    ]


@torch.no_grad()
def predict(
    model: nn.Module,
    paths: Sequence,
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = False,
    backend: str = "eager",
    runner=None,
    precision: str = "fp32",
    loader: str = "auto",
) -> list[dict]:
    """[{"input", "path", "top": [{"class", "index", "prob"}...]} or {"input", "path", "error"}] in the order of
    the images: "input" is each one's position (a folder's files in sorted order), "path" its file (None for an
    image given in memory). paths: a file or folder, or a list of them; a dataset's images (a shard's: the
    collections of collection.py); or images already in memory (a PIL image,
    a (C, H, W) tensor, a (N, C, H, W) batch or a list of these).
    backend: auto, eager, compile, onnxruntime, or onnxruntime-int8 (calibrated on the first images given).
    precision: fp32, bf16 or fp16 (eager and compile). runner: one made before by
    `resnets.backends.make_runner(model, backend)`, to reuse across calls (an ONNX export or compilation is then
    paid once). Images are decoded on the model's device when it is a GPU."""
    model.eval()
    paths = paths if isinstance(paths, FileDataset) else _inputs(paths)
    if not len(paths):
        raise ResnetsError("predict was given no images (paths, folders, PIL images or image tensors)")
    names, k = meta_of(model).names(model.num_classes), min(top_k, model.num_classes)
    if not isinstance(paths, FileDataset) and not all(isinstance(p, (str, os.PathLike)) for p in paths):  # in memory
        pre, run, results = preprocessing_for(model), runner, []
        for start in range(0, len(paths), batch_size):
            x = _in_memory(model, pre, paths[start : start + batch_size], start)
            run = run or runner_for(model, backend, [], "logits", batch_size, precision, x.device, calib=[x.cpu()])
            results += [{"input": start + i, "path": None} | r for i, r in enumerate(_answers(run(x), k, names))]
        return results
    files, source = _images(paths)
    device = getattr(runner, "device", None) or next(model.parameters()).device
    stream = iter(
        batches(model, source, batch_size=batch_size, workers=workers, device=device, loader=loader)
    )  # decoding starts now...
    run = runner or runner_for(
        model, backend, source, "logits", batch_size, precision, device
    )  # ...while an export or compile runs
    out: list[dict | None] = [None] * len(files)
    positions: dict[str, list[int]] = {}  # a file given twice has two places
    for i, f in enumerate(files):
        positions.setdefault(f, []).append(i)
    bar = _progress(len(files), progress)
    for images, idx, bad in stream:
        for path, reason in bad:
            i = next(i for i in positions[path] if out[i] is None)
            out[i] = {"input": i, "path": path, "error": reason}
        if images is not None:
            for i, answer in zip(idx, _answers(run(images), k, names)):
                out[i] = {"input": i, "path": files[i]} | answer
        bar.update(len(idx) + len(bad))
    bar.close()
    return [o for o in out if o is not None]


def _answers(logits: torch.Tensor, k: int, names: list[str]) -> list[dict]:
    """{"top": ...} for each row of logits, or {"error": ...} for a row that is not finite (as ONNX Runtime's path
    answers: NaN is not a probability, nor valid JSON)."""
    finite = torch.isfinite(logits).all(1).tolist()
    tops = top_classes(torch.nan_to_num(logits.float()).softmax(1), k, names)
    return [{"top": t} if ok else {"error": NOT_FINITE} for t, ok in zip(tops, finite)]


@torch.no_grad()
def embed(
    model: nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    layer: str | None = None,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = False,
    backend: str = "eager",
    precision: str = "fp32",
    loader: str = "auto",
    runner=None,
    none_read: bool = False,
) -> tuple[torch.Tensor, list[str], list[dict]]:
    """Pooled pre-logit features (N, num_features), or with `layer` ("layer3") that stage's maps (N, C, h, w).
    Returns (embeddings, files embedded, errors). paths: as predict's (files, folders or a dataset's images).
    runner: one made before (`resnets.backends.make_runner(model, backend, output="features")`), reused.
    When no image could be read: Unreadable, or with `none_read` an empty (0,) tensor and the errors."""
    model.eval()
    check_embed(model, layer, backend, precision)
    files, source = _images(paths)
    stages = list(model.stage_names)
    device = next(model.parameters()).device
    stream = iter(
        batches(model, source, batch_size=batch_size, workers=workers, device=device, loader=loader)
    )  # decoding starts now
    if layer is None:
        run = runner or runner_for(model, backend, source, "features", batch_size, precision, device)
    feats: list[torch.Tensor] = []
    kept: list[str] = []
    errors: list[dict] = []
    bar = _progress(len(files), progress)
    for images, idx, bad in stream:
        errors += [{"path": path, "error": reason} for path, reason in bad]
        if images is not None:
            if layer is None:
                f = run(images)
            else:
                f = model.forward_intermediates(images, [stages.index(layer) + 1], intermediates_only=True)[0]
            feats.append(f.float().cpu())
            kept += [files[i] for i in idx]
        bar.update(len(idx) + len(bad))
    bar.close()
    if not feats and none_read:
        return torch.zeros(0), kept, errors
    if not feats:
        first = f"{printable(errors[0]['path'])}: {errors[0]['error']}" if errors else ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise Unreadable(f"no image could be read: {first}{more}" if first else "no image could be read")
    return torch.cat(feats), kept, errors


def check_embed(model: nn.Module, layer: str | None, backend: str, precision: str) -> None:
    """One line for what `embed` cannot give: a model without pooled features (an ONNX file gives logits), an
    unknown stage, a stage's maps from another backend than eager at fp32."""
    if getattr(model, "num_features", None) is None or not hasattr(model, "stage_names"):
        raise ResnetsError("this model gives no features to embed (an ONNX file gives its logits): give its weights")
    stages = list(model.stage_names)
    if layer is not None and layer not in stages:
        raise ResnetsError(f"unknown layer {printable(str(layer))[:40]!r}; choose from {', '.join(stages)}")
    if layer is not None and (backend != "eager" or precision != "fp32"):
        raise ResnetsError("stage maps (--layer) come from the eager backend at fp32 only")


def save_index(
    path: str | os.PathLike, embeddings: torch.Tensor, files: list[str], *, weights: str, layer: str | None
) -> Path:
    """An embedding index: safetensors with the matrix and, in its metadata, the file names and the model (its
    path and, for a file here, the sha256 of its weights)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": "resnets.embeddings/1", "files": json.dumps(files), "weights": str(weights), "layer": layer or ""}
    made_by = model_files(weights)
    if made_by:  # which model made the rows: `similar` refuses to embed its query with another
        meta["weights_sha256"] = digest(made_by[0])
    with atomic_path(path) as tmp:
        save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata=meta)
    return path


def load_index(path: str | os.PathLike) -> tuple[torch.Tensor, list[str], dict]:
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise ResnetsError(f"index not found: {p}")
    try:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata() or {}
            emb = f.get_tensor("embeddings")
    except Exception:
        raise ResnetsError(f"{p} is not an embedding index written by `resnets embed`") from None
    if meta.get("format") != "resnets.embeddings/1":
        raise ResnetsError(f"{p} is not an embedding index written by `resnets embed`")
    return emb, json.loads(meta["files"]), meta


# ---- nearest neighbours (`resnets similar`): FAISS over the rows, exactly or approximately

# `--search auto` compares a query with every row up to this many rows and searches an IVF index above: exact search
# costs one pass over the rows per query (at 100,000 rows of 2048 floats, 0.8 GB; benchmarks/RESULTS.md, issue 40)
APPROX_ABOVE = 100_000
SEARCHES = ("auto", "exact", "approx")
_ADDED_AT_ONCE = 1 << 16  # rows normalised and added to an index at a time: 0.5 GB of 2048-d rows
# the cached IVF index's format and build rule: a change of either must change this, so old caches are not read
IVF_FORMAT = "resnets.ivf/1"


def search_kind(search: str, n: int) -> str:
    """What `search` (auto, exact or approx) means for an index of `n` rows: "exact" or "approx"."""
    if search not in SEARCHES:
        raise ResnetsError(f"search is one of {', '.join(SEARCHES)}; got {search!r}")
    if search == "auto":
        return "approx" if n > APPROX_ABOVE else "exact"
    return search


def _unit_rows(x: torch.Tensor):
    """The rows flattened and scaled to unit length (as brute force did), as a new float32 numpy array: cosine
    similarity is then FAISS's inner product. (N, ...) -> (N, D)"""
    return F.normalize(x.detach().flatten(1).float().cpu(), dim=1).numpy()


def ivf_lists(n: int) -> tuple[int, int]:
    """(k-means lists, lists a query scans) of the approximate index of `n` rows: about 2 sqrt(n) lists of at
    least 39 rows each (k-means' own minimum), and 1/32 of them scanned, at least 8: recall@10 of 0.9 and more
    on clustered rows (tests/test_inference.py; benchmarks/similar_speed.py measures it at scale)."""
    lists = max(1, min(round(2 * math.sqrt(n)), n // 39))
    return lists, min(lists, max(8, math.ceil(lists / 32)))


def search_index(embeddings: torch.Tensor, search: str = "exact"):
    """A FAISS index of the rows of `embeddings` (N, ...) for cosine similarity. exact: IndexFlatIP over the
    L2-normalised float32 rows, which compares a query with every row. approx (or auto above APPROX_ABOVE rows):
    IndexIVFFlat, the rows split into `ivf_lists` k-means lists, a query compared with the rows of its nearest
    lists only. IVF rather than HNSW: its build is one k-means on a sample and one matrix product, where HNSW's
    graph of 2048-d rows is built at ~800 rows/s on two cores (20 minutes and more for a million). The index
    holds its own copy of the rows (N x D float32), added a block at a time: no second copy of all of them."""
    import faiss
    import numpy as np

    n, d = embeddings.shape[0], embeddings[0].numel()
    if search_kind(search, n) == "exact":
        index = faiss.IndexFlatIP(d)
        # its rows (float32, as get_xb reads them) sized once and filled a block at a time: added block by block,
        # the buffer regrows and is copied (twice the rows' bytes at the peak: a million 2048-d rows ran out of 24 GB)
        index.codes.resize(n * d * 4)
        rows = faiss.rev_swig_ptr(index.codes.data(), n * d * 4).view(np.float32).reshape(n, d)
        for start in range(0, n, _ADDED_AT_ONCE):
            rows[start : start + _ADDED_AT_ONCE] = _unit_rows(embeddings[start : start + _ADDED_AT_ONCE])
        index.ntotal = n
        return index
    lists, scanned = ivf_lists(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, lists, faiss.METRIC_INNER_PRODUCT)
    # 10 rounds of spherical k-means (unit centroids, as the rows) on a seeded sample of 64 rows a list
    index.cp.niter, index.cp.spherical, index.cp.seed = 10, True, 0
    index.cp.max_points_per_centroid, index.cp.min_points_per_centroid = 64, 1
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: 64 * lists].sort().values
    index.train(_unit_rows(embeddings[sample]))
    index.nprobe = scanned
    for start in range(0, n, _ADDED_AT_ONCE):
        index.add(_unit_rows(embeddings[start : start + _ADDED_AT_ONCE]))
    return index


def neighbours(index, query: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices) of each query row's k nearest rows in a `search_index`, best first: float32 and int64
    tensors (queries, min(k, rows)). Where an approximate index finds fewer than k rows, the index is -1."""
    q = _unit_rows(query)
    if q.shape[1] != index.d:
        raise ResnetsError(f"queries of {q.shape[1]} numbers for an index of rows of {index.d}")
    scores, idx = index.search(q, min(k, index.ntotal))
    return torch.from_numpy(scores), torch.from_numpy(idx)


def nearest(
    query: torch.Tensor, index: torch.Tensor, k: int = 5, *, search: str = "exact"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each query row to every index row: (scores, indices) of the k best, best first.
    search: exact (the default: every row compared, the same neighbours as a matmul and topk), approx or auto
    (`search_index`)."""
    return neighbours(search_index(index, search), query, k)


def index_for(path: str | os.PathLike, embeddings: torch.Tensor, search: str = "auto", *, said=None):
    """The FAISS index `resnets similar` searches the embedding index file `path` (whose rows are `embeddings`)
    with. Exact: built now (a copy of the rows). Approximate: read from $RESNETS_HOME/faiss, or built and written
    there (atomically, named by the sha256 of the file's bytes and the build rule). FAISS reads no file of which
    a sha256 written beside it by us does not match (faiss.read_index is not safe on bytes from elsewhere); one
    that does not match, or holds other rows, is built again. `said(text)`: told when a build starts."""
    n, d = embeddings.shape[0], embeddings[0].numel()
    if search_kind(search, n) == "exact":
        return search_index(embeddings, "exact")
    cache = _ivf_cache_path(Path(path), n)
    index = _read_ivf(cache, n, d)
    if index is None:
        if said is not None:
            said(f"building the approximate search index of {n:,} rows (cached for later queries: {cache})")
        index = search_index(embeddings, "approx")
        _write_ivf(index, cache)
    return index


def _ivf_cache_path(file: Path, n: int) -> Path:
    import hashlib

    key = hashlib.sha256(f"{digest(file)}|{IVF_FORMAT}|{ivf_lists(n)}".encode()).hexdigest()[:32]
    return home_dir() / "faiss" / f"{key}.faiss"


def _read_ivf(path: Path, n: int, d: int):
    """The cached index at `path` when its bytes match the sha256 recorded beside it and it holds n rows of d
    numbers compared by inner product; else None."""
    import faiss

    try:
        if not path.is_file() or path.with_suffix(".sha256").read_text().strip() != digest(path):
            return None
    except OSError:
        return None
    index = faiss.read_index(str(path))
    if index.ntotal != n or index.d != d or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    return index


def _write_ivf(index, path: Path) -> None:
    """The index at `path`, then its sha256 beside it, each written whole or not at all."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(path.with_suffix(".sha256")) as tmp:
        tmp.write_text(digest(path) + "\n")


def grad_cam(
    model: nn.Module, image: torch.Tensor, *, target: int | None = None, layer: str | None = None
) -> tuple[torch.Tensor, int, float]:
    """Grad-CAM (Selvaraju et al.) of one normalised image (C, H, W): the class's gradient-weighted map of the last
    stage (or `layer`), ReLU'd, upsampled to H x W and scaled to [0, 1]. Returns (heatmap, class, probability)."""
    model.eval()
    layer = layer or model.stage_names[-1]
    if layer not in model.stage_names:
        raise ResnetsError(
            f"Grad-CAM explains a stage's feature maps; --layer is one of {', '.join(model.stage_names)}; got {layer!r}"
        )
    module = getattr(model, layer)
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["act"] = out

    h = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(image.unsqueeze(0))
            probs = logits.softmax(1)[0]
            cls = int(probs.argmax()) if target is None else int(target)
            if not 0 <= cls < logits.shape[1]:
                raise ResnetsError(f"class index {cls} is out of range (0..{logits.shape[1] - 1})")
            model.zero_grad(set_to_none=True)
            logits[0, cls].backward()
    finally:
        h.remove()
    act, grad = store["act"].detach()[0], store["act"].grad.detach()[0]  # (C, h, w)
    weights = grad.mean(dim=(1, 2))  # global-average-pooled gradients: one weight per channel
    cam = F.relu((weights[:, None, None] * act).sum(0))
    cam = F.interpolate(cam[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam / cam.max() if cam.max() > 0 else cam
    return cam, cls, float(probs[cls].detach())


def class_index(target: int | str | None, names: Sequence[str]) -> int | None:
    """A class named by the user (its name, or its index as ASCII digits) as an index into `names`, or a
    ResnetsError saying why not, with the closest names; None stays None (the top class)."""
    if target is None:
        return None
    if isinstance(target, str) and target in names:
        return list(names).index(target)
    if isinstance(target, int) or (target.isascii() and target.isdigit() and len(target) <= 9):
        if not 0 <= int(target) < len(names):
            raise ResnetsError(
                f"class index {target} is out of range: the model has {len(names)} classes (0..{len(names) - 1})"
            )
        return int(target)
    import difflib

    close = difflib.get_close_matches(target, names, n=3, cutoff=0.5)
    close += [n for n in names if target.lower() in n.lower() and n not in close][: 3 - len(close)]
    hint = (
        f"; did you mean {', '.join(map(repr, close))}?"
        if close
        else f" (the model's classes: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
    )
    raise ResnetsError(f"unknown class {target[:100]!r}{hint}")


def explain(
    model: nn.Module,
    image_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    target: int | str | None = None,
    layer: str | None = None,
) -> dict:
    """The Grad-CAM heatmap ("heatmap": (h, w) in [0, 1] over the resized, cropped image) of one image file and
    the class it explains; with `out`, the image and the heatmap laid over it saved there as a PNG."""
    pre = preprocessing_for(model)
    if out is not None:
        out = Path(out)
        if out.suffix.lower() != ".png":
            raise ResnetsError(f"the output is a PNG; got {out.name}")
        if not out.parent.is_dir():
            raise ResnetsError(f"output directory does not exist: {out.parent}")
    names = meta_of(model).names(model.num_classes)
    target = class_index(target, names)
    path = str(image_path)
    if Path(path).is_dir():
        raise ResnetsError(f"{path} is a folder; explain takes one image file (a loop over the files explains each)")
    if not Path(path).is_file():
        raise ResnetsError(f"no such file: {path}")
    try:
        raw = decode(path, len(pre.mean), size=pre.resize)
    except BadSample as e:
        raise Unreadable(f"cannot read {path}: {e.reason}") from None
    shown = pre.transform()(raw)
    device = next(model.parameters()).device
    x = pre.normalizer()(shown.to(device))
    cam, cls, prob = grad_cam(model, x, target=target, layer=layer)
    found = {"path": path, "class": names[cls], "index": cls, "prob": prob, "heatmap": cam.cpu()}
    if out is None:
        return found | {"out": None}
    _save_overlay(shown, cam, f"Grad-CAM: {printable(names[cls])} ({100 * prob:.1f}%)", out)
    return found | {"out": str(out)}


def _save_overlay(shown: torch.Tensor, cam: torch.Tensor, title: str, out: Path) -> None:
    """The image and the heatmap over it, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .reports import save_png

    img = shown.permute(1, 2, 0).cpu().numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    axes[0].imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
    axes[0].set_title("input")
    axes[1].imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None)
    axes[1].imshow(cam.cpu().numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title(title)
    for a in axes:
        a.axis("off")
    save_png(fig, out)
