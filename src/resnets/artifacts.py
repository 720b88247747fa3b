"""Files the package reads and writes: weights in any published layout, and self-describing model files.

A model file is safetensors with metadata (architecture, options, class names, preprocessing), so the file
alone rebuilds its model (`resnets.load`). Pickled files are read with `weights_only=True` only: a file that
would run code when unpickled is refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import ResnetsError, WeightsError

FORMAT = "resnets.model/1"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
# containers that training scripts wrap a state_dict in (torchvision references, timm, Lightning, ours)
_WRAPPERS = ("model_ema", "state_dict_ema", "state_dict", "model", "model_state", "model_state_dict", "module")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`, on failure remove it.
    Nothing half-written is ever left under the final name."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ResnetsError(f"output directory does not exist: {path.parent}")
    # the temporary name keeps the final suffix: some writers (torch.export, ONNX) look at it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode a plain open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DataParallel/DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes."""
    out = {}
    for k, v in state_dict.items():
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        meta = obj.get("resnets") if isinstance(obj.get("resnets"), dict) else None
        for key in _WRAPPERS:
            if _is_state_dict(obj.get(key)):
                return obj[key], meta
    raise WeightsError(f"{path} holds no state_dict (a mapping of parameter names to tensors)")


def _parse_meta(raw: dict[str, str] | None) -> dict | None:
    if not raw or raw.get("format") != FORMAT:
        return None
    meta: dict[str, Any] = {"architecture": raw.get("architecture")}
    for key in ("options", "class_names", "preprocessing", "extra"):
        if key in raw:
            meta[key] = json.loads(raw[key])
    return meta


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a weights file: (state_dict with prefixes stripped, resnets metadata or None for foreign files)."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"weights file not found: {p}")
    if not p.is_file():
        raise WeightsError(f"not a weights file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                raw = f.metadata()
                sd = {k: f.get_tensor(k) for k in f.keys()}
            meta = _parse_meta(raw)
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise WeightsError(f"cannot read {p}: not a valid safetensors file ({_first_line(e)})") from None
        if not sd:
            raise WeightsError(f"{p} holds no tensors")
    elif suffix in PICKLE_SUFFIXES:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            if "GLOBAL" in str(e):  # the weights-only unpickler met a class or function reference
                raise WeightsError(
                    f"refusing to load {p}: it holds pickled objects other than tensors, which could run code "
                    "(only weights_only-loadable files are accepted; convert it to .safetensors)"
                ) from None
            raise WeightsError(f"cannot read {p}: not a valid PyTorch checkpoint (corrupt or truncated)") from None
        sd, meta = _unwrap(obj, p)
    else:
        raise WeightsError(f"unsupported weights file type {suffix or '(none)'!r} for {p}; use .safetensors or .pth")
    return strip_prefixes(sd), meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:200]


def save(
    model: torch.nn.Module,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    preprocessing: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Save a model made by `resnets.create_model` as a self-describing .safetensors file (atomically).

    class_names and preprocessing default to those the model carries (from its weights)."""
    from safetensors.torch import save_file

    arch = getattr(model, "arch_name", None)
    if arch is None:
        raise ResnetsError("save() needs a model built by resnets.create_model (it records the architecture)")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ResnetsError(f"model files are .safetensors; got {path.name}")
    if class_names is None:
        class_names = getattr(model, "class_names", None)
    if preprocessing is None:
        pre = getattr(model, "preprocessing", None)
        preprocessing = pre.to_dict() if pre is not None else None
    meta = {"format": FORMAT, "architecture": arch, "options": json.dumps(getattr(model, "arch_options", {}))}
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    if preprocessing is not None:
        meta["preprocessing"] = json.dumps(preprocessing)
    if extra:
        meta["extra"] = json.dumps(extra)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """torch.save of tensors and plain containers only (loadable with weights_only=True), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ResnetsError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise ResnetsError(f"cannot read checkpoint {path} (corrupt, or not a resnets checkpoint)") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ResnetsError(f"{path} is not a resnets training checkpoint")
    return state
