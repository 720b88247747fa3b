"""Where inference runs: torch eager, torch.compile, ONNX Runtime fp32 or int8, at fp32, bf16 or fp16. One
interface: a runner maps a normalised float batch (B, C, H, W) to float32 logits (or pooled features with
output="features") on the runner's device.

Precision: on a GPU, bf16/fp16 weights; on a CPU, bf16 autocast (fp16 only where oneDNN has fp16 units);
channels_last everywhere (on a CPU in fp32 too: 1.3-1.7x for batches). The compiled backend works at every precision; on a GPU it replays CUDA graphs
("reduce-overhead"), which small networks need to keep the card busy. "auto" picks the backend measured fastest
for the device and precision: compile on a GPU or for bf16, ONNX Runtime for fp32 on a CPU.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .choices import PRECISIONS
from .errors import ResnetsError
from .home import onnx_cache_dir  # noqa: F401  (resnets.backends.onnx_cache_dir, as before)
from .onnx_predict import digest as _digest

if TYPE_CHECKING:  # torch is imported where a runner is made: the command line reads the table below without it
    import torch
    from torch import nn


@dataclass(frozen=True)
class Backend:
    """One way to run a model: `make(net, device, precision, channels_last, calib, size)` -> a runner."""

    name: str
    doc: str
    make: Callable
    devices: tuple[str, ...] = ("cpu", "cuda")
    precisions: tuple[str, ...] = PRECISIONS


def _eager(net, dev, precision, channels_last, calib, size):
    return _torch_runner(net, False, dev, precision, channels_last)


def _compiled(net, dev, precision, channels_last, calib, size):
    return _torch_runner(net, True, dev, precision, channels_last)


def _onnx(net, dev, precision, channels_last, calib, size):
    return _ort_runner(net.cpu(), False, calib, size)


def _onnx_int8(net, dev, precision, channels_last, calib, size):
    return _ort_runner(net.cpu(), True, calib, size)


# the backends by name: adding one is one entry (the command line's choices and help come from here)
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("eager", "PyTorch, each batch norm folded into its convolution", _eager),
        Backend("compile", "torch.compile (on a GPU with CUDA graphs)", _compiled),
        Backend("onnxruntime", "ONNX Runtime, fp32, on the CPU", _onnx, devices=("cpu",), precisions=("fp32",)),
        Backend(
            "onnxruntime-int8",
            "ONNX Runtime int8, calibrated on the first images given",
            _onnx_int8,
            devices=("cpu",),
            precisions=("fp32",),
        ),
    )
}


def auto_backend(device: torch.device, precision: str) -> str:
    """The backend measured fastest (benchmarks/RESULTS.md): torch.compile on a GPU and for reduced precision,
    ONNX Runtime for fp32 on a CPU."""
    return "onnxruntime" if device.type == "cpu" and precision == "fp32" else "compile"


def make_runner(
    model: nn.Module,
    backend: str = "eager",
    *,
    output: str = "logits",
    calib: Iterable[torch.Tensor] | None = None,
    channels_last: bool | None = None,
    precision: str = "fp32",
    device: str | torch.device | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """calib: normalised batches to calibrate int8 on (real images; required for onnxruntime-int8).
    channels_last: None takes it (faster on a GPU, and on a CPU for batches: 1.3-1.7x in fp32, 0.92x at batch 1).
    device: default the model's.
    The caller's model is never changed (a copy is converted)."""
    import torch

    from .devices import check_precision
    from .meta import preprocessing_for
    from .models.resnet import PreLogits
    from .onnx_file import OnnxModel, check_runnable

    if backend != "auto" and backend not in BACKENDS:
        raise ResnetsError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    if isinstance(model, OnnxModel):  # an exported file: it already is its runner
        check_runnable(backend, output, precision, dev)
        return model.eval()
    check_precision(precision, dev)
    spec = BACKENDS[auto_backend(dev, precision) if backend == "auto" else backend]
    if precision not in spec.precisions or dev.type not in spec.devices:
        where = " or ".join({"cpu": "CPU", "cuda": "GPU"}[d] for d in spec.devices)
        raise ResnetsError(
            f"the {spec.name} backend runs on the {where} at "
            f"{' or '.join(spec.precisions)}; for {precision} on {dev.type} use eager or compile"
        )
    model = model.eval()
    net = model if output == "logits" else PreLogits(model).eval()
    return spec.make(net, dev, precision, channels_last, calib, preprocessing_for(model).crop)


