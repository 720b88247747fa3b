"""Where inference runs: torch eager, torch.compile, ONNX Runtime fp32 or int8. One interface: a runner maps a
normalised float batch (B, C, H, W) to logits, or to pooled features with output="features"."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .errors import ResnetsError

BACKENDS = ("eager", "compile", "onnxruntime", "onnxruntime-int8")


class _Features(nn.Module):
    """The model up to its pooled pre-logit features, as one module (for export)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def make_runner(
    model: nn.Module,
    backend: str = "eager",
    *,
    output: str = "logits",
    calib: Iterable[torch.Tensor] | None = None,
    channels_last: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """calib: normalised batches to calibrate int8 on (real images; required for onnxruntime-int8)."""
    if backend not in BACKENDS:
        raise ResnetsError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    model = model.eval()
    net = model if output == "logits" else _Features(model).eval()
    if backend in ("eager", "compile"):
        if channels_last:  # a copy: the caller's model keeps its memory format
            import copy

            net = copy.deepcopy(net).to(memory_format=torch.channels_last)
        fn = torch.compile(net) if backend == "compile" else net

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return fn(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

        return run
    pre = getattr(model, "preprocessing", None)
    return _ort_runner(net.cpu(), backend == "onnxruntime-int8", calib, pre.crop if pre is not None else 224)


def onnx_cache_path(net: nn.Module, example: torch.Tensor) -> Path:
    """Where the fp32 ONNX export of `net` at this input shape is cached: named by a hash of the module type, every
    state-dict tensor, the input's channels and size, and the torch version (any change gives a new file)."""
    import hashlib

    from .weights import cache_dir

    h = hashlib.sha256(f"{type(net).__name__}|{tuple(example.shape[1:])}|{torch.__version__}".encode())
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return cache_dir().parent / "onnx" / f"{h.hexdigest()[:32]}.onnx"


def _ort_runner(net: nn.Module, int8: bool, calib: Iterable[torch.Tensor] | None, size: int):
    """The ONNX file has a dynamic batch and a fixed image size: that of `calib`, else `size` (the model's crop)."""
    from .export import _write, ort_session

    first = next(iter(calib), None) if calib is not None else None
    if int8 and first is None:
        raise ResnetsError("onnxruntime-int8 needs real images to calibrate on")
    tmp = tempfile.TemporaryDirectory()
    p = next(net.parameters())
    example = torch.randn(2, p.shape[1] if p.ndim == 4 else 3, size, size) if first is None else first[:2].cpu()
    path = onnx_cache_path(net, example)
    if not path.is_file():  # the fp32 export is kept, so the next call with the same weights skips it
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(net, example, path, "onnx", dynamic_batch=True)
        except OSError:  # a cache we cannot write to: export into the private folder instead
            path = Path(tmp.name) / "model.onnx"
            _write(net, example, path, "onnx", dynamic_batch=True)
    if int8:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        batches = [first] + list(calib)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(batches)

            def get_next(self):
                b = next(self.it, None)
                return None if b is None else {"input": b.cpu().numpy()}

        pre, q = Path(tmp.name) / "pre.onnx", Path(tmp.name) / "int8.onnx"
        quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        path = q
    sess = ort_session(path)
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])

    run._tmp = tmp  # keeps the folder (and the file ORT mapped) alive as long as the runner
    return run


def bench(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, seconds: float = 3.0, warmup: int = 3,
          min_iters: int = 5) -> dict:  # fmt: skip
    """Latencies of `run(x)`: images/s (from the median), p50 and p95 in milliseconds."""
    import time

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
    return {"batch": len(x), "iters": len(times), "images_per_s": len(x) / p50, "p50_ms": 1e3 * p50, "p95_ms": 1e3 * p95}