def _torch_runner(net: nn.Module, compiled: bool, dev: torch.device, precision: str, channels_last: bool | None):
    """eager or torch.compile at `precision` on `dev`: reduced-precision weights on a GPU, autocast on a CPU."""
    import copy
    from contextlib import nullcontext

    import torch

    from .models.fold import folded

    reduced = precision != "fp32"
    cl = True if channels_last is None else channels_last  # faster on a GPU and, batched, on a CPU (RESULTS.md)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    cast = reduced and dev.type == "cuda"
    params, given = next(net.parameters()), net
    net = folded(net)  # a copy with each batch norm in its convolution (or the net given: nothing to fold)
    if cl or cast or params.device != dev:  # converted as a copy: the caller's model keeps its device, dtype, format
        net = (copy.deepcopy(net) if net is given else net).to(dev)
        if cast:
            net = net.to(dtype)
        if cl:
            net = net.to(memory_format=torch.channels_last)
    in_dtype = dtype if cast else torch.float32
    amp = torch.autocast("cpu", dtype=dtype) if reduced and dev.type == "cpu" else nullcontext()
    fn = net
    graphs = compiled and dev.type == "cuda"
    if compiled:
        # on a GPU, CUDA graphs replay the whole forward ("reduce-overhead"): launch-bound small nets need it
        fn = torch.compile(net, mode="reduce-overhead" if graphs else None)

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.to(dev, dtype=in_dtype, non_blocking=True)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), amp:
            out = fn(x)
        if out.dtype != torch.float32:
            return out.float()
        return out.clone() if graphs else out  # a replayed graph writes its next output over this one

    run.device, run.precision, run.backend = dev, precision, "compile" if compiled else "eager"
    return run


def onnx_cache_path(net: nn.Module, example: torch.Tensor) -> Path:
    """Where the fp32 ONNX export of `net` at this input shape is cached: named by a hash of the module type, every
    state-dict tensor, the input's channels and size, and the torch version (any change gives a new file)."""
    import hashlib

    import torch

    h = hashlib.sha256(f"{type(net).__name__}|{tuple(example.shape[1:])}|{torch.__version__}".encode())
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return onnx_cache_dir() / f"{h.hexdigest()[:32]}.onnx"


def _cached_session(path: Path):
    """An ONNX Runtime session of the cached export at `path`, or None when there is none or it cannot be trusted:
    its bytes differ from the hash recorded beside it when it was written (truncated, damaged, replaced), or it
    is not stamped with the key its name promises (another model's file)."""
    from .export import ort_session

    sidecar = path.with_suffix(".sha256")
    try:
        if not path.is_file() or sidecar.read_text().strip() != _digest(path):
            return None
        sess = ort_session(path)
    except Exception:  # no record, or onnxruntime's own types (InvalidProtobuf, Fail, ...)
        return None
    return sess if sess.get_modelmeta().custom_metadata_map.get("resnets.cache_key") == path.stem else None


def _cache_export(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export into the cache: the file stamped with its key, then its hash recorded beside it; then the cache is
    trimmed to its size limit, least recently used first."""
    from .export import write
    from .safe_io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    write(net, example, path, "onnx", dynamic_batch=True, metadata={"resnets.cache_key": path.stem})
    with atomic_path(path.with_suffix(".sha256")) as tmp:
        tmp.write_text(_digest(path) + "\n")
    trim_onnx_cache(keep=path)


ONNX_CACHE_MB = 2048  # the ONNX cache's default size limit; $RESNETS_ONNX_CACHE_MB sets it


def onnx_cache() -> list[Path]:
    """The cached ONNX exports, least recently used first."""
    folder = onnx_cache_dir()
    files = [p for p in folder.glob("*.onnx") if p.is_file()] if folder.is_dir() else []
    return sorted(files, key=lambda p: p.stat().st_mtime_ns)  # a cached file is touched each time it is used


def trim_onnx_cache(limit_mb: float | None = None, keep: Path | None = None) -> list[Path]:
    """Remove cached exports, least recently used first, until the cache fits `limit_mb` (default
    $RESNETS_ONNX_CACHE_MB, else ONNX_CACHE_MB; 0 empties it). `keep` stays. Returns what was removed."""
    import os

    if limit_mb is None:
        try:
            limit_mb = float(os.environ.get("RESNETS_ONNX_CACHE_MB", ONNX_CACHE_MB))
        except ValueError:
            limit_mb = ONNX_CACHE_MB
    files = onnx_cache()
    total = sum(p.stat().st_size for p in files)
    removed = []
    for p in files:
        if total <= limit_mb * 1e6:
            break
        if p == keep:
            continue
        total -= p.stat().st_size
        p.unlink(missing_ok=True)
        p.with_suffix(".sha256").unlink(missing_ok=True)
        removed.append(p)
    return removed


def _ort_runner(net: nn.Module, int8: bool, calib: Iterable[torch.Tensor] | None, size: int):
    """The ONNX file has a dynamic batch and a fixed image size: that of `calib`, else `size` (the model's crop)."""
    import torch

    from .export import ort_run, ort_session, quantize_int8, write

    first = next(iter(calib), None) if calib is not None else None
    if int8 and first is None:
        raise ResnetsError("onnxruntime-int8 needs real images to calibrate on")
    tmp = tempfile.TemporaryDirectory()
    p = next(net.parameters())
    example = torch.randn(2, p.shape[1] if p.ndim == 4 else 3, size, size) if first is None else first[:2].cpu()
    path = onnx_cache_path(net, example)
    sess = _cached_session(path)  # the fp32 export is kept, so the next call with the same weights skips it
    if sess is not None:
        path.touch()  # recently used: the last to be trimmed
    else:
        try:
            _cache_export(net, example, path)
        except (OSError, ResnetsError):  # a cache we cannot write to: export into the private folder instead
            path = Path(tmp.name) / "model.onnx"
            write(net, example, path, "onnx", dynamic_batch=True)
    if int8:
        q = Path(tmp.name) / "int8.onnx"
        quantize_int8(path, q, [first, *calib])
        path, sess = q, None
    run = ort_run(sess or ort_session(path))
    run._tmp = tmp  # keeps the folder (and the file ORT mapped) alive as long as the runner
    return run


def export_for_file(model: nn.Module, weights, path: Path | None = None) -> Path | None:
    """The verified ONNX export of the model `weights` names (a model file, or a folder's model.safetensors and
    config.json), written into the cache under its files' key, so that `resnets predict` classifies with it, and
    every later run without torch (onnx_predict.py). `path`: the key taken before the model was loaded; when the
    files' bytes differ now (replaced meanwhile), nothing is cached. None where it cannot be had: not local files,
    a cache that cannot be written, an exporter that fails or a file that fails its check against eager PyTorch
    (one warning; the caller then runs the model in PyTorch)."""
    import logging

    from .export import export
    from .onnx_predict import digest, export_path, model_files
    from .safe_io import atomic_path

    files = model_files(weights)
    if files is None or files[0].suffix.lower() == ".onnx":
        return None
    path = path or export_path(files)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        export(model, path, "onnx", fold=True, stamp={"resnets.cache_key": path.stem})
        if export_path(files) != path:  # the files changed while the model was read: their key is not its
            raise ResnetsError(f"{weights} changed while it was read")
        with atomic_path(path.with_suffix(".sha256")) as tmp:
            tmp.write_text(digest(path) + "\n")
    except Exception as e:  # noqa: BLE001  (the exporter's own errors too: PyTorch runs the model instead)
        path.unlink(missing_ok=True)
        logging.getLogger("resnets").warning("no ONNX export of %s (%s): running it in PyTorch", weights, e)
        return None
    trim_onnx_cache(keep=path)
    return path


def bench(
    run: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    seconds: float = 3.0,
    warmup: int = 3,
    min_iters: int = 5,
) -> dict:
    """Latencies of `run(x)`: images/s (from the median), p50 and p95 in milliseconds."""
    import time

    import torch

    for _ in range(warmup):
        run(x)
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        out = run(x)
        if isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = torch.tensor(times)
    p50, p95 = float(t.quantile(0.5)), float(t.quantile(0.95))
    return {
        "batch": len(x),
        "iters": len(times),
        "images_per_s": len(x) / p50,
        "p50_ms": 1e3 * p50,
        "p95_ms": 1e3 * p95,
    }
